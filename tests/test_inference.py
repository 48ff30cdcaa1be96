"""Inference on a model overfitted to the toy corpus: every head, streaming equivalence,
partial results, latency timing, the CLIs and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from espnet2_dualmode.bin.dualmode_asr_inference_streaming import recognize
from espnet2_dualmode.inference.latency import reference_end_times, samples_needed, timed_recognition
from espnet2_dualmode.inference.model_io import TokenText
from espnet2_dualmode.inference.offline import HEADS, Speech2Text
from espnet2_dualmode.inference.streaming import Speech2TextStreaming, StreamingFeatures


def corpus_items(corpus):
    wavs = {}
    for line in corpus["wav.scp"].read_text().splitlines():
        key, path = line.split()
        wavs[key] = soundfile.read(path, dtype="float32")[0]
    refs = dict(line.split() for line in corpus["text"].read_text().splitlines())
    return wavs, refs


@pytest.mark.parametrize("head", HEADS)
def test_each_head_recognises_the_training_targets(toy_model, toy_corpus, head):
    s2t = Speech2Text(toy_model["config"], toy_model["model"], decode_head=head, beam_size=4)
    wavs, refs = corpus_items(toy_corpus)
    keys = sorted(wavs)
    results = s2t([wavs[k] for k in keys])  # one batch: also checks batching
    assert {k: r[0].text for k, r in zip(keys, results)} == refs


def test_streaming_is_chunking_invariant_and_equals_offline_streaming_head(toy_model, toy_corpus):
    assert_streaming_equals_offline_head(toy_model["config"], toy_model["model"], toy_corpus)


def assert_streaming_equals_offline_head(config, weights, corpus) -> Speech2TextStreaming:
    """Streaming in chunks of 160, 1000, 4000 samples and the whole file gives the n-best,
    timestamps and score of ``--decode_head streaming_rnnt``, and the reference text."""
    offline = Speech2Text(config, weights, decode_head="streaming_rnnt", beam_size=4, nbest=2)
    stream = Speech2TextStreaming(config, weights, beam_size=4, nbest=2)
    wavs, refs = corpus_items(corpus)
    for key, wav in wavs.items():
        want = offline([wav])[0]
        for chunk in (160, 1000, 4000, wav.size):
            got = recognize(stream, wav, chunk)
            assert [r.token_ids for r in got] == [r.token_ids for r in want], (key, chunk)
            assert got[0].text == refs[key]
            assert got[0].timestamps == want[0].timestamps
            assert got[0].score == pytest.approx(want[0].score, abs=1e-3)
    return stream


def test_streaming_features_equal_the_offline_frontend(toy_model, toy_corpus):
    offline = Speech2Text(toy_model["config"], toy_model["model"], decode_head="streaming_rnnt")
    frontend = offline.model.frontend
    wav = next(iter(corpus_items(toy_corpus)[0].values()))
    want, _ = offline.features([wav])
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        feats, pos, sf = [], 0, StreamingFeatures(frontend)
        while pos < wav.size:
            n = int(torch.randint(1, 700, (1,), generator=g))
            feats.append(sf(torch.tensor(wav[pos:pos + n]), is_final=pos + n >= wav.size))
            pos += n
        got = torch.cat(feats, dim=1)
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-4)


def test_partial_results_only_contain_tokens_from_audio_already_fed(toy_model, toy_corpus):
    stream = Speech2TextStreaming(toy_model["config"], toy_model["model"], beam_size=4)
    wavs, refs = corpus_items(toy_corpus)
    for key, wav in wavs.items():
        stream.reset()
        seen_partial = []
        for start in range(0, wav.size, 160):
            final = start + 160 >= wav.size
            best = stream(wav[start:start + 160], is_final=final)[0]
            fed = min(start + 160, wav.size)
            if not final:
                assert all(samples_needed(stream, t) <= fed for t in best.timestamps), key
                assert best.timestamps == sorted(best.timestamps)
                seen_partial.append(best.text)
        assert best.text == refs[key]
        assert any(seen_partial) and seen_partial[-1]  # partial results were produced
        with pytest.raises(RuntimeError, match="after is_final"):
            stream(wav[:160], is_final=False)


def test_emission_times_follow_the_audio(toy_model, toy_corpus):
    torch.set_num_threads(1)
    stream = Speech2TextStreaming(toy_model["config"], toy_model["model"], beam_size=4)
    wavs, refs = corpus_items(toy_corpus)
    for key, wav in wavs.items():
        timing = timed_recognition(stream, wav, 640)
        assert stream.text.result(timing.token_ids, 0.0).text == refs[key]
        assert timing.emission_times == sorted(timing.emission_times)
        assert all(e >= a for e, a in zip(timing.emission_times, timing.arrival_times))
        ends = reference_end_times(stream, wav, timing.token_ids)
        assert len(ends) == len(timing.token_ids) and ends == sorted(ends)
        assert all(0 < e <= wav.size / 16000 + 0.05 for e in ends)


def run_module(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True)


@pytest.fixture
def decode_list_with_bad_entries(toy_corpus, tmp_path):
    wavs, _ = corpus_items(toy_corpus)
    lines = toy_corpus["wav.scp"].read_text().splitlines()
    bad = {
        "bad_empty": np.zeros(0, np.float32),
        "bad_short": np.zeros(300, np.float32),
    }
    for key, wav in bad.items():
        soundfile.write(tmp_path / f"{key}.wav", wav, 16000)
        lines.append(f"{key} {tmp_path / key}.wav")
    soundfile.write(tmp_path / "bad_rate.wav", next(iter(wavs.values())), 8000)
    lines.append(f"bad_rate {tmp_path / 'bad_rate.wav'}")
    (tmp_path / "bad_unreadable.wav").write_bytes(b"not a wav file")
    lines.append(f"bad_unreadable {tmp_path / 'bad_unreadable.wav'}")
    scp = tmp_path / "wav.scp"
    scp.write_text("\n".join(sorted(lines)) + "\n")
    return scp


def test_offline_cli_writes_espnet_layout_and_reports_bad_utterances(
        toy_model, toy_corpus, decode_list_with_bad_entries, tmp_path):
    out = tmp_path / "decode"
    r = run_module("espnet2_dualmode.bin.dualmode_asr_inference",
                   "--asr_train_config", toy_model["config"], "--asr_model_file", toy_model["model"],
                   "--data_path_and_name_and_type", f"{decode_list_with_bad_entries},speech,sound",
                   "--output_dir", out, "--decode_head", "rnnt", "--beam_size", "4",
                   "--batch_size", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    _, refs = corpus_items(toy_corpus)
    text = dict(line.split(maxsplit=1) for line in (out / "1best_recog" / "text").read_text().splitlines())
    assert text == refs
    for name in ("token", "token_int", "score"):
        assert set(dict(l.split(maxsplit=1) for l in (out / "1best_recog" / name).read_text().splitlines())) == set(refs)
    failed = dict(line.split(maxsplit=1) for line in (out / "failed").read_text().splitlines())
    assert set(failed) == {"bad_empty", "bad_short", "bad_rate", "bad_unreadable"}
    assert "empty audio" in failed["bad_empty"] and "too short" in failed["bad_short"]
    assert "sample rate 8000" in failed["bad_rate"] and "cannot read" in failed["bad_unreadable"]
    assert "4 failed" in r.stderr and "utterance bad_unreadable" in r.stderr


def test_streaming_cli_and_latency_tool(toy_model, toy_corpus, tmp_path):
    out = tmp_path / "stream"
    r = run_module("espnet2_dualmode.bin.dualmode_asr_inference_streaming",
                   "--asr_train_config", toy_model["config"], "--asr_model_file", toy_model["model"],
                   "--data_path_and_name_and_type", f"{toy_corpus['wav.scp']},speech,sound",
                   "--output_dir", out, "--sim_chunk_length", "1000", "--beam_size", "4")
    assert r.returncode == 0, r.stderr[-2000:]
    _, refs = corpus_items(toy_corpus)
    text = dict(line.split(maxsplit=1) for line in (out / "1best_recog" / "text").read_text().splitlines())
    assert text == refs
    lat = tmp_path / "latency"
    r = run_module("espnet2_dualmode.bin.measure_latency",
                   "--asr_train_config", toy_model["config"], "--asr_model_file", toy_model["model"],
                   "--data_path_and_name_and_type", f"{toy_corpus['wav.scp']},speech,sound",
                   "--output_dir", lat, "--beam_size", "4")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "RTF" in r.stdout and "P50" in r.stdout and "P90" in r.stdout
    result = json.loads((lat / "latency.json").read_text())
    assert result["utterances"] == len(refs) and result["failed"] == 0
    assert result["rtf"] > 0 and result["tokens"] == sum(len(t) for t in refs.values())
    # debug geometry: block 8 + look-ahead 2 subsampled frames of 40 ms
    assert result["algorithmic_latency_ms"] == pytest.approx(400.0)


def test_heads_missing_from_the_model_are_refused(toy_corpus, tmp_path):
    from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump

    from espnet2_dualmode.tasks.dualmode_asr import DualModeASRTask

    root = Path(__file__).resolve().parents[1]
    args = DualModeASRTask.get_parser().parse_args(
        ["--config", str(root / "conf/debug/st1_context_t.yaml"), "--token_list",
         str(toy_corpus["tokens.txt"]), "--token_type", "char"])
    model = DualModeASRTask.build_model(args)
    with open(tmp_path / "config.yaml", "w") as f:
        yaml_no_alias_safe_dump(vars(args), f)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    with pytest.raises(ValueError, match="no attention head"):
        Speech2Text(tmp_path / "config.yaml", tmp_path / "model.pth", decode_head="attention")
    state = model.state_dict()
    state.pop(next(iter(state)))
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(RuntimeError, match="does not fit"):
        Speech2Text(tmp_path / "config.yaml", tmp_path / "broken.pth", decode_head="streaming_rnnt")


def test_token_text_ids_tokenize_as_the_run_and_invert_result():
    import argparse

    tokens = ["<blank>", "<unk>", "<space>", "昨", "日", "は", "<sos/eos>"]
    text = TokenText(argparse.Namespace(token_list=tokens, token_type="char"))
    assert text.ids("昨日 は") == [3, 4, 2, 5]
    assert text.ids("昨x") == [3, 1]  # unknown characters map to <unk>
    assert text.result(text.ids("昨日 は"), 0.0).text == "昨日 は"

