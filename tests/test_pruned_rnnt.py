"""Tests of the pruned RNN-T loss (espnet2_dualmode.losses.pruned_transducer).

Independent references: torchaudio's ``rnnt_loss`` on the full 4-D joint (float32; the
code under test runs in float64, tolerance 1e-4 relative), a float64 Python-loop alpha
recursion and brute-force enumeration of every alignment of a tiny lattice.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torchaudio.functional
from espnet2.asr_transducer.joint_network import JointNetwork

from espnet2_dualmode.losses import pruned_transducer as pt
from espnet2_dualmode.losses.pruned_transducer import (
    SimpleJoiner,
    lattice_log_likelihood,
    prune_ranges,
    pruned_rnnt_loss,
    simple_lattice,
)

NEG_INF = float("-inf")
REL = 1e-4


def _batch(seed: int, blank: int = 0, grad: bool = False, vocab: int = 7, de: int = 5,
           dd: int = 4):
    """A float64 joint and a padded batch of 3 utterances of different T and U.

    Padding holds garbage: large encoder frames, -1 targets, random decoder rows. The
    joint's parameters (and with ``grad`` the inputs) require gradients.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    joint = JointNetwork(vocab, de, dd, joint_space_size=6).double()
    t_lens, u_lens = torch.tensor([9, 6, 8]), torch.tensor([4, 2, 0])
    batch, frames, labels = 3, 10, 5  # padded sizes exceed every length
    enc = torch.randn(batch, frames, de, generator=gen, dtype=torch.float64)
    dec = torch.randn(batch, labels + 1, dd, generator=gen, dtype=torch.float64)
    non_blank = [v for v in range(vocab) if v != blank]
    targets = torch.tensor(non_blank)[torch.randint(len(non_blank), (batch, labels), generator=gen)]
    for b in range(batch):
        enc[b, t_lens[b]:] = 50.0
        targets[b, u_lens[b]:] = -1
    return joint, enc.requires_grad_(grad), dec.requires_grad_(grad), targets, t_lens, u_lens


def _torchaudio(logits: torch.Tensor, targets, t_lens, u_lens, blank: int) -> torch.Tensor:
    """Per-utterance torchaudio RNN-T loss on float32 logits, cut to the longest T and U."""
    max_t, max_u = int(t_lens.max()), int(u_lens.max())
    tg = torch.where(targets < 0, blank, targets)[:, :max_u].int()
    return torchaudio.functional.rnnt_loss(
        logits[:, :max_t, : max_u + 1].float(), tg, t_lens.int(), u_lens.int(),
        blank=blank, reduction="none",
    )


def _loop_log_z(emit: list, blank: list, t_len: int, u_len: int) -> float:
    """Float64 alpha recursion with Python loops; emit/blank are [t][u] nested lists."""
    alpha = [[NEG_INF] * (u_len + 1) for _ in range(t_len)]
    alpha[0][0] = 0.0
    for t in range(t_len):
        for u in range(u_len + 1):
            terms = []
            if u > 0:
                terms.append(alpha[t][u - 1] + emit[t][u - 1])
            if t > 0:
                terms.append(alpha[t - 1][u] + blank[t - 1][u])
            if terms:
                top = max(terms)
                alpha[t][u] = top if top == NEG_INF else top + math.log(
                    sum(math.exp(x - top) for x in terms))
    return alpha[t_len - 1][u_len] + blank[t_len - 1][u_len]


def _grads(value: torch.Tensor, params: list) -> list:
    """Gradients of ``value``, zeros for parameters it does not depend on."""
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Max abs difference <= 1e-4 x the reference's largest magnitude."""
    got, want = got.detach().double(), want.detach().double()
    assert float((got - want).abs().max()) <= REL * (float(want.abs().max()) + 1e-8)


# ------------------------------------------------------------ lattice recursion


def test_lattice_matches_brute_force_enumeration() -> None:
    """log Z and arc occupations equal sums over every alignment of a 4 x 3 lattice."""
    gen = torch.Generator().manual_seed(0)
    t_len, u_len = 4, 3
    emit = torch.randn(1, t_len, u_len + 1, generator=gen, dtype=torch.float64)
    blank = torch.randn(1, t_len, u_len + 1, generator=gen, dtype=torch.float64)
    emit[0, 1, 2] = NEG_INF  # a missing arc, as in the pruned lattice
    log_z, occ_emit, occ_blank = lattice_log_likelihood(
        emit, blank, torch.tensor([t_len]), torch.tensor([u_len]))

    paths = []
    for emits in itertools.combinations(range(t_len + u_len - 1), u_len):
        t = u = 0
        score, used = 0.0, []
        for step in range(t_len + u_len):
            kind = "emit" if step in emits else "blank"
            weight = float((emit if kind == "emit" else blank)[0, t, u])
            score += weight
            used.append((kind, t, u))
            t, u = (t, u + 1) if kind == "emit" else (t + 1, u)
        paths.append((score, used))
    assert len(paths) == math.comb(t_len + u_len - 1, u_len)
    total = math.log(sum(math.exp(s) for s, _ in paths if s > NEG_INF))
    assert float(log_z) == pytest.approx(total, rel=1e-12)

    want = {"emit": torch.zeros_like(emit), "blank": torch.zeros_like(blank)}
    for score, used in paths:
        for kind, t, u in used:
            want[kind][0, t, u] += math.exp(score - total)
    assert torch.allclose(occ_emit, want["emit"], atol=1e-12)
    assert torch.allclose(occ_blank, want["blank"], atol=1e-12)
    assert float(occ_emit[0, 1, 2]) == 0.0


def test_lattice_gradient_is_occupation_and_ignores_padding() -> None:
    gen = torch.Generator().manual_seed(1)
    emit = torch.randn(2, 6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    blank = torch.randn(2, 6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    t_lens, u_lens = torch.tensor([6, 3]), torch.tensor([2, 4])
    log_z, occ_emit, occ_blank = lattice_log_likelihood(emit, blank, t_lens, u_lens)
    g_emit, g_blank = torch.autograd.grad((2.0 * log_z).sum(), [emit, blank])
    assert torch.equal(g_emit, 2.0 * occ_emit) and torch.equal(g_blank, 2.0 * occ_blank)
    for b in range(2):
        t_len, u_len = int(t_lens[b]), int(u_lens[b])
        want = _loop_log_z(emit[b].tolist(), blank[b].tolist(), t_len, u_len)
        assert float(log_z[b].detach()) == pytest.approx(want, rel=1e-12)
        # every frame is left by exactly one blank; nothing outside the lengths is used
        assert torch.allclose(occ_blank[b, :t_len].sum(1), torch.ones(t_len, dtype=torch.float64))
        assert float(occ_blank[b, t_len:].abs().sum() + occ_blank[b, :, u_len + 1:].sum()) == 0
        assert float(occ_emit[b, t_len:].abs().sum() + occ_emit[b, :, u_len:].sum()) == 0


# -------------------------------------------------------- full joint == torchaudio


@pytest.mark.parametrize("blank,chunk_elements", [(0, pt._CHUNK_ELEMENTS), (3, 10)])
def test_unpruned_loss_and_grads_match_torchaudio(
    blank: int, chunk_elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s_range >= U + 1: the pruned term is the exact RNN-T loss (also with a chunked
    output layer, 10 logits per chunk)."""
    monkeypatch.setattr(pt, "_CHUNK_ELEMENTS", chunk_elements)
    joint, enc, dec, targets, t_lens, u_lens = _batch(2, blank=blank, grad=True)
    params = [enc, dec, *joint.parameters()]
    loss, parts = pruned_rnnt_loss(joint, enc, dec, targets, t_lens, u_lens, blank=blank,
                                   s_range=100, simple_loss_scale=0.0, reduction="none")
    ref = _torchaudio(joint(enc.unsqueeze(2), dec.unsqueeze(1)), targets, t_lens, u_lens, blank)
    _assert_close(parts["pruned"], ref)
    _assert_close(loss, ref)
    for got, want in zip(_grads(loss.sum(), params), _grads(ref.sum(), params)):
        _assert_close(got, want)


@pytest.mark.parametrize("heads", [False, True])
def test_simple_loss_matches_torchaudio_on_the_trivial_joiner(heads: bool) -> None:
    """L_simple == torchaudio on the trivial joiner's full logits: tied (the joint without
    its activation) or separate heads (am_proj(enc) + lm_proj(dec))."""
    joint, enc, dec, targets, t_lens, u_lens = _batch(3, grad=True)
    simple = SimpleJoiner(5, 4, 7).double() if heads else None
    params = [enc, dec, *joint.parameters()] + ([] if simple is None else
                                                list(simple.parameters()))
    _, parts = pruned_rnnt_loss(joint, enc, dec, targets, t_lens, u_lens, s_range=2,
                                reduction="sum", simple_joiner=simple)
    if heads:
        logits = simple.am_proj(enc).unsqueeze(2) + simple.lm_proj(dec).unsqueeze(1)
    else:
        logits = joint.lin_out(joint.lin_enc(enc).unsqueeze(2) + joint.lin_dec(dec).unsqueeze(1))
    ref = _torchaudio(logits, targets, t_lens, u_lens, 0).sum()
    _assert_close(parts["simple"], ref)
    got = _grads(parts["simple"], params)
    want = _grads(ref, params)
    for g, w in zip(got, want):
        _assert_close(g, w)
    if heads:  # the joint gets no gradient from the separate heads' loss
        assert all(float(g.abs().max()) == 0.0 for g in got[2:6])


def test_simple_loss_survives_normaliser_underflow() -> None:
    """float32 am and lm that peak at different labels 150 nats apart: the factorised
    normaliser underflows and is recomputed; loss and gradients match torchaudio."""
    gen = torch.Generator().manual_seed(9)
    am = torch.randn(2, 6, 5, generator=gen)
    lm = torch.randn(2, 4, 5, generator=gen)
    am[:, :, 1:] -= 150.0  # am favours blank, lm every other label
    lm[:, :, 0] -= 150.0
    am.requires_grad_()
    lm.requires_grad_()
    targets = torch.tensor([[1, 2, 3], [4, 4, -1]])
    t_lens, u_lens = torch.tensor([6, 5]), torch.tensor([3, 2])
    emit, blank = simple_lattice(am, lm, torch.where(targets < 0, 0, targets))
    got = -lattice_log_likelihood(emit, blank, t_lens, u_lens)[0]
    ref = _torchaudio(am.unsqueeze(2) + lm.unsqueeze(1), targets, t_lens, u_lens, 0)
    assert bool(torch.isfinite(got).all())
    _assert_close(got, ref)
    for g, w in zip(_grads(got.sum(), [am, lm]), _grads(ref.sum(), [am, lm])):
        _assert_close(g, w)


# ------------------------------------------------------------------ pruning ranges


def _check_ranges(ranges: torch.Tensor, t_lens, u_lens, s_range: int) -> None:
    """Windows are consecutive, monotonic, overlapping, inside [0, max(U_b, R-1)], start
    at (0, 0) and end at U_b; frames past T_b repeat the last window."""
    assert ranges.dtype == torch.int64 and ranges.size(2) == s_range
    assert torch.equal(ranges - ranges[..., :1], torch.arange(s_range).expand_as(ranges))
    start = ranges[..., 0]
    steps = start[:, 1:] - start[:, :-1]
    assert bool((steps >= 0).all()) and bool((steps <= s_range - 1).all())
    assert bool((start[:, 0] == 0).all())
    for b, (t_len, u_len) in enumerate(zip(t_lens.tolist(), u_lens.tolist())):
        assert int(ranges[b].max()) <= max(u_len, s_range - 1)
        assert u_len in ranges[b, t_len - 1].tolist()
        assert bool((start[b, t_len - 1:] == start[b, t_len - 1]).all())


@pytest.mark.parametrize("s_range", [2, 3, 5])
def test_prune_ranges_are_valid_and_pruned_loss_matches_restricted_recursion(
    s_range: int,
) -> None:
    """Ranges are valid; L_pruned equals the loop recursion on the full joint's
    log-probs with every node outside the windows removed, and is >= the full loss."""
    joint, enc, dec, targets, t_lens, u_lens = _batch(5)
    joint.requires_grad_(False)
    t_lens, u_lens = torch.tensor([9, 4, 10]), torch.tensor([5, 4, 2])
    targets = torch.where(torch.arange(5) < u_lens.unsqueeze(1), targets.abs().clamp_min(1), -1)
    emit, blank = simple_lattice(joint.lin_out(joint.lin_enc(enc)),
                                 joint.lin_dec(dec) @ joint.lin_out.weight.t(),
                                 torch.where(targets < 0, 0, targets))
    _, occ_emit, occ_blank = lattice_log_likelihood(emit, blank, t_lens, u_lens)
    ranges = prune_ranges(occ_emit, occ_blank, t_lens, u_lens, s_range)
    _check_ranges(ranges, t_lens, u_lens, s_range)

    _, parts = pruned_rnnt_loss(joint, enc, dec, targets, t_lens, u_lens, s_range=s_range,
                                reduction="none")
    logp = torch.log_softmax(joint(enc.unsqueeze(2), dec.unsqueeze(1)), dim=-1).detach()
    full = _torchaudio(logp, targets, t_lens, u_lens, 0)
    for b in range(3):
        t_len, u_len = int(t_lens[b]), int(u_lens[b])
        emit_w = [[NEG_INF] * (u_len + 1) for _ in range(t_len)]
        blank_w = [[NEG_INF] * (u_len + 1) for _ in range(t_len)]
        for t in range(t_len):
            for u in ranges[b, t].tolist():
                if u <= u_len:
                    blank_w[t][u] = float(logp[b, t, u, 0])
                if u < u_len:
                    emit_w[t][u] = float(logp[b, t, u, int(targets[b, u])])
        want = -_loop_log_z(emit_w, blank_w, t_len, u_len)
        assert math.isfinite(want)
        assert float(parts["pruned"][b]) == pytest.approx(want, rel=1e-10)
        assert float(parts["pruned"][b]) >= float(full[b]) - 1e-4
    if s_range == 2:  # a narrow window loses alignments of the longest utterance
        assert float(parts["pruned"][0]) > float(full[0]) + 1e-3


def _path_occupations(alignments: list, u_len: int) -> tuple:
    """Arc occupations (1, T, U+1) of a mixture of alignments, each given as (mass,
    labels emitted per frame), and each alignment's span [u entering, u leaving] per frame."""
    frames = len(alignments[0][1])
    occ_emit = torch.zeros(1, frames, u_len + 1, dtype=torch.float64)
    occ_blank = torch.zeros(1, frames, u_len + 1, dtype=torch.float64)
    spans = []
    for mass, per_frame in alignments:
        assert sum(per_frame) == u_len
        u, span = 0, []
        for t, k in enumerate(per_frame):
            occ_emit[0, t, u:u + k] += mass
            span.append((u, u + k))
            u += k
            occ_blank[0, t, u] += mass
        spans.append(span)
    return occ_emit, occ_blank, spans


@pytest.mark.parametrize(
    "alignments,u_len,s_range",
    [
        # one alignment: every frame's window holds the labels of that frame
        ([(1.0, [0, 2, 0, 0, 1, 0, 2, 0, 1, 1, 0, 2])], 9, 3),
        # two alignments: at frame 2 the window {2, 3, 4} would hold more exits (A's and
        # B's) but only B's mass (0.4), as A enters frame 2 at label 1; {1, 2, 3} keeps A
        ([(0.6, [0, 1, 2, 2]), (0.4, [0, 3, 1, 1])], 5, 3),
    ],
)
def test_prune_ranges_keep_the_most_probable_alignment(
    alignments: list, u_len: int, s_range: int
) -> None:
    occ_emit, occ_blank, spans = _path_occupations(alignments, u_len)
    t_lens, u_lens = torch.tensor([occ_emit.size(1)]), torch.tensor([u_len])
    ranges = prune_ranges(occ_emit, occ_blank, t_lens, u_lens, s_range)
    _check_ranges(ranges, t_lens, u_lens, s_range)
    for t, (lo, hi) in enumerate(spans[0]):
        assert set(range(lo, hi + 1)) <= set(ranges[0, t].tolist()), (t, ranges[0, t])


@pytest.mark.parametrize("seed", range(6))
def test_prune_ranges_are_valid_for_any_occupations(seed: int) -> None:
    """Arbitrary (even inconsistent) occupations, e.g. mass jumping up by more than R - 1
    labels or going down, still give valid windows."""
    gen = torch.Generator().manual_seed(seed)
    t_lens, u_lens = torch.tensor([12, 7, 9, 3]), torch.tensor([10, 2, 8, 0])
    occ_emit = torch.rand(4, 12, 12, generator=gen) ** 8
    occ_blank = torch.rand(4, 12, 12, generator=gen) ** 8
    for s_range in (2, 3, 4):
        ranges = prune_ranges(occ_emit, occ_blank, t_lens, u_lens, s_range)
        _check_ranges(ranges, t_lens, u_lens, s_range)


# --------------------------------------------------- batch, reduction, scales, errors


def test_batch_padding_equals_single_utterances() -> None:
    joint, enc, dec, targets, t_lens, u_lens = _batch(6)
    joint.requires_grad_(False)
    total, parts = pruned_rnnt_loss(joint, enc, dec, targets, t_lens, u_lens, s_range=3,
                                    reduction="none")
    for b in range(3):
        t_len, u_len = int(t_lens[b]), int(u_lens[b])
        one, one_parts = pruned_rnnt_loss(
            joint, enc[b:b + 1, :t_len], dec[b:b + 1, :u_len + 1], targets[b:b + 1, :u_len],
            t_lens[b:b + 1], u_lens[b:b + 1], s_range=3, reduction="none")
        for key in ("simple", "pruned"):
            assert float(parts[key][b]) == pytest.approx(float(one_parts[key][0]), rel=1e-10)
        assert float(total[b]) == pytest.approx(float(one[0]), rel=1e-10)


def test_reductions_and_scales() -> None:
    joint, enc, dec, targets, t_lens, u_lens = _batch(7)
    joint.requires_grad_(False)
    kwargs = dict(s_range=3, simple_loss_scale=0.3, pruned_loss_scale=0.8)
    none, p_none = pruned_rnnt_loss(joint, enc, dec, targets, t_lens, u_lens,
                                    reduction="none", **kwargs)
    mean, p_mean = pruned_rnnt_loss(joint, enc, dec, targets, t_lens, u_lens, **kwargs)
    summed, _ = pruned_rnnt_loss(joint, enc, dec, targets, t_lens, u_lens,
                                 reduction="sum", **kwargs)
    assert none.shape == (3,) and mean.dim() == 0
    assert torch.allclose(none, 0.3 * p_none["simple"] + 0.8 * p_none["pruned"])
    assert float(mean) == pytest.approx(float(none.sum()) / 3, rel=1e-12)
    assert float(summed) == pytest.approx(float(none.sum()), rel=1e-12)
    assert float(p_mean["pruned"]) == pytest.approx(float(p_none["pruned"].mean()), rel=1e-12)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(s_range=1), "s_range must be >= 2"),
        (dict(reduction="avg"), "unknown reduction"),
        (dict(enc=torch.zeros(3, 10, 4).double()), r"enc_out must have shape \(3, \*, 5\)"),
        (dict(dec=torch.zeros(3, 6, 5).double()), r"dec_out must have shape \(3, \*, 4\)"),
        (dict(t_lens=torch.tensor([9, 11, 8])), "batch index 1: logit length 11"),
        (dict(u_lens=torch.tensor([4, 2, 6])), "batch index 2: target length 6"),
        (dict(targets=torch.tensor([[1, 0, 1, 1, -1]] * 3)), "batch index 0: target 1 has label 0"),
        (dict(t_lens=torch.tensor([1, 6, 8]), s_range=2),
         "batch index 0: 4 labels in 1 frames cannot be covered"),
    ],
)
def test_bad_input_errors(change: dict, message: str) -> None:
    joint, enc, dec, targets, t_lens, u_lens = _batch(8)
    args = dict(enc=enc, dec=dec, targets=targets, t_lens=t_lens, u_lens=u_lens)
    kwargs = {}
    for key, value in change.items():
        (args if key in args else kwargs)[key] = value
    with pytest.raises(ValueError, match=message):
        pruned_rnnt_loss(joint, args["enc"], args["dec"], args["targets"], args["t_lens"],
                         args["u_lens"], **kwargs)
