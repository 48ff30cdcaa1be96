"""Long-form streaming with endpointing (espnet2_dualmode.inference.endpoint).

The session's toy model is overfitted on six short clips: at the start of every stream it
emits a memorised clip on its first frame, whatever the audio, so it cannot find the
utterances of a long recording. Most tests therefore check the mechanism against exact
references on it: each segment equals a fresh ``Speech2TextStreaming`` fed exactly that
segment's audio; the rules are checked with joint networks whose outputs are set by hand
(always blank, always a token). One test trains a streaming-only model (ST1 debug config,
about 2 minutes) on clips with up to 1.2 s of silence on each side, which does recognise
pause-separated utterances, and checks that the segments are the utterances.
"""

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import soundfile
import torch

from tiny_corpus import ALPHABET, tone_speech, overfit_toy_model

from espnet2_dualmode.bin.dualmode_asr_inference_streaming import recognize
from espnet2_dualmode.bin.dualmode_asr_longform import main as longform_main
from espnet2_dualmode.inference.endpoint import (
    TWO_PASS_MARGIN,
    EndpointRules,
    FinishedSegment,
    LongFormRecognizer,
    Segment,
    check_two_pass_margin,
)
from espnet2_dualmode.inference.latency import frame_end_seconds, samples_needed
from espnet2_dualmode.inference.offline import Speech2Text, shared_offline_head
from espnet2_dualmode.inference.streaming import Speech2TextStreaming

BEAM, NBEST, FS = 4, 2, 16000
PAUSE_S = 1.5
ROOT = Path(__file__).resolve().parents[1]


def make_padded_tone_corpus(root: Path, n_utts: int, seed: int) -> Dict[str, Path]:
    """A toy corpus (``tiny_corpus`` layout) whose clips have 0-1.2 s of noise on each
    side, plus ``spans.json``: each clip's speech ``[start, end)`` in samples."""
    root.mkdir(parents=True, exist_ok=True)
    rnd, rng = random.Random(seed), np.random.default_rng(seed)
    scp, text, shape, spans = [], [], [], {}
    for i in range(n_utts):
        uid = f"utt{i:03d}"
        words = "".join(rnd.choice(ALPHABET) for _ in range(rnd.randint(1, 4)))
        lead, trail = (int(rnd.uniform(0.0, 1.2) * FS) for _ in range(2))
        speech = tone_speech(words, rng)
        wav = np.concatenate([0.01 * rng.standard_normal(lead), speech,
                              0.01 * rng.standard_normal(trail)]).astype(np.float32)
        soundfile.write(root / f"{uid}.wav", wav, FS, subtype="PCM_16")
        scp.append(f"{uid} {root / uid}.wav")
        text.append(f"{uid} {words}")
        shape.append(f"{uid} {wav.size}")
        spans[uid] = (lead, lead + speech.size)
    for name, lines in (("wav.scp", scp), ("text", text), ("speech_shape", shape)):
        (root / name).write_text("\n".join(lines) + "\n")
    (root / "tokens.txt").write_text("\n".join(["<blank>", "<unk>", *ALPHABET, "<sos/eos>"]) + "\n")
    (root / "spans.json").write_text(json.dumps(spans))
    return {name: root / name for name in ("wav.scp", "text", "speech_shape", "tokens.txt",
                                           "spans.json")}


@pytest.fixture(scope="module")
def padded(tmp_path_factory) -> Dict[str, Path]:
    """The padded corpus and a streaming-only model overfitted on it."""
    root = tmp_path_factory.mktemp("padded")
    corpus = make_padded_tone_corpus(root / "corpus", n_utts=16, seed=7)
    model = overfit_toy_model(corpus, ROOT / "conf" / "debug" / "st1_context_t.yaml",
                              root / "exp", max_steps=2000)
    return {**corpus, **model}


def test_segments_are_the_utterances(padded):
    """Six clips separated by 1.5 s pauses: one segment per clip, cut by the
    trailing-silence rule in the pauses, holding the clip's speech, with the tokens of
    the clip decoded alone (its transcript)."""
    spans = json.loads(padded["spans.json"].read_text())
    texts = dict(line.split() for line in padded["text"].read_text().splitlines())
    s2t = Speech2TextStreaming(padded["config"], padded["model"], beam_size=BEAM)
    rng = np.random.default_rng(0)
    pieces, speech, own, offset = [], [], [], 0
    for line in padded["wav.scp"].read_text().splitlines()[:6]:
        key, path = line.split()
        clip = soundfile.read(path, dtype="float32")[0]
        own.append(recognize(s2t, clip, 0)[0].token_ids)
        assert s2t.text.result(own[-1], 0.0).text == texts[key]
        speech.append((offset + spans[key][0], offset + spans[key][1]))
        pause = (0.01 * rng.standard_normal(int(PAUSE_S * FS))).astype(np.float32)
        pieces += [clip, pause]
        offset += clip.size + pause.size
    segments = decode(LongFormRecognizer(s2t, EndpointRules()), np.concatenate(pieces), 1600)
    spoken = [seg for seg in segments if seg.tokens]
    assert [seg.nbest[0].token_ids for seg in spoken] == own
    assert all(seg.endpoint == "trailing_silence_after_token" for seg in spoken)
    for seg, (start, end) in zip(spoken, speech):
        assert seg.start <= start / FS and end / FS <= seg.end
        assert start / FS < seg.token_times[0] and seg.token_times[-1] <= seg.end


@pytest.fixture(scope="module")
def recording(toy_corpus) -> np.ndarray:
    """Four toy clips, each followed by 1.5 s of low noise (the clips' own noise level)."""
    rng = np.random.default_rng(0)
    pieces = []
    for line in toy_corpus["wav.scp"].read_text().splitlines()[:4]:
        pieces.append(soundfile.read(line.split()[1], dtype="float32")[0])
        pieces.append((0.01 * rng.standard_normal(int(PAUSE_S * FS))).astype(np.float32))
    return np.concatenate(pieces)


def streaming(toy_model) -> Speech2TextStreaming:
    return Speech2TextStreaming(toy_model["config"], toy_model["model"], beam_size=BEAM,
                                nbest=NBEST)


def decode(recognizer: LongFormRecognizer, wav: np.ndarray, chunk: int) -> List[Segment]:
    """All segments of ``wav`` fed in chunks of ``chunk`` samples."""
    recognizer.reset()
    segments: List[Segment] = []
    for start in range(0, wav.size, chunk):
        segments += recognizer(wav[start:start + chunk], is_final=start + chunk >= wav.size)
    return segments


def as_tuple(segment: Segment) -> Tuple:
    """Everything a segment reports, for exact comparison."""
    return (segment.index, segment.start, segment.end, segment.endpoint, segment.token_times,
            [(r.token_ids, r.score, r.timestamps, r.text) for r in segment.nbest])


def set_joint_output(s2t: Speech2TextStreaming, logits: Dict[int, float]) -> None:
    """Make the streaming joint network output the same logits for every input: the given
    token ids get their value, every other token -30."""
    lin_out = s2t.model.stream_joint.lin_out
    with torch.no_grad():
        lin_out.weight.zero_()
        lin_out.bias.fill_(-30.0)
        for token, value in logits.items():
            lin_out.bias[token] = value


def test_each_segment_is_decoded_as_its_audio_alone(toy_model, recording):
    """Every segment (cut by the trailing-silence rule) equals a fresh recognizer fed
    exactly the segment's audio up to where the cut was decided (the last one: to the end,
    is_final); the segments tile the recording; each cut is at the first block end with
    0.8 s of blank after the last token."""
    lf = LongFormRecognizer(streaming(toy_model), EndpointRules())
    segments = decode(lf, recording, 1000)
    assert len(segments) > 4
    assert segments[0].start == 0 and segments[-1].end == pytest.approx(recording.size / FS)
    fresh = streaming(toy_model)
    hop = fresh.model.stream_encoder.hop_size
    frame_s = frame_end_seconds(fresh, 0)
    for i, seg in enumerate(segments):
        a, b = round(seg.start * FS), round(seg.end * FS)
        fresh.reset()
        if i == len(segments) - 1:
            assert seg.endpoint == "end_of_audio"
            want = fresh(recording[a:b], is_final=True)
        else:
            assert segments[i + 1].start == seg.end
            assert seg.endpoint == "trailing_silence_after_token"
            frames = (b - a) // (4 * fresh.features.hop)
            assert b - a == frames * 4 * fresh.features.hop
            fresh(recording[a:a + samples_needed(fresh, frames - 1)], is_final=False)
            assert fresh.n_encoder_frames == frames
            want = [fresh.text.result(h.tokens, h.score, h.timestamps)
                    for h in fresh.search.finalize(fresh.search_state)[0]]
            trailing = (frames - 1 - seg.nbest[0].timestamps[-1]) * frame_s
            assert 0.8 - 1e-6 <= trailing < 0.8 + hop * frame_s
        # the reference computes the features in one call, not block by block: the
        # scores agree to float rounding
        assert [(r.token_ids, r.timestamps) for r in seg.nbest] == [
            (r.token_ids, r.timestamps) for r in want], i
        assert [r.score for r in seg.nbest] == pytest.approx([r.score for r in want], abs=1e-4)
        assert seg.token_times == pytest.approx(
            [seg.start + frame_end_seconds(fresh, t) for t in seg.nbest[0].timestamps])


@pytest.mark.parametrize("chunk", [160, 1000, 4000, 0])
def test_segments_do_not_depend_on_the_chunking(toy_model, recording, chunk):
    lf = LongFormRecognizer(streaming(toy_model), EndpointRules())
    reference = [as_tuple(s) for s in decode(lf, recording, 1600)]
    got = [as_tuple(s) for s in decode(lf, recording, chunk or recording.size)]
    assert got == reference


def test_max_segment_cuts_continuous_speech(toy_model):
    """A joint network that emits token 2 on every frame: no silence, so every segment
    but the last ends by max_segment, at the last block end within 2 s."""
    s2t = Speech2TextStreaming(toy_model["config"], toy_model["model"], beam_size=1,
                               max_sym_per_frame=1)
    set_joint_output(s2t, {2: 5.0, s2t.model.blank_id: 0.0})
    lf = LongFormRecognizer(s2t, EndpointRules(max_segment=2.0))
    wav = np.random.default_rng(1).standard_normal(7 * FS).astype(np.float32) * 0.1
    segments = decode(lf, wav, 1600)
    hop_s = s2t.model.stream_encoder.hop_size * frame_end_seconds(s2t, 0)
    assert [s.endpoint for s in segments] == ["max_segment"] * 3 + ["end_of_audio"]
    for seg in segments[:-1]:
        assert 2.0 - hop_s < seg.end - seg.start <= 2.0
        frames = round((seg.end - seg.start) / frame_end_seconds(s2t, 0))
        assert seg.nbest[0].timestamps == list(range(frames))  # one token per frame


def test_silence_without_tokens_ends_a_segment(toy_model):
    """A joint network that only says blank: 12 s become empty 3-s segments."""
    s2t = streaming(toy_model)
    set_joint_output(s2t, {s2t.model.blank_id: 0.0})
    lf = LongFormRecognizer(s2t, EndpointRules(trailing_silence_no_token=3.0))
    segments = decode(lf, np.zeros(12 * FS, dtype=np.float32), 4000)
    hop_s = s2t.model.stream_encoder.hop_size * frame_end_seconds(s2t, 0)
    ended = [s.endpoint for s in segments]
    assert ended == ["trailing_silence_no_token"] * (len(segments) - 1) + ["end_of_audio"]
    assert len(segments) >= 4
    for seg in segments:
        assert seg.text == "" and seg.token_times == []
    for seg in segments[:-1]:
        assert 3.0 <= seg.end - seg.start < 3.0 + hop_s


def tensor_elements(value) -> int:
    """Elements of every tensor in ``value`` (an object's fields, lists, dicts, ...)."""
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, dict):
        return sum(tensor_elements(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_elements(v) for v in value)
    if hasattr(value, "__dict__"):
        return tensor_elements(vars(value))
    return 0


def state_sizes(lf: LongFormRecognizer) -> Dict[str, int]:
    """What could grow with the input: positions, search history, caches, buffers."""
    s2t = lf.s2t
    return {
        "encoder_frames": s2t.n_encoder_frames,
        "encoder_positions": s2t.encoder_state.n_frames,
        "encoder_state_elements": tensor_elements(s2t.encoder_state),
        "longest_prefix": max(len(h.tokens) for hyps in s2t.search_state.hyps for h in hyps),
        "cached_prefixes": len(s2t.search_state.cache.index),
        "buffered_samples": lf.queue.size + sum(a.size for a in lf.segment_audio),
    }


def peak_state(lf: LongFormRecognizer, wav: np.ndarray) -> Dict[str, int]:
    lf.reset()
    peak: Dict[str, int] = {}
    for start in range(0, wav.size, 1600):
        lf(wav[start:start + 1600], is_final=False)
        for key, value in state_sizes(lf).items():
            peak[key] = max(peak.get(key, 0), value)
    return peak


def test_state_stays_bounded_on_long_input(toy_model):
    """A token on every frame (the prefix grows as fast as it can): with a 3-s maximum
    segment, positions, the longest prefix, the prediction-net cache and the buffered audio
    peak at the same values on 60 s and on 180 s, within the bounds of one segment;
    without endpointing the prefix grows with the input."""
    s2t = Speech2TextStreaming(toy_model["config"], toy_model["model"], beam_size=BEAM,
                               max_sym_per_frame=1)
    set_joint_output(s2t, {2: 5.0, 3: 4.0, s2t.model.blank_id: 0.0})
    lf = LongFormRecognizer(s2t, EndpointRules(max_segment=3.0))
    wav = (0.1 * np.random.default_rng(2).standard_normal(180 * FS)).astype(np.float32)
    short, long = peak_state(lf, wav[:60 * FS]), peak_state(lf, wav)
    assert long == short
    max_frames = round(3.0 / frame_end_seconds(s2t, 0))
    enc = s2t.model.stream_encoder
    assert long["encoder_frames"] <= max_frames
    assert long["longest_prefix"] <= max_frames
    assert long["encoder_positions"] <= max_frames + enc.block_size
    assert long["cached_prefixes"] <= BEAM
    assert long["buffered_samples"] <= samples_needed(s2t, max_frames) + 1600
    plain = Speech2TextStreaming(toy_model["config"], toy_model["model"], beam_size=BEAM,
                                 max_sym_per_frame=1)
    set_joint_output(plain, {2: 5.0, 3: 4.0, plain.model.blank_id: 0.0})
    plain(wav[:60 * FS], is_final=False)
    assert len(plain.search.partial(plain.search_state)[0].tokens) > 5 * max_frames


def speech_span(seg: Segment, margin: float) -> Tuple[float, float]:
    """The second pass's span of a segment (absolute seconds), restated: ``margin`` s
    around its tokens' times, within the segment; the whole segment without a token."""
    if not seg.token_times:
        return seg.start, seg.end
    return max(seg.start, seg.token_times[0] - margin), min(seg.end, seg.token_times[-1] + margin)


def test_finished_segment_speech_is_the_span_around_the_tokens():
    audio = np.arange(3 * FS, dtype=np.float32)  # a segment from 2 s to 5 s
    seg = Segment(0, 2.0, 5.0, [], [2.5, 3.0], "trailing_silence_after_token")
    finished = FinishedSegment(seg, audio)
    assert np.array_equal(finished.speech(FS, 0.25), audio[round(0.25 * FS):round(1.25 * FS)])
    assert np.array_equal(finished.speech(FS, 1.0), audio[:round(2.0 * FS)])  # clipped at start
    assert np.array_equal(finished.speech(FS, 3.0), audio)  # and at the end
    assert np.array_equal(finished.speech(FS, float("inf")), audio)
    silent = FinishedSegment(Segment(1, 2.0, 5.0, [], [], "trailing_silence_no_token"), audio)
    assert np.array_equal(silent.speech(FS, 0.25), audio)
    for bad in (-0.1, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="two_pass_margin must be a number of seconds"):
            check_two_pass_margin(bad)


@pytest.mark.parametrize("margin", [TWO_PASS_MARGIN, float("inf")])
def test_two_pass_equals_speech2text_on_the_segment_speech(toy_model, recording, margin):
    """The second pass is Speech2Text on the segment's audio from ``margin`` s before its
    first token to ``margin`` s after its last (the default margin trims some segments here),
    or on the whole segment."""
    s2t = streaming(toy_model)
    second = shared_offline_head(s2t.model, toy_model["config"], "attention", beam_size=BEAM,
                                 nbest=NBEST)
    shared = {p.data_ptr() for p in s2t.model.parameters()}
    assert all(p.data_ptr() in shared for p in second.model.parameters())
    segments = decode(LongFormRecognizer(s2t, EndpointRules(), second, margin), recording, 1600)
    offline = Speech2Text(toy_model["config"], toy_model["model"], decode_head="attention",
                          beam_size=BEAM, nbest=NBEST)
    spans = [speech_span(seg, margin) for seg in segments]
    assert any(span != (seg.start, seg.end) for seg, span in zip(segments, spans)) == (
        margin == TWO_PASS_MARGIN)
    for seg, (start, end) in zip(segments, spans):
        want = offline([recording[round(start * FS):round(end * FS)]])[0]
        assert [(r.token_ids, r.text) for r in seg.second_pass] == [
            (r.token_ids, r.text) for r in want]
        assert [r.score for r in seg.second_pass] == pytest.approx([r.score for r in want],
                                                                   abs=1e-4)


def test_cli_prints_the_segments(toy_model, recording, tmp_path):
    wav = tmp_path / "long.wav"
    soundfile.write(wav, recording, FS, subtype="FLOAT")
    out = subprocess.run(
        [sys.executable, "-m", "espnet2_dualmode.bin.dualmode_asr_longform",
         "--asr_train_config", str(toy_model["config"]), "--asr_model_file",
         str(toy_model["model"]), "--wav", str(wav), "--beam_size", "4",
         "--two_pass_head", "attention"],
        capture_output=True, text=True, check=True)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    s2t = Speech2TextStreaming(toy_model["config"], toy_model["model"], beam_size=4)
    second = shared_offline_head(s2t.model, toy_model["config"], "attention", beam_size=4)
    want = decode(LongFormRecognizer(s2t, EndpointRules(), second), recording, 2560)
    assert lines == [seg.to_json("attention") for seg in want]
    assert lines[0]["token_timestamps"][0].keys() == {"token", "time"}


def test_bad_input_names_the_file(toy_model, tmp_path):
    args = ["--asr_train_config", str(toy_model["config"]), "--asr_model_file",
            str(toy_model["model"])]
    low_rate = tmp_path / "rate8k.wav"
    soundfile.write(low_rate, np.zeros(8000, dtype=np.float32), 8000)
    with pytest.raises(ValueError, match=f"{low_rate}: sample rate 8000 Hz"):
        longform_main(args + ["--wav", str(low_rate)])
    short = tmp_path / "short.wav"
    soundfile.write(short, np.zeros(300, dtype=np.float32), FS)
    with pytest.raises(ValueError, match=f"{short}: 300 samples is too short"):
        longform_main(args + ["--wav", str(short)])
    text = tmp_path / "notaudio.wav"
    text.write_text("hello")
    with pytest.raises(ValueError, match=f"{text}: cannot read audio"):
        longform_main(args + ["--wav", str(text)])
    lf = LongFormRecognizer(streaming(toy_model))
    for samples in (300, 0):
        lf.reset()
        with pytest.raises(ValueError, match=f"{samples} samples is shorter than one encoder"):
            lf(np.zeros(samples, dtype=np.float32), is_final=True)


def test_rules_are_validated(toy_model):
    with pytest.raises(ValueError, match="max_segment must be a positive"):
        EndpointRules(max_segment=float("inf"))
    with pytest.raises(ValueError, match="trailing_silence_after_token must be a positive"):
        EndpointRules(trailing_silence_after_token=0)
    with pytest.raises(ValueError, match="shorter than the streaming encoder's first block"):
        LongFormRecognizer(streaming(toy_model), EndpointRules(max_segment=0.1))


def test_a_tail_too_short_for_an_encoder_frame_ends_as_an_empty_segment(toy_model):
    """Without look-ahead the audio after a cut can be shorter than one encoder frame's
    input: the last segment covers it, with no token."""
    s2t = Speech2TextStreaming(toy_model["config"], toy_model["model"], beam_size=1,
                               max_sym_per_frame=1, block_size=8, hop_size=4, look_ahead=0)
    set_joint_output(s2t, {2: 5.0, s2t.model.blank_id: 0.0})
    lf = LongFormRecognizer(s2t, EndpointRules(max_segment=2.0))
    wav = np.zeros(4 * FS, dtype=np.float32)
    frames = round(decode(lf, wav, 1600)[0].end / frame_end_seconds(s2t, 0))
    segments = decode(lf, wav[:samples_needed(s2t, frames - 1)], 1600)
    assert [s.endpoint for s in segments] == ["max_segment", "end_of_audio"]
    tail = round((segments[1].end - segments[1].start) * FS)
    assert 0 < tail < lf.min_samples and segments[1].tokens == []
