"""Losses of the dual-mode model: sp-KD / mse distillation (paper Eq. 10-12) and RNN-T
(full joint via torchaudio / warp-rnnt, or the memory-efficient pruned RNN-T)."""

from espnet2_dualmode.losses.distillation import mse_distill_loss, sp_kd_loss
from espnet2_dualmode.losses.pruned_transducer import (
    SimpleJoiner,
    pruned_rnnt_loss,
    warmup_loss_scales,
)
from espnet2_dualmode.losses.transducer import resolve_rnnt_backend, rnnt_loss

__all__ = ["sp_kd_loss", "mse_distill_loss", "rnnt_loss", "resolve_rnnt_backend",
           "pruned_rnnt_loss", "SimpleJoiner", "warmup_loss_scales"]
