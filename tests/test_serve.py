"""The server on loopback with the toy model: WebSocket streaming and HTTP results equal the
library's, bad input is answered on its own connection only, and a 16-client load test.

The load test streams ``DUALMODE_SERVE_LOAD_WAVS`` wavs per client (default 2, the short
CI version; raise it for a longer run)."""

import asyncio
import io
import json
import logging
import os
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import aiohttp
import numpy as np
import pytest
import soundfile

from espnet2_dualmode.bin.dualmode_asr_inference_streaming import recognize
from espnet2_dualmode.bin.serve import bind, serve
from espnet2_dualmode.inference.endpoint import Segment
from espnet2_dualmode.inference.latency import frame_end_seconds, percentile_ms
from espnet2_dualmode.inference.model_io import Result
from espnet2_dualmode.inference.offline import Speech2Text
from espnet2_dualmode.inference.streaming import Speech2TextStreaming
from espnet2_dualmode.serving.app import create_app
from espnet2_dualmode.serving.engine import Engine
from espnet2_dualmode.serving.protocol import results_message
from test_longform import speech_span

BEAM, NBEST, CHUNK = 4, 2, 1600
LOAD_WAVS = int(os.environ.get("DUALMODE_SERVE_LOAD_WAVS", "2"))


@pytest.fixture(scope="module")
def corpus(toy_corpus):
    """{utt_id: (int16 samples, corpus transcript)}."""
    texts = dict(line.split() for line in toy_corpus["text"].read_text().splitlines())
    items = {}
    for line in toy_corpus["wav.scp"].read_text().splitlines():
        key, path = line.split()
        items[key] = (soundfile.read(path, dtype="int16")[0], texts[key])
    return items


@pytest.fixture(scope="module")
def reference(toy_model):
    return Speech2TextStreaming(toy_model["config"], toy_model["model"], beam_size=BEAM, nbest=NBEST)


@pytest.fixture(scope="module")
def expected(corpus, reference):
    """Speech2TextStreaming's final n-best of each wav (fed as float, as soundfile reads it)."""
    return {key: recognize(reference, pcm.astype(np.float32) / 32768, 0)
            for key, (pcm, _) in corpus.items()}


@pytest.fixture(scope="module")
def server(toy_model):
    """The app on 127.0.0.1 (a free port) in a thread with its own event loop."""
    engine = Engine(toy_model["config"], toy_model["model"], beam_size=BEAM, nbest=NBEST)
    sock = bind("127.0.0.1", 0)
    loop = asyncio.new_event_loop()
    task = loop.create_task(serve(create_app(engine), sock))

    def run() -> None:
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield {"http": "http://127.0.0.1:%d" % sock.getsockname()[1], "engine": engine}
    loop.call_soon_threadsafe(task.cancel)
    thread.join(timeout=10)
    engine.close()


def expected_times(reference: Speech2TextStreaming, result: Result) -> List[Dict[str, Any]]:
    return [{"token": tok, "time": round(frame_end_seconds(reference, t), 6)}
            for tok, t in zip(result.tokens, result.timestamps)]


async def stream_wav(http: str, pcm: np.ndarray, start: Optional[Dict[str, Any]] = None,
                     pace: float = 0.0, chunk: int = CHUNK) -> Dict[str, Any]:
    """Stream ``pcm`` in ``chunk``-sample frames (one every ``pace`` s); returns the last
    message of each type, every partial, every message in order (``messages``) and each
    chunk's latency (send -> the partial acknowledging it)."""
    msg_start = {"type": "start", "sample_rate": 16000, "format": "pcm_s16le", **(start or {})}
    chunks = [pcm[i:i + chunk] for i in range(0, pcm.size, chunk)]
    ends = np.cumsum([c.size for c in chunks]).tolist()
    sent: Dict[int, float] = {}
    got: Dict[str, Any] = {"partial": [], "latency": [], "messages": []}
    async with aiohttp.ClientSession() as client, client.ws_connect(http + "/ws/stream") as ws:
        await ws.send_json(msg_start)
        got["ready"] = await ws.receive_json()

        async def send() -> None:
            t0 = time.perf_counter()
            for i, (piece, end) in enumerate(zip(chunks, ends)):
                await asyncio.sleep(max(0.0, t0 + i * pace - time.perf_counter()))
                sent[end] = time.perf_counter()
                await ws.send_bytes(piece.astype("<i2").tobytes())
            await ws.send_json({"type": "end"})

        sender = asyncio.create_task(send())
        async for msg in ws:
            m = json.loads(msg.data)
            got["messages"].append(m)
            if m["type"] == "partial":
                got["partial"].append(m)
                got["latency"].append(time.perf_counter() - sent[m["samples"]])
            else:
                got[m["type"]] = m
        await sender
    return got


def test_stream_final_equals_speech2textstreaming(server, corpus, reference, expected):
    async def run_all():
        return {k: await stream_wav(server["http"], pcm, {"nbest": NBEST}) for k, (pcm, _) in corpus.items()}

    results = asyncio.run(run_all())
    for key, got in results.items():
        want = expected[key]
        final = got["final"]
        assert final["text"] == want[0].text == corpus[key][1], key
        assert [h["text"] for h in final["nbest"]] == [r.text for r in want]
        assert final["token_timestamps"] == expected_times(reference, want[0])
        # one segment (the clips are too short for the default endpoint rules), also sent
        # as a segment message before the final
        assert final["segments"] == [{"index": 0, "start": 0.0,
                                      "end": corpus[key][0].size / 16000,
                                      "text": want[0].text, "tokens": want[0].tokens,
                                      "token_timestamps": expected_times(reference, want[0]),
                                      "endpoint": "end_of_audio", "nbest": final["nbest"]}]
        assert got["segment"] == {"type": "segment", **final["segments"][0]}
        # every chunk is acknowledged once, in order, with the samples received so far
        ends = np.cumsum([min(CHUNK, corpus[key][0].size - i)
                          for i in range(0, corpus[key][0].size, CHUNK)]).tolist()
        assert [p["samples"] for p in got["partial"]] == ends
        assert final["samples"] == ends[-1]


def test_stream_offline_redecode_equals_speech2text(server, corpus, toy_model):
    """The re-decode of a one-segment stream is Speech2Text on that segment's speech (the
    engine's margin around its token times: test_longform.speech_span)."""
    key = sorted(corpus)[0]
    pcm = corpus[key][0]
    got = asyncio.run(stream_wav(server["http"], pcm, {"offline_head": "attention"}))
    (seg,) = got["final"]["segments"]
    times = [t["time"] for t in seg["token_timestamps"]]
    start, end = speech_span(Segment(0, seg["start"], seg["end"], [], times, seg["endpoint"]),
                             server["engine"].two_pass_margin)
    audio = pcm[round(start * 16000):round(end * 16000)].astype(np.float32) / 32768
    want = Speech2Text(toy_model["config"], toy_model["model"], decode_head="attention",
                       beam_size=BEAM, nbest=NBEST)([audio])[0]
    assert got["offline"]["head"] == "attention"
    assert got["offline"]["text"] == want[0].text == corpus[key][1]
    assert got["offline"]["nbest"][0]["score"] == pytest.approx(want[0].score, abs=1e-5)


def test_token_times_are_encoder_frame_ends(server):
    """A token on encoder frame t ends at 4 (t + 1) hop / 16000 s (4 feature hops per frame)."""
    engine = server["engine"]
    hop = engine.model.frontend.stft.hop_length
    frames = [0, 5, 12]
    result = Result("abc", ["a", "b", "c"], [2, 3, 4], -1.0, frames)
    msg = results_message("final", [result], engine.frame_end, 2.0)
    assert [t["time"] for t in msg["token_timestamps"]] == pytest.approx(
        [4 * (t + 1) * hop / 16000 for t in frames], abs=1e-6)
    assert msg["segments"][0]["token_timestamps"] == msg["token_timestamps"]
    assert msg["segments"][0]["end"] == 2.0


async def post(http: str, body: bytes, head: str, multipart: bool = False) -> Tuple[int, Dict[str, Any]]:
    async with aiohttp.ClientSession() as client:
        if multipart:
            form = aiohttp.FormData()
            form.add_field("file", body, filename="x.wav", content_type="audio/wav")
            body = form
        async with client.post(f"{http}/recognize", params={"head": head}, data=body) as r:
            return r.status, await r.json()


def wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.mark.parametrize("head", ["attention", "rnnt"])
def test_http_equals_speech2text(server, corpus, toy_model, head):
    s2t = Speech2Text(toy_model["config"], toy_model["model"], decode_head=head,
                      beam_size=BEAM, nbest=NBEST)
    for i, (key, (pcm, text)) in enumerate(sorted(corpus.items())[:3]):
        status, got = asyncio.run(post(server["http"], wav_bytes(pcm), head, multipart=i == 1))
        want = s2t([pcm.astype(np.float32) / 32768])[0]
        assert status == 200, got
        assert [h["text"] for h in got["nbest"]] == [r.text for r in want]
        assert got["text"] == text
        assert [h["score"] for h in got["nbest"]] == pytest.approx([r.score for r in want], abs=1e-5)
        stamps = [[t["time"] for t in h["token_timestamps"]] for h in got["nbest"]]
        assert stamps == [[None if r.timestamps is None else round(frame_end_seconds(
            server["engine"].prototype, t), 6) for t in (r.timestamps or [None] * len(r.tokens))]
            for r in want]
    # the head shares the loaded model's weight tensors
    engine = server["engine"]
    shared = dict(engine.model.named_parameters())
    for name, p in engine.offline[head].model.named_parameters():
        assert p.data_ptr() == shared[name].data_ptr(), name


START = {"type": "start", "sample_rate": 16000}
BAD_STREAMS = {
    "wrong_sample_rate": ([{**START, "sample_rate": 8000}], "sample_rate must be 16000, not 8000"),
    "wrong_format": ([{**START, "format": "f32le"}], "format must be 'pcm_s16le'"),
    "odd_byte_count": ([START, b"\x00\x01\x02"], "3 bytes is not 16-bit PCM"),
    "text_instead_of_audio": ([START, "hello"], 'expected {"type": "end"} or binary audio'),
    "audio_before_start": ([b"\x00\x00"], "audio before the start message"),
    "json_without_start": ([{"type": "end"}], 'the first message must be {"type": "start"'),
    "unknown_offline_head": ([{**START, "offline_head": "nope"}], "offline_head must be one of"),
    "end_without_audio": ([START, {"type": "end"}], "the stream ended without audio"),
    "too_short": ([START, b"\x00\x00" * 10, {"type": "end"}], "cannot decode this stream"),
}


async def bad_stream(http: str, messages: Sequence[Any]) -> List[Dict[str, Any]]:
    """Send ``messages``; returns what the server answered before closing."""
    answers = []
    async with aiohttp.ClientSession() as client, client.ws_connect(http + "/ws/stream") as ws:
        for m in messages:
            if isinstance(m, bytes):
                await ws.send_bytes(m)
            elif isinstance(m, str):
                await ws.send_str(m)
            else:
                await ws.send_json(m)
        async for msg in ws:
            answers.append(json.loads(msg.data))
    return answers


def with_good_stream(server, corpus, expected, bad):
    """Run ``bad`` while another connection streams a wav; check that stream's result."""
    key = sorted(corpus)[-1]

    async def both():
        return await asyncio.gather(stream_wav(server["http"], corpus[key][0], pace=0.02), bad)

    good, answer = asyncio.run(both())
    assert good["final"]["text"] == expected[key][0].text == corpus[key][1]
    return answer


@pytest.mark.parametrize("case", sorted(BAD_STREAMS))
def test_bad_stream_gets_an_error_and_others_are_served(server, corpus, expected, case):
    messages, reason = BAD_STREAMS[case]
    answers = with_good_stream(server, corpus, expected, bad_stream(server["http"], messages))
    errors = [a for a in answers if a["type"] == "error"]
    assert len(errors) == 1 and reason in errors[0]["message"], answers
    assert answers[-1] == errors[0]  # then the server closed the connection


def health(http: str) -> Dict[str, Any]:
    async def get():
        async with aiohttp.ClientSession() as client, client.get(http + "/health") as r:
            return await r.json()
    return asyncio.run(get())


def test_client_leaving_mid_stream_is_logged_and_freed(server, corpus, expected, caplog):
    pcm = next(iter(corpus.values()))[0]

    async def leave():
        async with aiohttp.ClientSession() as client, client.ws_connect(server["http"] + "/ws/stream") as ws:
            await ws.send_json(START)
            await ws.receive_json()
            await ws.send_bytes(pcm[:CHUNK].tobytes())
            await ws.receive_json()
        # closed without an end message

    with caplog.at_level(logging.WARNING, logger="espnet2_dualmode.serving.app"):
        with_good_stream(server, corpus, expected, leave())
        deadline = time.time() + 5
        while health(server["http"])["active_streams"] and time.time() < deadline:
            time.sleep(0.05)
    assert health(server["http"])["active_streams"] == 0
    assert server["engine"].decoder.open_streams == []  # closed in the batched decoder too
    assert any("without an end message; state freed" in r.message for r in caplog.records)


BAD_UPLOADS = {
    "not_audio": (b"this is not a wav file", "attention", "not an audio file soundfile can read"),
    "empty": (b"", "attention", "empty upload"),
    "wrong_rate": (None, "attention", "the audio is 8000 Hz; send 16000 Hz"),
    "stereo": ("stereo", "attention", "the audio has 2 channels; send mono"),
    "unknown_head": (None, "beam", "head must be one of"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_upload_gets_400_and_others_are_served(server, corpus, expected, case):
    body, head, reason = BAD_UPLOADS[case]
    pcm = next(iter(corpus.values()))[0]
    if body is None:
        body = wav_bytes(pcm, 8000 if case == "wrong_rate" else 16000)
    elif body == "stereo":
        body = wav_bytes(np.stack([pcm, pcm], axis=1))
    status, answer = with_good_stream(server, corpus, expected, post(server["http"], body, head))
    assert status == 400 and answer["type"] == "error" and reason in answer["message"], answer


def test_sixteen_concurrent_clients(server, corpus, expected):
    """16 clients, each streaming LOAD_WAVS wavs in real time (100 ms chunks): every final
    reaches its own client and equals its own reference, the engine decoded several streams
    in one batched step; prints P50/P99 chunk latency."""
    keys = sorted(corpus)
    stats = server["engine"].stats
    batched_before = stats.batched_rounds

    async def client(i: int):
        out = []
        for j in range(LOAD_WAVS):
            key = keys[(i + j) % len(keys)]
            out.append((key, await stream_wav(server["http"], corpus[key][0], pace=CHUNK / 16000)))
        return out

    async def all_clients():
        return await asyncio.gather(*(client(i) for i in range(16)))

    t0 = time.perf_counter()
    results = asyncio.run(all_clients())
    wall = time.perf_counter() - t0
    latencies = []
    finals = 0
    for per_client in results:
        for key, got in per_client:
            assert got["final"]["text"] == expected[key][0].text, key
            assert got["final"]["samples"] == corpus[key][0].size
            latencies += got["latency"]
            finals += 1
    assert finals == 16 * LOAD_WAVS
    assert stats.batched_rounds > batched_before and stats.largest_round > 1
    print(f"\n16 clients x {LOAD_WAVS} wavs, {len(latencies)} chunks in {wall:.1f} s: chunk latency "
          f"P50 {percentile_ms(latencies, 50):.1f} ms, P99 {percentile_ms(latencies, 99):.1f} ms; "
          f"{stats.batched_rounds - batched_before} batched search rounds, up to "
          f"{stats.largest_round} streams in one")
