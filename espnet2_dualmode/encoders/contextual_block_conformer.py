"""Streaming encoder: contextual-block Conformer (Tsunoo et al. 2019; paper Eq. 1-2).

Frames are cut into overlapping blocks of ``block_size`` subsampled frames every
``hop_size`` frames. Each block carries a context embedding (the mean of its frames at the
input); at layer l a block also sees the context embedding that the previous block
produced at layer l - 1 ("context inheritance"). Block b emits the output of its frames
``[b*hop + past, b*hop + past + hop)`` where ``past = block - hop - look_ahead``; block 0
emits from frame 0 and the last block emits up to the end of the utterance.

Why not ESPnet's ContextualBlockConformerEncoder: it does not mask padding inside blocks
(an utterance's output changes with its batch-mates) and its convolution and BatchNorm
see padding too. This encoder masks every padded frame, so an utterance is encoded the
same alone or in a batch, and :meth:`forward_incremental` (state carried between calls)
reproduces :meth:`forward` for any chunking of the input.

Shapes: B batch, T input frames, T' subsampled frames, F feature dim, D model dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from espnet.nets.pytorch_backend.transformer.subsampling_without_posenc import (
    Conv2dSubsamplingWOPosEnc,
)
from torch import nn

from espnet2_dualmode.encoders.conformer_layer import (
    ConformerLayer,
    LayerOutputsEncoder,
    sinusoid,
    subsampled_lengths,
)

SUBSAMPLING = 4


def min_input_frames() -> int:
    """Fewest input feature frames that give one encoder frame (7), the inverse of
    ``subsampled_lengths`` at 1."""
    frames = 1
    for _ in range(2):  # each 3x3/stride-2 convolution needs 2n + 1 inputs for n outputs
        frames = 2 * frames + 1
    return frames


@dataclass
class BlockStreamState:
    """What :meth:`ContextualBlockConformerEncoder.forward_incremental` carries between calls.

    Attributes:
        feats: (B, n, F) input frames not yet consumed by the subsampling convolution.
        frames: (B, m, D) subsampled, position-encoded frames from global index
            ``frames_start`` on (the frames the next blocks still need).
        frames_start: global index of ``frames[:, 0]``.
        n_frames: number of subsampled frames produced so far.
        next_block: index of the next block to encode.
        ctx: (B, num_layers, D) the previous block's context embedding at the input of
            each layer (inherited by the next block), None before the first block.
        n_emitted: number of output frames returned so far.
    """

    feats: torch.Tensor
    frames: torch.Tensor
    frames_start: int = 0
    n_frames: int = 0
    next_block: int = 0
    ctx: Optional[torch.Tensor] = None
    n_emitted: int = 0
    finished: bool = field(default=False)


class ContextualBlockConformerEncoder(LayerOutputsEncoder):
    """Batch-invariant contextual-block Conformer with an incremental inference path.

    Args:
        input_size: feature dimension F.
        output_size: model dimension D.
        attention_heads, linear_units, num_blocks: Conformer size (paper: 4, 1024, 12).
        dropout_rate, positional_dropout_rate, attention_dropout_rate: dropouts.
        cnn_module_kernel: depthwise convolution kernel.
        block_size, hop_size, look_ahead: block geometry in subsampled frames
            (paper: 40, 16, 16).
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
        block_size: int = 40,
        hop_size: int = 16,
        look_ahead: int = 16,
    ):
        super().__init__()
        if min(block_size, hop_size) < 1 or look_ahead < 0 or block_size < hop_size + look_ahead:
            raise ValueError(
                f"block geometry needs block_size >= hop_size + look_ahead, hop_size >= 1 and "
                f"look_ahead >= 0; got block_size={block_size}, hop_size={hop_size}, "
                f"look_ahead={look_ahead}"
            )
        self.input_size = input_size
        self._output_size = output_size
        self.block_size = block_size
        self.hop_size = hop_size
        self.look_ahead = look_ahead
        self.past = block_size - hop_size - look_ahead
        self.embed = Conv2dSubsamplingWOPosEnc(input_size, output_size, dropout_rate, [3, 3], [2, 2])
        self.pos_dropout = nn.Dropout(positional_dropout_rate)
        self.encoders = nn.ModuleList(
            ConformerLayer(output_size, attention_heads, linear_units, cnn_module_kernel,
                           dropout_rate, attention_dropout_rate, rel_pos=False)
            for _ in range(num_blocks)
        )

    def output_size(self) -> int:
        return self._output_size

    # ----- block geometry -------------------------------------------------------------
    def block_of(self, t: torch.Tensor) -> torch.Tensor:
        """Index of the block that emits subsampled frame ``t``."""
        first = self.block_size - self.look_ahead
        return torch.where(t < first, torch.zeros_like(t),
                           torch.div(t - first, self.hop_size, rounding_mode="floor") + 1)

    def num_blocks_for(self, length: int) -> int:
        """Blocks needed to emit ``length`` subsampled frames."""
        if length <= 0:
            return 0
        return int(self.block_of(torch.tensor(length - 1))) + 1  # host: integer arithmetic

    def emission_range(self, block: int, length: Optional[int] = None) -> Tuple[int, int]:
        """Frames ``[start, end)`` emitted by ``block``; ``length`` closes the last block."""
        start = 0 if block == 0 else block * self.hop_size + self.past
        end = block * self.hop_size + self.block_size - self.look_ahead
        if length is not None and block == self.num_blocks_for(length) - 1:
            end = length
        return start, end

    # ----- shared pieces -------------------------------------------------------------
    def _embed(self, feats: torch.Tensor, start: int) -> torch.Tensor:
        """Subsample and add absolute encodings of global frame positions start, start+1, ..."""
        x, _ = self.embed(feats, None)
        pos = torch.arange(start, start + x.size(1), device=x.device)
        return self.pos_dropout(x * math.sqrt(self._output_size) + sinusoid(pos, x.size(-1)))

    def _context_init(self, frames: torch.Tensor, mask: torch.Tensor,
                      block_idx: torch.Tensor) -> torch.Tensor:
        """Initial context embedding: mean of the block's valid frames + block position."""
        summed = (frames * mask.unsqueeze(-1)).sum(-2)
        mean = summed / mask.sum(-1, keepdim=True).clamp(min=1)
        return mean + sinusoid(block_idx, frames.size(-1))

    # ----- parallel (training) path ----------------------------------------------------
    def forward_layers(
        self, xs_pad: torch.Tensor, ilens: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """Encode a padded batch, also returning every layer's output (B, T', D).

        All blocks of all utterances are processed in parallel: a layer's context input
        for block b is block b-1's context output of the previous layer (block 0 inherits
        its own), so blocks only depend on each other across layers.
        """
        olens = subsampled_lengths(ilens)
        if olens.numel() and int(olens.min()) < 1:
            lengths = ilens.tolist()  # host: Python-side check
            bad = [i for i, n in enumerate(lengths) if n < min_input_frames()]
            raise ValueError(f"utterances at batch index {bad} have fewer than "
                             f"{min_input_frames()} feature frames (lengths "
                             f"{[lengths[i] for i in bad]}): nothing to encode")
        x = self._embed(xs_pad, 0)
        batch, t_sub, dim = x.shape
        bs, hop = self.block_size, self.hop_size
        n_blocks = self.num_blocks_for(t_sub)
        x = nn.functional.pad(x, (0, 0, 0, (n_blocks - 1) * hop + bs - t_sub))
        blocks = x.unfold(1, bs, hop).permute(0, 1, 3, 2)  # (B, NB, bs, D)
        block_idx = torch.arange(n_blocks, device=x.device)
        pos = block_idx.unsqueeze(1) * hop + torch.arange(bs, device=x.device)  # (NB, bs)
        mask = pos.unsqueeze(0) < olens.to(x.device).view(-1, 1, 1)  # (B, NB, bs)
        ctx = self._context_init(blocks, mask, block_idx)  # (B, NB, D)
        frames = blocks.reshape(batch * n_blocks, bs, dim)
        flat_mask = mask.reshape(batch * n_blocks, bs)
        t = torch.arange(t_sub, device=x.device)
        emit_block = self.block_of(t)
        emit_offset = t - emit_block * hop
        layer_outputs: List[torch.Tensor] = []
        for layer in self.encoders:
            ctx_prev = torch.cat([ctx[:, :1], ctx[:, :-1]], dim=1)
            out = layer.forward_block(
                torch.cat([frames, ctx.reshape(-1, 1, dim)], dim=1),
                ctx_prev.reshape(-1, dim),
                flat_mask,
            )
            frames, ctx = out[:, :-1], out[:, -1].reshape(batch, n_blocks, dim)
            layer_outputs.append(frames.reshape(batch, n_blocks, bs, dim)[:, emit_block, emit_offset])
        return layer_outputs[-1], olens, layer_outputs

    # ----- incremental (streaming) path --------------------------------------------------
    def init_state(self, batch_size: int = 1,
                   device: Optional[torch.device] = None) -> BlockStreamState:
        """A fresh streaming state for ``batch_size`` streams advancing in lockstep."""
        return BlockStreamState(
            feats=torch.zeros(batch_size, 0, self.input_size, device=device),
            frames=torch.zeros(batch_size, 0, self._output_size, device=device),
        )

    def forward_incremental(
        self, feats: torch.Tensor, state: BlockStreamState, is_final: bool = False
    ) -> Tuple[torch.Tensor, BlockStreamState]:
        """Encode the next chunk of features; returns the newly final output frames.

        Args:
            feats: (B, n, F) the next n input frames (n may be 0).
            state: from :meth:`init_state` or the previous call (updated in place).
            is_final: the stream ends with this chunk; the remaining blocks are encoded
                with what is there.

        Returns:
            (B, k, D) output frames ``state.n_emitted - k ... state.n_emitted - 1``,
            identical (to float rounding) to the same frames of :meth:`forward`.
        """
        if state.finished:
            raise RuntimeError("forward_incremental called after is_final=True; "
                               "start a new stream with init_state()")
        buf = torch.cat([state.feats, feats], dim=1)
        n_new = int(subsampled_lengths(torch.tensor(buf.size(1))))  # host: read by int()
        missing = state.next_block * self.hop_size + self.block_size - state.n_frames
        # Subsample only when a block can be encoded: the same frames, in fewer and larger
        # convolutions (one call per 40-ms chunk costs ~14% of streaming encoding).
        if n_new > 0 and (is_final or n_new >= missing):
            new = self._embed(buf, state.n_frames)
            state.frames = torch.cat([state.frames, new], dim=1)
            state.n_frames += n_new
            buf = buf[:, SUBSAMPLING * n_new:]
        state.feats = buf
        outputs: List[torch.Tensor] = []
        n_total_blocks = self.num_blocks_for(state.n_frames)
        while True:
            b = state.next_block
            start = b * self.hop_size
            ready = (b < n_total_blocks) if is_final else (start + self.block_size <= state.n_frames)
            if not ready:
                break
            outputs.append(self._encode_block(state, b, start, n_total_blocks if is_final else None))
            state.next_block += 1
            drop = (b + 1) * self.hop_size - state.frames_start
            state.frames = state.frames[:, drop:]
            state.frames_start += drop
        out = torch.cat(outputs, dim=1) if outputs else state.frames.new_zeros(
            state.frames.size(0), 0, self._output_size)
        state.n_emitted += out.size(1)
        state.finished = is_final
        return out, state

    def _encode_block(self, state: BlockStreamState, b: int, start: int,
                      n_total_blocks: Optional[int]) -> torch.Tensor:
        local = start - state.frames_start
        x = state.frames[:, local:local + self.block_size]
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        ctx = self._context_init(x, mask, torch.tensor([b], device=x.device))  # (B, D)
        inherited = []
        for i, layer in enumerate(self.encoders):
            inherited.append(ctx)
            ctx_prev = ctx if state.ctx is None else state.ctx[:, i]
            out = layer.forward_block(torch.cat([x, ctx.unsqueeze(1)], dim=1), ctx_prev, mask)
            x, ctx = out[:, :-1], out[:, -1]
        state.ctx = torch.stack(inherited, dim=1)
        length = state.n_frames if n_total_blocks is not None else None
        e0, e1 = self.emission_range(b, length)
        return x[:, e0 - start:e1 - start]
