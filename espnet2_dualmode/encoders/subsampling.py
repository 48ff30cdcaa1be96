"""The encoders' 4x conv2d subsampling, with a choice of convolution width.

ESPnet's ``Conv2dSubsamplingWOPosEnc`` (two 3x3 stride-2 convolutions, then a linear layer
to the model dimension) gives both convolutions as many channels as the model dimension.
At the demo's size (d=144) its second convolution was a third of a training step's time on
CPU (benchmarks/README.md, "joint step"), more than the 8 Conformer layers after it, so
``channels`` can make the convolutions narrower; the output, its frame rate and the
receptive field (7 input frames, stride 4) are unchanged, and so is every streaming path
that calls it. ``channels=None`` builds ESPnet's module unchanged (same parameter names and
shapes: existing checkpoints load).
"""

from __future__ import annotations

from typing import Optional

from espnet.nets.pytorch_backend.transformer.subsampling_without_posenc import (
    Conv2dSubsamplingWOPosEnc,
)
from torch import nn

KERNELS = [3, 3]
STRIDES = [2, 2]


def conv2d_subsampling(input_size: int, output_size: int, dropout_rate: float,
                       channels: Optional[int] = None) -> Conv2dSubsamplingWOPosEnc:
    """4x subsampling of (B, T, input_size) features to (B, T', output_size).

    Args:
        input_size: feature dimension F.
        output_size: model dimension D.
        dropout_rate: as ESPnet's module (it holds no dropout layer; kept for its signature).
        channels: width of both convolutions (None: D, ESPnet's choice).
    """
    embed = Conv2dSubsamplingWOPosEnc(input_size, output_size, dropout_rate, KERNELS, STRIDES)
    if channels is None or channels == output_size:
        return embed
    if channels < 1:
        raise ValueError(f"subsampling_channels must be >= 1, not {channels}")
    freq = input_size
    layers = []
    for i, (k, s) in enumerate(zip(KERNELS, STRIDES)):
        layers += [nn.Conv2d(1 if i == 0 else channels, channels, k, s), nn.ReLU()]
        freq = (freq - k) // s + 1
    embed.conv = nn.Sequential(*layers)
    embed.out = nn.Linear(channels * freq, output_size)
    return embed
