"""Dual-mode Conformer (Yu et al., ICLR 2021): one set of weights, two modes.

- Full context: self-attention over the whole (valid part of the) utterance and the
  symmetric depthwise convolution of kernel k.
- Streaming: the same weights with self-attention masked to the past (plus the rest of the
  current chunk, ``chunk_size`` frames; 1, the default, is the paper's left-context-only
  attention) and the depthwise kernel masked to its left (k + 1) / 2 taps (a causal
  convolution).
- Every normalisation layer exists once per mode (``norms["full"]``, ``norms["stream"]``):
  the paper's dual-mode normalisation. The convolution module normalises with LayerNorm, not
  BatchNorm, whose running statistics would pool padded frames: each utterance is encoded
  the same alone or in a batch, in both modes.

Positions are absolute sinusoidal encodings of global frame indices (not relative ones), so
that the streaming mode's incremental path (:meth:`DualModeConformerEncoder.forward_incremental`,
a cache of attention keys/values and of the convolution's left context per layer) computes
exactly the frames of the parallel streaming mode, for any chunking of the input.

The model reads the two modes through :class:`EncoderMode` views (``streaming_view``,
``full_view``), which have the surface of the cascade's encoders.

Shapes: B batch, T input frames, T' subsampled frames, F feature dim, D model dim,
H heads, S cached frames.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from espnet.nets.pytorch_backend.transformer.attention import MultiHeadedAttention
from espnet.nets.pytorch_backend.transformer.positionwise_feed_forward import (
    PositionwiseFeedForward,
)
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from torch import nn

from espnet2_dualmode.encoders.conformer_layer import sinusoid, subsampled_lengths
from espnet2_dualmode.encoders.subsampling import conv2d_subsampling
from espnet2_dualmode.encoders.contextual_block_conformer import SUBSAMPLING, min_input_frames

logger = logging.getLogger(__name__)

MODES = ("full", "stream")
NORMS = ("ff_macaron", "mha", "conv", "conv_inner", "ff", "final")


def causal_taps(kernel_size: int) -> int:
    """Taps of the streaming mode's depthwise kernel: the left (k + 1) / 2 (self included)."""
    return (kernel_size + 1) // 2


def _depthwise_valid(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
                     ) -> torch.Tensor:
    """Depthwise convolution of (B, T + K - 1, C) with (C, 1, K), no padding: (B, T, C).

    Run as a channels-last Conv2d over a (B, C, 1, T) view, as the cascade's encoders do
    (faster on CPU than Conv1d's channels-first kernel).
    """
    view = x.unsqueeze(1).permute(0, 3, 1, 2)
    out = nn.functional.conv2d(view, weight.unsqueeze(2), bias, groups=weight.size(0))
    return out.squeeze(2).transpose(1, 2)


@dataclass
class LayerCache:
    """One layer's streaming context: attention keys/values (B, H, S, D/H) of all frames so
    far, and the last (k - 1) / 2 gated inputs of the depthwise convolution (B, (k-1)/2, D)."""

    keys: torch.Tensor
    values: torch.Tensor
    conv: torch.Tensor


@dataclass
class DualModeStreamState:
    """What :meth:`DualModeConformerEncoder.forward_incremental` carries between calls.

    Attributes:
        feats: (B, n, F) input frames not yet consumed by the subsampling convolution.
        frames: (B, m, D) subsampled, position-encoded frames not yet encoded.
        n_frames: subsampled frames produced so far.
        layers: per-layer cache.
        n_emitted: output frames returned so far.
        finished: the stream has ended (is_final was given).
    """

    feats: torch.Tensor
    frames: torch.Tensor
    layers: List[LayerCache]
    n_frames: int = 0
    n_emitted: int = 0
    finished: bool = field(default=False)


class DualModeConformerLayer(nn.Module):
    """Macaron Conformer layer (pre-norm) with shared weights and per-mode norms.

    FF/2, MHSA, convolution (pointwise + GLU, depthwise, LayerNorm, Swish, pointwise), FF/2,
    final LayerNorm. Padded frames are zeroed before the depthwise convolution.
    """

    def __init__(self, size: int, attention_heads: int, linear_units: int,
                 cnn_module_kernel: int, dropout_rate: float, attention_dropout_rate: float):
        super().__init__()
        if cnn_module_kernel % 2 == 0:
            raise ValueError(f"cnn_module_kernel must be odd, not {cnn_module_kernel}")
        self.ff_macaron = PositionwiseFeedForward(size, linear_units, dropout_rate, nn.SiLU())
        self.ff = PositionwiseFeedForward(size, linear_units, dropout_rate, nn.SiLU())
        self.self_attn = MultiHeadedAttention(attention_heads, size, attention_dropout_rate)
        self.pointwise_conv1 = nn.Linear(size, 2 * size)
        self.depthwise_conv = nn.Conv1d(size, size, cnn_module_kernel, groups=size)
        self.pointwise_conv2 = nn.Linear(size, size)
        self.norms = nn.ModuleDict({
            mode: nn.ModuleDict({name: nn.LayerNorm(size) for name in NORMS}) for mode in MODES})
        self.dropout = nn.Dropout(dropout_rate)
        self.kernel_size = cnn_module_kernel
        self.context = cnn_module_kernel // 2  # (k - 1) / 2 frames on each side

    def conv_kernel(self, streaming: bool) -> torch.Tensor:
        """The depthwise kernel of a mode: (D, 1, k), or its left (k + 1) / 2 taps."""
        w = self.depthwise_conv.weight
        return w[..., :causal_taps(self.kernel_size)] if streaming else w

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """Scaled dot-product attention of ESPnet's module on projected q (B, H, n, D/H) and
        keys/values (B, H, S, D/H); ``mask`` True where a query may attend."""
        scores = torch.matmul(q, keys.transpose(-2, -1)) / math.sqrt(self.self_attn.d_k)
        return self.self_attn.forward_attention(values, scores, mask)

    def _conv(self, x: torch.Tensor, norms: nn.ModuleDict, valid: Optional[torch.Tensor],
              left: torch.Tensor, right: int, streaming: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """Convolution module on (B, n, D) with ``left`` context frames and ``right`` zeros.

        Returns (module output (B, n, D), gated inputs including ``left`` (B, L + n, D)).
        """
        g = nn.functional.glu(self.pointwise_conv1(norms["conv"](x)), dim=-1)
        if valid is not None:
            g = g.masked_fill(~valid.unsqueeze(-1), 0.0)
        g = torch.cat([left, g], dim=1)
        c = _depthwise_valid(nn.functional.pad(g, (0, 0, 0, right)), self.conv_kernel(streaming),
                             self.depthwise_conv.bias)
        c = self.pointwise_conv2(nn.functional.silu(norms["conv_inner"](c)))
        return x + self.dropout(c), g

    def _macaron(self, x: torch.Tensor, norms: nn.ModuleDict) -> torch.Tensor:
        return x + 0.5 * self.dropout(self.ff_macaron(norms["ff_macaron"](x)))

    def _final(self, x: torch.Tensor, norms: nn.ModuleDict) -> torch.Tensor:
        x = x + 0.5 * self.dropout(self.ff(norms["ff"](x)))
        return norms["final"](x)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, att_mask: torch.Tensor,
                streaming: bool) -> torch.Tensor:
        """Parallel step of either mode.

        Args:
            x: (B, T', D); valid: (B, T') True on valid frames.
            att_mask: (B, 1 or T', T') True where a query may attend to a key.
            streaming: causal convolution and the streaming norms.
        """
        norms = self.norms[MODES[int(streaming)]]
        x = self._macaron(x, norms)
        h = norms["mha"](x)
        q, k, v = self.self_attn.forward_qkv(h, h, h)
        x = x + self.dropout(self._attend(q, k, v, att_mask))
        left = x.new_zeros(x.size(0), self.context, x.size(2))
        x, _ = self._conv(x, norms, valid, left, 0 if streaming else self.context, streaming)
        return self._final(x, norms)

    def forward_step(self, x: torch.Tensor, cache: LayerCache, att_mask: torch.Tensor
                     ) -> Tuple[torch.Tensor, LayerCache]:
        """Streaming mode on the next n frames (B, n, D), continuing from ``cache``.

        ``att_mask``: (1, n, S + n) over [cached frames, new frames].
        """
        norms = self.norms["stream"]
        x = self._macaron(x, norms)
        h = norms["mha"](x)
        q, k, v = self.self_attn.forward_qkv(h, h, h)
        keys, values = torch.cat([cache.keys, k], dim=2), torch.cat([cache.values, v], dim=2)
        x = x + self.dropout(self._attend(q, keys, values, att_mask))
        x, g = self._conv(x, norms, None, cache.conv, 0, streaming=True)
        new_cache = LayerCache(keys, values, g[:, g.size(1) - self.context:])
        return self._final(x, norms), new_cache


class DualModeConformerEncoder(AbsEncoder):
    """Shared-weights Conformer encoder with a full-context and a streaming mode.

    Args:
        input_size: feature dimension F.
        output_size: model dimension D.
        attention_heads, linear_units, num_blocks: size (conf/paper/dualmode_shared.yaml:
            4, 1024, 12 at D=256).
        dropout_rate, positional_dropout_rate, attention_dropout_rate: dropouts.
        cnn_module_kernel: odd depthwise kernel k of the full-context mode.
        chunk_size: streaming attention look-ahead, in subsampled frames: frame t sees the
            frames up to the end of its chunk of ``chunk_size`` frames, so the look-ahead is at
            most ``chunk_size - 1`` frames and does not grow with depth (the convolution is
            causal). 1 (default) is the paper's left-context-only attention.
        subsampling_channels: width of the conv2d subsampling (None: output_size; see
            :mod:`espnet2_dualmode.encoders.subsampling`).
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
        chunk_size: int = 1,
        subsampling_channels: Optional[int] = None,
    ):
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, not {chunk_size}")
        self.input_size = input_size
        self._output_size = output_size
        self.chunk_size = chunk_size
        self.embed = conv2d_subsampling(input_size, output_size, dropout_rate, subsampling_channels)
        self.pos_dropout = nn.Dropout(positional_dropout_rate)
        self.encoders = nn.ModuleList(
            DualModeConformerLayer(output_size, attention_heads, linear_units, cnn_module_kernel,
                                   dropout_rate, attention_dropout_rate)
            for _ in range(num_blocks))
        self.streaming_view = EncoderMode(self, streaming=True)
        self.full_view = EncoderMode(self, streaming=False)

    def output_size(self) -> int:
        return self._output_size

    def _embed(self, feats: torch.Tensor, start: int) -> torch.Tensor:
        """Subsample and add absolute encodings of global frame positions start, start+1, ..."""
        x, _ = self.embed(feats, None)
        pos = torch.arange(start, start + x.size(1), device=x.device)
        return self.pos_dropout(x * math.sqrt(self._output_size) + sinusoid(pos, x.size(-1)))

    def streaming_mask(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(n_q, n_k) True where query frame ``queries[i]`` may see key frame ``keys[j]``
        in streaming mode: keys up to the end of the query's chunk (global indices)."""
        chunk = torch.div(queries, self.chunk_size, rounding_mode="floor")
        chunk_end = (chunk + 1) * self.chunk_size
        return keys.unsqueeze(0) < chunk_end.unsqueeze(1)

    def forward(self, xs_pad: torch.Tensor, ilens: torch.Tensor,
                prev_states: torch.Tensor = None) -> Tuple[torch.Tensor, torch.Tensor, None]:
        """Full-context mode (ESPnet's encoder interface): (ys (B, T', D), olens, None)."""
        ys, olens, _ = self.forward_layers(xs_pad, ilens, streaming=False)
        return ys, olens, None

    def forward_layers(self, xs_pad: torch.Tensor, ilens: torch.Tensor, streaming: bool
                       ) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """Encode a padded batch in one mode, also returning every layer's output (B, T', D)."""
        x, olens, valid = self._embed_batch(xs_pad, ilens)
        ys, layer_outputs = self._layers(x, valid, streaming)
        return ys, olens, layer_outputs

    def forward_both(self, xs_pad: torch.Tensor, ilens: torch.Tensor
                     ) -> Tuple[Tuple[torch.Tensor, List[torch.Tensor]],
                                Tuple[torch.Tensor, List[torch.Tensor]], torch.Tensor]:
        """Both modes on one batch, ``((stream, layers), (full, layers), olens)``: the
        subsampling has no per-mode part, so it runs once (13 % of a demo-size training step);
        with positional dropout, both modes see the same mask."""
        x, olens, valid = self._embed_batch(xs_pad, ilens)
        return self._layers(x, valid, True), self._layers(x, valid, False), olens

    def _embed_batch(self, xs_pad: torch.Tensor, ilens: torch.Tensor
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Subsampled frames (B, T', D), their lengths and validity mask (B, T')."""
        olens = subsampled_lengths(ilens)
        if olens.numel() and int(olens.min()) < 1:
            lengths = ilens.tolist()  # host: Python-side check
            bad = [i for i, n in enumerate(lengths) if n < min_input_frames()]
            raise ValueError(f"utterances at batch index {bad} have fewer than "
                             f"{min_input_frames()} feature frames (lengths "
                             f"{[lengths[i] for i in bad]}): nothing to encode")
        x = self._embed(xs_pad, 0)
        t = torch.arange(x.size(1), device=x.device)
        return x, olens, t.unsqueeze(0) < olens.to(x.device).unsqueeze(1)

    def _layers(self, x: torch.Tensor, valid: torch.Tensor, streaming: bool
                ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The layer stack in one mode on embedded frames; (output, every layer's output)."""
        att_mask = valid.unsqueeze(1)  # (B, 1, T')
        if streaming:
            t = torch.arange(x.size(1), device=x.device)
            att_mask = att_mask & self.streaming_mask(t, t).unsqueeze(0)
        layer_outputs: List[torch.Tensor] = []
        for layer in self.encoders:
            x = layer(x, valid, att_mask, streaming)
            layer_outputs.append(x)
        return x, layer_outputs

    # ----- incremental streaming path ---------------------------------------------------
    def init_state(self, batch_size: int = 1,
                   device: Optional[torch.device] = None) -> DualModeStreamState:
        """A fresh streaming state for ``batch_size`` streams advancing in lockstep."""
        layers = []
        for layer in self.encoders:
            heads, d_k = layer.self_attn.h, layer.self_attn.d_k
            empty = torch.zeros(batch_size, heads, 0, d_k, device=device)
            conv = torch.zeros(batch_size, layer.context, self._output_size, device=device)
            layers.append(LayerCache(empty, empty, conv))
        return DualModeStreamState(
            feats=torch.zeros(batch_size, 0, self.input_size, device=device),
            frames=torch.zeros(batch_size, 0, self._output_size, device=device),
            layers=layers)

    def forward_incremental(self, feats: torch.Tensor, state: DualModeStreamState,
                            is_final: bool = False) -> Tuple[torch.Tensor, DualModeStreamState]:
        """Streaming mode on the next chunk of features; returns the newly final frames.

        A frame is final once its attention chunk has fully arrived (every frame with
        ``chunk_size`` 1), or when the stream ends.

        Args:
            feats: (B, n, F) the next n input frames (n may be 0).
            state: from :meth:`init_state` or the previous call (updated in place).
            is_final: the stream ends with this chunk.

        Returns:
            (B, k, D) output frames ``state.n_emitted - k ... state.n_emitted - 1``,
            identical (to float rounding) to the same frames of the parallel streaming mode.
        """
        if state.finished:
            raise RuntimeError("forward_incremental called after is_final=True; "
                               "start a new stream with init_state()")
        buf = torch.cat([state.feats, feats], dim=1)
        n_new = int(subsampled_lengths(torch.tensor(buf.size(1))))  # host: read by int()
        if n_new > 0:
            state.frames = torch.cat([state.frames, self._embed(buf, state.n_frames)], dim=1)
            state.n_frames += n_new
            buf = buf[:, SUBSAMPLING * n_new:]
        state.feats = buf
        state.finished = is_final
        end = state.n_frames if is_final else state.n_frames // self.chunk_size * self.chunk_size
        n = end - state.n_emitted
        if n <= 0:
            return state.frames[:, :0], state
        x, state.frames = state.frames[:, :n], state.frames[:, n:]
        device = x.device
        mask = self.streaming_mask(torch.arange(state.n_emitted, end, device=device),
                                   torch.arange(end, device=device)).unsqueeze(0)
        for i, layer in enumerate(self.encoders):
            x, state.layers[i] = layer.forward_step(x, state.layers[i], mask)
        state.n_emitted = end
        return x, state


class EncoderMode:
    """One mode of a :class:`DualModeConformerEncoder`, with the surface of the cascade's
    encoders (what the model and the inference code call). Not a module: the weights belong
    to the encoder, which the model registers once.

    The streaming view also exposes the cascade's block geometry, with a block being an
    attention chunk (``block_size = hop_size = chunk_size``, ``look_ahead = 0``), so the
    latency tools compute when a frame can be emitted for either encoder.
    """

    def __init__(self, encoder: DualModeConformerEncoder, streaming: bool):
        self.encoder = encoder
        self.streaming = streaming

    def output_size(self) -> int:
        return self.encoder.output_size()

    def forward_layers(self, xs_pad: torch.Tensor, ilens: torch.Tensor
                       ) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """Encode a padded batch in this mode, with every layer's output."""
        return self.encoder.forward_layers(xs_pad, ilens, streaming=self.streaming)

    def __call__(self, xs_pad: torch.Tensor, ilens: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor, None]:
        ys, olens, _ = self.forward_layers(xs_pad, ilens)
        return ys, olens, None

    forward = __call__

    def init_state(self, batch_size: int = 1,
                   device: Optional[torch.device] = None) -> DualModeStreamState:
        self._check_streaming()
        return self.encoder.init_state(batch_size, device)

    def forward_incremental(self, feats: torch.Tensor, state: DualModeStreamState,
                            is_final: bool = False) -> Tuple[torch.Tensor, DualModeStreamState]:
        self._check_streaming()
        return self.encoder.forward_incremental(feats, state, is_final)

    @property
    def block_size(self) -> int:
        return self.encoder.chunk_size

    hop_size = block_size
    look_ahead = 0
    dynamic_geometries = ()  # one fixed chunk size (the cascade's dynamic blocks: none)

    def select_geometry(self, block_size: Optional[int] = None, hop_size: Optional[int] = None,
                        look_ahead: Optional[int] = None) -> Tuple[int, int, int]:
        """Decode with attention chunks of ``block_size`` frames (none: the trained size);
        returns (block_size, hop_size, look_ahead). A chunk is a block with hop = size and
        no look-ahead; other geometries are refused, a size not trained at is warned about."""
        self._check_streaming()
        size = self.encoder.chunk_size if block_size is None else block_size
        if size < 1 or hop_size not in (None, size) or look_ahead not in (None, 0):
            raise ValueError(f"the dual-mode encoder streams in chunks (block_size = hop_size "
                             f">= 1, look_ahead 0); got block_size={block_size}, "
                             f"hop_size={hop_size}, look_ahead={look_ahead}")
        if size != self.encoder.chunk_size:
            logger.warning(f"decoding with attention chunks of {size} frames, but the model "
                           f"was trained with {self.encoder.chunk_size}")
            self.encoder.chunk_size = size
        return size, size, 0

    def block_of(self, t: torch.Tensor) -> torch.Tensor:
        """Index of the chunk that emits subsampled frame ``t``."""
        return torch.div(t, self.encoder.chunk_size, rounding_mode="floor")

    def _check_streaming(self) -> None:
        if not self.streaming:
            raise RuntimeError("the full-context mode has no incremental path")
