"""Tests of RNN-T loss backend selection and of warp-rnnt against torchaudio."""

from __future__ import annotations

import pytest
import torch
import torchaudio.functional

from cuda_support import needs_cuda, needs_warp_rnnt
from espnet2_dualmode.losses import resolve_rnnt_backend, rnnt_loss
from espnet2_dualmode.losses import transducer

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def test_auto_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_rnnt_backend("auto", CPU) == "torchaudio"
    monkeypatch.setattr(transducer, "_warp_rnnt", lambda: None)
    assert resolve_rnnt_backend("auto", CUDA) == "torchaudio"
    monkeypatch.setattr(transducer, "_warp_rnnt", lambda: object())
    assert resolve_rnnt_backend("auto", CUDA) == "warp_rnnt"
    assert resolve_rnnt_backend("auto", CPU) == "torchaudio"
    assert resolve_rnnt_backend("torchaudio", CUDA) == "torchaudio"


def test_explicit_warp_rnnt_that_cannot_run_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transducer, "_warp_rnnt", lambda: None)
    with pytest.raises(RuntimeError, match="warp-rnnt package is not installed"):
        resolve_rnnt_backend("warp_rnnt", CUDA)
    monkeypatch.setattr(transducer, "_warp_rnnt", lambda: object())
    with pytest.raises(RuntimeError, match="runs on CUDA only"):
        resolve_rnnt_backend("warp_rnnt", CPU)
    with pytest.raises(ValueError, match="unknown RNN-T loss backend"):
        resolve_rnnt_backend("warprnnt", CPU)


def test_warp_rnnt_on_cpu_tensors_raises() -> None:
    logits = torch.randn(1, 3, 2, 4)
    with pytest.raises(RuntimeError, match="'warp_rnnt'"):
        rnnt_loss(
            logits, torch.tensor([[1]]), torch.tensor([3]), torch.tensor([1]), backend="warp_rnnt"
        )


class _WarpRnntContract:
    """CPU stand-in for ``warp_rnnt`` that enforces the input contract of its binding.

    warp-rnnt 0.7.0 needs float32 contiguous log-probabilities (N, T, U+1, V), int32
    contiguous labels (N, U) and lengths, and with ``gather=True`` indexes the
    log-probs with every label entry, padding included. The loss itself is then taken
    from torchaudio on the given log-probs (``fused_log_softmax=False``).
    """

    def __init__(self) -> None:
        self.calls = 0

    def rnnt_loss(
        self, log_probs, labels, frames_lengths, labels_lengths, reduction, blank, gather
    ) -> torch.Tensor:
        self.calls += 1
        assert log_probs.dtype == torch.float32 and log_probs.is_contiguous()
        for x in (labels, frames_lengths, labels_lengths):
            assert x.dtype == torch.int32 and x.is_contiguous()
        assert log_probs.size(2) == labels.size(1) + 1
        assert gather and reduction == "none"
        assert ((labels >= 0) & (labels < log_probs.size(-1))).all(), "gather needs valid ids"
        torch.testing.assert_close(
            log_probs.logsumexp(-1), torch.zeros(log_probs.shape[:3]), atol=1e-5, rtol=0
        )
        return torchaudio.functional.rnnt_loss(
            log_probs, labels, frames_lengths, labels_lengths, blank=blank,
            reduction="none", fused_log_softmax=False,
        )


def test_warp_rnnt_path_passes_its_input_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _WarpRnntContract()
    monkeypatch.setattr(transducer, "_warp_rnnt", lambda: fake)
    monkeypatch.setattr(transducer, "resolve_rnnt_backend", lambda backend, device: "warp_rnnt")
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, 5, 6, generator=gen, dtype=torch.float64)
    targets = torch.tensor([[1, 2, 3, -1, -1], [4, -1, -1, -1, -1], [5, 5, -1, -1, -1]])
    t_lens, u_lens = torch.tensor([7, 5, 6]), torch.tensor([3, 1, 2])
    got = rnnt_loss(logits, targets, t_lens, u_lens, reduction="none", backend="warp_rnnt")
    monkeypatch.undo()
    ref = rnnt_loss(logits, targets, t_lens, u_lens, reduction="none", backend="torchaudio")
    assert fake.calls == 1
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@needs_cuda
@needs_warp_rnnt
def test_warp_rnnt_matches_torchaudio_on_cuda() -> None:
    gen = torch.Generator().manual_seed(0)
    t_lens = torch.tensor([40, 33, 25, 12])
    u_lens = torch.tensor([9, 12, 4, 0])
    vocab = 60
    logits = torch.randn(4, 40, 13, vocab, generator=gen)
    targets = torch.randint(1, vocab, (4, 12), generator=gen)
    targets[torch.arange(12).unsqueeze(0) >= u_lens.unsqueeze(1)] = -1  # ESPnet-style padding

    results = {}
    for backend in ("warp_rnnt", "torchaudio"):
        x = logits.cuda().requires_grad_(True)
        loss = rnnt_loss(
            x, targets.cuda(), t_lens.cuda(), u_lens.cuda(), reduction="none", backend=backend
        )
        loss.sum().backward()
        results[backend] = (loss.detach().cpu(), x.grad.cpu())
    assert resolve_rnnt_backend("auto", CUDA) == "warp_rnnt"
    (warp_loss, warp_grad), (ta_loss, ta_grad) = results["warp_rnnt"], results["torchaudio"]
    torch.testing.assert_close(warp_loss, ta_loss, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(warp_grad, ta_grad, rtol=1e-3, atol=1e-4)


def _empty_target_batch(device: str):
    """Logits of 3 utterances, the 2nd and 3rd with an empty target, and each row's blank path."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 9, 4, 7, generator=gen).to(device)
    targets = torch.tensor([[3, 1, 6], [-1, -1, -1], [-1, -1, -1]], device=device)
    t_lens = torch.tensor([9, 6, 9], device=device)
    u_lens = torch.tensor([3, 0, 0], device=device)
    blank_path = -logits.double().log_softmax(-1)[:, :, 0, 0].cpu()
    expected = [None] + [float(blank_path[b, : t_lens[b]].sum()) for b in (1, 2)]
    return logits, targets, t_lens, u_lens, expected


def _backends_on(device: str):
    if device == "cpu":
        return ["torchaudio"]
    return ["torchaudio"] + (["warp_rnnt"] if transducer._warp_rnnt() is not None else [])


@pytest.mark.parametrize("fastemit_lambda", [0.0, 0.01])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, needs_cuda])])
def test_empty_target_is_the_blank_path_on_every_backend(device: str, fastemit_lambda: float) -> None:
    """An utterance with no labels (a silence clip) costs -sum_t log P(blank | t, 0), and its
    gradient is that of the blank path, on every backend (float64 reference)."""
    logits, targets, t_lens, u_lens, expected = _empty_target_batch(device)
    for backend in _backends_on(device):
        x = logits.clone().requires_grad_(True)
        costs = rnnt_loss(x, targets, t_lens, u_lens, reduction="none", backend=backend,
                          fastemit_lambda=fastemit_lambda)
        for b in (1, 2):
            assert float(costs[b].detach()) == pytest.approx(expected[b], rel=1e-5), (backend, b)
        costs[1].backward()
        ref = logits.detach().double().requires_grad_(True)
        (-ref.log_softmax(-1)[1, : int(t_lens[1]), 0, 0].sum()).backward()
        torch.testing.assert_close(x.grad.double().cpu(), ref.grad.cpu(), rtol=1e-4, atol=1e-5)


class _ZeroLossNanGradOnEmptyRows(torch.autograd.Function):
    """What torchaudio's CUDA kernel was seen to do with an empty target: the row's loss is 0
    (and here its gradient NaN, the worst case), other rows untouched."""

    @staticmethod
    def forward(ctx, costs: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(empty)
        return costs.masked_fill(empty, 0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (empty,) = ctx.saved_tensors
        return grad.masked_fill(empty, float("nan")), None


@pytest.mark.parametrize("fastemit_lambda", [0.0, 0.01])
def test_empty_target_patch_replaces_a_wrong_kernel(monkeypatch: pytest.MonkeyPatch,
                                                    fastemit_lambda: float) -> None:
    """On CPU, with the CUDA kernel's failure emulated: the empty rows still get the exact
    blank-path loss and gradient, and the other row keeps the kernel's own."""
    real = torchaudio.functional.rnnt_loss

    def broken(logits, targets, logit_lengths, target_lengths, **kwargs):
        costs = real(logits, targets, logit_lengths, target_lengths, **kwargs)
        return _ZeroLossNanGradOnEmptyRows.apply(costs, target_lengths == 0)

    logits, targets, t_lens, u_lens, expected = _empty_target_batch("cpu")
    x_ref = logits.clone().requires_grad_(True)
    ref = rnnt_loss(x_ref, targets, t_lens, u_lens, reduction="none", backend="torchaudio",
                    fastemit_lambda=fastemit_lambda)
    ref.sum().backward()
    monkeypatch.setattr(transducer.torchaudio.functional, "rnnt_loss", broken)
    monkeypatch.setattr(transducer, "_torchaudio_mishandles_empty_targets", lambda device: True)
    x = logits.clone().requires_grad_(True)
    costs = rnnt_loss(x, targets, t_lens, u_lens, reduction="none", backend="torchaudio",
                      fastemit_lambda=fastemit_lambda)
    costs.sum().backward()
    for b in (1, 2):
        assert float(costs[b].detach()) == pytest.approx(expected[b], rel=1e-5), b
    torch.testing.assert_close(costs, ref, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
