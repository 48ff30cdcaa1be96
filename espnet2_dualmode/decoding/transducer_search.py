"""Time-synchronous, batched RNN-T search that can be fed encoder blocks as they come.

Search space: the standard RNN-T lattice (a symbol keeps the frame, blank advances it)
with at most S = ``max_sym_per_frame`` symbols per encoder frame. A hypothesis score is
the exact log-probability of the alignments that reached it, blanks included; alignments
of the same token prefix are summed (log-sum-exp "prefix merging") whenever they finish
the same frame.

The beam search is time-synchronous decoding (TSD; Saon et al., ICASSP 2020), with the
same expansion and pruning rules as ESPnet's ``BeamSearchTransducer(search_type="tsd",
max_sym_exp=S + 1)``. Per frame, the beam (all hypotheses at the start of the frame) is
expanded in at most S + 1 steps; at step j each running hypothesis h (j symbols emitted
in this frame) yields

* h + blank: h finishes the frame and joins the finished set F (merged by prefix);
* h + k for every symbol k (only while j < S): the ``beam_size`` best of these, over all
  running hypotheses of the utterance, run at step j + 1.

The beam for the next frame is the best ``beam_size`` of F.

Pruning (``prune=True``, the default): a symbol extension is expanded further only if
its score beats the ``beam_size``-th best score in F, or if its prefix is already in F
(then its probability adds to that hypothesis). A score only falls as a hypothesis is
extended, so what is dropped could have reached the next beam only through a longer
prefix already in F. On a confident model most frames then end after one or two steps
instead of S + 1, which makes a large S affordable (ESPnet's default search stops a frame
on a bound of the same kind). ``prune=False`` is ESPnet's TSD exactly (tested).

With ``beam_size=1`` the
search is greedy instead (as in ESPnet, where a beam of 1 means greedy search): at each
step the blank competes with the symbols, so that the arg-max output is taken; this is
:func:`greedy_search`, but usable block by block.

All hypotheses of all utterances of the batch share one joint-network call per step and
one prediction-network call per step (for the prefixes not yet in the cache). The
encoder projection of the joint network is computed per frame with a fixed (B, D) shape,
so every tensor operation is the same whatever the split of the frames into
:meth:`TransducerSearch.advance` calls: block-wise decoding is bit-identical to a single
call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy
import torch
from espnet2.asr.decoder.transducer_decoder import TransducerDecoder
from espnet2.asr_transducer.joint_network import JointNetwork

from espnet2_dualmode.decoding.hypothesis import Hypothesis

Prefix = Tuple[int, ...]
RNNState = Tuple[torch.Tensor, Optional[torch.Tensor]]


class _Hyp(NamedTuple):
    """Internal hypothesis: token prefix, log-score, emission frame of each token."""

    tokens: Prefix
    score: float
    times: Tuple[int, ...]


class _PredCache:
    """Prediction-network outputs by token prefix, stored as rows of a few tensors.

    One tensor row per prefix (instead of one small tensor each) keeps gathering and adding
    rows to single indexing operations, whatever the number of hypotheses.

    Attributes:
        index: row of each cached prefix.
        proj: decoder output projected into the joint space, ``joint.lin_dec(dec_out)``
            (N, J).
        h: RNN hidden states (L, N, H).
        c: LSTM cell states (L, N, H); None for a GRU.
    """

    def __init__(self, prefixes: List[Prefix], proj: torch.Tensor, state: RNNState) -> None:
        self.index: Dict[Prefix, int] = {p: i for i, p in enumerate(prefixes)}
        self.proj = proj
        self.h, self.c = state

    def __contains__(self, prefix: Prefix) -> bool:
        return prefix in self.index

    def rows(self, prefixes: Sequence[Prefix]) -> torch.Tensor:
        """Row numbers of ``prefixes`` (all cached), as a LongTensor."""
        return torch.tensor([self.index[p] for p in prefixes], dtype=torch.long,
                            device=self.proj.device)

    def state(self, rows: torch.Tensor) -> RNNState:
        """RNN states of the given rows, ((L, M, H), (L, M, H) or None)."""
        return self.h[:, rows], None if self.c is None else self.c[:, rows]

    def add(self, prefixes: List[Prefix], proj: torch.Tensor, state: RNNState) -> None:
        """Append rows for new prefixes."""
        start = self.proj.size(0)
        self.index.update((p, start + i) for i, p in enumerate(prefixes))
        self.proj = torch.cat([self.proj, proj])
        self.h = torch.cat([self.h, state[0]], dim=1)
        if self.c is not None:
            self.c = torch.cat([self.c, state[1]], dim=1)

    def keep(self, prefixes: Set[Prefix]) -> None:
        """Drop every row but those of ``prefixes`` (all cached)."""
        kept = sorted(prefixes, key=self.index.__getitem__)  # deterministic row order
        rows = self.rows(kept)
        self.index = {p: i for i, p in enumerate(kept)}
        self.proj = self.proj[rows]
        self.h, self.c = self.state(rows)


@dataclass
class TransducerSearchState:
    """What :class:`TransducerSearch` carries from one ``advance`` call to the next.

    Attributes:
        hyps: per utterance, the beam at the start of its next frame (best first).
        num_frames: per utterance, encoder frames consumed so far, i.e. the global index
            of its next frame.
        cache: prediction-network outputs by token prefix, shared by all utterances (the
            prediction network does not see the audio); after every frame it keeps only
            the prefixes still in some beam.
    """

    hyps: List[List[_Hyp]]
    num_frames: List[int]
    cache: _PredCache

    @property
    def batch_size(self) -> int:
        """Number of utterances (streams) decoded together."""
        return len(self.hyps)


def _check_encoder_block(
    enc_out: torch.Tensor, enc_lens: Optional[torch.Tensor], joint: JointNetwork
) -> List[int]:
    """Validate an encoder block and return its valid frames per utterance."""
    if enc_out.dim() != 3:
        raise ValueError(f"enc_out must have shape (B, T, D), got {tuple(enc_out.shape)}")
    batch, frames, dim = enc_out.shape
    if dim != joint.lin_enc.in_features:
        raise ValueError(
            f"enc_out has feature size {dim} but the joint network expects "
            f"{joint.lin_enc.in_features}"
        )
    if enc_lens is None:
        return [frames] * batch
    if tuple(enc_lens.shape) != (batch,):
        raise ValueError(f"enc_lens must have shape ({batch},), got {tuple(enc_lens.shape)}")
    lens = [int(n) for n in enc_lens.tolist()]
    for b, n in enumerate(lens):
        if not 0 <= n <= frames:
            raise ValueError(f"utterance {b}: enc_lens {n} is outside [0, {frames}]")
    return lens


def _predict(
    decoder: TransducerDecoder, joint: JointNetwork, labels: torch.Tensor, state: RNNState
) -> Tuple[torch.Tensor, RNNState]:
    """One prediction-network step for M prefixes, projected into the joint space.

    Args:
        decoder: RNN-T prediction network.
        joint: joint network (its ``lin_dec`` is applied).
        labels: last token of each prefix (M,).
        state: RNN states before that token, ((L, M, H), (L, M, H) or None).

    Returns:
        ``lin_dec(dec_out)`` (M, J) and the RNN states after the token.
    """
    embed = decoder.dropout_embed(decoder.embed(labels.unsqueeze(1)))
    dec_out, new_state = decoder.rnn_forward(embed, state)
    return joint.lin_dec(dec_out[:, 0]), new_state


def _root_prediction(
    decoder: TransducerDecoder, joint: JointNetwork, batch: int, device: torch.device
) -> Tuple[torch.Tensor, RNNState]:
    """Prediction-network output of the empty prefix (blank fed from the zero state)."""
    decoder.set_device(device)  # ESPnet allocates RNN states on decoder.device
    labels = torch.full((batch,), decoder.blank_id, dtype=torch.long, device=device)
    return _predict(decoder, joint, labels, decoder.init_state(batch))


class _JointOutput:
    """Log-probabilities of the joint network for pre-projected rows, computed on a
    transposed, contiguous copy (J, V) of ``lin_out``'s weight.

    Why: for the few rows of a search step (one beam: up to 10), the CPU GEMM that
    ``nn.Linear`` runs on the (V, J) weight is up to 2.6x slower than the same product on
    the transposed copy (320 x 3262, 10 rows, one thread: 0.59 vs 0.23 ms); from about 40
    rows the two are equal. The copy (2 ms at that size) is kept while the weight's storage
    and version counter stay the same, so a loaded checkpoint or an in-place update is
    always seen. A weight made in inference mode has no version counter: it is copied anew
    at every :meth:`refresh`.
    """

    def __init__(self, joint: JointNetwork) -> None:
        self.joint = joint
        self._key: Optional[Tuple[int, int]] = None
        self.weight_t = joint.lin_out.weight.new_empty(0)

    def refresh(self) -> "_JointOutput":
        """Make the copy current; call before each decoding call."""
        w = self.joint.lin_out.weight
        key = None if w.is_inference() else (w.data_ptr(), w._version)
        if key is None or key != self._key:
            self.weight_t = w.detach().t().contiguous()
            self._key = key
        return self

    def __call__(self, enc_proj: torch.Tensor, dec_proj: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (N, V), in the network's dtype, from encoder/decoder rows
        (N, J) already projected into the joint space: ``JointNetwork.forward(...,
        no_projection=True)`` followed by a log-softmax. Callers add the few values they
        keep to float64 scores."""
        hidden = self.joint.joint_activation(enc_proj + dec_proj)
        logits = torch.addmm(self.joint.lin_out.bias, hidden, self.weight_t)
        return torch.log_softmax(logits, dim=-1)


def _merge(into: Dict[Prefix, _Hyp], hyp: _Hyp) -> None:
    """Add ``hyp`` to ``into``, summing probabilities with a hypothesis of the same prefix.

    The merged hypothesis keeps the emission times of the more probable of the two.
    """
    old = into.get(hyp.tokens)
    if old is None:
        into[hyp.tokens] = hyp
        return
    times = hyp.times if hyp.score > old.score else old.times
    into[hyp.tokens] = _Hyp(hyp.tokens, float(numpy.logaddexp(old.score, hyp.score)), times)


class TransducerSearch:
    """Batched, time-synchronous RNN-T beam search with prefix merging (see module doc).

    Usage, offline: ``nbest = search(enc_out, enc_lens)``; streaming::

        state = search.init(batch_size)
        for block, block_lens in encoder_blocks:
            state = search.advance(state, block, block_lens)
            partial = search.partial(state)
        nbest = search.finalize(state)

    Args:
        decoder: RNN-T prediction network (ESPnet ``TransducerDecoder``); its
            ``blank_id`` is the blank.
        joint: joint network (ESPnet ``JointNetwork``) over the same vocabulary.
        beam_size: hypotheses kept per utterance (1 = greedy search).
        max_sym_per_frame: most non-blank symbols emitted in one encoder frame. The
            default is large: RNN-T heads, the streaming one most, emit bursts of symbols
            on one frame, which a small S truncates; with ``prune`` a large S costs only
            the steps a frame uses.
        score_norm: rank final (and partial) hypotheses by score / (tokens + 1), as
            ESPnet's ``BeamSearchTransducer(score_norm=True)``; pruning always uses raw
            scores.
        nbest: hypotheses returned per utterance by :meth:`finalize`.
        prune: do not expand symbol extensions that can no longer enter the next beam
            (module doc); False gives ESPnet's TSD exactly.
    """

    def __init__(
        self,
        decoder: TransducerDecoder,
        joint: JointNetwork,
        beam_size: int = 10,
        max_sym_per_frame: int = 10,
        score_norm: bool = True,
        nbest: int = 1,
        prune: bool = True,
    ) -> None:
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        if max_sym_per_frame < 1:
            raise ValueError(f"max_sym_per_frame must be >= 1, got {max_sym_per_frame}")
        if not 1 <= nbest <= beam_size:
            raise ValueError(f"nbest must be in [1, beam_size={beam_size}], got {nbest}")
        vocab = joint.lin_out.out_features
        if decoder.odim != vocab:
            raise ValueError(
                f"prediction network vocabulary {decoder.odim} != joint network output {vocab}"
            )
        self.decoder = decoder
        self.joint = joint
        self.beam_size = beam_size
        self.max_sym_per_frame = max_sym_per_frame
        self.score_norm = score_norm
        self.nbest = nbest
        self.prune = prune
        self.blank = decoder.blank_id
        self.vocab_size = vocab
        self._joint_output = _JointOutput(joint)

    @torch.no_grad()
    def init(self, batch_size: int) -> TransducerSearchState:
        """Fresh state for ``batch_size`` utterances: one empty hypothesis each."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = next(self.decoder.parameters()).device
        proj, state = _root_prediction(self.decoder, self.joint, 1, device)
        return TransducerSearchState(
            hyps=[[_Hyp((), 0.0, ())] for _ in range(batch_size)],
            num_frames=[0] * batch_size,
            cache=_PredCache([()], proj, state),
        )

    @torch.no_grad()
    def add_utterances(self, state: TransducerSearchState, count: int = 1) -> List[int]:
        """Append ``count`` fresh utterances (one empty hypothesis each) to ``state``, e.g.
        streams that open while others are decoded; returns their indices."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        if () not in state.cache:  # the empty prefix left the cache when no beam held it
            device = next(self.decoder.parameters()).device
            state.cache.add([()], *_root_prediction(self.decoder, self.joint, 1, device))
        first = state.batch_size
        state.hyps.extend([_Hyp((), 0.0, ())] for _ in range(count))
        state.num_frames.extend([0] * count)
        return list(range(first, first + count))

    def remove_utterances(self, state: TransducerSearchState, indices: Sequence[int]) -> None:
        """Drop the utterances ``indices`` from ``state`` (the others keep their order and
        move down) and the cached prefixes only they used."""
        drop = set(indices)
        unknown = sorted(i for i in drop if not 0 <= i < state.batch_size)
        if unknown:
            raise ValueError(f"utterances {unknown} are not in a search state of "
                             f"{state.batch_size}")
        keep = [i for i in range(state.batch_size) if i not in drop]
        state.hyps = [state.hyps[i] for i in keep]
        state.num_frames = [state.num_frames[i] for i in keep]
        state.cache.keep({h.tokens for hyps in state.hyps for h in hyps})

    @torch.no_grad()
    def advance(
        self,
        state: TransducerSearchState,
        enc_out: torch.Tensor,
        enc_lens: Optional[torch.Tensor] = None,
    ) -> TransducerSearchState:
        """Consume the next encoder frames of every utterance.

        Args:
            state: from :meth:`init` or a previous call; updated in place and returned.
            enc_out: next encoder block (B, T_new, D); T_new may be 0.
            enc_lens: valid frames of the block per utterance (B,), each in [0, T_new]
                (0 for a stream with nothing new); None means all T_new.

        Returns:
            ``state``.
        """
        lens = _check_encoder_block(enc_out, enc_lens, self.joint)
        if len(lens) != state.batch_size:
            raise ValueError(
                f"enc_out has {len(lens)} utterances but the search state has "
                f"{state.batch_size}"
            )
        if not any(lens):
            return state
        log_joint = self._joint_output.refresh()
        for t in range(max(lens)):
            active = [b for b, n in enumerate(lens) if t < n]
            enc_proj = self.joint.lin_enc(enc_out[:, t])  # (B, J), same shape every frame
            self._search_frame(state, enc_proj, active, log_joint)
        return state

    def partial(self, state: TransducerSearchState) -> List[Hypothesis]:
        """Best hypothesis of each utterance so far (ranked as in :meth:`finalize`)."""
        return [self._ranked(hyps)[0] for hyps in state.hyps]

    def finalize(self, state: TransducerSearchState) -> List[List[Hypothesis]]:
        """The ``nbest`` best hypotheses of each utterance, best first."""
        return [self._ranked(hyps)[: self.nbest] for hyps in state.hyps]

    def __call__(
        self, enc_out: torch.Tensor, enc_lens: Optional[torch.Tensor] = None
    ) -> List[List[Hypothesis]]:
        """Decode whole utterances (B, T, D) with lengths (B,): init, advance, finalize."""
        state = self.init(enc_out.size(0))
        return self.finalize(self.advance(state, enc_out, enc_lens))

    def _ranked(self, hyps: Sequence[_Hyp]) -> List[Hypothesis]:
        """Hypotheses as :class:`Hypothesis`, sorted by (optionally normalised) score."""
        if self.score_norm:
            order = sorted(hyps, key=lambda h: -h.score / (len(h.tokens) + 1))
        else:
            order = sorted(hyps, key=lambda h: -h.score)
        return [Hypothesis(list(h.tokens), h.score, list(h.times)) for h in order]

    def _search_frame(
        self, state: TransducerSearchState, enc_proj: torch.Tensor, active: List[int],
        log_joint: _JointOutput,
    ) -> None:
        """Advance the utterances ``active`` by one frame.

        Args:
            state: search state, updated in place.
            enc_proj: ``joint.lin_enc`` of this frame for every utterance (B, J).
            active: utterances that have this frame.
            log_joint: the joint network's log-probabilities.
        """
        frames = {b: state.num_frames[b] for b in active}
        finished: Dict[int, Dict[Prefix, _Hyp]] = {b: {} for b in active}
        running: Dict[int, List[_Hyp]] = {b: state.hyps[b] for b in active}
        for step in range(self.max_sym_per_frame + 1):
            if not running:
                break
            owner = [b for b, hyps in running.items() for _ in hyps]
            rows = [h for hyps in running.values() for h in hyps]
            rows_utt = torch.tensor(owner, device=enc_proj.device)
            dec_proj = state.cache.proj[state.cache.rows([h.tokens for h in rows])]
            logp = log_joint(enc_proj[rows_utt], dec_proj)  # (N, V)
            base = torch.tensor([h.score for h in rows], dtype=torch.float64, device=logp.device)
            ends = (base + logp[:, self.blank].double()).tolist()
            for b, h, score in zip(owner, rows, ends):
                _merge(finished[b], _Hyp(h.tokens, score, h.times))
            if step == self.max_sym_per_frame:
                break
            running = self._prune(finished, running, base, logp, frames)
            self._extend_cache(state.cache, running)
        for b in active:
            state.hyps[b] = sorted(finished[b].values(), key=lambda h: -h.score)[
                : self.beam_size
            ]
            state.num_frames[b] += 1
        state.cache.keep({h.tokens for hyps in state.hyps for h in hyps})

    def _floor(self, finished: Dict[Prefix, _Hyp]) -> float:
        """Score a symbol extension must beat to be expanded further.

        Beam search with ``prune``: the ``beam_size``-th best finished score (module doc).
        Greedy search: the finished hypothesis' score, so that the arg-max wins (a tie goes
        to blank).
        """
        if len(finished) < self.beam_size or (self.beam_size > 1 and not self.prune):
            return float("-inf")
        return sorted((h.score for h in finished.values()), reverse=True)[self.beam_size - 1]

    def _prune(
        self,
        finished: Dict[int, Dict[Prefix, _Hyp]],
        running: Dict[int, List[_Hyp]],
        base: torch.Tensor,
        logp: torch.Tensor,
        frames: Dict[int, int],
    ) -> Dict[int, List[_Hyp]]:
        """Choose, per utterance, the hypotheses that emit one more symbol in this frame.

        These are those of the ``beam_size`` best symbol extensions that beat
        :meth:`_floor` or whose prefix has finished the frame already. With
        ``beam_size=1`` (greedy) a continuing hypothesis replaces the finished one. The
        best extensions of an utterance are among the ``beam_size`` best symbols of each
        of its rows, so only those (N, beam_size) candidates are scored in float64.

        Args:
            finished: per utterance, hypotheses that finished the frame; emptied when a
                greedy search continues.
            running: per utterance, the hypotheses expanded at this step (the rows of
                ``logp``, in order).
            base: score of each running hypothesis (N,), float64.
            logp: log p(k) of each running hypothesis (N, V); overwritten.
            frames: global frame index per utterance.

        Returns:
            The continuing hypotheses (one more symbol each) of the utterances that have any.
        """
        beam = self.beam_size
        logp[:, self.blank] = float("-inf")
        width = min(beam, self.vocab_size - 1)
        row_val, row_tok = logp.topk(width, dim=1)  # (N, width) best symbols per row
        cand = base.unsqueeze(1) + row_val.double()
        utts = list(running)
        slots = [j * beam + r for j, b in enumerate(utts) for r in range(len(running[b]))]
        slots_t = torch.tensor(slots, device=cand.device)
        padded = cand.new_full((len(utts) * beam, width), float("-inf"))
        padded[slots_t] = cand
        top_val, top_idx = padded.view(len(utts), beam * width).topk(beam, dim=1)
        tokens = row_tok.new_zeros((len(utts) * beam, width))
        tokens[slots_t] = row_tok
        top_tok = tokens.view(len(utts), beam * width).gather(1, top_idx)
        new_running: Dict[int, List[_Hyp]] = {}
        lists = zip(top_val.tolist(), top_idx.tolist(), top_tok.tolist())
        for b, (values, indices, labels) in zip(utts, lists):
            t, hyps, done = frames[b], running[b], finished[b]
            floor = self._floor(done)
            continuing = []
            for v, x, k in zip(values, indices, labels):
                if v == float("-inf"):
                    break
                parent = hyps[x // width]
                prefix = parent.tokens + (k,)
                # below the floor, still worth a step if it adds to a finished prefix
                if v > floor or (beam > 1 and prefix in done):
                    continuing.append(_Hyp(prefix, v, parent.times + (t,)))
            if continuing:
                new_running[b] = continuing
                if beam == 1:
                    finished[b] = {}
        return new_running

    def _extend_cache(self, cache: _PredCache, running: Dict[int, List[_Hyp]]) -> None:
        """Run the prediction network, in one batch, on the running prefixes not cached."""
        new = (h.tokens for hyps in running.values() for h in hyps if h.tokens not in cache)
        todo = list(dict.fromkeys(new))  # unique, in a deterministic order
        if not todo:
            return
        state = cache.state(cache.rows([p[:-1] for p in todo]))
        labels = torch.tensor([p[-1] for p in todo], dtype=torch.long, device=cache.proj.device)
        proj, new_state = _predict(self.decoder, self.joint, labels, state)
        cache.add(todo, proj, new_state)


@torch.no_grad()
def greedy_search(
    decoder: TransducerDecoder,
    joint: JointNetwork,
    enc_out: torch.Tensor,
    enc_lens: Optional[torch.Tensor] = None,
    max_sym_per_frame: int = 10,
) -> List[Hypothesis]:
    """Batched greedy RNN-T decoding: per frame, take the arg-max output up to S times.

    A frame ends at the first blank; after ``max_sym_per_frame`` symbols the blank is
    forced. The score is the log-probability of the chosen alignment (blanks included),
    so it equals :class:`TransducerSearch` with ``beam_size=1`` (which can also be
    advanced block by block).

    Args:
        decoder: RNN-T prediction network.
        joint: joint network.
        enc_out: encoder output (B, T, D).
        enc_lens: valid frames per utterance (B,); None means all T.
        max_sym_per_frame: most symbols per frame.

    Returns:
        One hypothesis per utterance, with emission frames.
    """
    if max_sym_per_frame < 1:
        raise ValueError(f"max_sym_per_frame must be >= 1, got {max_sym_per_frame}")
    lens = _check_encoder_block(enc_out, enc_lens, joint)
    batch, device, blank = len(lens), enc_out.device, decoder.blank_id
    log_joint = _JointOutput(joint).refresh()
    dec_proj, (h, c) = _root_prediction(decoder, joint, batch, device)
    tokens: List[List[int]] = [[] for _ in range(batch)]
    times: List[List[int]] = [[] for _ in range(batch)]
    scores = [0.0] * batch
    for t in range(max(lens, default=0)):
        enc_proj = joint.lin_enc(enc_out[:, t])
        running = [b for b, n in enumerate(lens) if t < n]
        for step in range(max_sym_per_frame + 1):
            if not running:
                break
            idx = torch.tensor(running, device=device)
            logp = log_joint(enc_proj[idx], dec_proj[idx])
            if step < max_sym_per_frame:
                best = logp.argmax(dim=-1)
            else:
                best = torch.full_like(idx, blank)
            best_lp = logp.gather(1, best.unsqueeze(1)).squeeze(1)
            emitted, positions = [], []
            for pos, (b, k, lp) in enumerate(zip(running, best.tolist(), best_lp.tolist())):
                scores[b] += lp
                if k != blank:
                    tokens[b].append(k)
                    times[b].append(t)
                    emitted.append(b)
                    positions.append(pos)
            if emitted:
                e_idx = torch.tensor(emitted, device=device)
                labels = best[torch.tensor(positions, device=device)]
                proj, (h_e, c_e) = _predict(
                    decoder, joint, labels, (h[:, e_idx], None if c is None else c[:, e_idx])
                )
                dec_proj[e_idx] = proj
                h[:, e_idx] = h_e
                if c is not None:
                    c[:, e_idx] = c_e
            running = emitted
    return [Hypothesis(tokens[b], scores[b], times[b]) for b in range(batch)]
