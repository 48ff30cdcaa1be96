"""Block geometry chosen per training batch (dynamic blocks) and at decoding time (issue 11).

The encoder's geometry API is checked against encoders built at that geometry; a debug model
trained a few steps with dynamic blocks is decoded at 3 geometries, each with every streaming
guarantee: batch invariance, incremental == parallel, the final streaming result the same for
every chunking and equal to ``Speech2Text(decode_head="streaming_rnnt")`` at that geometry,
partial results only from audio already fed.
"""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from espnet2_dualmode.bin.dualmode_asr_inference_streaming import recognize
from espnet2_dualmode.encoders.contextual_block_conformer import (
    BlockGeometry,
    ContextualBlockConformerEncoder,
)
from espnet2_dualmode.inference.latency import samples_needed
from espnet2_dualmode.inference.offline import Speech2Text
from espnet2_dualmode.inference.streaming import Speech2TextStreaming
from espnet2_dualmode.tasks.dualmode_asr import DualModeASRTask
from test_encoders import FEAT, TOL, padded_batch, run_incremental, small_stream
from test_inference import corpus_items
from tiny_corpus import load_batch, train_args

ROOT = Path(__file__).resolve().parents[1]
DYNAMIC = ROOT / "conf" / "debug" / "dynamic" / "joint_sp_ed.yaml"
FIXED = ROOT / "conf" / "debug" / "joint_sp_ed.yaml"
# The dynamic debug config's set: blocks 5/10/15, hop = look-ahead = round(0.4 x block).
GEOMETRIES = [BlockGeometry(5, 2, 2), BlockGeometry(10, 4, 4), BlockGeometry(15, 6, 6)]
TRAIN_STEPS = 100


def dynamic_encoder(sizes=(10, 20, 30, 40, 50, 60), block=40, hop=16, look_ahead=16, **kw):
    return ContextualBlockConformerEncoder(
        FEAT, output_size=16, attention_heads=2, linear_units=32, num_blocks=1, cnn_module_kernel=5,
        block_size=block, hop_size=hop, look_ahead=look_ahead, dynamic_block_sizes=sizes, **kw)


# ----- the encoder's geometry API ---------------------------------------------------------
@pytest.mark.parametrize("geometry", [(6, 2, 4), (12, 5, 3), (4, 4, 0)])
def test_geometry_context_equals_an_encoder_built_at_that_geometry(geometry):
    enc = small_stream(8, 3, 2)
    ref = ContextualBlockConformerEncoder(
        FEAT, output_size=16, attention_heads=2, linear_units=32, num_blocks=3,
        cnn_module_kernel=5, block_size=geometry[0], hop_size=geometry[1],
        look_ahead=geometry[2]).eval()
    ref.load_state_dict(enc.state_dict())
    x, lens = padded_batch([203, 64, 9])
    with torch.no_grad(), enc.geometry(BlockGeometry(*geometry)):
        assert (enc.block_size, enc.hop_size, enc.look_ahead, enc.past) == (
            ref.block_size, ref.hop_size, ref.look_ahead, ref.past)
        t = torch.arange(60)
        assert torch.equal(enc.block_of(t), ref.block_of(t))
        assert [enc.num_blocks_for(n) for n in range(40)] == [ref.num_blocks_for(n) for n in range(40)]
        assert [enc.emission_range(b, 50) for b in range(5)] == [ref.emission_range(b, 50) for b in range(5)]
        ys, olens, _ = enc.forward_layers(x, lens)
        want, _, _ = ref.forward_layers(x, lens)
        assert torch.equal(ys, want)
        inc = run_incremental(enc, x[:1, :203], [17, 0, 50, 136])
        assert torch.allclose(inc[0], want[0, :olens[0]], atol=TOL)
    assert enc.current_geometry == BlockGeometry(8, 3, 2)  # restored on exit


def test_a_stream_state_cannot_continue_at_another_geometry():
    enc = small_stream(8, 3, 2)
    state = enc.init_state(1)
    x, _ = padded_batch([60])
    with torch.no_grad():
        enc.forward_incremental(x[:, :30], state)
        with enc.geometry(BlockGeometry(6, 2, 4)):
            with pytest.raises(RuntimeError, match="created at block 8 / hop 3 / look-ahead 2 "
                                                   "cannot continue at block 6"):
                enc.forward_incremental(x[:, 30:], state)
        enc.forward_incremental(x[:, 30:], state, is_final=True)  # its own geometry still works


def test_dynamic_geometries_follow_the_ratios():
    enc = dynamic_encoder()
    # hop = look-ahead = round(0.4 x block), computed by hand
    assert [tuple(g) for g in enc.dynamic_geometries] == [
        (10, 4, 4), (20, 8, 8), (30, 12, 12), (40, 16, 16), (50, 20, 20), (60, 24, 24)]
    assert enc.trained_geometries == enc.dynamic_geometries
    odd = dynamic_encoder(sizes=[5, 15, 25], block=15, hop=6, look_ahead=3,
                          dynamic_hop_ratio=0.4, dynamic_look_ahead_ratio=0.2)
    assert [tuple(g) for g in odd.dynamic_geometries] == [(5, 2, 1), (15, 6, 3), (25, 10, 5)]
    fixed = small_stream(8, 3, 2)
    assert fixed.dynamic_geometries == [] and fixed.trained_geometries == [BlockGeometry(8, 3, 2)]


@pytest.mark.parametrize("kwargs, message", [
    ({"sizes": []}, "non-empty list of integers"),
    ({"sizes": [10, 20.5]}, "non-empty list of integers"),
    ({"sizes": [10, 40, 10]}, "repeated sizes"),
    ({"sizes": [2, 40], "dynamic_hop_ratio": 0.2}, "block size 2 .*hop_size >= 1"),
    ({"sizes": [10, 40], "dynamic_hop_ratio": 0.7}, "block size 10 .*block_size >= hop_size"),
    ({"sizes": [10, 40], "dynamic_look_ahead_ratio": 1.5}, "dynamic_look_ahead_ratio must be in"),
    ({"sizes": [10, 20]}, "must be one of the dynamic geometries"),
])
def test_dynamic_configuration_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dynamic_encoder(**kwargs)


def test_training_draw_depends_only_on_seed_and_step():
    torch.manual_seed(7)
    a = dynamic_encoder()
    torch.rand(5)  # the global RNG moves on (dropout, SpecAugment): the draw must not
    torch.manual_seed(7)
    b = dynamic_encoder()
    torch.manual_seed(8)
    c = dynamic_encoder()
    draws_a = [a.training_geometry(s) for s in range(200)]
    assert draws_a == [b.training_geometry(s) for s in range(200)]
    assert draws_a != [c.training_geometry(s) for s in range(200)]
    assert set(draws_a) == set(a.dynamic_geometries)  # every geometry is drawn
    assert [a.training_geometry(s) for s in range(150, 200)] == draws_a[150:]  # resumable


def test_resolve_geometry_from_decoding_options():
    dyn, fixed = dynamic_encoder(), small_stream(8, 3, 2)
    assert dyn.resolve_geometry() == BlockGeometry(40, 16, 16)
    assert dyn.resolve_geometry(25) == BlockGeometry(25, 10, 10)  # from the ratios
    assert fixed.resolve_geometry(6, 2, 4) == BlockGeometry(6, 2, 4)
    with pytest.raises(ValueError, match="alone needs a model trained with dynamic blocks"):
        fixed.resolve_geometry(6)
    with pytest.raises(ValueError, match="block_size alone or block_size, hop_size and look_ahead"):
        dyn.resolve_geometry(20, hop_size=8)
    with pytest.raises(ValueError, match="block_size >= hop_size"):
        fixed.resolve_geometry(6, 4, 4)


# ----- training with dynamic blocks ------------------------------------------------------------
def build(config, token_list, seed=0):
    args = DualModeASRTask.get_parser().parse_args(
        ["--config", str(config), "--token_list", str(token_list), "--token_type", "char"])
    torch.manual_seed(seed)
    return DualModeASRTask.build_model(args), args


def record_geometries(model, monkeypatch):
    """Spy: the streaming encoder's geometry at each forward_layers call."""
    seen = []
    original = model.stream_encoder.forward_layers

    def spy(*args, **kwargs):
        seen.append(model.stream_encoder.current_geometry)
        return original(*args, **kwargs)

    monkeypatch.setattr(model.stream_encoder, "forward_layers", spy)
    return seen


def test_training_draws_a_geometry_per_batch_and_a_resumed_run_continues(
        toy_corpus, monkeypatch):
    model, _ = build(DYNAMIC, toy_corpus["tokens.txt"])
    batch = load_batch(toy_corpus)
    seen = record_geometries(model, monkeypatch)
    model.train()
    reported = []
    for _ in range(8):
        _, stats, _ = model(*batch)
        reported.append(int(stats["block_size"]))
    expected = [model.stream_encoder.training_geometry(s) for s in range(8)]
    assert seen == expected and reported == [g.block_size for g in expected]
    assert len(set(expected)) > 1 and int(model.train_iters) == 8
    assert model.stream_encoder.current_geometry == GEOMETRIES[1]  # restored after the batch

    resumed, _ = build(DYNAMIC, toy_corpus["tokens.txt"])
    resumed.load_state_dict(model.state_dict())  # the count travels with checkpoints
    seen_resumed = record_geometries(resumed, monkeypatch)
    resumed.train()
    resumed(*batch)
    assert seen_resumed == [model.stream_encoder.training_geometry(8)]

    # validation: the loss at the default geometry, the streaming CER at every geometry
    model.eval()
    seen.clear()
    with torch.no_grad():
        _, stats, _ = model(*batch)
    assert seen == [GEOMETRIES[1]] + GEOMETRIES
    assert int(stats["block_size"]) == 10 and int(model.train_iters) == 8
    assert {"cer_onl_b5", "cer_onl_b10", "cer_onl_b15"} <= set(stats)
    assert float(stats["cer_onl_b10"]) == pytest.approx(float(stats["cer_onl"]))


def test_training_cli_logs_the_drawn_geometry_and_validates_at_each(toy_corpus, tmp_path):
    """Through ESPnet's Trainer and Reporter: the draws follow --seed and the step, the
    per-geometry validation keys are reported."""
    out = tmp_path / "exp"
    args = [sys.executable, "-m", "espnet2_dualmode.bin.dualmode_asr_train",
            *train_args(toy_corpus, DYNAMIC, out), "--max_epoch", "1",
            "--num_iters_per_epoch", "4", "--batch_size", "3", "--seed", "5", "--log_interval", "1"]
    run = subprocess.run(args, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    logged = [int(float(m)) for m in re.findall(r"train:\d+-\d+batch:.*block_size=([0-9.]+)", run.stderr)]
    torch.manual_seed(5)  # what ESPnet does with --seed before building the model
    enc = dynamic_encoder(sizes=[5, 10, 15], block=10, hop=4, look_ahead=4)
    assert logged == [enc.training_geometry(s).block_size for s in range(4)]
    checkpoint = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert int(checkpoint["model"]["train_iters"]) == 4
    valid = checkpoint["reporter"]["stats"][1]["valid"]
    assert {"cer_onl_b5", "cer_onl_b10", "cer_onl_b15"} <= set(valid)
    assert valid["block_size"] == 10  # the loss is validated at the default geometry


def test_a_fixed_geometry_model_keeps_its_keys_and_stats(toy_corpus):
    model, _ = build(FIXED, toy_corpus["tokens.txt"])
    assert "train_iters" not in model.state_dict() and not model.dynamic_blocks
    model.train()
    _, stats, _ = model(*load_batch(toy_corpus))
    assert "block_size" not in stats


# ----- a debug model trained with dynamic blocks, decoded at 3 geometries -------------------
@pytest.fixture(scope="module")
def dynamic_model(toy_corpus, tmp_path_factory):
    """The dynamic debug config trained TRAIN_STEPS steps on the toy corpus."""
    from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump

    model, args = build(DYNAMIC, toy_corpus["tokens.txt"])
    batch = load_batch(toy_corpus)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    drawn = set()
    model.train()
    for _ in range(TRAIN_STEPS):
        loss, stats, _ = model(*batch)
        drawn.add(int(stats["block_size"]))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    assert drawn == {g.block_size for g in GEOMETRIES}
    out = tmp_path_factory.mktemp("dynamic_exp")
    with open(out / "config.yaml", "w", encoding="utf-8") as f:
        yaml_no_alias_safe_dump(vars(args), f)
    torch.save(model.state_dict(), out / "model.pth")
    return {"config": out / "config.yaml", "model": out / "model.pth"}


def kwargs_of(geometry):
    return dict(zip(("block_size", "hop_size", "look_ahead"), geometry))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_every_streaming_guarantee_at_every_trained_geometry(dynamic_model, toy_corpus, geometry):
    offline = Speech2Text(dynamic_model["config"], dynamic_model["model"],
                          decode_head="streaming_rnnt", beam_size=4, nbest=2, **kwargs_of(geometry))
    stream = Speech2TextStreaming(dynamic_model["config"], dynamic_model["model"], beam_size=4,
                                  nbest=2, **kwargs_of(geometry))
    enc = offline.model.stream_encoder
    assert enc.current_geometry == stream.model.stream_encoder.current_geometry == geometry
    wavs, _ = corpus_items(toy_corpus)
    keys = sorted(wavs)
    feats, lengths = offline.features([wavs[k] for k in keys])
    g = torch.Generator().manual_seed(sum(geometry))
    with torch.no_grad():
        ys, olens, _ = enc.forward_layers(feats, lengths)
        for i, n in enumerate(lengths.tolist()):
            m = int(olens[i])
            alone, _, _ = enc.forward_layers(feats[i:i + 1, :n], lengths[i:i + 1])
            assert torch.allclose(alone[0], ys[i, :m], atol=TOL)  # batch invariance
            for _ in range(2):  # incremental == parallel, random chunkings
                sizes, left = [], n
                while left > 0:
                    sizes.append(min(left, int(torch.randint(0, 30, (1,), generator=g))))
                    left -= sizes[-1]
                inc = run_incremental(enc, feats[i:i + 1, :n], sizes + [0])
                assert torch.allclose(inc[0], ys[i, :m], atol=TOL)
    batched = offline([wavs[k] for k in keys])
    emitted = 0
    for key, want in zip(keys, batched):
        wav = wavs[key]
        assert [r.token_ids for r in offline([wav])[0]] == [r.token_ids for r in want]
        for chunk in (160, 1000, 4000, wav.size):
            got = recognize(stream, wav, chunk)
            assert [r.token_ids for r in got] == [r.token_ids for r in want], (key, chunk)
            assert got[0].timestamps == want[0].timestamps
            assert got[0].score == pytest.approx(want[0].score, abs=1e-3)
        stream.reset()
        for start in range(0, wav.size, 800):  # partial results: only audio already fed
            final = start + 800 >= wav.size
            best = stream(wav[start:start + 800], is_final=final)[0]
            if not final:
                assert all(samples_needed(stream, t) <= start + 800 for t in best.timestamps)
        emitted += len(want[0].token_ids)
    assert emitted > 0  # the comparisons above are not between empty results


def test_samples_needed_and_algorithmic_latency_follow_the_geometry(dynamic_model, toy_corpus,
                                                                    tmp_path):
    needed = {}
    for geometry in GEOMETRIES:
        s2t = Speech2TextStreaming(dynamic_model["config"], dynamic_model["model"],
                                   **kwargs_of(geometry))
        # frame 0 is emitted by block 0, complete after block_size frames: the last
        # feature frame it reads is 4 * (block_size - 1) + 6, plus half a window
        needed[geometry] = samples_needed(s2t, 0)
        assert needed[geometry] == (4 * (geometry.block_size - 1) + 6) * 160 + 256
    r = subprocess.run([sys.executable, "-m", "espnet2_dualmode.bin.measure_latency",
                        "--asr_train_config", dynamic_model["config"], "--asr_model_file",
                        dynamic_model["model"], "--data_path_and_name_and_type",
                        f"{toy_corpus['wav.scp']},speech,sound", "--output_dir", tmp_path,
                        "--beam_size", "2", "--max_utts", "2", "--block_size", "15"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((tmp_path / "latency.json").read_text())
    assert (result["block_size"], result["hop_size"], result["look_ahead"]) == (15, 6, 6)
    assert result["algorithmic_latency_ms"] == pytest.approx((15 + 6) * 40.0)


def test_streaming_cli_decodes_at_the_chosen_geometry(dynamic_model, toy_corpus, tmp_path):
    geometry = GEOMETRIES[2]
    r = subprocess.run([sys.executable, "-m", "espnet2_dualmode.bin.dualmode_asr_inference_streaming",
                        "--asr_train_config", dynamic_model["config"], "--asr_model_file",
                        dynamic_model["model"], "--data_path_and_name_and_type",
                        f"{toy_corpus['wav.scp']},speech,sound", "--output_dir", tmp_path,
                        "--beam_size", "2", "--block_size", "15", "--hop_size", "6",
                        "--look_ahead", "6"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "streaming encoder at block 15 / hop 6 / look-ahead 6" in r.stderr
    got = dict(line.split(maxsplit=1) if " " in line else (line, "")
               for line in (tmp_path / "1best_recog" / "token_int").read_text().splitlines())
    offline = Speech2Text(dynamic_model["config"], dynamic_model["model"],
                          decode_head="streaming_rnnt", beam_size=2, **kwargs_of(geometry))
    wavs, _ = corpus_items(toy_corpus)
    for key, wav in wavs.items():
        assert got[key].split() == [str(i) for i in offline([wav])[0][0].token_ids], key


# ----- warnings at geometries the model was not trained at ------------------------------------
@pytest.fixture(scope="module")
def fixed_model(toy_corpus, tmp_path_factory):
    from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump

    model, args = build(FIXED, toy_corpus["tokens.txt"])
    out = tmp_path_factory.mktemp("fixed_exp")
    with open(out / "config.yaml", "w", encoding="utf-8") as f:
        yaml_no_alias_safe_dump(vars(args), f)
    torch.save(model.state_dict(), out / "model.pth")
    return {"config": out / "config.yaml", "model": out / "model.pth"}


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_fixed_model_at_another_geometry_is_decoded_with_a_warning(fixed_model, toy_corpus,
                                                                     caplog):
    wav = next(iter(corpus_items(toy_corpus)[0].values()))
    with caplog.at_level(logging.WARNING):
        Speech2Text(fixed_model["config"], fixed_model["model"], decode_head="streaming_rnnt")
        Speech2Text(fixed_model["config"], fixed_model["model"], decode_head="streaming_rnnt",
                    block_size=8, hop_size=4, look_ahead=2)  # its training geometry
        assert warnings_of(caplog) == []
        s2t = Speech2TextStreaming(fixed_model["config"], fixed_model["model"], block_size=12,
                                   hop_size=4, look_ahead=4)
    assert warnings_of(caplog) == [
        "decoding at block 12 / hop 4 / look-ahead 4, but the model was trained with a fixed "
        "block 8 / hop 4 / look-ahead 2: expect a higher error rate"]
    assert recognize(s2t, wav, 1000) is not None  # allowed: it decodes
    assert s2t.model.stream_encoder.current_geometry == BlockGeometry(12, 4, 4)
    with pytest.raises(ValueError, match="alone needs a model trained with dynamic blocks"):
        Speech2Text(fixed_model["config"], fixed_model["model"], block_size=12)


def test_a_dynamic_model_outside_its_set_is_decoded_with_a_warning(dynamic_model, caplog):
    with caplog.at_level(logging.WARNING):
        for geometry in GEOMETRIES:
            Speech2Text(dynamic_model["config"], dynamic_model["model"],
                        decode_head="ctc", block_size=geometry.block_size)
        assert warnings_of(caplog) == []
        s2t = Speech2Text(dynamic_model["config"], dynamic_model["model"], decode_head="ctc",
                          block_size=20)
    assert s2t.model.stream_encoder.current_geometry == BlockGeometry(20, 8, 8)
    assert len(warnings_of(caplog)) == 1
    assert "block 20 / hop 8 / look-ahead 8, outside the dynamic geometries" in warnings_of(caplog)[0]
