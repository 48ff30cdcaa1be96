"""Tests of the distillation losses (paper Eq. 10-12, mse-ED) and of the RNN-T loss.

References are independent: explicit Python loops for Eq. (10)-(12) and the MSE, a
float64 forward (alpha) recursion for the RNN-T loss, and torchaudio called directly.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchaudio.functional

from espnet2_dualmode.losses import mse_distill_loss, rnnt_loss, sp_kd_loss

# ---------------------------------------------------------------- sp-KD / mse references


def _loop_sp_kd(teacher: torch.Tensor, student: torch.Tensor) -> float:
    """Eq. (10)-(12) with explicit loops over batch pairs (i, j), in Python floats."""

    def similarity(h: torch.Tensor) -> list[list[float]]:
        rows = [h[i].reshape(-1).tolist() for i in range(h.size(0))]
        gram = [[sum(a * b for a, b in zip(ri, rj)) for rj in rows] for ri in rows]
        out = []
        for row in gram:
            norm = math.sqrt(sum(v * v for v in row))
            out.append([v / norm for v in row])
        return out

    g_te, g_st = similarity(teacher), similarity(student)
    batch = teacher.size(0)
    total = 0.0
    for i in range(batch):
        for j in range(batch):
            total += (g_te[i][j] - g_st[i][j]) ** 2
    return total / batch**2


def _loop_mse(teacher: torch.Tensor, student: torch.Tensor, lengths: list[int]) -> float:
    """Mean of squared differences over valid frames and dims, with explicit loops."""
    total, count = 0.0, 0
    for b, length in enumerate(lengths):
        for t in range(length):
            for d in range(teacher.size(2)):
                total += (float(teacher[b, t, d]) - float(student[b, t, d])) ** 2
                count += 1
    return total / count


def _mask(lengths: list[int], max_len: int) -> torch.Tensor:
    return torch.arange(max_len).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


def _garbage_pad(x: torch.Tensor, extra: int, gen: torch.Generator) -> torch.Tensor:
    """Append ``extra`` frames of large random values along dim 1."""
    pad = 50.0 * torch.randn(x.size(0), extra, *x.shape[2:], generator=gen, dtype=x.dtype)
    return torch.cat([x, pad], dim=1)


@pytest.mark.parametrize(
    "teacher_shape,student_shape",
    [((4, 7, 6), (4, 7, 6)), ((4, 7, 6), (4, 7, 4)), ((4, 7, 6), (4, 5, 2, 3))],
)
def test_sp_kd_matches_loop_reference(teacher_shape: tuple, student_shape: tuple) -> None:
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(*teacher_shape, generator=gen, dtype=torch.float64)
    student = torch.randn(*student_shape, generator=gen, dtype=torch.float64)
    got = sp_kd_loss(teacher, student)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(_loop_sp_kd(teacher, student), abs=1e-6, rel=1e-6)
    assert float(got) > 0.0


def test_sp_kd_mask_ignores_padding_and_matters() -> None:
    gen = torch.Generator().manual_seed(1)
    lengths = [5, 3, 4]
    # Frames beyond each length are exact zeros: the reference on these equals the
    # loss on the valid frames only.
    valid = _mask(lengths, 5)[..., None]
    teacher = torch.randn(3, 5, 6, generator=gen, dtype=torch.float64) * valid
    student = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64) * valid
    expected = _loop_sp_kd(teacher, student)

    # Overwrite padding with garbage and add more garbage frames.
    t_pad = teacher.clone()
    s_pad = student.clone()
    for b, length in enumerate(lengths):
        t_pad[b, length:] = 30.0 * torch.randn(5 - length, 6, generator=gen, dtype=torch.float64)
        s_pad[b, length:] = 30.0 * torch.randn(5 - length, 4, generator=gen, dtype=torch.float64)
    t_pad, s_pad = _garbage_pad(t_pad, 3, gen), _garbage_pad(s_pad, 3, gen)
    mask = _mask(lengths, 8)

    got = sp_kd_loss(t_pad, s_pad, mask)
    assert float(got) == pytest.approx(expected, abs=1e-6, rel=1e-6)
    unmasked = sp_kd_loss(t_pad, s_pad)
    assert abs(float(unmasked) - expected) > 1e-3


def test_sp_kd_gradient_reaches_student_and_teacher_scale_invariance() -> None:
    gen = torch.Generator().manual_seed(2)
    teacher = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    student = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    loss = sp_kd_loss(teacher.detach(), student)
    loss.backward()
    assert student.grad is not None
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0

    # G~ scales by c^2 under H -> c H, and the row normalisation removes it.
    scaled = sp_kd_loss(7.5 * teacher, student.detach())
    assert float(scaled) == pytest.approx(float(loss.detach()), rel=1e-9, abs=1e-12)


def test_sp_kd_zero_row_is_finite() -> None:
    teacher = torch.randn(3, 4, 5, dtype=torch.float64)
    student = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 4, [False] * 4, [True, True, False, False]])
    loss = sp_kd_loss(teacher, student, mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


def test_sp_kd_bad_inputs() -> None:
    x = torch.randn(3, 4, 5)
    with pytest.raises(ValueError, match="batch size"):
        sp_kd_loss(x, torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match=r"\(B, T, \.\.\.\)"):
        sp_kd_loss(torch.randn(3), x)
    with pytest.raises(ValueError, match="bool"):
        sp_kd_loss(x, x, torch.ones(3, 4))
    with pytest.raises(ValueError, match="student of shape"):
        sp_kd_loss(x, torch.randn(3, 6, 5), torch.ones(3, 4, dtype=torch.bool))


def test_mse_matches_loop_and_ignores_padding() -> None:
    gen = torch.Generator().manual_seed(4)
    lengths = [4, 2, 3]
    teacher = torch.randn(3, 6, 5, generator=gen, dtype=torch.float64)
    student = torch.randn(3, 6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    expected = _loop_mse(teacher, student.detach(), lengths)
    got = mse_distill_loss(teacher, student, _mask(lengths, 6))
    assert float(got.detach()) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    # Unmasked: every frame counts.
    full = mse_distill_loss(teacher, student).detach()
    assert float(full) == pytest.approx(_loop_mse(teacher, student.detach(), [6, 6, 6]), rel=1e-6)
    assert abs(float(full) - expected) > 1e-3
    got.backward()
    assert student.grad[1, 2:].abs().sum() == 0 and student.grad[1, :2].abs().sum() > 0


def test_mse_bad_inputs() -> None:
    with pytest.raises(ValueError, match="equal shapes"):
        mse_distill_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="no valid frame"):
        x = torch.randn(2, 3, 4)
        mse_distill_loss(x, x, torch.zeros(2, 3, dtype=torch.bool))


# ---------------------------------------------------------------- RNN-T references


def _reference_rnnt(logits: torch.Tensor, targets: list[int], t_len: int) -> torch.Tensor:
    """-log P(y|x) of one utterance by the forward (alpha) recursion, in float64.

    Args:
        logits: (T_max, U_max+1, V) joint output; only [:t_len, :len(targets)+1] is used.
        targets: label ids of the utterance.
        t_len: number of valid frames.
    """
    lp = torch.log_softmax(logits.double(), dim=-1)
    n_u = len(targets)
    alpha: dict[tuple[int, int], torch.Tensor] = {}
    for t in range(t_len):
        for u in range(n_u + 1):
            if t == 0 and u == 0:
                alpha[t, u] = torch.zeros((), dtype=torch.float64)
                continue
            terms = []
            if t > 0:
                terms.append(alpha[t - 1, u] + lp[t - 1, u, 0])  # blank: advance t
            if u > 0:
                terms.append(alpha[t, u - 1] + lp[t, u - 1, targets[u - 1]])  # emit y_u
            alpha[t, u] = torch.logsumexp(torch.stack(terms), dim=0)
    return -(alpha[t_len - 1, n_u] + lp[t_len - 1, n_u, 0])


def _rnnt_case(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of 3 with different T and U, padded to the maxima (targets padded with -1)."""
    gen = torch.Generator().manual_seed(seed)
    t_lens, u_lens, vocab = [6, 4, 5], [3, 1, 0], 5
    logits = torch.randn(3, max(t_lens), max(u_lens) + 1, vocab, generator=gen)
    targets = torch.full((3, max(u_lens)), -1, dtype=torch.long)
    for b, n_u in enumerate(u_lens):
        targets[b, :n_u] = torch.randint(1, vocab, (n_u,), generator=gen)
    return logits, targets, torch.tensor(t_lens), torch.tensor(u_lens)


def test_rnnt_matches_alpha_recursion_and_torchaudio() -> None:
    logits, targets, t_lens, u_lens = _rnnt_case(0)
    logits.requires_grad_(True)
    got = rnnt_loss(logits, targets, t_lens, u_lens, reduction="none", backend="torchaudio")
    assert got.shape == (3,)

    ref_logits = logits.detach().double().requires_grad_(True)
    ref = torch.stack(
        [
            _reference_rnnt(ref_logits[b], targets[b, : u_lens[b]].tolist(), int(t_lens[b]))
            for b in range(3)
        ]
    )
    torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-4, atol=1e-5)

    direct = torchaudio.functional.rnnt_loss(
        logits.detach(),
        targets.clamp(min=0).int(),
        t_lens.int(),
        u_lens.int(),
        blank=0,
        reduction="none",
    )
    torch.testing.assert_close(got.detach(), direct, rtol=1e-6, atol=1e-6)

    # Gradients of the summed loss: wrapper vs the float64 recursion (autograd).
    got.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(logits.grad.double(), ref_logits.grad, rtol=1e-4, atol=1e-5)


def test_rnnt_gradients_match_torchaudio() -> None:
    logits, targets, t_lens, u_lens = _rnnt_case(1)
    ours = logits.clone().requires_grad_(True)
    theirs = logits.clone().requires_grad_(True)
    rnnt_loss(ours, targets, t_lens, u_lens, reduction="sum").backward()
    torchaudio.functional.rnnt_loss(
        theirs, targets.clamp(min=0).int(), t_lens.int(), u_lens.int(), blank=0, reduction="sum"
    ).backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-6)


def test_rnnt_reductions_and_extra_padding() -> None:
    logits, targets, t_lens, u_lens = _rnnt_case(2)
    per_utt = rnnt_loss(logits, targets, t_lens, u_lens, reduction="none")
    mean = rnnt_loss(logits, targets, t_lens, u_lens)  # default "mean": sum / B
    total = rnnt_loss(logits, targets, t_lens, u_lens, reduction="sum")
    torch.testing.assert_close(total, per_utt.sum())
    torch.testing.assert_close(mean, per_utt.sum() / 3)

    # Extra padding in T, U+1 and targets, filled with garbage, changes nothing.
    gen = torch.Generator().manual_seed(9)
    big = 100.0 * torch.randn(3, logits.size(1) + 2, logits.size(2) + 3, 5, generator=gen)
    big[:, : logits.size(1), : logits.size(2)] = logits
    big_targets = torch.randint(-1, 5, (3, targets.size(1) + 3), generator=gen)
    for b in range(3):
        big_targets[b, : u_lens[b]] = targets[b, : u_lens[b]]
    padded = rnnt_loss(big, big_targets, t_lens, u_lens, reduction="none")
    torch.testing.assert_close(padded, per_utt)


def test_rnnt_non_float32_input_is_computed_in_float32() -> None:
    logits, targets, t_lens, u_lens = _rnnt_case(3)
    got = rnnt_loss(logits.double(), targets, t_lens, u_lens, reduction="none")
    assert got.dtype == torch.float32
    ref = rnnt_loss(logits, targets, t_lens, u_lens, reduction="none")
    torch.testing.assert_close(got, ref)


def test_rnnt_bad_inputs() -> None:
    logits, targets, t_lens, u_lens = _rnnt_case(4)

    def check(message: str, **override) -> None:
        args = dict(logits=logits, targets=targets, logit_lengths=t_lens, target_lengths=u_lens)
        args.update(override)
        with pytest.raises(ValueError, match=message):
            rnnt_loss(**args)

    with_blank = targets.clone()
    with_blank[1, 0] = 0
    check("batch index 1: target 0 has label 0, which is the blank id", targets=with_blank)
    too_large = targets.clone()
    too_large[0, 2] = 5
    check(r"batch index 0: target 2 has label 5, which is outside \[0, 5\)", targets=too_large)
    check(r"batch index 1: logit length 0 is outside \[1, 6\]",
          logit_lengths=torch.tensor([6, 0, 5]))
    check(r"batch index 2: logit length 7 is outside \[1, 6\]",
          logit_lengths=torch.tensor([6, 4, 7]))
    check(r"batch index 0: target length 4 is outside \[0, 3\]",
          target_lengths=torch.tensor([4, 1, 0]))
    check(r"target_lengths must have shape \(3,\)", target_lengths=torch.tensor([3, 1]))
    check("targets must be an integer tensor", targets=targets.float())
    check(r"logits must have shape \(B, T, U\+1, V\)", logits=logits[0])
    check("blank id 5 is outside the vocabulary", blank=5)
    check("unknown reduction", reduction="batchmean")
    check("unknown RNN-T loss backend", backend="k2")
