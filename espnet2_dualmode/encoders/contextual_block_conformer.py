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

Block geometry chosen per batch and at decoding time (not in the paper): the configured
``block_size/hop_size/look_ahead`` is the default geometry; :meth:`geometry` (a context
manager) and :meth:`select_geometry` (persistent, for a decoder) run every geometry-dependent
method at another one. With ``dynamic_block_sizes`` the model trains on a geometry drawn per
training batch (:meth:`training_geometry`): hop = round(``dynamic_hop_ratio`` x block),
look-ahead = round(``dynamic_look_ahead_ratio`` x block), from a ``random.Random`` seeded with
(seed, training iteration), so every DDP rank draws the same and a resumed run continues the
sequence. The seed is ``torch.initial_seed()`` when the encoder is built: ESPnet's
``main_worker`` calls ``set_all_random_seed(--seed)`` just before ``build_model``.

Shapes: B batch, T input frames, T' subsampled frames, F feature dim, D model dim.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from espnet2_dualmode.encoders.conformer_layer import (
    ConformerLayer,
    LayerOutputsEncoder,
    sinusoid,
    subsampled_lengths,
)
from espnet2_dualmode.encoders.subsampling import conv2d_subsampling

SUBSAMPLING = 4

logger = logging.getLogger(__name__)


class BlockGeometry(NamedTuple):
    """Block, hop and look-ahead, in subsampled frames."""

    block_size: int
    hop_size: int
    look_ahead: int

    @property
    def past(self) -> int:
        """Frames of a block before the ones it emits (its left context)."""
        return self.block_size - self.hop_size - self.look_ahead

    def __str__(self) -> str:
        return f"block {self.block_size} / hop {self.hop_size} / look-ahead {self.look_ahead}"


def check_geometry(geometry: BlockGeometry) -> BlockGeometry:
    """``geometry`` if it is valid; a ValueError naming the rule otherwise."""
    block, hop, look_ahead = geometry
    if min(block, hop) < 1 or look_ahead < 0 or block < hop + look_ahead:
        raise ValueError(
            f"block geometry needs block_size >= hop_size + look_ahead, hop_size >= 1 and "
            f"look_ahead >= 0; got block_size={block}, hop_size={hop}, look_ahead={look_ahead}"
        )
    return geometry


def ratio_geometry(block_size: int, hop_ratio: float, look_ahead_ratio: float) -> BlockGeometry:
    """The geometry of ``block_size`` with hop and look-ahead as rounded (half up) ratios."""
    return check_geometry(BlockGeometry(block_size, int(math.floor(hop_ratio * block_size + 0.5)),
                                        int(math.floor(look_ahead_ratio * block_size + 0.5))))


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
        finished: the stream has ended (its last input has been buffered).
        geometry: the encoder's geometry when the state was created.
    """

    feats: torch.Tensor
    frames: torch.Tensor
    frames_start: int = 0
    n_frames: int = 0
    next_block: int = 0
    ctx: Optional[torch.Tensor] = None
    n_emitted: int = 0
    finished: bool = field(default=False)
    geometry: Optional[BlockGeometry] = None


class ContextualBlockConformerEncoder(LayerOutputsEncoder):
    """Batch-invariant contextual-block Conformer with an incremental inference path.

    Args:
        input_size: feature dimension F.
        output_size: model dimension D.
        attention_heads, linear_units, num_blocks: Conformer size (paper: 4, 1024, 12).
        dropout_rate, positional_dropout_rate, attention_dropout_rate: dropouts.
        cnn_module_kernel: depthwise convolution kernel.
        block_size, hop_size, look_ahead: block geometry in subsampled frames
            (paper: 40, 16, 16); with dynamic blocks, the default geometry (validation
            loss, decoding without a geometry), which must be one of the dynamic set.
        dynamic_block_sizes: block sizes drawn per training batch (None: fixed geometry).
        dynamic_hop_ratio, dynamic_look_ahead_ratio: hop and look-ahead of each dynamic
            block size as a fraction of it (rounded half up).
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
        block_size: int = 40,
        hop_size: int = 16,
        look_ahead: int = 16,
        dynamic_block_sizes: Optional[Sequence[int]] = None,
        dynamic_hop_ratio: float = 0.4,
        dynamic_look_ahead_ratio: float = 0.4,
        subsampling_channels: Optional[int] = None,
    ):
        super().__init__()
        self.default_geometry = check_geometry(BlockGeometry(block_size, hop_size, look_ahead))
        self.dynamic_hop_ratio = dynamic_hop_ratio
        self.dynamic_look_ahead_ratio = dynamic_look_ahead_ratio
        self.dynamic_geometries = self._dynamic_geometries(dynamic_block_sizes)
        self.dynamic_seed = torch.initial_seed()  # ESPnet's --seed: see the module docstring
        self._geometry = self.default_geometry
        self.input_size = input_size
        self._output_size = output_size
        self.embed = conv2d_subsampling(input_size, output_size, dropout_rate, subsampling_channels)
        self.pos_dropout = nn.Dropout(positional_dropout_rate)
        self.encoders = nn.ModuleList(
            ConformerLayer(output_size, attention_heads, linear_units, cnn_module_kernel,
                           dropout_rate, attention_dropout_rate, rel_pos=False)
            for _ in range(num_blocks)
        )

    def output_size(self) -> int:
        return self._output_size

    # ----- choosing the geometry --------------------------------------------------------
    def _dynamic_geometries(self, sizes: Optional[Sequence[int]]) -> List[BlockGeometry]:
        """The dynamic set as geometries (empty for a fixed geometry), validated."""
        if sizes is None:
            return []
        sizes = list(sizes)
        if not sizes or any(not isinstance(n, int) or isinstance(n, bool) for n in sizes):
            raise ValueError(f"dynamic_block_sizes must be a non-empty list of integers, not {sizes}")
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"dynamic_block_sizes has repeated sizes: {sizes}")
        for name, ratio in (("dynamic_hop_ratio", self.dynamic_hop_ratio),
                            ("dynamic_look_ahead_ratio", self.dynamic_look_ahead_ratio)):
            if not 0 <= ratio < 1:
                raise ValueError(f"{name} must be in [0, 1), not {ratio}")
        geometries = []
        for n in sizes:
            try:
                geometries.append(ratio_geometry(n, self.dynamic_hop_ratio,
                                                 self.dynamic_look_ahead_ratio))
            except ValueError as e:
                raise ValueError(f"dynamic_block_sizes: block size {n} with dynamic_hop_ratio "
                                 f"{self.dynamic_hop_ratio} and dynamic_look_ahead_ratio "
                                 f"{self.dynamic_look_ahead_ratio}: {e}") from e
        if self.default_geometry not in geometries:
            raise ValueError(f"with dynamic_block_sizes, block_size/hop_size/look_ahead "
                             f"({self.default_geometry}) must be one of the dynamic geometries "
                             f"{[tuple(g) for g in geometries]}: it is the validation and "
                             f"default decoding geometry")
        return geometries

    @property
    def trained_geometries(self) -> List[BlockGeometry]:
        """The geometries the encoder is trained at: the dynamic set, or the fixed one."""
        return self.dynamic_geometries or [self.default_geometry]

    @property
    def current_geometry(self) -> BlockGeometry:
        """The geometry every geometry-dependent method uses now."""
        return self._geometry

    def training_geometry(self, step: int) -> BlockGeometry:
        """The geometry of training iteration ``step``: a function of (seed, step) only."""
        if not self.dynamic_geometries:
            return self.default_geometry
        rng = random.Random(f"{self.dynamic_seed}:{step}")
        return self.dynamic_geometries[rng.randrange(len(self.dynamic_geometries))]

    def resolve_geometry(self, block_size: Optional[int] = None, hop_size: Optional[int] = None,
                         look_ahead: Optional[int] = None) -> BlockGeometry:
        """A geometry from decoding options.

        Nothing given: the default (training) geometry. All three: that geometry. Only
        ``block_size``: hop and look-ahead from the dynamic ratios (dynamic models only).
        """
        given = (block_size, hop_size, look_ahead)
        if all(v is None for v in given):
            return self.default_geometry
        if None not in given:
            return check_geometry(BlockGeometry(*given))
        if hop_size is None and look_ahead is None:
            if not self.dynamic_geometries:
                raise ValueError(
                    f"block_size={block_size} alone needs a model trained with dynamic blocks "
                    f"(to derive hop and look-ahead); this one was trained at "
                    f"{self.default_geometry}: give block_size, hop_size and look_ahead")
            return ratio_geometry(block_size, self.dynamic_hop_ratio, self.dynamic_look_ahead_ratio)
        raise ValueError(f"give block_size alone or block_size, hop_size and look_ahead "
                         f"together; got block_size={block_size}, hop_size={hop_size}, "
                         f"look_ahead={look_ahead}")

    def select_geometry(self, block_size: Optional[int] = None, hop_size: Optional[int] = None,
                        look_ahead: Optional[int] = None) -> BlockGeometry:
        """Use the geometry of :meth:`resolve_geometry` from now on (decoding); a warning
        when the encoder was not trained at it."""
        geometry = self.resolve_geometry(block_size, hop_size, look_ahead)
        if geometry not in self.trained_geometries:
            if self.dynamic_geometries:
                logger.warning(f"decoding at {geometry}, outside the dynamic geometries the model "
                               f"was trained at ({[tuple(g) for g in self.dynamic_geometries]})")
            else:
                logger.warning(f"decoding at {geometry}, but the model was trained with a fixed "
                               f"{self.default_geometry}: expect a higher error rate")
        self._geometry = geometry
        return geometry

    @contextlib.contextmanager
    def geometry(self, geometry: BlockGeometry) -> Iterator[BlockGeometry]:
        """Run the encoder at ``geometry`` inside the ``with`` block (no warning)."""
        previous, self._geometry = self._geometry, check_geometry(BlockGeometry(*geometry))
        try:
            yield self._geometry
        finally:
            self._geometry = previous

    @property
    def block_size(self) -> int:
        return self._geometry.block_size

    @property
    def hop_size(self) -> int:
        return self._geometry.hop_size

    @property
    def look_ahead(self) -> int:
        return self._geometry.look_ahead

    @property
    def past(self) -> int:
        return self._geometry.past

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
        """A fresh streaming state for ``batch_size`` streams advancing in lockstep, at the
        current geometry."""
        return BlockStreamState(
            feats=torch.zeros(batch_size, 0, self.input_size, device=device),
            frames=torch.zeros(batch_size, 0, self._output_size, device=device),
            geometry=self._geometry,
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
        self.ingest(feats, state, is_final)
        if self.block_ready(state):
            return self.encode_blocks([state])[0], state
        return state.frames.new_zeros(state.frames.size(0), 0, self._output_size), state

    def ingest(self, feats: torch.Tensor, state: BlockStreamState, is_final: bool = False) -> None:
        """Buffer the next input frames of a stream (the first half of
        :meth:`forward_incremental`); its blocks are then encoded by :meth:`encode_blocks`
        while :meth:`block_ready`. ``is_final`` marks the end of the stream."""
        if state.finished:
            raise RuntimeError("forward_incremental called after is_final=True; "
                               "start a new stream with init_state()")
        self._check_state_geometry(state)
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
        state.finished = is_final

    def ready_blocks(self, state: BlockStreamState) -> int:
        """Number of the stream's next blocks that have all their frames (after the end of
        the stream: the blocks left)."""
        if state.finished:
            return max(0, self.num_blocks_for(state.n_frames) - state.next_block)
        complete = (state.n_frames - self.block_size) // self.hop_size + 1
        return max(0, complete - state.next_block)

    def block_ready(self, state: BlockStreamState) -> bool:
        """Whether the stream's next block can be encoded."""
        return self.ready_blocks(state) > 0

    def _check_state_geometry(self, state: BlockStreamState) -> None:
        if state.geometry != self._geometry:
            raise RuntimeError(f"a stream state created at {state.geometry} cannot continue at "
                               f"{self._geometry}; start a new stream with init_state()")

    def encode_blocks(self, states: Sequence[BlockStreamState]) -> List[torch.Tensor]:
        """Encode every ready block of every stream in ONE batched layer stack.

        Each (stream, block) is a row group: blocks are right-padded to the longest and
        masked (as in :meth:`forward`), each gets its own block position in its context
        embedding. As in :meth:`forward`, blocks only depend on each other across layers:
        at layer l a stream's first block here inherits the context its previous block
        left in the state (block 0 its own), a later one the context of the block before
        it in this call at layer l's input. Every state must be at the current geometry and
        have a ready block (:meth:`ready_blocks`); each is advanced in place.

        Returns:
            Per state, its (B_i, k_i, D) newly final output frames.
        """
        counts = []
        for i, state in enumerate(states):
            self._check_state_geometry(state)
            counts.append(self.ready_blocks(state))
            if not counts[-1]:
                raise ValueError(f"stream {i} has no complete block to encode "
                                 f"(block {state.next_block}, {state.n_frames} frames)")
        groups = [(state, b) for state, n in zip(states, counts)
                  for b in range(state.next_block, state.next_block + n)]
        pieces = [state.frames[:, b * self.hop_size - state.frames_start:][:, :self.block_size]
                  for state, b in groups]
        width = max(p.size(1) for p in pieces)
        x = torch.cat([nn.functional.pad(p, (0, 0, 0, width - p.size(1))) for p in pieces])
        device = x.device
        first_row = list(itertools.accumulate((p.size(0) for p in pieces), initial=0))

        def per_row(values: Sequence[int]) -> torch.Tensor:  # one value per group -> (N,)
            return torch.tensor([v for v, p in zip(values, pieces) for _ in range(p.size(0))],
                                device=device)

        mask = torch.arange(width, device=device) < per_row([p.size(1) for p in pieces]).unsqueeze(1)
        ctx = self._context_init(x, mask, per_row([b for _, b in groups]))
        # where each row's inherited context comes from: the block before it in this call
        # (chained), else the state (its ctx, or its own at block 0)
        chained = [g > 0 and groups[g - 1][0] is state for g, (state, _) in enumerate(groups)]
        source = torch.tensor([r - p.size(0) if c else r
                               for g, (p, c) in enumerate(zip(pieces, chained))
                               for r in range(first_row[g], first_row[g + 1])], device=device)
        from_call = per_row(chained).bool().unsqueeze(1)  # (N, 1)
        own = per_row([state.ctx is None for state, _ in groups]).bool().unsqueeze(1)
        prev = torch.cat([ctx.new_zeros(p.size(0), len(self.encoders), ctx.size(-1))
                          if c or state.ctx is None else state.ctx
                          for (state, _), p, c in zip(groups, pieces, chained)])  # (N, L, D)
        inherited = []
        for i, layer in enumerate(self.encoders):
            inherited.append(ctx)
            ctx_prev = torch.where(from_call, ctx[source], torch.where(own, ctx, prev[:, i]))
            out = layer.forward_block(torch.cat([x, ctx.unsqueeze(1)], dim=1), ctx_prev, mask)
            x, ctx = out[:, :-1], out[:, -1]
        new_ctx = torch.stack(inherited, dim=1)
        emitted: Dict[int, List[torch.Tensor]] = {}
        for g, (state, b) in enumerate(groups):
            rows = slice(first_row[g], first_row[g + 1])
            start = b * self.hop_size
            e0, e1 = self.emission_range(b, state.n_frames if state.finished else None)
            emitted.setdefault(id(state), []).append(x[rows, e0 - start:e1 - start])
            state.ctx = new_ctx[rows]
            state.next_block = b + 1
            drop = (b + 1) * self.hop_size - state.frames_start
            state.frames = state.frames[:, drop:]
            state.frames_start += drop
            state.n_emitted += e1 - e0
        return [torch.cat(emitted[id(state)], dim=1) for state in states]
