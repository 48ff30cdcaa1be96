"""RNN-T loss with a choice of backend (torchaudio on any device, warp-rnnt on CUDA).

ESPnet 202511's ``espnet2/asr`` transducer path needs ``warprnnt_pytorch``, which is not
installable here; :func:`rnnt_loss` instead wraps

* ``torchaudio.functional.rnnt_loss`` (CPU and CUDA; takes logits and applies a fused
  log-softmax; float32 only), and
* ``warp_rnnt.rnnt_loss`` (optional ``warp-rnnt`` package, CUDA only; takes
  log-probabilities; used with ``gather=True`` so its gradient buffer is (B, T, U+1, 2)
  instead of (B, T, U+1, V)).

Both give the per-utterance negative log-likelihood -log P(y | x). Reduction
``"mean"`` is the ESPnet convention used by its CTC, attention and transducer losses
(sum over the batch divided by the batch size B, not by the number of tokens or
frames); the dual-mode model should use ``reduction="mean"`` so that its RNN-T terms
are on the same scale as its CTC/attention/MLM terms.

Under mixed precision the joint network may run in float16/bfloat16; the loss itself,
from the logits on, runs in float32 outside autocast (see ``losses.precision``).

**FastEmit** (Yu et al., ICASSP 2021, arXiv 2010.11148), ``fastemit_lambda`` > 0. The paper
states its regulariser through the gradient: the derivative of the loss with respect to
every label-emission probability y^(t, u) is (1 + lambda) times the RNN-T one, and the
blank derivatives are unchanged, so that alignments that emit earlier gain probability
mass. We implement exactly that gradient, and one definition serves every backend
(torchaudio has no FastEmit argument; warp-rnnt's own ``fastemit_lambda`` is not used, so
that all backends share this one): :func:`fastemit_emission` is the identity on the
emission log-probabilities whose backward scales their gradient by (1 + lambda); since
d/dlog y^ = y^ d/dy^, this is the paper's gradient. For the full loss the lattice is first
reduced to its two arcs per node, log-probs (B, T, U+1, 2) of [blank, next label] (the
same paths and probabilities, so the same loss), on which the emission channel is
scaled; its explicit log-softmax holds one more (B, T, U+1, V) tensor than torchaudio's
fused one (the pruned loss needs nothing extra). The returned VALUE stays the RNN-T NLL
-log P(y | x), so that the logged loss is comparable across lambda; only the update
changes. With ``fastemit_lambda=0`` the code path and result are exactly those of the
plain loss.
"""

from __future__ import annotations

import functools
import math
from types import ModuleType
from typing import Optional

import torch
import torchaudio.functional

from espnet2_dualmode.losses.precision import float32_outside_autocast

BACKENDS = ("auto", "torchaudio", "warp_rnnt")
REDUCTIONS = ("mean", "sum", "none")


@functools.lru_cache(maxsize=1)
def _warp_rnnt() -> Optional[ModuleType]:
    """The ``warp_rnnt`` module, or None where it is not installed or does not load."""
    try:
        import warp_rnnt
    except (ImportError, OSError):
        return None
    return warp_rnnt


def resolve_rnnt_backend(backend: str, device: torch.device) -> str:
    """Name the backend that :func:`rnnt_loss` will use for tensors on ``device``.

    ``"auto"`` picks warp-rnnt when it is installed and ``device`` is CUDA, else
    torchaudio. An explicit ``"warp_rnnt"`` that cannot run raises instead of
    silently falling back.

    Args:
        backend: one of ``"auto"``, ``"torchaudio"``, ``"warp_rnnt"``.
        device: device of the joint-network logits.

    Returns:
        ``"torchaudio"`` or ``"warp_rnnt"``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown RNN-T loss backend {backend!r}; choose one of {BACKENDS}")
    on_cuda = torch.device(device).type == "cuda"
    if backend == "auto":
        return "warp_rnnt" if on_cuda and _warp_rnnt() is not None else "torchaudio"
    if backend == "warp_rnnt":
        if _warp_rnnt() is None:
            raise RuntimeError(
                "RNN-T backend 'warp_rnnt' requested but the warp-rnnt package is not "
                "installed (pip install warp-rnnt; it builds only where a CUDA GPU is visible)"
            )
        if not on_cuda:
            raise RuntimeError(
                f"RNN-T backend 'warp_rnnt' runs on CUDA only, but the logits are on {device}; "
                "use backend='torchaudio' or 'auto'"
            )
    return backend


class _ScaleGradient(torch.autograd.Function):
    """Identity in the forward pass; multiplies the incoming gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class _KeepRowsGradient(torch.autograd.Function):
    """Identity in the forward pass; the backward pass sets the gradient of every batch row
    where ``keep`` is False to 0 (a select, not a product, so a NaN there is dropped too)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(keep)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        keep = keep.view(-1, *([1] * (grad.dim() - 1)))
        return torch.where(keep, grad, torch.zeros((), dtype=grad.dtype, device=grad.device)), None


def check_fastemit_lambda(fastemit_lambda: float) -> None:
    """Reject a FastEmit weight that is negative or not finite (it would favour blank)."""
    if not math.isfinite(fastemit_lambda) or fastemit_lambda < 0:
        raise ValueError(f"fastemit_lambda must be a finite number >= 0, got {fastemit_lambda}")


def fastemit_emission(emit: torch.Tensor, fastemit_lambda: float) -> torch.Tensor:
    """FastEmit on label-emission log-probs: same values, gradient times (1 + lambda).

    Applied to the emission arcs of an RNN-T lattice before its forward-backward pass,
    it turns the RNN-T gradient into FastEmit's (module doc). ``emit`` itself is
    returned for ``fastemit_lambda == 0``, so the plain loss is untouched.
    """
    check_fastemit_lambda(fastemit_lambda)
    if fastemit_lambda == 0:
        return emit
    return _ScaleGradient.apply(emit, 1.0 + fastemit_lambda)


def _two_arc_log_probs(
    logits: torch.Tensor, targets: torch.Tensor, blank: int, fastemit_lambda: float
) -> torch.Tensor:
    """(B, T, U+1, 2) log-probs [blank, next label] of every lattice node, with FastEmit
    on the label channel. ``targets`` (B, U) hold valid ids; column U reads blank (no
    label arc leaves it, so its value never enters the loss)."""
    log_probs = torch.log_softmax(logits, dim=-1)
    labels = torch.nn.functional.pad(targets.long(), (0, 1), value=blank)  # (B, U+1)
    index = labels.view(labels.size(0), 1, -1, 1).expand(-1, logits.size(1), -1, 1)
    emit = fastemit_emission(log_probs.gather(3, index), fastemit_lambda)
    return torch.cat([log_probs[..., blank : blank + 1], emit], dim=3).contiguous()


def _validate(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int,
) -> tuple[list[int], list[int]]:
    """Check shapes, lengths and label ids; return the lengths as Python lists."""
    if logits.dim() != 4:
        raise ValueError(f"logits must have shape (B, T, U+1, V), got {tuple(logits.shape)}")
    batch, max_t, max_u1, vocab = logits.shape
    if batch == 0:
        raise ValueError("rnnt_loss needs a non-empty batch")
    if targets.dim() != 2 or targets.size(0) != batch:
        raise ValueError(f"targets must have shape ({batch}, U), got {tuple(targets.shape)}")
    for name, x in (
        ("targets", targets),
        ("logit_lengths", logit_lengths),
        ("target_lengths", target_lengths),
    ):
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor, got {x.dtype}")
    for name, x in (("logit_lengths", logit_lengths), ("target_lengths", target_lengths)):
        if tuple(x.shape) != (batch,):
            raise ValueError(f"{name} must have shape ({batch},), got {tuple(x.shape)}")
    if not 0 <= blank < vocab:
        raise ValueError(f"blank id {blank} is outside the vocabulary [0, {vocab})")

    t_lens = logit_lengths.tolist()
    u_lens = target_lengths.tolist()
    u_cap = min(targets.size(1), max_u1 - 1)
    for b, (t_len, u_len) in enumerate(zip(t_lens, u_lens)):
        if not 1 <= t_len <= max_t:
            raise ValueError(
                f"batch index {b}: logit length {t_len} is outside [1, {max_t}] "
                f"(logits have {max_t} frames)"
            )
        if not 0 <= u_len <= u_cap:
            raise ValueError(
                f"batch index {b}: target length {u_len} is outside [0, {u_cap}] "
                f"(targets {tuple(targets.shape)}, logits U+1 = {max_u1})"
            )

    positions = torch.arange(targets.size(1), device=targets.device)
    valid = positions.unsqueeze(0) < target_lengths.to(targets.device).unsqueeze(1)
    bad = valid & ((targets == blank) | (targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        b, u = (int(i) for i in bad.nonzero()[0])
        label = int(targets[b, u])
        what = "the blank id" if label == blank else f"outside [0, {vocab})"
        raise ValueError(f"batch index {b}: target {u} has label {label}, which is {what}")
    return t_lens, u_lens


def _torchaudio_mishandles_empty_targets(device: torch.device) -> bool:
    """Where torchaudio's RNN-T kernel gets an empty target wrong (seen on CUDA, not on CPU)."""
    return device.type == "cuda"


def _empty_target_costs(
    scores: torch.Tensor,
    lengths_t: torch.Tensor,
    lengths_u: torch.Tensor,
    costs: torch.Tensor,
    blank: int,
    fused_log_softmax: bool,
) -> torch.Tensor:
    """``costs`` with every empty-target row replaced by its exact NLL.

    An empty target's lattice has one path, blank at each of its frames in row u = 0:
    -sum_t log P(blank | t, 0). torchaudio 2.11's CUDA kernel returned 0 for such a row on
    an H200 (its CPU kernel and warp-rnnt are right), which would drop from GPU training
    the silence clips a model learns to emit nothing from; so it is computed here, and the
    kernel's own gradient for those rows is dropped (:class:`_KeepRowsGradient`): with
    log-prob input (FastEmit) it was wrong there too.
    """
    first_row = scores[:, :, 0]  # (B, T, V), or (B, T, 2) two-arc log-probs
    log_probs = torch.log_softmax(first_row, dim=-1) if fused_log_softmax else first_row
    frames = torch.arange(scores.size(1), device=scores.device) < lengths_t.unsqueeze(1)
    blank_path = -(log_probs[..., blank] * frames).sum(dim=1)
    return torch.where(lengths_u == 0, blank_path, costs)


@float32_outside_autocast
def rnnt_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = 0,
    reduction: str = "mean",
    backend: str = "auto",
    fastemit_lambda: float = 0.0,
) -> torch.Tensor:
    """RNN-T negative log-likelihood from joint-network logits.

    Padding beyond the lengths is allowed in every input: logits are cut to the
    longest utterance/target of the batch (both backends require that), and padded
    target positions may hold any value (e.g. ESPnet's -1). Lengths are read on the
    host, which synchronises a CUDA stream once per call.

    Args:
        logits: joint-network output before log-softmax (B, T, U+1, V), e.g. float16
            from a joint run under autocast; the loss (log-softmax included) is
            computed in float32 with autocast disabled, whatever the input dtype.
        targets: label ids (B, U), padded beyond ``target_lengths``; valid labels must
            be in [0, V) and differ from ``blank``.
        logit_lengths: encoder frames per utterance (B,), each in [1, T].
        target_lengths: labels per utterance (B,), each at most U and at most the
            logits' third dimension minus one.
        blank: blank id.
        reduction: ``"mean"`` (sum over the batch / B, ESPnet's convention and what the
            model should use), ``"sum"``, or ``"none"`` (per-utterance losses (B,)).
        backend: ``"auto"``, ``"torchaudio"`` or ``"warp_rnnt"`` (see
            :func:`resolve_rnnt_backend`).
        fastemit_lambda: FastEmit weight lambda >= 0 (module doc); it changes the
            gradient only. 0 (default) is the plain loss, bit for bit.

    Returns:
        float32 loss: a scalar, or (B,) for ``reduction="none"``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    check_fastemit_lambda(fastemit_lambda)
    chosen = resolve_rnnt_backend(backend, logits.device)
    t_lens, u_lens = _validate(logits, targets, logit_lengths, target_lengths, blank)

    max_t, max_u = max(t_lens), max(u_lens)
    device = logits.device
    logits = logits[:, :max_t, : max_u + 1].float().contiguous()
    targets = targets[:, :max_u].to(device)
    lengths_u = target_lengths.to(device=device, dtype=torch.int32)
    valid = torch.arange(max_u, device=device).unsqueeze(0) < lengths_u.unsqueeze(1)
    # Padded positions become blank: warp-rnnt's gather indexes with every entry.
    targets = torch.where(valid, targets, blank).to(torch.int32).contiguous()
    lengths_t = logit_lengths.to(device=device, dtype=torch.int32)
    # With FastEmit the backends get log-probs of the two-arc lattice (blank 0, label 1).
    fused_log_softmax = fastemit_lambda == 0
    if fused_log_softmax:
        scores = logits
    else:
        scores = _two_arc_log_probs(logits, targets, blank, fastemit_lambda)
        targets, blank = torch.ones_like(targets), 0

    if chosen == "warp_rnnt":
        costs = _warp_rnnt().rnnt_loss(
            torch.log_softmax(scores, dim=-1) if fused_log_softmax else scores,
            targets,
            lengths_t,
            lengths_u,
            reduction="none",
            blank=blank,
            gather=True,
        )
    else:
        # torchaudio's CUDA kernel gets empty targets wrong (_empty_target_costs): its value
        # and gradient for those rows are replaced.
        patch_empty = _torchaudio_mishandles_empty_targets(device) and 0 in u_lens
        costs = torchaudio.functional.rnnt_loss(
            _KeepRowsGradient.apply(scores, lengths_u > 0) if patch_empty else scores,
            targets,
            lengths_t,
            lengths_u,
            blank=blank,
            reduction="none",
            fused_log_softmax=fused_log_softmax,
        )
        if patch_empty:
            costs = _empty_target_costs(scores, lengths_t, lengths_u, costs, blank,
                                        fused_log_softmax)
    if reduction == "none":
        return costs
    total = costs.sum()
    return total / len(t_lens) if reduction == "mean" else total
