"""FastEmit (Yu et al. 2021) on every RNN-T loss: torchaudio, warp-rnnt (CUDA) and pruned.

The reference is a float64 brute force written here: every alignment of a small lattice
is enumerated, which gives -log P(y | x) and the posterior occupation of each emission and
blank arc without any forward-backward recursion. FastEmit's gradient with respect to the
emission and blank log-probs is -(1 + lambda) occ_emit and -occ_blank; with respect to
the joint logits z(t, u, :) it is

    (1 + lambda) occ_emit (softmax(z) - onehot(y_u)) + occ_blank (softmax(z) - onehot(blank)),

and its value is the plain NLL (the module doc of ``losses.transducer`` says why).
Tolerance: float32 losses on lattices of a few nodes against float64, 1e-5 relative.
"""

from __future__ import annotations

import itertools
from typing import Tuple

import numpy as np
import pytest
import torch
import torchaudio.functional
from espnet2.asr_transducer.joint_network import JointNetwork

from cuda_support import needs_cuda, needs_warp_rnnt
from espnet2_dualmode.losses import fastemit_emission, pruned_rnnt_loss, rnnt_loss
from espnet2_dualmode.losses.pruned_transducer import SimpleJoiner, lattice_log_likelihood

LAMBDA = 0.3  # large, so that a missing or misplaced (1 + lambda) is far outside tolerance
TOL = dict(rtol=1e-5, atol=1e-6)
VOCAB = 5


def brute_force(logp: np.ndarray, labels: np.ndarray, t_len: int, u_len: int, blank: int
                ) -> Tuple[float, np.ndarray, np.ndarray]:
    """NLL and the emission/blank arc occupations (T, U+1) of one utterance from its
    log-probs (T, U+1, V), by enumerating every alignment (T blanks and U labels, the
    last move a blank out of (T-1, U))."""
    occ_emit = np.zeros(logp.shape[:2])
    occ_blank = np.zeros(logp.shape[:2])
    paths = []
    moves = t_len - 1 + u_len
    for label_steps in itertools.combinations(range(moves), u_len):
        t = u = 0
        score, emits, blanks = 0.0, [], []
        for step in range(moves):
            if step in label_steps:
                score += logp[t, u, labels[u]]
                emits.append((t, u))
                u += 1
            else:
                score += logp[t, u, blank]
                blanks.append((t, u))
                t += 1
        score += logp[t, u, blank]
        blanks.append((t, u))
        paths.append((score, emits, blanks))
    log_z = np.logaddexp.reduce([p[0] for p in paths])
    for score, emits, blanks in paths:
        posterior = np.exp(score - log_z)
        for node in emits:
            occ_emit[node] += posterior
        for node in blanks:
            occ_blank[node] += posterior
    return -log_z, occ_emit, occ_blank


def reference(logits: torch.Tensor, targets: torch.Tensor, t_lens: torch.Tensor,
              u_lens: torch.Tensor, fastemit_lambda: float, blank: int = 0
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 per-utterance NLL (B,), the FastEmit gradient of their sum w.r.t. the
    logits (B, T, U+1, V), and w.r.t. the emission and blank log-probs (B, T, U+1)."""
    logp = torch.log_softmax(logits.detach().double(), -1).numpy()
    costs, logit_grads, emit_grads, blank_grads = [], [], [], []
    for b in range(logits.size(0)):
        labels = targets[b].numpy()
        cost, occ_emit, occ_blank = brute_force(logp[b], labels, int(t_lens[b]),
                                                int(u_lens[b]), blank)
        weight_emit = (1 + fastemit_lambda) * occ_emit
        grad = (weight_emit + occ_blank)[..., None] * np.exp(logp[b])
        grad[..., blank] -= occ_blank
        for u in range(int(u_lens[b])):
            grad[:, u, labels[u]] -= weight_emit[:, u]
        costs.append(cost)
        logit_grads.append(grad)
        emit_grads.append(-weight_emit)
        blank_grads.append(-occ_blank)
    return (torch.tensor(costs), torch.from_numpy(np.stack(logit_grads)),
            torch.from_numpy(np.stack(emit_grads)), torch.from_numpy(np.stack(blank_grads)))


def small_batch(seed: int = 0):
    """Three utterances of different lengths, padding included (-1 in the targets)."""
    gen = torch.Generator().manual_seed(seed)
    t_lens, u_lens = torch.tensor([5, 4, 3]), torch.tensor([3, 2, 0])
    logits = torch.randn(3, 5, 4, VOCAB, generator=gen) * 2
    targets = torch.randint(1, VOCAB, (3, 3), generator=gen)
    targets[torch.arange(3).unsqueeze(0) >= u_lens.unsqueeze(1)] = -1
    return logits, targets, t_lens, u_lens


def loss_and_grad(fn, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-utterance losses ``fn(x)`` and the gradient of their sum w.r.t. ``x``."""
    x = x.detach().clone().requires_grad_(True)
    cost = fn(x)
    cost.sum().backward()
    return cost.detach(), x.grad


# ------------------------------------------------------------------ full loss (torchaudio)


def test_brute_force_agrees_with_torchaudio_without_fastemit() -> None:
    """The reference itself, at lambda = 0, against torchaudio's kernel."""
    logits, targets, t_lens, u_lens = small_batch()
    cost, grad = loss_and_grad(lambda x: torchaudio.functional.rnnt_loss(
        x, targets.clamp_min(0).int(), t_lens.int(), u_lens.int(), blank=0, reduction="none"),
        logits)
    ref_cost, ref_grad, _, _ = reference(logits, targets, t_lens, u_lens, 0.0)
    torch.testing.assert_close(cost.double(), ref_cost, **TOL)
    torch.testing.assert_close(grad.double(), ref_grad, **TOL)


@pytest.mark.parametrize("seed", [0, 1])
def test_torchaudio_fastemit_value_and_gradient_match_brute_force(seed: int) -> None:
    logits, targets, t_lens, u_lens = small_batch(seed)
    cost, grad = loss_and_grad(lambda x: rnnt_loss(
        x, targets, t_lens, u_lens, reduction="none", backend="torchaudio",
        fastemit_lambda=LAMBDA), logits)
    ref_cost, ref_grad, _, _ = reference(logits, targets, t_lens, u_lens, LAMBDA)
    torch.testing.assert_close(cost.double(), ref_cost, **TOL)
    torch.testing.assert_close(grad.double(), ref_grad, **TOL)
    _, plain_grad, _, _ = reference(logits, targets, t_lens, u_lens, 0.0)
    assert (ref_grad - plain_grad).abs().max() > 1e-2  # FastEmit does change the update


def test_torchaudio_lambda_zero_is_the_plain_loss_bit_for_bit() -> None:
    logits, targets, t_lens, u_lens = small_batch()
    plain = loss_and_grad(lambda x: torchaudio.functional.rnnt_loss(
        x, targets.clamp_min(0).int(), t_lens.int(), u_lens.int(), blank=0, reduction="none"),
        logits)
    ours = loss_and_grad(lambda x: rnnt_loss(
        x, targets, t_lens, u_lens, reduction="none", backend="torchaudio",
        fastemit_lambda=0.0), logits)
    assert torch.equal(plain[0], ours[0]) and torch.equal(plain[1], ours[1])


def test_fastemit_emission_scales_only_the_gradient() -> None:
    x = torch.tensor([-1.0, float("-inf"), -0.5], requires_grad=True)
    y = fastemit_emission(x, LAMBDA)
    assert torch.equal(y, x.detach())
    (y.clamp_min(-10) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 0.0, 3.0]) * (1 + LAMBDA))
    assert fastemit_emission(x, 0.0) is x


@pytest.mark.parametrize("bad", [-0.01, float("nan"), float("inf")])
def test_bad_lambda_is_rejected(bad: float) -> None:
    logits, targets, t_lens, u_lens = small_batch()
    with pytest.raises(ValueError, match="fastemit_lambda must be a finite number >= 0"):
        rnnt_loss(logits, targets, t_lens, u_lens, fastemit_lambda=bad)


# ---------------------------------------------------------------------------- pruned loss


def test_lattice_recursion_with_fastemit_matches_brute_force() -> None:
    """The pruned loss's recursion on arc log-probs, FastEmit on its emission arcs."""
    logits, targets, t_lens, u_lens = small_batch(2)
    logp = torch.log_softmax(logits.double(), -1)
    labels = torch.nn.functional.pad(targets.clamp_min(0), (0, 1))
    emit = logp.gather(3, labels.view(3, 1, -1, 1).expand(-1, logits.size(1), -1, 1))[..., 0]
    emit = emit.requires_grad_(True)
    blank_lp = logp[..., 0].clone().requires_grad_(True)
    ll, _, _ = lattice_log_likelihood(fastemit_emission(emit, LAMBDA), blank_lp, t_lens, u_lens)
    (-ll).sum().backward()
    ref_cost, _, ref_emit, ref_blank = reference(logits, targets, t_lens, u_lens, LAMBDA)
    torch.testing.assert_close(-ll, ref_cost, **TOL)
    torch.testing.assert_close(emit.grad, ref_emit, **TOL)
    torch.testing.assert_close(blank_lp.grad, ref_blank, **TOL)


def pruned_inputs(seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    _, targets, t_lens, u_lens = small_batch(seed)
    torch.manual_seed(seed)
    joint = JointNetwork(VOCAB, 4, 3, joint_space_size=6)
    enc = torch.randn(3, 5, 4, generator=gen)
    dec = torch.randn(3, 4, 3, generator=gen)
    return joint, enc, dec, targets, t_lens, u_lens


@pytest.mark.parametrize("part", ["simple", "pruned"])
def test_pruned_loss_fastemit_matches_brute_force(part: str) -> None:
    """Each term of the pruned loss on its own (the other's scale 0; s_range = U+1, so
    the pruned lattice is whole), gradients w.r.t. encoder and prediction outputs."""
    joint, enc, dec, targets, t_lens, u_lens = pruned_inputs()
    joiner = SimpleJoiner(4, 3, VOCAB) if part == "simple" else None
    scales = dict(simple_loss_scale=1.0, pruned_loss_scale=0.0) if part == "simple" else dict(
        simple_loss_scale=0.0, pruned_loss_scale=1.0)
    enc_x, dec_x = enc.clone().requires_grad_(True), dec.clone().requires_grad_(True)
    cost, _ = pruned_rnnt_loss(joint, enc_x, dec_x, targets, t_lens, u_lens, s_range=4,
                               reduction="none", simple_joiner=joiner,
                               fastemit_lambda=LAMBDA, **scales)
    cost.sum().backward()

    enc_r, dec_r = enc.double().requires_grad_(True), dec.double().requires_grad_(True)
    if part == "simple":
        am, lm = joiner.double()(enc_r, dec_r)
        logits = am.unsqueeze(2) + lm.unsqueeze(1)
    else:
        logits = joint.double()(enc_r.unsqueeze(2), dec_r.unsqueeze(1))
    ref_cost, ref_grad, _, _ = reference(logits, targets.clamp_min(0), t_lens, u_lens, LAMBDA)
    ref_enc, ref_dec = torch.autograd.grad(logits, (enc_r, dec_r), ref_grad)
    torch.testing.assert_close(cost.double(), ref_cost, **TOL)
    torch.testing.assert_close(enc_x.grad.double(), ref_enc, **TOL)
    torch.testing.assert_close(dec_x.grad.double(), ref_dec, **TOL)


def test_pruned_lambda_zero_is_the_plain_loss_bit_for_bit() -> None:
    joint, enc, dec, targets, t_lens, u_lens = pruned_inputs()
    results = []
    for extra in ({}, {"fastemit_lambda": 0.0}):
        enc_x, dec_x = enc.clone().requires_grad_(True), dec.clone().requires_grad_(True)
        joint.zero_grad()
        total, parts = pruned_rnnt_loss(joint, enc_x, dec_x, targets, t_lens, u_lens,
                                        s_range=2, **extra)
        total.backward()
        results.append([total.detach(), parts["simple"].detach(), enc_x.grad, dec_x.grad,
                        joint.lin_out.weight.grad.clone()])
    for plain, zero in zip(*results):
        assert torch.equal(plain, zero)


# ------------------------------------------------------------------------ mixed precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss_type", ["full", "pruned"])
def test_fastemit_is_finite_under_cpu_autocast(dtype: torch.dtype, loss_type: str) -> None:
    """A joint run under autocast (logits in the low dtype); the loss and every gradient
    stay finite and the value is the float32 one (float32_outside_autocast)."""
    joint, enc, dec, targets, t_lens, u_lens = pruned_inputs(4)
    enc = (enc * 3).requires_grad_(True)

    def run() -> torch.Tensor:
        if loss_type == "pruned":
            return pruned_rnnt_loss(joint, enc, dec, targets, t_lens, u_lens, s_range=2,
                                    fastemit_lambda=LAMBDA)[0]
        logits = joint(enc.unsqueeze(2), dec.unsqueeze(1))
        return rnnt_loss(logits, targets, t_lens, u_lens, fastemit_lambda=LAMBDA)

    with torch.autocast("cpu", dtype=dtype):
        loss = run()
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(enc.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in joint.parameters())


# ---------------------------------------------------------------------- warp-rnnt path


class _FakeWarpRnnt:
    """CPU stand-in for ``warp_rnnt.rnnt_loss`` with its ``gather=True`` semantics: the
    log-probs (N, T, U+1, V) are gathered to [blank, label] per node, then the RNN-T NLL
    of that two-arc lattice (torchaudio on log-probs). warp-rnnt's own ``fastemit_lambda``
    is refused: FastEmit must come from our lattice, the same for every backend."""

    def rnnt_loss(self, log_probs, labels, frames_lengths, labels_lengths, reduction, blank,
                  gather, **extra):
        assert gather and reduction == "none" and not extra
        assert log_probs.dtype == torch.float32 and log_probs.is_contiguous()
        index = torch.full(log_probs.shape[:3] + (2,), blank, dtype=torch.long)
        index[:, :, :-1, 1] = labels.long().unsqueeze(1)
        pair = log_probs.gather(3, index)
        return torchaudio.functional.rnnt_loss(
            pair, torch.ones_like(labels), frames_lengths, labels_lengths, blank=0,
            reduction="none", fused_log_softmax=False)


@pytest.mark.parametrize("fastemit_lambda", [0.0, LAMBDA])
def test_warp_rnnt_call_with_fastemit_matches_brute_force(monkeypatch, fastemit_lambda) -> None:
    from espnet2_dualmode.losses import transducer

    monkeypatch.setattr(transducer, "_warp_rnnt", lambda: _FakeWarpRnnt())
    monkeypatch.setattr(transducer, "resolve_rnnt_backend", lambda backend, device: "warp_rnnt")
    logits, targets, t_lens, u_lens = small_batch(1)
    cost, grad = loss_and_grad(lambda x: rnnt_loss(
        x, targets, t_lens, u_lens, reduction="none", backend="warp_rnnt",
        fastemit_lambda=fastemit_lambda), logits)
    ref_cost, ref_grad, _, _ = reference(logits, targets, t_lens, u_lens, fastemit_lambda)
    torch.testing.assert_close(cost.double(), ref_cost, **TOL)
    torch.testing.assert_close(grad.double(), ref_grad, **TOL)


# ---------------------------------------------------------------------- warp-rnnt on CUDA


@pytest.mark.cuda
@needs_cuda
@needs_warp_rnnt
@pytest.mark.parametrize("fastemit_lambda", [0.0, LAMBDA])
def test_warp_rnnt_fastemit_matches_brute_force_on_cuda(fastemit_lambda: float) -> None:
    logits, targets, t_lens, u_lens = small_batch()
    cost, grad = loss_and_grad(lambda x: rnnt_loss(
        x, targets.cuda(), t_lens.cuda(), u_lens.cuda(), reduction="none", backend="warp_rnnt",
        fastemit_lambda=fastemit_lambda), logits.cuda())
    ref_cost, ref_grad, _, _ = reference(logits, targets, t_lens, u_lens, fastemit_lambda)
    torch.testing.assert_close(cost.cpu().double(), ref_cost, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@needs_cuda
@needs_warp_rnnt
def test_warp_rnnt_lambda_zero_is_the_plain_loss_bit_for_bit() -> None:
    logits, targets, t_lens, u_lens = small_batch()
    runs = [loss_and_grad(lambda x: rnnt_loss(
        x, targets.cuda(), t_lens.cuda(), u_lens.cuda(), reduction="none", backend="warp_rnnt",
        **extra), logits.cuda()) for extra in ({}, {"fastemit_lambda": 0.0})]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


# ------------------------------------------------------------------------- model_conf


@pytest.mark.parametrize("loss_type", ["full", "pruned"])
def test_model_conf_fastemit_reaches_both_rnnt_losses(loss_type: str, tmp_path) -> None:
    """``model_conf.fastemit_lambda`` on the debug joint model: the reported RNN-T losses
    keep their values, and the gradients of both RNN-T joints change."""
    from pathlib import Path

    from espnet2_dualmode.tasks.dualmode_asr import DualModeASRTask

    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n".join(["<blank>", "<unk>", *"abcdefgh", "<sos/eos>"]) + "\n")
    config = Path(__file__).resolve().parents[1] / "conf" / "debug" / "joint.yaml"
    gen = torch.Generator().manual_seed(0)
    speech = torch.randn(2, 8000, generator=gen)
    batch = (speech, torch.tensor([8000, 6400]), torch.tensor([[2, 3, 4], [5, 6, -1]]),
             torch.tensor([3, 2]))
    runs = {}
    for lam in (0.0, LAMBDA):
        args = DualModeASRTask.get_parser().parse_args(
            ["--config", str(config), "--token_list", str(tokens)])
        args.model_conf.update(fastemit_lambda=lam, rnnt_loss_type=loss_type, pruned_s_range=3)
        torch.manual_seed(0)
        model = DualModeASRTask.build_model(args)
        model.train()
        loss, stats, _ = model(*batch)
        loss.backward()
        runs[lam] = (stats, {name: model.get_submodule(name).lin_out.weight.grad.clone()
                             for name in ("stream_joint", "rnnt_joint")})
    (stats0, grads0), (stats1, grads1) = runs[0.0], runs[LAMBDA]
    for key in ("loss_onl", "loss_rnnt"):
        torch.testing.assert_close(stats1[key], stats0[key], rtol=1e-5, atol=1e-6)
    for name in grads0:
        assert (grads1[name] - grads0[name]).abs().max() > 1e-4, name
