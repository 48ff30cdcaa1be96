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

The beam for the next frame is the best ``beam_size`` of F. With ``beam_size=1`` the
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
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

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


@dataclass
class _PredOut:
    """Prediction-network output for one prefix.

    Attributes:
        proj: decoder output projected into the joint space, ``joint.lin_dec(dec_out)`` (J,).
        h: RNN hidden state (L, H).
        c: LSTM cell state (L, H); None for a GRU.
    """

    proj: torch.Tensor
    h: torch.Tensor
    c: Optional[torch.Tensor]


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
    cache: Dict[Prefix, _PredOut]

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


def _log_joint(
    joint: JointNetwork, enc_proj: torch.Tensor, dec_proj: torch.Tensor
) -> torch.Tensor:
    """Log-probabilities (N, V), in the network's dtype, from pre-projected encoder/decoder
    rows (N, J). Callers add the few values they keep to float64 scores."""
    logits = joint(enc_proj, dec_proj, no_projection=True)
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
        max_sym_per_frame: most non-blank symbols emitted in one encoder frame.
        score_norm: rank final (and partial) hypotheses by score / (tokens + 1), as
            ESPnet's ``BeamSearchTransducer(score_norm=True)``; pruning always uses raw
            scores.
        nbest: hypotheses returned per utterance by :meth:`finalize`.
    """

    def __init__(
        self,
        decoder: TransducerDecoder,
        joint: JointNetwork,
        beam_size: int = 10,
        max_sym_per_frame: int = 2,
        score_norm: bool = True,
        nbest: int = 1,
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
        self.blank = decoder.blank_id
        self.vocab_size = vocab

    @torch.no_grad()
    def init(self, batch_size: int) -> TransducerSearchState:
        """Fresh state for ``batch_size`` utterances: one empty hypothesis each."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = next(self.decoder.parameters()).device
        proj, (h, c) = _root_prediction(self.decoder, self.joint, 1, device)
        root = _PredOut(proj[0], h[:, 0], None if c is None else c[:, 0])
        return TransducerSearchState(
            hyps=[[_Hyp((), 0.0, ())] for _ in range(batch_size)],
            num_frames=[0] * batch_size,
            cache={(): root},
        )

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
        for t in range(max(lens, default=0)):
            active = [b for b, n in enumerate(lens) if t < n]
            enc_proj = self.joint.lin_enc(enc_out[:, t])  # (B, J), same shape every frame
            self._search_frame(state, enc_proj, active)
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
        self, state: TransducerSearchState, enc_proj: torch.Tensor, active: List[int]
    ) -> None:
        """Advance the utterances ``active`` by one frame.

        Args:
            state: search state, updated in place.
            enc_proj: ``joint.lin_enc`` of this frame for every utterance (B, J).
            active: utterances that have this frame.
        """
        frames = [state.num_frames[b] for b in active]
        finished: List[Dict[Prefix, _Hyp]] = [{} for _ in active]
        running: List[List[_Hyp]] = [state.hyps[b] for b in active]
        for step in range(self.max_sym_per_frame + 1):
            owner = [i for i, hyps in enumerate(running) for _ in hyps]
            if not owner:
                break
            rows = [h for hyps in running for h in hyps]
            rows_utt = torch.tensor([active[i] for i in owner], device=enc_proj.device)
            dec_proj = torch.stack([state.cache[h.tokens].proj for h in rows])
            logp = _log_joint(self.joint, enc_proj[rows_utt], dec_proj)  # (N, V)
            base = torch.tensor([h.score for h in rows], dtype=torch.float64, device=logp.device)
            ends = (base + logp[:, self.blank].double()).tolist()
            for i, h, score in zip(owner, rows, ends):
                _merge(finished[i], _Hyp(h.tokens, score, h.times))
            if step == self.max_sym_per_frame:
                break
            running = self._prune(finished, running, owner, base, logp, frames)
            self._extend_cache(state.cache, running)
        for i, b in enumerate(active):
            state.hyps[b] = sorted(finished[i].values(), key=lambda h: -h.score)[
                : self.beam_size
            ]
            state.num_frames[b] += 1
        alive = {h.tokens for hyps in state.hyps for h in hyps}
        state.cache = {p: out for p, out in state.cache.items() if p in alive}

    def _prune(
        self,
        finished: List[Dict[Prefix, _Hyp]],
        running: List[List[_Hyp]],
        owner: List[int],
        base: torch.Tensor,
        logp: torch.Tensor,
        frames: List[int],
    ) -> List[List[_Hyp]]:
        """Choose, per utterance, the hypotheses that emit one more symbol in this frame.

        Beam search keeps the ``beam_size`` best symbol extensions. With ``beam_size=1``
        (greedy) the finished hypothesis competes with them and the loser is dropped.
        The best extensions of an utterance are among the ``beam_size`` best symbols of
        each of its rows, so only those (N, beam_size) candidates are scored in float64.

        Args:
            finished: per active utterance, hypotheses that finished the frame; pruned
                in place when ``beam_size=1``.
            running: per active utterance, the hypotheses expanded at this step.
            owner: active-utterance index of each row of ``logp``.
            base: score of each running hypothesis (N,), float64.
            logp: log p(k) of each running hypothesis (N, V); overwritten.
            frames: global frame index per active utterance.

        Returns:
            Per active utterance, the continuing hypotheses (one more symbol each).
        """
        beam = self.beam_size
        logp[:, self.blank] = float("-inf")
        width = min(beam, self.vocab_size - 1)
        row_val, row_tok = logp.topk(width, dim=1)  # (N, width) best symbols per row
        cand = base.unsqueeze(1) + row_val.double()
        slots = [r for hyps in running for r in range(len(hyps))]
        rows = torch.tensor([i * beam + r for i, r in zip(owner, slots)], device=cand.device)
        padded = cand.new_full((len(running) * beam, width), float("-inf"))
        padded[rows] = cand
        top_val, top_idx = padded.view(len(running), beam * width).topk(beam, dim=1)
        tokens = row_tok.new_zeros((len(running) * beam, width))
        tokens[rows] = row_tok
        top_tok = tokens.view(len(running), beam * width).gather(1, top_idx)
        new_running = []
        for i, (values, indices, labels) in enumerate(
            zip(top_val.tolist(), top_idx.tolist(), top_tok.tolist())
        ):
            kept = [(v, x, k) for v, x, k in zip(values, indices, labels) if v != float("-inf")]
            if beam == 1 and finished[i]:
                (done,) = finished[i].values()
                if not kept or done.score >= kept[0][0]:  # on a tie blank wins, as arg-max
                    kept = []
                else:
                    finished[i] = {}
            continuing = []
            for score, x, label in kept:
                parent = running[i][x // width]
                continuing.append(
                    _Hyp(parent.tokens + (label,), score, parent.times + (frames[i],))
                )
            new_running.append(continuing)
        return new_running

    def _extend_cache(self, cache: Dict[Prefix, _PredOut], running: List[List[_Hyp]]) -> None:
        """Run the prediction network, in one batch, on the running prefixes not cached."""
        new = (h.tokens for hyps in running for h in hyps if h.tokens not in cache)
        todo = list(dict.fromkeys(new))  # unique, in a deterministic order
        if not todo:
            return
        parents = [cache[p[:-1]] for p in todo]
        h0 = torch.stack([p.h for p in parents], dim=1)
        c0 = None if parents[0].c is None else torch.stack([p.c for p in parents], dim=1)
        labels = torch.tensor([p[-1] for p in todo], dtype=torch.long, device=h0.device)
        proj, (h1, c1) = _predict(self.decoder, self.joint, labels, (h0, c0))
        cells = [None] * len(todo) if c1 is None else c1.unbind(1)
        for prefix, out in zip(todo, zip(proj.unbind(0), h1.unbind(1), cells)):
            cache[prefix] = _PredOut(*out)


@torch.no_grad()
def greedy_search(
    decoder: TransducerDecoder,
    joint: JointNetwork,
    enc_out: torch.Tensor,
    enc_lens: Optional[torch.Tensor] = None,
    max_sym_per_frame: int = 2,
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
            logp = _log_joint(joint, enc_proj[idx], dec_proj[idx])
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
