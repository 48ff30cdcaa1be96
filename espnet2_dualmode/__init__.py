"""espnet2-dualmode: one ESPnet2 model for streaming and full-context ASR."""

__version__ = "0.1.0"
