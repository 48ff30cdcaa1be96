"""Full-context (non-streaming) Conformer: paper Eq. (3), H_te = NSTConEncoder(H_st).

In the dual-mode model it is fed the streaming encoder's output (``input_layer=None``: a
cascade, no subsampling). As a standalone Conformer-T baseline it reads features through
its own conv2d subsampling (``input_layer="conv2d"``).

Why not ESPnet's ConformerEncoder: its convolution module sees padded frames (see
:mod:`espnet2_dualmode.encoders.conformer_layer`), so batched and single-utterance
outputs differ. Relative-position attention and encodings are ESPnet's.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from espnet.nets.pytorch_backend.transformer.embedding import RelPositionalEncoding
from torch import nn

from espnet2_dualmode.encoders.conformer_layer import (
    ConformerLayer,
    LayerOutputsEncoder,
    subsampled_lengths,
)
from espnet2_dualmode.encoders.subsampling import conv2d_subsampling


class FullContextConformerEncoder(LayerOutputsEncoder):
    """Conformer encoder with full self-attention over the (valid part of the) utterance.

    Args:
        input_size: input dimension (streaming encoder size, or feature dim for conv2d).
        output_size: model dimension D.
        attention_heads, linear_units, num_blocks: size (paper: 4, 1024, 12).
        dropout_rate, positional_dropout_rate, attention_dropout_rate: dropouts.
        cnn_module_kernel: depthwise convolution kernel.
        input_layer: None (cascade; a linear projection is added when input_size differs
            from output_size) or "conv2d" (4x subsampling of features).
        subsampling_channels: with "conv2d", the width of its convolutions (None:
            output_size; see :mod:`espnet2_dualmode.encoders.subsampling`).
    """

    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        attention_heads: int = 4,
        linear_units: int = 1024,
        num_blocks: int = 12,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        cnn_module_kernel: int = 31,
        input_layer: Optional[str] = None,
        subsampling_channels: Optional[int] = None,
    ):
        super().__init__()
        self._output_size = output_size
        self.input_layer = input_layer
        if input_layer == "conv2d":
            self.embed: nn.Module = conv2d_subsampling(input_size, output_size, dropout_rate,
                                                       subsampling_channels)
        elif input_layer is None:
            self.embed = nn.Identity() if input_size == output_size else nn.Linear(input_size, output_size)
        else:
            raise ValueError(f"unknown input_layer {input_layer!r}: use null or 'conv2d'")
        self.pos_enc = RelPositionalEncoding(output_size, positional_dropout_rate)
        self.encoders = nn.ModuleList(
            ConformerLayer(output_size, attention_heads, linear_units, cnn_module_kernel,
                           dropout_rate, attention_dropout_rate, rel_pos=True)
            for _ in range(num_blocks)
        )

    def output_size(self) -> int:
        return self._output_size

    def forward_layers(
        self, xs_pad: torch.Tensor, ilens: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """Encode a padded batch, also returning every layer's output (B, T', D)."""
        olens = subsampled_lengths(ilens) if self.input_layer == "conv2d" else ilens
        if olens.numel() and int(olens.min()) < 1:  # checked before the convolutions see them
            raise ValueError(f"utterances with nothing to encode (output lengths {olens.tolist()})")
        if self.input_layer == "conv2d":
            xs_pad, _ = self.embed(xs_pad, None)
        else:
            xs_pad = self.embed(xs_pad)
        x, pos_emb = self.pos_enc(xs_pad)
        mask = torch.arange(x.size(1), device=x.device).unsqueeze(0) < olens.to(x.device).unsqueeze(1)
        layer_outputs: List[torch.Tensor] = []
        for layer in self.encoders:
            x = layer(x, mask, pos_emb)
            layer_outputs.append(x)
        return x, olens, layer_outputs
