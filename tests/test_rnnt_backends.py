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
