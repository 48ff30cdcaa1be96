"""The shared-weights Dual-mode model (issue 13, item 1): the encoder's two modes (batch
invariance, causality, causal convolution, per-mode norms), its incremental streaming path,
the in-place KD term against a float64 loop, a training step through the task, and streaming
recognition through the unchanged inference code."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from espnet2_dualmode.encoders.dualmode_conformer import NORMS, DualModeConformerEncoder
from espnet2_dualmode.inference.offline import Speech2Text
from espnet2_dualmode.model_shared import inplace_kd_loss
from espnet2_dualmode.tasks.dualmode_asr import DualModeASRTask
from test_inference import assert_streaming_equals_offline_head, corpus_items
from test_latency_metric import measure_with_segments
from tiny_corpus import overfit_toy_model

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "conf" / "debug" / "dualmode_shared.yaml"
TOKENS = ["<blank>", "<unk>"] + list("abcdefgh") + ["<sos/eos>"]
ATOL = 1e-4  # float32 encoders of a few layers, as in test_encoders.py
F = 20


def encoder(chunk_size: int = 1, kernel: int = 7, channels=None) -> DualModeConformerEncoder:
    torch.manual_seed(0)
    return DualModeConformerEncoder(F, 32, 2, 64, 2, 0.0, 0.0, 0.0, kernel,
                                    chunk_size=chunk_size, subsampling_channels=channels).eval()


def feats(batch: int = 2, frames: int = 90, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, frames, F, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def token_list(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokens.txt"
    path.write_text("\n".join(TOKENS) + "\n")
    return path


def build(token_list: Path, **model_conf):
    args = DualModeASRTask.get_parser().parse_args(
        ["--config", str(CONFIG), "--token_list", str(token_list), "--token_type", "char"])
    args.model_conf.update(model_conf)
    torch.manual_seed(0)
    return DualModeASRTask.build_model(args), args


# ----- encoder ------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [1, 3])
@pytest.mark.parametrize("streaming", [True, False])
def test_both_modes_are_batch_invariant(chunk_size, streaming):
    enc = encoder(chunk_size)
    x = feats(3)
    lens = torch.tensor([90, 61, 30])
    x[1, 61:] = 100.0  # padding that would show if it leaked
    x[2, 30:] = -100.0
    ys, olens, _ = enc.forward_layers(x, lens, streaming)
    for b in range(3):
        alone, _, _ = enc.forward_layers(x[b:b + 1, : lens[b]], lens[b:b + 1], streaming)
        torch.testing.assert_close(ys[b, : olens[b]], alone[0], atol=ATOL, rtol=0)


def test_both_modes_at_once_equal_each_mode_alone():
    """forward_both (one subsampling for the two modes, what training runs) against the two
    single-mode passes, every layer, padded batch."""
    enc = encoder(3)
    x = feats(3)
    lens = torch.tensor([90, 61, 30])
    (stream, stream_layers), (full, full_layers), olens = enc.forward_both(x, lens)
    for streaming, ys, layers in ((True, stream, stream_layers), (False, full, full_layers)):
        want, want_lens, want_layers = enc.forward_layers(x, lens, streaming)
        torch.testing.assert_close(olens, want_lens, atol=0, rtol=0)
        torch.testing.assert_close(ys, want, atol=ATOL, rtol=0)
        assert len(layers) == len(want_layers)
        for got, ref in zip(layers, want_layers):
            torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    assert (stream - full).abs().max() > 1e-2  # the two outputs are not one mode twice


@pytest.mark.parametrize("channels", [None, 6], ids=["conv_d", "conv_6"])
@pytest.mark.parametrize("chunk_size", [1, 4])
def test_incremental_equals_parallel_streaming_mode_for_any_chunking(chunk_size, channels):
    enc = encoder(chunk_size, channels=channels)
    x = feats(2, 97)
    want, olens, _ = enc.forward_layers(x, torch.tensor([97, 97]), streaming=True)
    full, _, _ = enc.forward_layers(x, torch.tensor([97, 97]), streaming=False)
    assert (want - full).abs().max() > 1e-2  # the modes differ: the comparison can fail
    for chunk in (1, 4, 7, 13, 97):
        state = enc.init_state(2)
        outs = []
        for start in range(0, 97, chunk):
            out, state = enc.forward_incremental(x[:, start:start + chunk], state,
                                                 is_final=start + chunk >= 97)
            outs.append(out)
        got = torch.cat(outs, dim=1)
        assert got.shape == want.shape, chunk
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    with pytest.raises(RuntimeError, match="after is_final"):
        enc.forward_incremental(x[:, :4], state)


def test_incremental_emits_a_frame_once_its_chunk_has_arrived():
    enc = encoder(chunk_size=3)
    state = enc.init_state(1)
    out, state = enc.forward_incremental(feats(1, 4 * 5 + 3), state)  # 5 subsampled frames
    assert out.size(1) == 3  # frames 0-2: chunk 0 complete; frames 3-4 wait for frame 5
    out, state = enc.forward_incremental(feats(1, 4), state)
    assert out.size(1) == 3


@pytest.mark.parametrize("chunk_size", [1, 3])
def test_streaming_mode_is_causal_up_to_its_chunk(chunk_size):
    """Changing features after what frame t may see leaves frames <= t unchanged; changing
    the last feature frame t may see changes it (the bound is tight); the full-context mode
    sees everything."""
    enc = encoder(chunk_size)
    x = feats(1, 120)
    lens = torch.tensor([120])
    base_s, _, _ = enc.forward_layers(x, lens, streaming=True)
    base_f, _, _ = enc.forward_layers(x, lens, streaming=False)
    for t in (2, 10, 17):
        chunk_end = (t // chunk_size + 1) * chunk_size  # frames < chunk_end are visible
        last_feature = 4 * (chunk_end - 1) + 6  # the x4 subsampling's receptive field
        later = x.clone()
        later[:, last_feature + 1:] += 5.0
        ys, _, _ = enc.forward_layers(later, lens, streaming=True)
        torch.testing.assert_close(ys[:, :chunk_end], base_s[:, :chunk_end], atol=1e-6, rtol=0)
        yf, _, _ = enc.forward_layers(later, lens, streaming=False)
        assert (yf[:, :chunk_end] - base_f[:, :chunk_end]).abs().max() > 1e-3
        edge = x.clone()
        edge[:, last_feature] += 5.0
        ys, _, _ = enc.forward_layers(edge, lens, streaming=True)
        assert (ys[:, chunk_end - 1] - base_s[:, chunk_end - 1]).abs().max() > 1e-3


@pytest.mark.parametrize("kernel", [7, 15])
def test_streaming_convolution_is_the_symmetric_kernel_masked_to_its_left_taps(kernel):
    """The convolution module of each mode against torch's Conv1d with the symmetric kernel,
    masked (streaming) to its left (k + 1) / 2 taps, on 'same' zero padding."""
    layer = encoder(kernel=kernel).encoders[0]
    with torch.no_grad():
        layer.depthwise_conv.bias.normal_()
    x = torch.randn(2, 25, 32)
    valid = torch.ones(2, 25, dtype=torch.bool)
    mask = torch.zeros(kernel)
    mask[: (kernel + 1) // 2] = 1.0  # taps t - (k-1)/2 ... t
    for streaming, taps in ((True, mask), (False, torch.ones(kernel))):
        norms = layer.norms["stream" if streaming else "full"]
        left = x.new_zeros(2, layer.context, 32)
        got, _ = layer._conv(x, norms, valid, left, 0 if streaming else layer.context, streaming)
        g = torch.nn.functional.glu(layer.pointwise_conv1(norms["conv"](x)), dim=-1)
        c = torch.nn.functional.conv1d(g.transpose(1, 2), layer.depthwise_conv.weight * taps,
                                       layer.depthwise_conv.bias, padding=kernel // 2,
                                       groups=32).transpose(1, 2)
        want = x + layer.pointwise_conv2(torch.nn.functional.silu(norms["conv_inner"](c)))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert layer.conv_kernel(True).size(-1) == (kernel + 1) // 2


def test_each_mode_has_its_own_norms_and_trains_only_them(token_list):
    model, _ = build(token_list)
    params = {id(p) for p in model.parameters()}
    for layer in model.encoder.encoders:
        for name in NORMS:
            full, stream = layer.norms["full"][name], layer.norms["stream"][name]
            assert full.weight is not stream.weight and full.bias is not stream.bias
            assert {id(full.weight), id(stream.weight)} <= params
    # A loss on the streaming mode alone gives gradients to the streaming norms only.
    x = feats(1, 60)
    out, _, _ = model.encoder.forward_layers(x, torch.tensor([60]), streaming=True)
    out.square().sum().backward()
    for layer in model.encoder.encoders:
        for name in NORMS:
            assert layer.norms["full"][name].weight.grad is None
            assert layer.norms["stream"][name].weight.grad.abs().sum() > 0
    assert model.encoder.encoders[0].self_attn.linear_q.weight.grad.abs().sum() > 0  # shared


# ----- in-place KD ----------------------------------------------------------------------------
def reference_kd(student, teacher, targets, t_lens, u_lens, shift, blank=0) -> float:
    """KL(teacher || student) over (label, blank, 1 - both), node by node in float64."""
    total = 0.0
    for b in range(student.size(0)):
        for t in range(int(t_lens[b])):
            src = t - shift
            if not 0 <= src < int(t_lens[b]):
                continue
            for u in range(int(u_lens[b]) + 1):
                ps = student[b, t, u].double().softmax(-1)
                pt = teacher[b, src, u].double().softmax(-1)
                if u < int(u_lens[b]):
                    y = int(targets[b, u])
                    qs = [ps[y], ps[blank], 1 - ps[y] - ps[blank]]
                    qt = [pt[y], pt[blank], 1 - pt[y] - pt[blank]]
                else:
                    qs, qt = [ps[blank], 1 - ps[blank]], [pt[blank], 1 - pt[blank]]
                total += sum(float(p * torch.log(p / q)) for p, q in zip(qt, qs))
    return total / student.size(0)


@pytest.mark.parametrize("shift", [-2, 0, 1, 3])
def test_inplace_kd_matches_a_float64_loop(shift):
    g = torch.Generator().manual_seed(shift + 10)
    B, T, U, V = 3, 7, 4, 6
    student = torch.randn(B, T, U + 1, V, generator=g, dtype=torch.float64) * 2
    teacher = torch.randn(B, T, U + 1, V, generator=g, dtype=torch.float64) * 2
    targets = torch.randint(1, V, (B, U), generator=g)
    t_lens, u_lens = torch.tensor([7, 5, 3]), torch.tensor([4, 2, 0])
    targets[1, 2:] = 0  # padding (blank) must not matter
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    got = inplace_kd_loss(student, teacher, targets, t_lens, u_lens, shift=shift)
    want = reference_kd(student.detach(), teacher.detach(), targets, t_lens, u_lens, shift)
    assert float(got.detach()) == pytest.approx(want, rel=1e-9)
    assert want > 0.1
    got.backward()
    assert teacher.grad is None  # the teacher is detached
    assert student.grad.abs().sum() > 0
    # Padded nodes get no gradient.
    assert student.grad[2, 3:].abs().sum() == 0 and student.grad[1, :, 3:].abs().sum() == 0


def test_inplace_kd_is_zero_for_identical_modes_and_float32_matches():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, 7, generator=g)
    targets = torch.randint(1, 7, (2, 2), generator=g)
    lens = (torch.tensor([5, 4]), torch.tensor([2, 1]))
    assert float(inplace_kd_loss(logits, logits, targets, *lens)) == pytest.approx(0, abs=1e-6)
    other = torch.randn(2, 5, 3, 7, generator=g)
    want = reference_kd(logits, other, targets, *lens, shift=1)
    assert float(inplace_kd_loss(logits, other, targets, *lens, shift=1)) == pytest.approx(
        want, rel=1e-5)


# ----- model through the task ---------------------------------------------------------------
def batch():
    g = torch.Generator().manual_seed(0)
    speech = torch.randn(3, 12000, generator=g)
    text = torch.tensor([[2, 3, 4, 5, 6], [7, 8, 9, -1, -1], [4, 2, -1, -1, -1]])
    return speech, torch.tensor([12000, 8000, 3000]), text, torch.tensor([5, 3, 2])


def test_training_step_of_the_debug_config(token_list):
    model, _ = build(token_list, inplace_kd_weight=0.7)
    model.train()
    loss, stats, _ = model(*batch())
    stats = {k: float(v) for k, v in stats.items()}
    assert set(stats) == {"loss", "loss_onl", "loss_off", "loss_rnnt", "loss_inplace_kd"}
    assert all(np.isfinite(v) for v in stats.values())
    # equal weights of the two modes, lambda_kd on L_kd (Algorithm 1)
    assert stats["loss"] == pytest.approx(stats["loss_onl"] + stats["loss_rnnt"]
                                          + 0.7 * stats["loss_inplace_kd"], rel=1e-6)
    assert stats["loss_onl"] != pytest.approx(stats["loss_rnnt"], rel=1e-3)  # two modes
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    opt.step()
    model.eval()
    _, stats, _ = model(*batch())
    assert {"cer_onl", "cer_rnnt"} <= set(stats)


def test_full_context_heads_on_the_shared_encoder(token_list):
    args = DualModeASRTask.get_parser().parse_args(
        ["--config", str(CONFIG), "--token_list", str(token_list), "--ctc", "ctc"])
    args.model_conf["ctc_weight"] = 0.3
    torch.manual_seed(0)
    model = DualModeASRTask.build_model(args)
    loss, stats, _ = model(*batch())
    assert stats["loss_off"] == pytest.approx(float(stats["loss_rnnt"])
                                              + 0.3 * float(stats["loss_ctc"]), rel=1e-6)


def test_ctc_warmup_trains_the_one_ctc_head_on_both_modes(token_list):
    """ctc_warmup_iters on the shared model: L_ctc(streaming) + L_ctc(full) through the one
    CTC head, each against ESPnet's CTC on that mode's encoder output; the RNN-T untouched;
    then the whole objective."""
    args = DualModeASRTask.get_parser().parse_args(
        ["--config", str(CONFIG), "--token_list", str(token_list), "--ctc", "ctc"])
    args.model_conf.update(ctc_weight=0.3, ctc_warmup_iters=2)
    torch.manual_seed(0)
    model = DualModeASRTask.build_model(args)
    speech, lengths, text, text_lengths = batch()
    model.train()
    for step in (1, 2):
        model.zero_grad()
        loss, stats, _ = model(speech, lengths, text, text_lengths)
        assert set(stats) == {"loss", "loss_ctc", "loss_stream_ctc"}
        with torch.no_grad():
            enc = model.encode_features(*model.features(speech, lengths))
            want = {mode: float(model.ctc(out, enc.lengths, text, text_lengths))
                    for mode, out in (("stream", enc.stream), ("full", enc.full))}
        assert float(stats["loss_stream_ctc"]) == pytest.approx(want["stream"], rel=1e-5)
        assert float(stats["loss_ctc"]) == pytest.approx(want["full"], rel=1e-5)
        assert want["stream"] != pytest.approx(want["full"], rel=1e-3)  # two modes
        assert float(loss.detach()) == pytest.approx(want["stream"] + want["full"], rel=1e-5)
        loss.backward()
        assert all(p.grad is None for p in model.stream_decoder.parameters())
        assert all(p.grad is None for p in model.stream_joint.parameters())
        stream_norm = model.encoder.encoders[0].norms["stream"]
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0
                   for p in stream_norm.parameters())  # the streaming mode trains too
        assert int(model.train_iters) == step
    _, stats, _ = model(speech, lengths, text, text_lengths)
    assert {"loss_onl", "loss_rnnt", "loss_ctc", "loss_inplace_kd"} <= set(stats)


@pytest.mark.parametrize("dtype,rel", [(torch.bfloat16, 5e-3), (torch.float16, 5e-4)],
                         ids=["bf16", "fp16"])
def test_ctc_warmup_under_autocast(token_list, dtype, rel):
    """The warm-up step as ESPnet's --use_amp runs it (CPU autocast): both CTC terms within
    ``rel`` of the same model's float32 step (seen by hand: bf16 5.4e-4, fp16 2.6e-5), and
    finite gradients."""
    args = DualModeASRTask.get_parser().parse_args(
        ["--config", str(CONFIG), "--token_list", str(token_list), "--ctc", "ctc"])
    args.model_conf.update(ctc_weight=0.3, ctc_warmup_iters=5)
    torch.manual_seed(0)
    model = DualModeASRTask.build_model(args).train()
    inputs = batch()
    _, ref, _ = model(*inputs)
    with torch.autocast("cpu", dtype=dtype):
        loss, stats, _ = model(*inputs)
    assert set(stats) == {"loss", "loss_ctc", "loss_stream_ctc"}
    for key in ("loss_ctc", "loss_stream_ctc", "loss"):
        assert float(stats[key]) == pytest.approx(float(ref[key]), rel=rel), key
    loss.backward()
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)


def test_bad_configurations_are_refused(token_list):
    with pytest.raises(ValueError, match="not supported"):
        build(token_list, encoder_distill="sp")
    with pytest.raises(ValueError, match="shared_rnnt must be true"):
        build(token_list, shared_rnnt=False)


# ----- inference through the unchanged inference code ----------------------------------------
@pytest.fixture(scope="module")
def toy_shared_model(toy_corpus, tmp_path_factory):
    """The debug model overfitted to the toy corpus (every head's greedy output exact)."""
    return overfit_toy_model(toy_corpus, CONFIG, tmp_path_factory.mktemp("shared_exp"))


@pytest.mark.parametrize("head", ["streaming_rnnt", "rnnt"])
def test_both_modes_recognise_the_training_targets(toy_shared_model, toy_corpus, head):
    """``streaming_rnnt``: the streaming mode; ``rnnt``: the full-context mode, both with the
    shared RNN-T, through the unchanged offline inference code."""
    s2t = Speech2Text(toy_shared_model["config"], toy_shared_model["model"], decode_head=head,
                      beam_size=4)
    assert s2t.model.offline_rnnt == (s2t.model.stream_decoder, s2t.model.stream_joint)
    wavs, refs = corpus_items(toy_corpus)
    keys = sorted(wavs)
    results = s2t([wavs[k] for k in keys])
    assert {k: r[0].text for k, r in zip(keys, results)} == refs


def test_streaming_recognition_equals_the_offline_streaming_head(toy_shared_model, toy_corpus):
    stream = assert_streaming_equals_offline_head(toy_shared_model["config"],
                                                  toy_shared_model["model"], toy_corpus)
    view = stream.model.stream_encoder
    assert view.select_geometry() == (1, 1, 0)
    with pytest.raises(ValueError, match="streams in chunks"):
        view.select_geometry(block_size=4, hop_size=2)


def test_latency_without_a_ctc_head_measures_latency_at_percentiles(toy_shared_model, toy_corpus,
                                                                    tmp_path):
    """The shared-weights model has no full-context CTC head to align tokens with: the
    per-token emission delay is NaN (said in the log), while RTF and Latency@50/@90 against
    the speech segments are measured for every utterance."""
    result, run, durations, _ = measure_with_segments(toy_shared_model, toy_corpus, tmp_path)
    assert result["utterances"] == len(durations) and result["failed"] == 0
    assert result["tokens"] == 0 and math.isnan(result["emission_delay_p50_ms"])
    assert "no full-context CTC head to align with" in run.stderr
    assert result["latency_utterances"] == len(durations) - 1
    longest = 1000 * max(durations.values())
    assert -longest < result["latency_at50_ms"] <= result["latency_at90_ms"]
    assert result["latency_at90_ms"] < result["algorithmic_latency_ms"] + longest
    assert result["rtf"] > 0
