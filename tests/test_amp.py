"""The training objective under mixed precision (ESPnet's ``--use_amp true``), on CPU.

ESPnet's trainer runs the whole forward pass, training and validation, under
``torch.autocast`` (bfloat16 where the GPU supports it, else float16). These tests run
``torch.autocast("cpu", dtype=...)`` for both dtypes:

* each loss function against a float64 computation on the same inputs: sp-KD and MSE
  distillation (8 x 400 x 256 LayerNorm-scale activations, 1e-3 relative), the full and
  pruned RNN-T losses (1e-5 relative: they run in float32 from the autocast logits /
  projections on), and ESPnet's CTC (1e-3 relative: its projection and, on CPU, its
  log-softmax run in the autocast dtype; CUDA autocast runs log-softmax in float32);
* each debug variant (conf/debug/*.yaml) on 3 utterances of >= 400 encoder frames: every
  reported loss term finite, each distillation term within 1e-3 relative of a float64
  recomputation from the activations the loss saw, the full RNN-T terms within 1e-5 of a
  float64 alpha recursion on the logits they saw, and one Adam step with finite gradients;
  under float16 also a validation (eval-mode) forward.

A float32 Gram matrix computed inside autocast (the code before this file) is checked to
be non-finite under float16 and > 1e-3 off under bfloat16, so these tests can fail.

CPU limitation: oneDNN has no float16 LSTM ("could not create a primitive descriptor"),
while cuDNN has one. Under float16 on CPU the whole-model test therefore runs the
prediction networks' LSTMs in float32 outside autocast (:func:`_float32_lstms`,
test-only); under bfloat16, and on CUDA, they run as in production.

The same tests (but the CPU-only demonstration) also run with ``torch.autocast("cuda")``
under the ``cuda`` marker where a GPU is visible (RNN-T then through warp-rnnt where it
is installed); bfloat16 is skipped on a GPU without it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import torch
from espnet2.asr.ctc import CTC
from espnet2.asr_transducer.joint_network import JointNetwork

import espnet2_dualmode.model as dualmode_model
from espnet2_dualmode.losses import mse_distill_loss, pruned_rnnt_loss, rnnt_loss, sp_kd_loss
from cuda_support import needs_cuda
from espnet2_dualmode.model import EncoderOutputs
from test_losses import _reference_rnnt
from test_model import DEBUG, build, token_list  # noqa: F401  (token_list: fixture)

DTYPES = [torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp16", "bf16"]
DISTILL_REL = 1e-3  # the acceptance bound for distillation terms
RNNT_REL = 1e-5  # float32 loss math vs float64 on the same logits
CTC_REL = 1e-3  # ESPnet's CTC: projection and (CPU) log-softmax in the autocast dtype
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, needs_cuda])]


def _autocast(dtype: torch.dtype, device: str = "cpu") -> torch.autocast:
    """Autocast as ESPnet's trainer uses it (skips bfloat16 on a GPU that lacks it, where
    ESPnet uses float16)."""
    if device == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16 support")
    return torch.autocast(device, dtype=dtype)


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    """|got - ref| / |ref| of two scalars."""
    got, ref = float(got.detach()), float(ref.detach())
    return abs(got - ref) / abs(ref)


def _layer_norm_activations(seed: int, shape=(8, 400, 256)) -> torch.Tensor:
    """Random activations at the scale of a LayerNorm output (zero mean, unit variance)."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.layer_norm(x, shape[-1:])


# ------------------------------------------------------------------- distillation


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_unprotected_gram_fails_under_autocast(dtype: torch.dtype) -> None:
    """What the losses guard against: a float32 Gram inside autocast runs in the autocast
    dtype, and is non-finite (float16) or > 1e-3 off in the sp-KD loss (bfloat16)."""
    teacher, student = _layer_norm_activations(0), _layer_norm_activations(1)

    def unprotected(x: torch.Tensor) -> torch.Tensor:
        q = x.reshape(x.size(0), -1).float()
        return torch.nn.functional.normalize(q @ q.t(), dim=1)

    with _autocast(dtype):
        g_te, g_st = unprotected(teacher), unprotected(student)
    assert g_te.dtype == dtype
    loss = (g_te.double() - g_st.double()).pow(2).sum() / 64
    if dtype == torch.float16:
        assert not bool(torch.isfinite(loss))
    else:
        assert _rel(loss, sp_kd_loss(teacher.double(), student.double())) > DISTILL_REL


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("fn", [sp_kd_loss, mse_distill_loss], ids=["sp_kd", "mse"])
@pytest.mark.parametrize("inputs_in_autocast_dtype", [False, True], ids=["f32_in", "half_in"])
def test_distillation_under_autocast_matches_float64(
    dtype: torch.dtype, fn: Callable, inputs_in_autocast_dtype: bool, device: str
) -> None:
    """8 x 400 x 256 LayerNorm-scale activations, padded utterances (mask), float32
    activations or activations already in the autocast dtype: within 1e-3 relative of
    float64 on the same values; gradients finite."""
    teacher = _layer_norm_activations(2).to(device)
    student = _layer_norm_activations(3).to(device)
    if inputs_in_autocast_dtype:
        teacher, student = teacher.to(dtype), student.to(dtype)
    student.requires_grad_(True)
    lengths = torch.tensor([400, 390, 380, 370, 360, 350, 340, 330], device=device)
    mask = torch.arange(400, device=device) < lengths.unsqueeze(1)
    ref = fn(teacher.double(), student.detach().double(), mask)
    with _autocast(dtype, device):
        got = fn(teacher, student, mask)
    assert got.dtype == torch.float32
    assert _rel(got, ref) < DISTILL_REL, (float(got), float(ref))
    got.backward()
    assert student.grad.dtype == student.dtype and bool(torch.isfinite(student.grad).all())


# ------------------------------------------------------------------------ RNN-T, CTC


def _joint_batch(seed: int, device: str, vocab: int = 12, frames: int = 40, labels: int = 8):
    """Float32 joint, encoder/decoder outputs and padded targets (-1) of 3 utterances."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    joint = JointNetwork(vocab, 16, 12, joint_space_size=16)
    enc = torch.randn(3, frames, 16, generator=gen)
    dec = torch.randn(3, labels + 1, 12, generator=gen)
    t_lens, u_lens = torch.tensor([frames, frames - 7, frames - 15]), torch.tensor([labels, 5, 3])
    targets = torch.randint(1, vocab, (3, labels), generator=gen)
    targets[torch.arange(labels) >= u_lens.unsqueeze(1)] = -1
    return tuple(x.to(device) for x in (joint, enc, dec, targets, t_lens, u_lens))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_rnnt_loss_under_autocast_matches_float64_recursion(dtype: torch.dtype, device: str
                                                             ) -> None:
    """The joint runs in the autocast dtype (as in the model); the loss on its logits
    (torchaudio; on CUDA warp-rnnt where installed) is within 1e-5 relative of a float64
    alpha recursion on the same logits."""
    joint, enc, dec, targets, t_lens, u_lens = _joint_batch(0, device)
    with _autocast(dtype, device):
        logits = joint(enc.unsqueeze(2), dec.unsqueeze(1))
        got = rnnt_loss(logits, targets, t_lens, u_lens, reduction="none")
    assert logits.dtype == dtype and got.dtype == torch.float32
    for b in range(3):
        ref = _reference_rnnt(logits[b].detach().cpu(), targets[b, : u_lens[b]].tolist(),
                              int(t_lens[b]))
        assert _rel(got[b], ref) < RNNT_REL, (b, float(got[b]), float(ref))
    got.sum().backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in joint.parameters())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("inputs_in_autocast_dtype", [False, True], ids=["f32_in", "half_in"])
def test_pruned_rnnt_loss_under_autocast_matches_float64(
    dtype: torch.dtype, inputs_in_autocast_dtype: bool, device: str
) -> None:
    """Simple and pruned terms within 1e-5 relative of the same loss run in float64 on the
    same inputs (a float64 copy of the joint); gradients finite."""
    joint, enc, dec, targets, t_lens, u_lens = _joint_batch(1, device)
    if inputs_in_autocast_dtype:
        enc, dec = enc.to(dtype), dec.to(dtype)
    joint64 = JointNetwork(12, 16, 12, joint_space_size=16).to(device, torch.float64)
    joint64.load_state_dict(joint.state_dict())
    _, ref = pruned_rnnt_loss(joint64, enc.double(), dec.double(), targets, t_lens, u_lens,
                              s_range=4)
    with _autocast(dtype, device):
        total, got = pruned_rnnt_loss(joint, enc, dec, targets, t_lens, u_lens, s_range=4)
    for part in ("simple", "pruned"):
        assert got[part].dtype == torch.float32
        assert _rel(got[part], ref[part]) < RNNT_REL, (part, float(got[part]))
    total.backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in joint.parameters())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_espnet_ctc_under_autocast_matches_float64(dtype: torch.dtype, device: str) -> None:
    """ESPnet's CTC (used as is) on 400 encoder frames: within 1e-3 relative of a float64
    copy of the same module on the same encoder output."""
    gen = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    ctc = CTC(odim=12, encoder_output_size=32).to(device)
    ctc64 = CTC(odim=12, encoder_output_size=32).to(device, torch.float64)
    ctc64.load_state_dict(ctc.state_dict())
    hs = _layer_norm_activations(5, (3, 400, 32)).to(device)
    hlens = torch.tensor([400, 380, 350], device=device)
    ys = torch.randint(1, 12, (3, 20), generator=gen).to(device)
    ys_lens = torch.tensor([20, 15, 12], device=device)
    ref = ctc64(hs.double(), hlens, ys, ys_lens)
    with _autocast(dtype, device):
        got = ctc(hs, hlens, ys, ys_lens)
    assert bool(torch.isfinite(got))
    assert _rel(got, ref) < CTC_REL, (float(got), float(ref))


# ------------------------------------------------------------------- whole variants


def _float32_lstms(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every LSTM of ``model`` in float32 outside autocast (CPU has no float16 LSTM)."""
    for module in model.modules():
        if isinstance(module, torch.nn.LSTM):
            def forward(x: torch.Tensor, hx: Optional[Tuple[torch.Tensor, ...]] = None,
                        _lstm_forward: Callable = module.forward) -> Any:
                with torch.autocast("cpu", enabled=False):
                    hx = None if hx is None else tuple(h.float() for h in hx)
                    return _lstm_forward(x.float(), hx)
            monkeypatch.setattr(module, "forward", forward)


def _record(calls: List[Dict[str, Any]], fn: Callable) -> Callable:
    """``fn`` that appends its name, arguments and result to ``calls``."""
    def recorded(*args, **kwargs):
        out = fn(*args, **kwargs)
        calls.append({"name": fn.__name__, "args": args, "out": out})
        return out
    return recorded


def _to_float64(x: Any) -> Any:
    """Floating tensors (also inside lists/EncoderOutputs) in float64, detached."""
    if isinstance(x, torch.Tensor):
        return x.detach().double() if x.is_floating_point() else x
    if isinstance(x, EncoderOutputs):
        return EncoderOutputs(*(_to_float64(v) for v in x))
    if isinstance(x, list):
        return [_to_float64(v) for v in x]
    return x


def _long_batch(device: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """3 utterances of 16.1-16.4 s: >= 400 encoder frames after x4 subsampling (hop 160)."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([262400, 259000, 257600])
    speech = torch.randn(3, int(lengths.max()), generator=gen)
    text = torch.tensor([[2, 3, 4, 5, 6, 7, 8, 9], [9, 8, 7, 6, 5, 4, -1, -1],
                         [3, 5, 7, 9, 2, -1, -1, -1]])
    return tuple(x.to(device) for x in (speech, lengths, text, torch.tensor([8, 6, 5])))


def _checked_forward(model: dualmode_model.DualModeASRModel, dtype: torch.dtype, device: str,
                     monkeypatch: pytest.MonkeyPatch) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The model's forward on :func:`_long_batch` under autocast, checked term by term.

    Every reported loss term (and validation error rate) is finite; each full RNN-T term is
    within RNNT_REL of a float64 alpha recursion on the logits it was given; each
    distillation term (and their sum) is within DISTILL_REL of the model's own distillation
    method rerun in float64 on the activations it was given.

    Returns:
        The loss and the relative error of each checked term.
    """
    rnnt_calls: List[Dict[str, Any]] = []
    ed_calls: List[Dict[str, Any]] = []
    dd_calls: List[Dict[str, Any]] = []
    monkeypatch.setattr(dualmode_model, "rnnt_loss", _record(rnnt_calls, rnnt_loss))
    for method, calls in (("_encoder_distill_loss", ed_calls),
                          ("_decoder_distill_loss", dd_calls)):
        original = getattr(type(model), method).__get__(model)
        monkeypatch.setattr(model, method, _record(calls, original))

    speech, lengths, text, text_lengths = _long_batch(device)
    torch.manual_seed(1)
    with _autocast(dtype, device):
        loss, stats, _ = model(speech, lengths, text, text_lengths)

    assert min(int(c["args"][2].min()) for c in rnnt_calls) >= 400  # encoder frames
    reported = {k: v for k, v in stats.items() if k.startswith(("loss", "cer_"))}
    assert all(math.isfinite(float(v)) for v in reported.values()), reported
    errors = {}

    # Each full RNN-T term against a float64 alpha recursion on the logits it was given.
    for i, call in enumerate(rnnt_calls):
        logits, targets, t_lens, u_lens = call["args"][:4]
        assert logits.dtype == dtype
        ref = sum(_reference_rnnt(logits[b].detach().cpu(), targets[b, : u_lens[b]].tolist(),
                                  int(t_lens[b])) for b in range(logits.size(0))) / logits.size(0)
        errors[f"rnnt_loss call {i}"] = _rel(call["out"], ref)

    # Each distillation term against float64 from the activations the loss saw.
    refs = {}
    for key, calls in ((f"loss_{model.encoder_distill}_ed", ed_calls), ("loss_sp_dd", dd_calls)):
        if calls:
            (call,) = calls
            refs[key] = getattr(type(model), call["name"])(
                model, *[_to_float64(a) for a in call["args"]])
            assert refs[key].dtype == torch.float64
    if refs:
        refs["loss_dist"] = sum(refs.values())
    assert set(refs) == set(stats) & {"loss_sp_ed", "loss_mse_ed", "loss_sp_dd", "loss_dist"}
    errors.update({key: _rel(stats[key], ref) for key, ref in refs.items()})

    bound = {k: RNNT_REL if k.startswith("rnnt") else DISTILL_REL for k in errors}
    assert all(errors[k] < bound[k] for k in errors), errors
    return loss, errors


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", sorted(DEBUG))
def test_debug_variant_under_autocast(name: str, dtype: torch.dtype, device: str,
                                      token_list,  # noqa: F811
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A training step of each variant under autocast (see :func:`_checked_forward`) with
    finite gradients and updated parameters; under float16 also a validation forward
    (eval mode: the same terms plus the greedy error rates; bfloat16 has float32's
    range, and the greedy search makes it the slow part of this test)."""
    model = build(DEBUG[name], token_list).to(device)
    if device == "cpu" and dtype == torch.float16:
        _float32_lstms(model, monkeypatch)
    loss, _ = _checked_forward(model, dtype, device, monkeypatch)

    # One optimizer step (backward outside autocast, as ESPnet's trainer does).
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss.backward()
    with_grad = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    assert with_grad
    bad = [n for n, p in with_grad if not bool(torch.isfinite(p.grad).all())]
    assert not bad, bad
    opt.step()
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())

    if dtype == torch.float16:
        model.eval()
        with torch.no_grad():
            _checked_forward(model, dtype, device, monkeypatch)
