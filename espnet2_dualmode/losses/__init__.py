"""Losses of the dual-mode model: sp-KD / mse distillation (paper Eq. 10-12) and RNN-T
(full joint via torchaudio / warp-rnnt, or the memory-efficient pruned RNN-T, each with
optional FastEmit: ``fastemit_lambda``). Each runs in float32 outside autocast
(``precision.float32_outside_autocast``), so that mixed precision training
(``--use_amp true``) changes only the networks, not the loss math."""

from espnet2_dualmode.losses.distillation import mse_distill_loss, sp_kd_loss
from espnet2_dualmode.losses.pruned_transducer import pruned_rnnt_loss
from espnet2_dualmode.losses.transducer import fastemit_emission, resolve_rnnt_backend, rnnt_loss

__all__ = ["sp_kd_loss", "mse_distill_loss", "rnnt_loss", "resolve_rnnt_backend",
           "pruned_rnnt_loss", "fastemit_emission"]
