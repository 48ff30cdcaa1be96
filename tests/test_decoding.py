"""Tests of the searches in espnet2_dualmode.decoding, on tiny random models.

References are independent of the code under test: per-utterance greedy loops that
recompute the prediction network from scratch, exhaustive enumeration of RNN-T
alignments and of CTC label sequences, ESPnet's own ``BeamSearchTransducer`` (TSD),
ESPnet's incremental attention scoring and CTC loss, torchaudio's RNN-T loss, and
plain forward recursions written out with Python loops.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from typing import Dict, List, Sequence, Tuple

import pytest
import torch
import torch.nn.functional as F
import torchaudio.functional
from espnet2.asr.ctc import CTC
from espnet2.asr.decoder.mlm_decoder import MLMDecoder
from espnet2.asr.decoder.transducer_decoder import TransducerDecoder
from espnet2.asr.decoder.transformer_decoder import TransformerDecoder
from espnet2.asr.transducer.beam_search_transducer import BeamSearchTransducer
from espnet2.asr_transducer.joint_network import JointNetwork

from espnet2_dualmode.decoding import (
    AttentionBeamSearch,
    MaskCTCSearch,
    TransducerSearch,
    attention_greedy,
    attention_sequence_scores,
    ctc_greedy,
    ctc_prefix_beam_search,
    ctc_sequence_scores,
    greedy_search,
    mlm_sequence_scores,
    rescore,
    transducer_sequence_scores,
)
from espnet2_dualmode.decoding import transducer_search

SCORE_TOL = 1e-4  # float32 network outputs, float64 accumulation


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads; on a loaded machine they stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rnnt(vocab: int, dim: int, seed: int, rnn_type: str = "lstm", blank_bias: float = 1.0):
    """Tiny random prediction + joint networks (eval mode); blank made more likely."""
    torch.manual_seed(seed)
    decoder = TransducerDecoder(vocab, rnn_type=rnn_type, hidden_size=12).eval()
    joint = JointNetwork(vocab, dim, 12, joint_space_size=16).eval()
    with torch.no_grad():
        joint.lin_out.bias[decoder.blank_id] += blank_bias
    return decoder, joint


class _LatticeLogProbs:
    """log p(k | frame t, prefix) from the full (non-incremental) network forward."""

    def __init__(self, decoder: TransducerDecoder, joint: JointNetwork, enc: torch.Tensor):
        self.decoder, self.joint, self.enc = decoder, joint, enc
        self.memo: Dict[Tuple[int, ...], torch.Tensor] = {}

    def __call__(self, t: int, prefix: Tuple[int, ...]) -> List[float]:
        if prefix not in self.memo:
            with torch.no_grad():
                dec = self.decoder(torch.tensor([[self.decoder.blank_id, *prefix]]))[0, -1]
                logits = self.joint(self.enc, dec.unsqueeze(0))  # (T, V)
            self.memo[prefix] = torch.log_softmax(logits.double(), dim=-1)
        return self.memo[prefix][t].tolist()


def _reference_greedy(decoder, joint, enc: torch.Tensor, max_sym: int):
    """Greedy RNN-T, one utterance: arg-max per step, blank forced after max_sym symbols."""
    lattice = _LatticeLogProbs(decoder, joint, enc)
    blank = decoder.blank_id
    tokens: List[int] = []
    times: List[int] = []
    score = 0.0
    for t in range(enc.size(0)):
        for step in range(max_sym + 1):
            logp = lattice(t, tuple(tokens))
            k = max(range(len(logp)), key=lambda v: logp[v]) if step < max_sym else blank
            score += logp[k]
            if k == blank:
                break
            tokens.append(k)
            times.append(t)
    return tokens, score, times


def _brute_force_alignments(decoder, joint, enc: torch.Tensor, max_sym: int):
    """log P(y) summed over every alignment with <= max_sym symbols per frame, per y."""
    lattice = _LatticeLogProbs(decoder, joint, enc)
    blank, vocab = decoder.blank_id, decoder.odim
    symbols = [k for k in range(vocab) if k != blank]
    per_frame = [c for j in range(max_sym + 1) for c in itertools.product(symbols, repeat=j)]
    totals: Dict[Tuple[int, ...], float] = {}
    for alignment in itertools.product(per_frame, repeat=enc.size(0)):
        prefix: Tuple[int, ...] = ()
        score = 0.0
        for t, emitted in enumerate(alignment):
            for k in emitted:
                score += lattice(t, prefix)[k]
                prefix += (k,)
            score += lattice(t, prefix)[blank]
        old = totals.get(prefix, float("-inf"))
        totals[prefix] = max(old, score) + math.log1p(math.exp(-abs(old - score)))
    return totals


# ------------------------------------------------------------------------ RNN-T search


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
@pytest.mark.parametrize("max_sym", [1, 3])
def test_transducer_beam1_and_greedy_equal_reference_greedy(rnn_type, max_sym):
    decoder, joint = _rnnt(vocab=11, dim=6, seed=1, rnn_type=rnn_type)
    enc = 2.0 * torch.randn(3, 14, 6)
    lens = torch.tensor([14, 9, 4])
    batched = greedy_search(decoder, joint, enc, lens, max_sym_per_frame=max_sym)
    beam1 = TransducerSearch(decoder, joint, beam_size=1, max_sym_per_frame=max_sym)(enc, lens)
    emitted = 0
    for b in range(3):
        tokens, score, times = _reference_greedy(decoder, joint, enc[b, : lens[b]], max_sym)
        emitted += len(tokens)
        for hyp in (batched[b], beam1[b][0]):
            assert hyp.tokens == tokens
            assert hyp.timestamps == times
            assert hyp.score == pytest.approx(score, abs=SCORE_TOL)
    assert emitted > 0


@pytest.mark.parametrize(
    "vocab, frames, max_sym", [(4, 4, 1), (3, 3, 2)], ids=["1sym", "2sym"]
)
def test_transducer_beam_search_equals_exhaustive_alignment_sum(vocab, frames, max_sym):
    """Without pruning, every final hypothesis carries the exact restricted log P(y)."""
    decoder, joint = _rnnt(vocab=vocab, dim=5, seed=2, blank_bias=0.0)
    enc = 2.0 * torch.randn(1, frames, 5)
    exact = _brute_force_alignments(decoder, joint, enc[0], max_sym)
    search = TransducerSearch(
        decoder, joint, beam_size=400, max_sym_per_frame=max_sym, score_norm=False, nbest=400,
        prune=False,
    )
    (hyps,) = search(enc)
    assert len(hyps) == len(exact)
    for hyp in hyps:
        assert hyp.score == pytest.approx(exact[tuple(hyp.tokens)], abs=SCORE_TOL)
    best = max(exact, key=exact.get)
    assert hyps[0].tokens == list(best)
    # sequences no longer than max_sym lose no alignment to the limit: full RNN-T sum
    short = [h for h in hyps if 0 < len(h.tokens) <= max_sym]
    assert short
    for hyp in short:
        with torch.no_grad():
            dec = decoder(torch.tensor([[decoder.blank_id] + hyp.tokens]))
            logits = joint(enc.unsqueeze(2), dec.unsqueeze(1))
        nll = torchaudio.functional.rnnt_loss(
            logits,
            torch.tensor([hyp.tokens], dtype=torch.int32),
            torch.tensor([frames], dtype=torch.int32),
            torch.tensor([len(hyp.tokens)], dtype=torch.int32),
            blank=decoder.blank_id,
            reduction="none",
        )
        assert hyp.score == pytest.approx(-float(nll[0]), abs=SCORE_TOL)


def test_transducer_beam_search_equals_espnet_tsd():
    decoder, joint = _rnnt(vocab=10, dim=6, seed=3)
    enc = 2.0 * torch.randn(2, 12, 6)
    ours = TransducerSearch(
        decoder, joint, beam_size=3, max_sym_per_frame=2, score_norm=False, nbest=3, prune=False
    )(enc)
    espnet = BeamSearchTransducer(
        decoder, joint, beam_size=3, search_type="tsd", max_sym_exp=3, score_norm=False, nbest=3
    )
    for b in range(2):
        with torch.no_grad():
            ref = espnet(enc[b])
        assert [h.tokens for h in ours[b]] == [list(h.yseq[1:]) for h in ref]
        for mine, theirs in zip(ours[b], ref):
            assert mine.score == pytest.approx(float(theirs.score), abs=SCORE_TOL)


@pytest.mark.parametrize("rows", [1, 10, 50])
def test_joint_output_equals_espnet_joint_network(rows):
    """The search's joint output (a transposed copy of lin_out's weight) is ESPnet's
    JointNetwork forward + log-softmax, within float32 rounding."""
    torch.manual_seed(rows)
    joint = JointNetwork(300, 16, 16, joint_space_size=24)
    enc_proj, dec_proj = torch.randn(rows, 24), torch.randn(rows, 24)
    with torch.no_grad():
        want = torch.log_softmax(joint(enc_proj, dec_proj, no_projection=True), dim=-1)
        got = transducer_search._JointOutput(joint).refresh()(enc_proj, dec_proj)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_joint_output_under_autocast_is_espnets(dtype, tol):
    """Under autocast (the training validation's greedy search with --use_amp) the joint
    output runs in the low dtype as ESPnet's JointNetwork does, to within that dtype's
    rounding."""
    torch.manual_seed(7)
    joint = JointNetwork(300, 16, 16, joint_space_size=24)
    enc_proj, dec_proj = torch.randn(10, 24), torch.randn(10, 24)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        want = torch.log_softmax(joint(enc_proj, dec_proj, no_projection=True), dim=-1)
        got = transducer_search._JointOutput(joint).refresh()(enc_proj, dec_proj)
    assert got.dtype == want.dtype == dtype
    torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=tol)


@pytest.mark.parametrize("inference_mode", [False, True])
def test_transducer_search_follows_weights_changed_after_it_is_built(inference_mode):
    """A search built before a checkpoint is loaded (or weights are edited in place)
    decodes with the new weights: the same as a search built afterwards. Also for a
    model made in inference mode, whose weights have no version counter."""
    mode = torch.inference_mode if inference_mode else torch.no_grad
    with mode():
        decoder, joint = _rnnt(vocab=10, dim=6, seed=5)
        enc = 2.0 * torch.randn(2, 12, 6)
        early = TransducerSearch(decoder, joint, beam_size=3)
        before = early(enc)
        trained = copy.deepcopy(joint)
        trained.lin_out.weight.mul_(-3.0)
        trained.lin_out.bias[decoder.blank_id] -= 2.0
        for update in (lambda: joint.load_state_dict(trained.state_dict()),
                       lambda: joint.lin_out.weight.add_(0.5)):
            update()
            want = TransducerSearch(decoder, joint, beam_size=3)(enc)
            got = early(enc)
            assert [h.tokens for h in got[0]] == [h.tokens for h in want[0]]
            assert [h.score for h in got[1]] == [h.score for h in want[1]]
    assert joint.lin_out.weight.is_inference() == inference_mode
    assert [h.tokens for b in got for h in b] != [h.tokens for b in before for h in b]


@pytest.mark.parametrize("seed", range(4))
def test_transducer_pruning_keeps_the_best_and_does_less_work(seed, monkeypatch):
    """Pruned vs exact TSD (the ESPnet-equal search) on peaked random models: the same
    1-best, its score within 0.02 (only merged probability can be lost), fewer joint rows."""
    decoder, joint = _rnnt(vocab=12, dim=6, seed=seed, blank_bias=2.0)
    with torch.no_grad():
        joint.lin_out.weight.mul_(8.0)
    enc = 3.0 * torch.randn(4, 20, 6)
    lens = torch.tensor([20, 17, 11, 6])
    rows = []
    joint_rows = transducer_search._JointOutput.__call__

    def counted(self, enc_proj, dec_proj):
        rows.append(enc_proj.size(0))
        return joint_rows(self, enc_proj, dec_proj)

    monkeypatch.setattr(transducer_search._JointOutput, "__call__", counted)
    results = {}
    for prune in (False, True):
        rows.clear()
        search = TransducerSearch(decoder, joint, beam_size=4, max_sym_per_frame=3, prune=prune)
        results[prune] = (search(enc, lens), sum(rows))
    (exact, exact_rows), (pruned, pruned_rows) = results[False], results[True]
    assert sum(len(nbest[0].tokens) for nbest in exact) >= 8
    for mine, ref in zip(pruned, exact):
        assert mine[0].tokens == ref[0].tokens
        assert mine[0].score == pytest.approx(ref[0].score, abs=0.02)
    assert pruned_rows < exact_rows


def _random_blocks(total: int, rng: random.Random) -> List[Tuple[int, int]]:
    cuts = sorted(rng.sample(range(total + 1), 4))
    bounds = [0] + cuts + [total]
    return list(zip(bounds[:-1], bounds[1:]))  # may contain empty blocks


def test_transducer_block_wise_equals_one_call_exactly():
    decoder, joint = _rnnt(vocab=12, dim=6, seed=4)
    enc = 2.0 * torch.randn(3, 20, 6)
    lens = torch.tensor([20, 13, 7])
    search = TransducerSearch(decoder, joint, beam_size=4, max_sym_per_frame=2, nbest=4)
    whole = search(enc, lens)
    rng = random.Random(0)
    for _ in range(4):
        state = search.init(3)
        for start, end in _random_blocks(20, rng):
            block_lens = (lens - start).clamp(0, end - start)
            search.advance(state, enc[:, start:end], block_lens)
            assert state.num_frames == torch.minimum(lens, torch.tensor(end)).tolist()
            for b, hyp in enumerate(search.partial(state)):
                assert all(t < state.num_frames[b] for t in hyp.timestamps)
        assert search.finalize(state) == whole  # tokens, times and float scores identical
        assert search.partial(state) == [nbest[0] for nbest in whole]


def test_transducer_batched_equals_one_utterance_at_a_time():
    decoder, joint = _rnnt(vocab=12, dim=6, seed=5)
    enc = 2.0 * torch.randn(3, 15, 6)
    lens = torch.tensor([15, 11, 6])
    search = TransducerSearch(decoder, joint, beam_size=5, max_sym_per_frame=2, nbest=2)
    batched = search(enc, lens)
    for b in range(3):
        (alone,) = search(enc[b : b + 1, : lens[b]])
        assert [h.tokens for h in alone] == [h.tokens for h in batched[b]]
        assert [h.timestamps for h in alone] == [h.timestamps for h in batched[b]]
        for x, y in zip(alone, batched[b]):
            assert x.score == pytest.approx(y.score, abs=SCORE_TOL)


def test_transducer_rejects_bad_input():
    decoder, joint = _rnnt(vocab=8, dim=6, seed=6)
    search = TransducerSearch(decoder, joint, beam_size=2)
    state = search.init(2)
    with pytest.raises(ValueError, match="shape"):
        search.advance(state, torch.randn(2, 6))
    with pytest.raises(ValueError, match="feature size"):
        search.advance(state, torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="outside"):
        search.advance(state, torch.randn(2, 3, 6), torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="utterances"):
        search.advance(state, torch.randn(3, 3, 6))
    with pytest.raises(ValueError, match="nbest"):
        TransducerSearch(decoder, joint, beam_size=2, nbest=3)


# -------------------------------------------------------------------------------- CTC


def _collapse(path: Sequence[int], blank: int = 0) -> List[int]:
    return [k for k, _ in itertools.groupby(path) if k != blank]


def _exact_ctc_log_prob(log_probs: torch.Tensor, label: Sequence[int]) -> float:
    """log P(label | x) from torch's CTC loss on one (T, V) input."""
    nll = F.ctc_loss(
        log_probs.double().unsqueeze(1),
        torch.tensor([list(label) or [1]]),
        torch.tensor([log_probs.size(0)]),
        torch.tensor([len(label)]),
        reduction="none",
        zero_infinity=False,
    )
    return -float(nll[0])


def test_ctc_prefix_beam_search_equals_brute_force():
    torch.manual_seed(7)
    frames, vocab = 5, 3
    log_probs = torch.log_softmax(1.5 * torch.randn(frames, vocab), dim=-1)
    labels = [y for n in range(frames + 1) for y in itertools.product(range(1, vocab), repeat=n)]
    exact = {y: _exact_ctc_log_prob(log_probs, y) for y in labels}
    possible = {y: s for y, s in exact.items() if s > float("-inf")}
    hyps = ctc_prefix_beam_search(log_probs, beam_size=100, nbest=100)
    assert {tuple(h.tokens) for h in hyps} == set(possible)
    for hyp in hyps:
        assert hyp.score == pytest.approx(possible[tuple(hyp.tokens)], abs=1e-9)
    assert tuple(hyps[0].tokens) == max(possible, key=possible.get)


def test_ctc_beam1_equals_greedy():
    gen = torch.Generator().manual_seed(8)
    batch, frames, vocab = 12, 30, 6
    best = torch.randint(0, vocab, (batch, frames), generator=gen)
    best[:, 1::3] = best[:, 0::3][:, : best[:, 1::3].size(1)]  # plenty of repeats
    logits = torch.randn(batch, frames, vocab, generator=gen)
    logits.scatter_(2, best.unsqueeze(2), 2.0)
    log_probs = torch.log_softmax(logits, dim=-1)
    lens = torch.tensor([frames] * (batch - 2) + [17, 0])
    greedy = ctc_greedy(log_probs, lens)
    for b in range(batch):
        n = int(lens[b])
        path = log_probs[b, :n].argmax(-1).tolist()
        assert greedy[b].tokens == _collapse(path)
        assert greedy[b].timestamps == [t for t, k in enumerate(path)
                                        if k != 0 and (t == 0 or path[t - 1] != k)]
        path_score = float(log_probs[b, :n].max(-1).values.double().sum())
        assert greedy[b].score == pytest.approx(path_score, abs=1e-9)
        (beam1,) = ctc_prefix_beam_search(log_probs[b, :n], beam_size=1)
        assert beam1.tokens == greedy[b].tokens
        assert beam1.score == pytest.approx(greedy[b].score, abs=1e-9)


def test_ctc_wider_beam_finds_more_probable_prefix_than_best_path():
    """Hand-worked: best path (a, b) -> 'ab' with P = .51 * .4 = .204, but
    P('a') = .51 * .3 + .51 * .3 + .49 * .3 = .453; a full beam (3 = V) finds 'a'."""
    log_probs = torch.tensor([[0.49, 0.51, 0.0], [0.3, 0.3, 0.4]]).clamp_min(1e-12).log()
    assert ctc_prefix_beam_search(log_probs, beam_size=1)[0].tokens == [1, 2]
    best = ctc_prefix_beam_search(log_probs, beam_size=3)[0]
    assert best.tokens == [1]
    assert best.score == pytest.approx(math.log(0.453), abs=1e-6)


# -------------------------------------------------------------------------- attention


def _attention_model(vocab: int, dim: int, seed: int):
    torch.manual_seed(seed)
    decoder = TransformerDecoder(
        vocab, dim, attention_heads=2, linear_units=16, num_blocks=1
    ).eval()
    with torch.no_grad():
        decoder.output_layer.bias[vocab - 1] += 1.5  # end sentences early
    ctc = CTC(vocab, dim).eval()
    return decoder, ctc


def _attention_reference_greedy(decoder: TransformerDecoder, enc: torch.Tensor, eos: int
                                ) -> Tuple[List[int], float]:
    """Greedy decoding of one unpadded utterance (T, D), the whole prefix recomputed per
    token: at most T tokens (ESPnet's limit), the score summed in float64."""
    n = enc.size(0)
    ys, score = [eos], 0.0
    for _ in range(n):
        with torch.no_grad():
            logits, _ = decoder(enc[None], torch.tensor([n]), torch.tensor([ys]),
                                torch.tensor([len(ys)]))
        logp = torch.log_softmax(logits[0, -1].double(), dim=-1)
        k = int(logp.argmax())
        score += float(logp[k])
        ys.append(k)
        if k == eos:
            break
    return (ys[1:-1] if ys[-1] == eos else ys[1:]), score


def test_attention_beam1_without_ctc_equals_greedy_decoding():
    vocab, dim = 12, 8
    decoder, ctc = _attention_model(vocab, dim, seed=9)
    eos = vocab - 1
    enc = torch.randn(2, 10, dim)
    lens = torch.tensor([10, 7])
    search = AttentionBeamSearch(decoder, ctc, vocab, eos, eos, beam_size=1, ctc_weight=0.0)
    results = search(enc, lens)
    for b in range(2):
        tokens, score = _attention_reference_greedy(decoder, enc[b, : int(lens[b])], eos)
        assert results[b][0].tokens == tokens
        assert results[b][0].score == pytest.approx(score, abs=SCORE_TOL)


def test_batched_attention_greedy_equals_one_utterance_at_a_time():
    """The validation's batched greedy search against the per-utterance reference and
    ESPnet's beam search of width 1: padded frames must not leak into any utterance."""
    vocab, dim = 12, 8
    decoder, ctc = _attention_model(vocab, dim, seed=21)
    eos = vocab - 1
    torch.manual_seed(22)
    enc = torch.randn(6, 9, dim) * 3
    lens = torch.tensor([9, 1, 4, 9, 6, 2])
    results = attention_greedy(decoder, enc, lens, eos, eos)
    beam1 = AttentionBeamSearch(decoder, ctc, vocab, eos, eos, beam_size=1, ctc_weight=0.0)(enc, lens)
    ended_by_eos = 0
    for b, n in enumerate(lens.tolist()):
        tokens, score = _attention_reference_greedy(decoder, enc[b, :n], eos)
        ended_by_eos += len(tokens) < n
        assert results[b].tokens == tokens == beam1[b][0].tokens, b
        assert results[b].score == pytest.approx(score, abs=SCORE_TOL)
    assert 0 < ended_by_eos < len(lens)  # both stopping rules are exercised


def test_attention_ctc_joint_score_is_weighted_sequence_log_likelihood():
    vocab, dim, weight = 12, 8, 0.3
    decoder, ctc = _attention_model(vocab, dim, seed=10)
    eos = vocab - 1
    enc = torch.randn(1, 12, dim)
    search = AttentionBeamSearch(
        decoder, ctc, vocab, eos, eos, beam_size=4, ctc_weight=weight, nbest=3
    )
    (nbest,) = search(enc)
    assert 1 <= len(nbest) <= 3
    assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)
    cands = [h.tokens for h in nbest]
    for tokens in cands:
        assert len(tokens) < 12 and all(0 <= k < eos for k in tokens)
    att = attention_sequence_scores(decoder, enc[0], cands, eos, eos)
    ctc_ll = ctc_sequence_scores(ctc, enc[0], cands)
    for n, hyp in enumerate(nbest):
        expected = (1 - weight) * float(att[n]) + weight * float(ctc_ll[n])
        assert hyp.score == pytest.approx(expected, abs=1e-3)


# ---------------------------------------------------------------------------- Mask-CTC


def _identity_ctc(vocab: int) -> CTC:
    """CTC whose log-posteriors are log_softmax(enc_out): enc_out are the logits."""
    ctc = CTC(vocab, vocab).eval()
    with torch.no_grad():
        ctc.ctc_lo.weight.copy_(torch.eye(vocab))
        ctc.ctc_lo.bias.zero_()
    return ctc


class _ScriptedMLM(torch.nn.Module):
    """Test double with MLMDecoder's call signature: position i always predicts
    ``targets[i]`` with logit ``strength[i]`` (others 0, ``<mask>`` 100) and records
    every input it is given."""

    def __init__(self, vocab: int, targets: List[int], strength: List[float]):
        super().__init__()
        self.calls: List[List[int]] = []
        logits = torch.zeros(len(targets), vocab + 1)
        for i, (k, s) in enumerate(zip(targets, strength)):
            logits[i, k] = s
        logits[:, vocab] = 100.0  # <mask> must never be predicted
        self.logits = logits

    def forward(self, hs_pad, hlens, ys_in_pad, ys_in_lens):
        self.calls.append(ys_in_pad[0, : int(ys_in_lens[0])].tolist())
        return self.logits.unsqueeze(0).expand(ys_in_pad.size(0), -1, -1), ys_in_lens


@pytest.mark.parametrize(
    "n_iterations, expected_calls",
    [
        # 5 masks, K=2: one pass filling 5 // 2 = 2 (positions 1, 3), then the rest
        (2, [[10, 10, 10, 10, 10], [10, 5, 10, 7, 10]]),
        # K=3: passes fill 5 // 3 = 1 each (1, then 3), the last pass the rest
        (3, [[10, 10, 10, 10, 10], [10, 5, 10, 10, 10], [10, 5, 10, 7, 10]]),
        # K=10 > 5 masks: 5 passes, one position each by confidence: 1, 3, 4, 2, then 0
        (
            10,
            [
                [10, 10, 10, 10, 10],
                [10, 5, 10, 10, 10],
                [10, 5, 10, 7, 10],
                [10, 5, 10, 7, 8],
                [10, 5, 6, 7, 8],
            ],
        ),
    ],
)
def test_mask_ctc_fill_order_hand_worked(n_iterations, expected_calls):
    vocab, mask = 10, 10
    path = [3, 3, 0, 4, 5, 5, 0, 6, 7]  # greedy CTC -> tokens 3 4 5 6 7 at frames 0 3 4 7 8
    enc = torch.zeros(1, len(path), vocab)
    for t, k in enumerate(path):
        enc[0, t, k] = 2.0  # posterior e^2 / (e^2 + 9) = 0.45 < threshold: all masked
    mlm = _ScriptedMLM(vocab, targets=[4, 5, 6, 7, 8], strength=[1.0, 4.0, 2.0, 3.5, 2.5])
    search = MaskCTCSearch(_identity_ctc(vocab), mlm, n_iterations=n_iterations, threshold=0.99)
    (hyp,) = search(enc)
    assert mlm.calls == expected_calls
    assert mask not in hyp.tokens
    assert hyp.tokens == [4, 5, 6, 7, 8]
    assert hyp.timestamps == [0, 3, 4, 7, 8]


def _mlm_model(vocab: int, dim: int, seed: int):
    torch.manual_seed(seed)
    mlm = MLMDecoder(vocab, dim, attention_heads=2, linear_units=16, num_blocks=1).eval()
    ctc = CTC(vocab, dim).eval()
    return mlm, ctc


def test_mask_ctc_threshold0_is_ctc_greedy_and_batching_is_transparent():
    vocab, dim = 10, 8
    mlm, ctc = _mlm_model(vocab, dim, seed=11)
    enc = 3.0 * torch.randn(3, 16, dim)
    lens = torch.tensor([16, 12, 5])
    greedy = ctc_greedy(ctc.log_softmax(enc), lens)
    plain = MaskCTCSearch(ctc, mlm, threshold=0.0)(enc, lens)
    assert [h.tokens for h in plain] == [h.tokens for h in greedy]
    assert any(h.tokens for h in plain)

    search = MaskCTCSearch(ctc, mlm, n_iterations=3, threshold=0.9)
    batched = search(enc, lens)
    assert [len(h.tokens) for h in batched] == [len(h.tokens) for h in greedy]
    assert [h.tokens for h in batched] != [h.tokens for h in greedy]  # the MLM changed some
    for b in range(3):
        (alone,) = search(enc[b : b + 1, : lens[b]])
        assert alone.tokens == batched[b].tokens
        assert all(0 <= k < vocab for k in alone.tokens)


def test_mask_ctc_mlm_pass_over_a_subset_of_shorter_utterances():
    """Only short utterances left to fill: the subset's encoder padding is cut to its
    longest utterance (ESPnet's MLM decoder masks max(lens) frames)."""
    vocab, dim = 10, 8
    mlm, ctc = _mlm_model(vocab, dim, seed=3)
    enc = torch.randn(3, 16, dim)
    lens = torch.tensor([16, 12, 5])
    search = MaskCTCSearch(ctc, mlm, n_iterations=2, threshold=0.9)
    tokens = [[1, 2, 3], [4, search.mask_token], [search.mask_token, 5]]
    subset = search._mlm_log_probs(enc, lens, tokens, [1, 2])
    for row, b in enumerate((1, 2)):
        alone = search._mlm_log_probs(enc[b : b + 1, : lens[b]], lens[b : b + 1], [tokens[b]], [0])
        n = len(tokens[b])
        assert torch.allclose(subset[row, :n], alone[0, :n], atol=1e-5)


# --------------------------------------------------------------------------- rescoring


def _loop_ctc_log_prob(log_probs: torch.Tensor, label: Sequence[int], blank: int = 0) -> float:
    """CTC forward (alpha) recursion over the blank-extended label, in Python floats."""
    ext = [blank]
    for k in label:
        ext += [k, blank]
    lp = log_probs.double().tolist()

    def lae(a: float, b: float) -> float:
        if a == float("-inf"):
            return b
        if b == float("-inf"):
            return a
        return max(a, b) + math.log1p(math.exp(-abs(a - b)))

    alpha = [float("-inf")] * len(ext)
    alpha[0] = lp[0][ext[0]]
    if len(ext) > 1:
        alpha[1] = lp[0][ext[1]]
    for t in range(1, len(lp)):
        new = [float("-inf")] * len(ext)
        for s, k in enumerate(ext):
            acc = alpha[s]
            if s >= 1:
                acc = lae(acc, alpha[s - 1])
            if s >= 2 and k != blank and ext[s - 2] != k:
                acc = lae(acc, alpha[s - 2])
            new[s] = acc + lp[t][k] if acc != float("-inf") else acc
        alpha = new
    return lae(alpha[-1], alpha[-2]) if len(ext) > 1 else alpha[-1]


def _loop_rnnt_log_prob(decoder, joint, enc: torch.Tensor, label: List[int]) -> float:
    """RNN-T forward (alpha) recursion over the (T, U + 1) lattice, in Python floats."""
    lattice = _LatticeLogProbs(decoder, joint, enc)
    blank, frames, length = decoder.blank_id, enc.size(0), len(label)
    alpha = [[float("-inf")] * (length + 1) for _ in range(frames)]
    for t in range(frames):
        for u in range(length + 1):
            if t == 0 and u == 0:
                alpha[t][u] = 0.0
                continue
            terms = []
            if t > 0:
                terms.append(alpha[t - 1][u] + lattice(t - 1, tuple(label[:u]))[blank])
            if u > 0:
                terms.append(alpha[t][u - 1] + lattice(t, tuple(label[: u - 1]))[label[u - 1]])
            top = max(terms)
            alpha[t][u] = top + math.log(sum(math.exp(x - top) for x in terms))
    return alpha[frames - 1][length] + lattice(frames - 1, tuple(label))[blank]


def test_ctc_sequence_scores_match_forward_recursion_and_espnet_loss():
    torch.manual_seed(12)
    vocab, dim, frames = 7, 5, 6
    ctc = CTC(vocab, dim).eval()
    enc = torch.randn(frames, dim)
    cands = [[1, 2, 3], [], [4, 4], [5, 5, 5, 5]]  # the last needs 7 frames: impossible
    scores = ctc_sequence_scores(ctc, enc, cands)
    log_probs = ctc.log_softmax(enc.unsqueeze(0))[0]
    for n, cand in enumerate(cands[:3]):
        assert float(scores[n]) == pytest.approx(_loop_ctc_log_prob(log_probs, cand), abs=1e-6)
    assert float(scores[3]) == float("-inf")
    with torch.no_grad():  # ESPnet's training loss (sum over the batch / B) on one sequence
        loss = ctc(enc.unsqueeze(0), torch.tensor([frames]), torch.tensor([cands[0]]),
                   torch.tensor([3]))
    assert float(scores[0]) == pytest.approx(-float(loss), abs=1e-4)
    with pytest.raises(ValueError, match="candidate 1: token 0 is the blank"):
        ctc_sequence_scores(ctc, enc, [[1], [0, 2]])


def test_transducer_sequence_scores_match_forward_recursion():
    decoder, joint = _rnnt(vocab=9, dim=6, seed=13)
    enc = torch.randn(7, 6)
    cands = [[1, 2, 3], [], [5], [8, 8, 2, 7, 1]]
    scores = transducer_sequence_scores(decoder, joint, enc, cands, batch_size=3)
    for n, cand in enumerate(cands):
        expected = _loop_rnnt_log_prob(decoder, joint, enc, cand)
        assert float(scores[n]) == pytest.approx(expected, abs=SCORE_TOL)
    with pytest.raises(ValueError, match="outside"):
        transducer_sequence_scores(decoder, joint, enc, [[9]])


def test_attention_sequence_scores_match_incremental_decoding():
    vocab, dim = 12, 8
    decoder, _ = _attention_model(vocab, dim, seed=14)
    eos = vocab - 1
    enc = torch.randn(9, dim)
    cands = [[3, 4, 5], [], [7, 7, 1, 2]]
    scores = attention_sequence_scores(decoder, enc, cands, eos, eos)
    for n, cand in enumerate(cands):
        ys, state, expected = [eos], None, 0.0
        for k in cand + [eos]:  # ESPnet's beam-search scoring path (forward_one_step)
            with torch.no_grad():
                logp, state = decoder.score(torch.tensor(ys), state, enc)
            expected += float(logp[k])
            ys.append(k)
        assert float(scores[n]) == pytest.approx(expected, abs=SCORE_TOL)
    with pytest.raises(ValueError, match="eos"):
        attention_sequence_scores(decoder, enc, [[2, eos]], eos, eos)


def test_mlm_sequence_scores_match_one_mask_at_a_time():
    vocab, dim = 10, 8
    mlm, _ = _mlm_model(vocab, dim, seed=15)
    enc = torch.randn(11, dim)
    cands = [[3, 4, 5, 6], [], [2], [9, 1, 1]]
    scores = mlm_sequence_scores(mlm, enc, cands, mask_token=vocab, batch_size=3)
    for n, cand in enumerate(cands):
        expected = 0.0
        for i in range(len(cand)):
            masked = list(cand)
            masked[i] = vocab
            with torch.no_grad():
                logits, _ = mlm(enc.unsqueeze(0), torch.tensor([11]), torch.tensor([masked]),
                                torch.tensor([len(cand)]))
            expected += float(torch.log_softmax(logits[0, i, :vocab].double(), -1)[cand[i]])
        assert float(scores[n]) == pytest.approx(expected, abs=SCORE_TOL)


def test_rescore_combines_weighted_heads():
    cands = [[1], [2, 3], [4]]
    scores = {
        "ctc": torch.tensor([-1.0, -2.0, float("-inf")]),
        "att": torch.tensor([-3.0, -1.0, -0.5]),
    }
    ranked = rescore(cands, scores, {"ctc": 0.5, "att": 0.5})
    assert [h.tokens for h in ranked] == [[2, 3], [1], [4]]
    assert [h.score for h in ranked] == [-1.5, -2.0, float("-inf")]
    only_att = rescore(cands, scores, {"ctc": 0.0, "att": 1.0})
    assert [h.tokens for h in only_att] == [[4], [2, 3], [1]]
    assert not any(math.isnan(h.score) for h in only_att)
    with pytest.raises(ValueError, match="mlm"):
        rescore(cands, scores, {"mlm": 0.3})
