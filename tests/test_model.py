"""The dual-mode model and task: every config builds, every variant learns, gradients flow
where the paper says and nowhere else, and bad input is named."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from espnet2_dualmode.encoders.conformer_layer import subsampled_lengths
from espnet2_dualmode.encoders.contextual_block_conformer import min_input_frames
from espnet2_dualmode.inference.cli import min_samples
from espnet2_dualmode.inference.decode_list import DecodeList
from espnet2_dualmode.losses import pruned_rnnt_loss
from espnet2_dualmode.tasks.dualmode_asr import CheckedCollateFn, DualModeASRTask, min_speech_samples

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(ROOT.glob("conf/*/*.yaml"))
DEBUG = {p.stem: p for p in CONFIGS if p.parent.name == "debug"}
TOKENS = ["<blank>", "<unk>"] + list("abcdefgh") + ["<sos/eos>"]

# The loss terms each variant must report (its config's enabled heads and distillation).
EXPECTED_STATS = {
    "st1_context_t": {"loss", "loss_onl"},
    "nst1_conformer_t": {"loss", "loss_off", "loss_rnnt"},
    "cascaded_shared_rnnt": {"loss", "loss_onl", "loss_off", "loss_rnnt"},
    "joint": {"loss", "loss_onl", "loss_off", "loss_ctc", "loss_rnnt", "loss_att", "loss_mlm",
              "acc_att", "acc_mlm"},
}
EXPECTED_STATS["joint_sp_dd"] = EXPECTED_STATS["joint"] | {"loss_dist", "loss_sp_dd"}
EXPECTED_STATS["joint_sp_ed"] = EXPECTED_STATS["joint"] | {"loss_dist", "loss_sp_ed"}
EXPECTED_STATS["joint_mse_ed"] = EXPECTED_STATS["joint"] | {"loss_dist", "loss_mse_ed"}
EXPECTED_STATS["dualmode_shared"] = {"loss", "loss_onl", "loss_off", "loss_rnnt", "loss_inplace_kd"}


@pytest.fixture(scope="module")
def token_list(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokens.txt"
    path.write_text("\n".join(TOKENS) + "\n")
    return path


@pytest.fixture(scope="module")
def stats_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stats") / "feats_stats.npz"
    np.savez(path, count=np.array(100.0), sum=np.zeros(80), sum_square=np.full(80, 100.0))
    return path


def build(config: Path, token_list: Path, stats_file: Path = None, **model_conf):
    argv = ["--config", str(config), "--token_list", str(token_list)]
    if stats_file is not None:
        argv += ["--normalize_conf", f"stats_file={stats_file}"]
    args = DualModeASRTask.get_parser().parse_args(argv)
    args.model_conf.update(model_conf)
    torch.manual_seed(0)
    return DualModeASRTask.build_model(args)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    speech = torch.randn(3, 12000, generator=g)
    lengths = torch.tensor([12000, 8000, 3000])
    text = torch.tensor([[2, 3, 4, 5, 6], [7, 8, 9, -1, -1], [4, 2, -1, -1, -1]])
    return speech, lengths, text, torch.tensor([5, 3, 2])


def test_every_config_is_tested():
    assert set(DEBUG) == set(EXPECTED_STATS)
    assert {p.stem for p in CONFIGS if p.parent.name == "paper"} == set(DEBUG)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_yaml_builds(config, token_list, stats_file):
    model = build(config, token_list, stats_file if config.parent.name == "paper" else None)
    name = config.stem
    assert (model.stream_encoder is None) == (name == "nst1_conformer_t")
    assert (model.full_encoder is None) == (name == "st1_context_t")
    if config.parent.name == "paper" and model.stream_encoder is not None:
        enc = model.stream_encoder
        geometry = (1, 1, 0) if name == "dualmode_shared" else (40, 16, 16)  # chunk of 1 frame
        layers = model.encoder.encoders if name == "dualmode_shared" else enc.encoders
        assert (enc.block_size, enc.hop_size, enc.look_ahead, len(layers)) == (*geometry, 12)
        assert model.stream_joint.lin_enc.out_features == 320
        assert model.stream_decoder.dunits == 256


def train_steps(model, steps: int = 12):
    """Adam steps on the fixed batch; returns the losses and the stats of every step."""
    speech, lengths, text, text_lengths = batch()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses, all_stats = [], []
    for _ in range(steps):
        torch.manual_seed(1)  # same MLM masks every step: a fixed objective
        np.random.seed(1)
        loss, stats, _ = model(speech, lengths, text, text_lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        all_stats.append(stats)
    return losses, all_stats


@pytest.mark.parametrize("name", sorted(EXPECTED_STATS))
def test_each_variant_learns_and_reports_its_losses(name, token_list):
    model = build(DEBUG[name], token_list)
    losses, all_stats = train_steps(model)
    assert all(set(stats) == EXPECTED_STATS[name] for stats in all_stats)
    assert losses[-1] < 0.7 * losses[0], losses
    speech, lengths, text, text_lengths = batch()
    model.eval()
    with torch.no_grad():
        _, stats, _ = model(speech, lengths, text, text_lengths)
    cers = {k for k in stats if k.startswith("cer_")}
    expected_cer = {"cer_onl"} if "loss_onl" in EXPECTED_STATS[name] else set()
    expected_cer |= {"cer_rnnt"} if "loss_rnnt" in EXPECTED_STATS[name] else set()
    expected_cer |= {"cer_ctc"} if "loss_ctc" in EXPECTED_STATS[name] else set()
    expected_cer |= {"cer_att"} if "loss_att" in EXPECTED_STATS[name] else set()
    assert cers == expected_cer


def test_pruned_rnnt_loss_option_learns(token_list):
    model = build(DEBUG["joint"], token_list, rnnt_loss_type="pruned", pruned_s_range=3)
    losses, _ = train_steps(model)
    assert losses[-1] < 0.7 * losses[0], losses
    with pytest.raises(ValueError, match="rnnt_loss_type must be full or pruned"):
        build(DEBUG["joint"], token_list, rnnt_loss_type="k2")


def grads(module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_offline_losses_reach_the_streaming_encoder(token_list):
    model = build(DEBUG["joint"], token_list, online_weight=0.0)
    loss, _, _ = model(*batch())
    loss.backward()
    assert grads(model.stream_encoder) > 0


@pytest.mark.parametrize("detach", [True, False])
def test_sp_ed_gradient_goes_to_student_and_teacher_only_without_detach(token_list, detach):
    model = build(DEBUG["joint_sp_ed"], token_list, detach_teacher=detach)
    speech, lengths, _, _ = batch()
    enc = model.encode_features(*model.features(speech, lengths))
    # Only the distillation term: the teacher's grads can come only through L_dist.
    model._encoder_distill_loss(enc).backward()
    assert grads(model.stream_encoder) > 0
    assert (grads(model.full_encoder) > 0) == (not detach)


def test_sp_dd_gradient_goes_to_the_streaming_prediction_net_only(token_list):
    model = build(DEBUG["joint_sp_dd"], token_list)
    speech, lengths, text, text_lengths = batch()
    enc = model.encode_features(*model.features(speech, lengths))
    _, _, hidden = model._att_loss(enc.full, enc.lengths, text, text_lengths)
    pred = model._prediction_states(model.stream_decoder, text, text_lengths)
    model._decoder_distill_loss(hidden, pred, text_lengths).backward()
    assert grads(model.stream_decoder) > 0
    assert grads(model.att_decoder) == 0


def test_encode_returns_both_paths(token_list):
    model = build(DEBUG["joint"], token_list).eval()
    speech, lengths, _, _ = batch()
    with torch.no_grad():
        stream, full, out_lens = model.encode(speech, lengths)
    assert stream.shape == full.shape and stream.shape[0] == 3
    assert out_lens.tolist() == [int(n) for n in out_lens]  # lengths per utterance
    assert int(out_lens.max()) == stream.shape[1]


def build_with_stream_ctc(token_list: Path, weight: float):
    argv = ["--config", str(DEBUG["joint"]), "--token_list", str(token_list), "--stream_ctc", "ctc"]
    args = DualModeASRTask.get_parser().parse_args(argv)
    args.model_conf["stream_ctc_weight"] = weight
    torch.manual_seed(0)
    return DualModeASRTask.build_model(args)


def test_stream_ctc_adds_a_ctc_term_on_the_streaming_encoder(token_list):
    model = build_with_stream_ctc(token_list, 0.5).eval()
    speech, lengths, text, text_lengths = batch()
    with torch.no_grad():
        loss, stats, _ = model(speech, lengths, text, text_lengths)
        enc = model.encode_features(*model.features(speech, lengths))
        # Reference: torch's CTC on the head's log-probs, summed per utterance, batch mean.
        logp = model.stream_ctc.log_softmax(enc.stream).transpose(0, 1)
        ref = torch.nn.functional.ctc_loss(logp, text.clamp(min=0), enc.lengths, text_lengths,
                                           reduction="sum", zero_infinity=True) / 3
    assert abs(float(stats["loss_stream_ctc"]) - float(ref)) < 1e-4 * float(ref)
    assert "cer_stream_ctc" in stats
    # The total is the paper's Eq. (13) plus 0.5 x the streaming CTC term.
    paper = build(DEBUG["joint"], token_list).eval()
    paper.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.startswith("stream_ctc.")})
    with torch.no_grad():
        torch.manual_seed(1), np.random.seed(1)
        loss_paper, _, _ = paper(speech, lengths, text, text_lengths)
        torch.manual_seed(1), np.random.seed(1)
        loss, _, _ = model(speech, lengths, text, text_lengths)
    assert abs(float(loss - loss_paper) - 0.5 * float(ref)) < 1e-3 * float(ref)


def test_ctc_warmup_trains_only_the_ctc_losses_for_its_iterations(token_list):
    argv = ["--config", str(DEBUG["joint"]), "--token_list", str(token_list), "--stream_ctc", "ctc"]
    args = DualModeASRTask.get_parser().parse_args(argv)
    args.model_conf.update(stream_ctc_weight=0.5, ctc_warmup_iters=2)
    model = DualModeASRTask.build_model(args)
    speech, lengths, text, text_lengths = batch()
    model.eval()
    with torch.no_grad():  # validation: the whole objective, and it does not count
        _, stats, _ = model(speech, lengths, text, text_lengths)
    assert "loss_att" in stats and int(model.train_iters) == 0
    model.train()
    for step in (1, 2):
        model.zero_grad()
        loss, stats, _ = model(speech, lengths, text, text_lengths)
        assert set(stats) == {"loss", "loss_ctc", "loss_stream_ctc"}
        assert float(loss.detach()) == pytest.approx(float(stats["loss_ctc"] + stats["loss_stream_ctc"]))
        loss.backward()
        assert grads(model.stream_ctc) > 0 and grads(model.ctc) > 0 and grads(model.stream_encoder) > 0
        assert grads(model.att_decoder) == grads(model.stream_decoder) == 0
        assert int(model.train_iters) == step
    resumed = DualModeASRTask.build_model(args)
    resumed.load_state_dict(model.state_dict())  # the count travels with checkpoints
    resumed.train()
    _, stats, _ = resumed(speech, lengths, text, text_lengths)
    assert {"loss_att", "loss_onl", "loss_stream_ctc"} <= set(stats)
    # without a warm-up the model has no counter, so older checkpoints load strictly
    assert "train_iters" not in build(DEBUG["joint"], token_list).state_dict()


def test_stream_ctc_head_and_weight_go_together(token_list):
    with pytest.raises(ValueError, match="stream_ctc_weight > 0 and the stream_ctc head"):
        build_with_stream_ctc(token_list, 0.0)
    with pytest.raises(ValueError, match="stream_ctc_weight > 0 and the stream_ctc head"):
        build(DEBUG["joint"], token_list, stream_ctc_weight=0.3)
    with pytest.raises(ValueError, match="ctc_warmup_iters > 0 needs the ctc or the stream_ctc"):
        build(DEBUG["nst1_conformer_t"], token_list, ctc_warmup_iters=5)


@pytest.mark.parametrize("change, message", [
    (dict(ctc_weight=0.0), "ctc head is configured but its weight is 0"),
    (dict(encoder_distill="kl"), "encoder_distill must be sp, mse or null"),
    (dict(distill_weight=0.0, encoder_distill="sp"), "distill_weight <= 0"),
])
def test_inconsistent_configuration_is_rejected(token_list, change, message):
    with pytest.raises(ValueError, match=message):
        build(DEBUG["joint"], token_list, **change)


def test_token_outside_vocabulary_is_an_error(token_list):
    model = build(DEBUG["st1_context_t"], token_list)
    speech, lengths, text, text_lengths = batch()
    text[1, 0] = len(TOKENS)
    with pytest.raises(ValueError, match=r"outside the vocabulary .* batch index \[1\]"):
        model(speech, lengths, text, text_lengths)


def test_collate_names_broken_utterances_and_counts_skips():
    collate = CheckedCollateFn(vocab_size=11, feat_dim=None, min_speech_samples=960)
    good = ("utt_good", {"speech": np.zeros(4000, np.float32), "text": np.array([2, 3])})
    with pytest.raises(ValueError, match="utt_bad: token ids \\[11\\] outside the vocabulary"):
        collate([good, ("utt_bad", {"speech": np.zeros(4000, np.float32), "text": np.array([2, 11])})])
    ids, out = collate([
        good,
        ("utt_empty", {"speech": np.zeros(4000, np.float32), "text": np.array([], dtype=np.int64)}),
        ("utt_short", {"speech": np.zeros(500, np.float32), "text": np.array([2])}),
    ])
    assert ids == ["utt_good"] and out["speech"].shape == (1, 4000)
    assert collate.skipped == {"empty transcript": 1, "too short": 1}
    with pytest.raises(ValueError, match="every utterance of the batch"):
        collate([("utt_short", {"speech": np.zeros(10, np.float32), "text": np.array([2])})])
    feats = CheckedCollateFn(vocab_size=11, feat_dim=80, min_speech_samples=7)
    with pytest.raises(ValueError, match="utt_f: feature dimension 40, but the model reads 80"):
        feats([("utt_f", {"speech": np.zeros((50, 40), np.float32), "text": np.array([2])})])


@pytest.mark.parametrize("frontend_conf", [
    {"n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 20},  # the debug configs'
    {"n_mels": 20},  # ESPnet's defaults: n_fft 512, hop 128, centred
    {"n_fft": 400, "hop_length": 100, "center": False, "n_mels": 20},
])
@pytest.mark.parametrize("variant", ["st1_context_t", "nst1_conformer_t"])
def test_minimum_input_length_is_the_shortest_that_gives_one_encoder_frame(
        token_list, tmp_path, variant, frontend_conf):
    """One threshold for training (collate) and decoding (decode list): the shortest
    waveform (or feature sequence) accepted gives exactly one encoder frame, one sample
    (frame) less gives none and is skipped or rejected."""
    argv = ["--config", str(DEBUG[variant]), "--token_list", str(token_list)]
    args = DualModeASRTask.get_parser().parse_args(argv)
    args.frontend_conf = dict(frontend_conf)
    model = DualModeASRTask.build_model(args).eval()
    n = min_speech_samples(args.frontend_conf)
    with torch.no_grad():
        _, _, out_lens = model.encode(torch.randn(1, n), torch.tensor([n]))
        assert out_lens.tolist() == [1]
        _, feat_lens = model.features(torch.randn(1, n - 1), torch.tensor([n - 1]))
    assert feat_lens.tolist() == [min_input_frames() - 1]
    assert subsampled_lengths(feat_lens).tolist() == [0]  # both encoders' subsampling
    with pytest.raises(ValueError, match="nothing to encode"):  # a clear error, before the convs
        with torch.no_grad():
            model.encode(torch.randn(1, n - 1), torch.tensor([n - 1]))

    collate = DualModeASRTask.build_collate_fn(args, train=True)
    text = np.array([2, 3])
    assert collate.problem("utt_n", {"speech": np.zeros(n, np.float32), "text": text}) is None
    assert collate.problem("utt_n-1", {"speech": np.zeros(n - 1, np.float32),
                                       "text": text}).startswith("too short")
    frames = min_input_frames()
    assert collate.problem("f", {"speech": np.zeros((frames, 20), np.float32), "text": text}) is None
    assert collate.problem("f", {"speech": np.zeros((frames - 1, 20), np.float32),
                                 "text": text}).startswith("too short")

    scp = tmp_path / "list.scp"
    scp.write_text("utt x\n")
    assert min_samples(args, DecodeList(str(scp), "sound")) == n
    assert min_samples(args, DecodeList(str(scp), "kaldi_ark")) == frames


# ------------------------------------------------- empty transcripts (silence/noise clips)
def empty_row_batch():
    speech, lengths, text, text_lengths = batch()
    text[1] = -1  # utterance 1: silence or noise, nothing to recognise
    return speech, lengths, text, torch.tensor([5, 0, 2])


@pytest.mark.parametrize("rnnt_loss_type", ["full", "pruned"])
def test_an_empty_transcript_trains_every_head(token_list, rnnt_loss_type):
    """An empty transcript is a valid target: every loss finite, gradients finite, and the
    RNN-T loss of its row is -sum_t log P(blank | t, u=0), computed here from the joint."""
    model = build(DEBUG["joint_sp_ed"], token_list, rnnt_loss_type=rnnt_loss_type,
                  pruned_s_range=3)
    speech, lengths, text, text_lengths = empty_row_batch()
    np.random.seed(0)
    loss, stats, _ = model(speech, lengths, text, text_lengths)
    assert all(torch.isfinite(v).all() for v in stats.values()), stats
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.eval()
    with torch.no_grad():
        enc = model.encode_features(*model.features(speech, lengths))
        pred = model._prediction_states(model.stream_decoder, text, text_lengths)
        batch_loss = model._rnnt_loss(model.stream_joint, enc.stream, enc.lengths, pred, text,
                                      text_lengths)
        t1 = int(enc.lengths[1])
        logits = model.stream_joint(enc.stream[1, :t1], pred[1, :1].expand(t1, -1))
        empty_nll = -logits.log_softmax(-1)[:, model.blank_id].sum()
        others = []  # the other rows alone, with torchaudio's loss
        for i in (0, 2):
            t, u = int(enc.lengths[i]), int(text_lengths[i])
            row = model.stream_joint(enc.stream[i, :t].unsqueeze(1), pred[i, :u + 1].unsqueeze(0))
            others.append(torchaudio.functional.rnnt_loss(
                row.unsqueeze(0), text[i:i + 1, :u].int(), torch.tensor([t], dtype=torch.int32),
                torch.tensor([u], dtype=torch.int32), blank=model.blank_id, reduction="sum"))
    expected = (empty_nll + sum(others)) / 3
    if rnnt_loss_type == "pruned":  # without the simple term and unpruned: the same NLL
        batch_loss, _ = pruned_rnnt_loss(model.stream_joint, enc.stream, pred,
                                         model._blank_padded(text, text_lengths), enc.lengths,
                                         text_lengths, blank=model.blank_id,
                                         s_range=text.size(1) + 1, simple_loss_scale=0.0)
    torch.testing.assert_close(batch_loss, expected, rtol=1e-4, atol=1e-4)


def test_mask_ctc_loss_ignores_empty_transcripts(token_list):
    """The MLM loss over a batch with an empty row equals the loss over the other rows
    (same masks), rescaled by the batch size it is averaged over."""
    model = build(DEBUG["joint_sp_ed"], token_list).eval()
    speech, lengths, text, text_lengths = empty_row_batch()
    keep = torch.tensor([0, 2])
    with torch.no_grad():
        enc = model.encode_features(*model.features(speech, lengths))
        np.random.seed(3)
        full, _ = model._mlm_loss(enc.full, enc.lengths, text, text_lengths)
        np.random.seed(3)
        sub, _ = model._mlm_loss(enc.full[keep], enc.lengths[keep], text[keep][:, :5],
                                 text_lengths[keep])
    torch.testing.assert_close(full, sub * 2 / 3, rtol=1e-5, atol=1e-6)


def test_collate_keeps_empty_transcripts_when_asked():
    collate = CheckedCollateFn(vocab_size=11, feat_dim=None, min_speech_samples=960,
                               keep_empty_text=True)
    ids, out = collate([
        ("utt_good", {"speech": np.zeros(4000, np.float32), "text": np.array([2, 3])}),
        ("utt_empty", {"speech": np.zeros(4000, np.float32), "text": np.array([], dtype=np.int64)}),
    ])
    assert ids == ["utt_good", "utt_empty"] and out["text_lengths"].tolist() == [2, 0]
    assert not collate.skipped


@pytest.mark.parametrize("rnnt_loss_type", ["full", "pruned"])
def test_a_batch_of_only_empty_transcripts_trains_every_parameter(token_list, rnnt_loss_type):
    """A batch drawn only from silence/noise clips: finite losses, the MLM term is 0, and
    every parameter still gets a (finite) gradient, as DDP without unused_parameters needs."""
    model = build(DEBUG["joint_sp_ed"], token_list, rnnt_loss_type=rnnt_loss_type,
                  pruned_s_range=3)
    speech, lengths, _, _ = batch()
    text = torch.zeros(3, 0, dtype=torch.long)
    loss, stats, _ = model(speech, lengths, text, torch.zeros(3, dtype=torch.long))
    assert float(stats["loss_mlm"]) == 0.0
    assert all(torch.isfinite(v) for k, v in stats.items() if k != "acc_mlm"), stats
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
