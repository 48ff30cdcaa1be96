"""Encoder/decoder-side knowledge distillation losses between two layers.

* :func:`sp_kd_loss` is the similarity-preserving KD loss of the paper, Eq. (10)-(12),
  for ONE teacher/student layer pair (sp-ED and sp-DD). The caller sums it over the
  layer pairs of Eq. (12) and weights it with ``lambda_dist`` (Eq. (13)).
* :func:`mse_distill_loss` is the mean-squared-error baseline (mse-ED).

Both run in float32 (float64 for float64 inputs) with autocast disabled, whatever the
autocast state and input dtype: under float16 autocast the Gram sums of T*D products
overflow, under bfloat16 they are off by ~0.5 %.

Neither function detaches the teacher: gradients flow into both inputs. In the
dual-mode model the non-streaming (teacher) activations are normally passed as
``teacher.detach()`` so that distillation only moves the streaming (student) side;
keeping the choice with the caller lets an experiment train both sides on purpose.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from espnet2_dualmode.losses.precision import float32_outside_autocast


def _validate_mask(name: str, x: torch.Tensor, mask: torch.Tensor) -> None:
    """Check that ``mask`` (B, T) bool fits the first two dimensions of ``x``."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = valid frame), got {mask.dtype}")
    if mask.dim() != 2:
        raise ValueError(f"mask must have shape (B, T), got {tuple(mask.shape)}")
    if x.dim() < 2 or tuple(x.shape[:2]) != tuple(mask.shape):
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} does not start with the mask shape "
            f"{tuple(mask.shape)} (B, T)"
        )


def _zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace padded frames (``mask`` False) of ``x`` (B, T, ...) by exact zeros.

    ``torch.where`` rather than a product, so NaN/inf garbage in padding is removed too.
    """
    frame_mask = mask.to(x.device).reshape(mask.shape + (1,) * (x.dim() - 2))
    return torch.where(frame_mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _similarity(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Row-L2-normalised batch Gram matrix G of Eq. (10)/(11).

    Args:
        x: activations (B, ...); flattened to Q (B, prod(...)).
        eps: lower bound of a row norm, so an all-zero row gives a zero row, not NaN.

    Returns:
        G (B, B) in the dtype of ``x``; the callers pass float32 or float64 outside
        autocast (half-precision Gram sums of T*D products overflow float16).
    """
    q = x.reshape(x.size(0), -1)
    gram = q @ q.transpose(0, 1)
    return torch.nn.functional.normalize(gram, p=2.0, dim=1, eps=eps)


@float32_outside_autocast
def sp_kd_loss(
    teacher: torch.Tensor,
    student: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    eps: float = 1e-12,
) -> torch.Tensor:
    """Similarity-preserving KD loss of one layer pair, paper Eq. (10)-(12).

    Q = H reshaped to (B, T*D); G~ = Q Q^T (B x B); G = G~ with each row divided by
    its L2 norm (Eq. (10) teacher, Eq. (11) student); loss = ||G_te - G_st||_F^2 / B^2
    (Eq. (12), one term of its sum over layer pairs). Teacher and student may differ
    in feature size (D != D') and in trailing shape, because only the B x B similarity
    matrices are compared. The teacher is NOT detached here (see module docstring).

    Args:
        teacher: teacher activations (B, T, D) or more generally (B, ...).
        student: student activations (B, T', D') or (B, ...); same B as the teacher.
        mask: optional (B, T) bool, True = valid frame; both inputs must then start
            with (B, T). Padded frames are zeroed before flattening, so padding
            (whatever its values) does not change the loss.
        eps: lower bound of a row norm in the normalisation.

    Returns:
        Scalar loss tensor (float32, or float64 for float64 inputs).
    """
    for name, x in (("teacher", teacher), ("student", student)):
        if x.dim() < 2:
            raise ValueError(f"{name} must have shape (B, T, ...), got {tuple(x.shape)}")
    if teacher.size(0) != student.size(0):
        raise ValueError(
            f"teacher batch size {teacher.size(0)} != student batch size {student.size(0)}"
        )
    if teacher.size(0) == 0:
        raise ValueError("sp_kd_loss needs a non-empty batch")
    if mask is not None:
        _validate_mask("teacher", teacher, mask)
        _validate_mask("student", student, mask)
        teacher = _zero_padding(teacher, mask)
        student = _zero_padding(student, mask)
    g_te = _similarity(teacher, eps)
    g_st = _similarity(student, eps).to(g_te.device)
    batch = teacher.size(0)
    return (g_te - g_st).pow(2).sum() / (batch * batch)


@float32_outside_autocast
def mse_distill_loss(
    teacher: torch.Tensor,
    student: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Mean squared error between teacher and student activations (mse-ED baseline).

    The mean runs over valid frames and all feature elements: with a mask, the sum of
    squared differences over valid frames divided by (#valid frames * prod(trailing
    dims)). The teacher is NOT detached here (see module docstring).

    Args:
        teacher: teacher activations (B, T, D) (any trailing shape).
        student: student activations of exactly the teacher's shape.
        mask: optional (B, T) bool, True = valid frame.

    Returns:
        Scalar loss tensor (float32, or float64 for float64 inputs).
    """
    if teacher.shape != student.shape:
        raise ValueError(
            f"mse_distill_loss needs equal shapes, got teacher {tuple(teacher.shape)} "
            f"and student {tuple(student.shape)} (project the student first if D' != D)"
        )
    if mask is None:
        return torch.nn.functional.mse_loss(student, teacher, reduction="mean")
    _validate_mask("teacher", teacher, mask)
    n_valid = int(mask.sum())
    if n_valid == 0:
        raise ValueError("mse_distill_loss: the mask marks no valid frame")
    sq = _zero_padding(student - teacher, mask).pow(2)
    return sq.sum() / (n_valid * math.prod(teacher.shape[2:]))
