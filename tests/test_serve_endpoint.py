"""Endpointing over the WebSocket: the server's segments of a stream equal
LongFormRecognizer's on the same audio with the same rules (whatever the chunking and the
streams batched with it), each segment gets its own offline re-decode, and a bad endpoint
rule is answered on its own connection only.

The toy model emits its memorised clip on the first frame of every fresh stream, so the
segments after the first are not the utterances; the reference is what matters here
(tests/test_longform.py checks segments against utterances on a model that finds them).
"""

import asyncio
import dataclasses
import time
from typing import Any, Dict, List, Sequence

import aiohttp
import numpy as np
import pytest

from espnet2_dualmode.bin import dualmode_asr_longform, serve
from espnet2_dualmode.inference.endpoint import EndpointRules, LongFormRecognizer, Segment
from espnet2_dualmode.inference.offline import shared_offline_head
from espnet2_dualmode.inference.streaming import Speech2TextStreaming
from test_longform import speech_span
from test_serve import (  # noqa: F401  (fixtures)
    BEAM,
    NBEST,
    START,
    bad_stream,
    corpus,
    expected,
    health,
    reference,
    server,
    stream_wav,
    with_good_stream,
)

FS = 16000
# short rules, so that pauses of 0.6-1.2 s between the toy clips end segments
RULES = {"trailing_silence_after_token": 0.3, "trailing_silence_no_token": 0.6, "max_segment": 3.0}


def recording(corpus, clips: Sequence[int], pauses: Sequence[float], seed: int = 0) -> np.ndarray:
    """int16 toy clips (by index in sorted order) separated by pauses of low noise."""
    keys = sorted(corpus)
    rng = np.random.default_rng(seed)
    pieces = [corpus[keys[clips[0]]][0]]
    for clip, pause in zip(clips[1:], pauses):
        noise = np.round(0.01 * 32768 * rng.standard_normal(int(pause * FS)))
        pieces += [noise.astype(np.int16), corpus[keys[clip]][0]]
    return np.concatenate(pieces)


def longform(s2t: Speech2TextStreaming, pcm: np.ndarray, rules: Dict[str, float]) -> List[Segment]:
    """The reference: LongFormRecognizer's segments of the whole recording (as float)."""
    return LongFormRecognizer(s2t, EndpointRules(**rules))(pcm.astype(np.float32) / 32768,
                                                           is_final=True)


def of_type(got: Dict[str, Any], kind: str) -> List[Dict[str, Any]]:
    return [m for m in got["messages"] if m["type"] == kind]


def assert_segments_equal(got: List[Dict[str, Any]], want: List[Segment]) -> None:
    """The server's segments against the reference: text, tokens, rule, n-best texts exact;
    times within 1e-6 (the JSON rounds to 1 us); scores to float rounding (batching)."""
    assert [(g["index"], g["text"], g["tokens"], g["endpoint"]) for g in got] == [
        (w.index, w.text, w.tokens, w.endpoint) for w in want]
    for g, w in zip(got, want):
        assert (g["start"], g["end"]) == pytest.approx((w.start, w.end), abs=1e-6), w.index
        assert [t["time"] for t in g["token_timestamps"]] == pytest.approx(w.token_times, abs=1e-6)
        assert [h["text"] for h in g["nbest"]] == [r.text for r in w.nbest]
        assert [h["score"] for h in g["nbest"]] == pytest.approx([r.score for r in w.nbest],
                                                                 abs=1e-3)


def test_segments_equal_longform_recognizer(server, corpus, reference):
    """Three clips with pauses: the segment messages are LongFormRecognizer's segments,
    in order, each before the partials of the next segment; the partials carry the current
    segment only; the final lists the same segments and joins their tokens."""
    pcm = recording(corpus, [0, 2, 3], [1.0, 1.0])
    got = asyncio.run(stream_wav(server["http"], pcm, {"nbest": NBEST, "endpoint": RULES}))
    want = longform(reference, pcm, RULES)
    assert len(want) >= 3 and "trailing_silence_after_token" in {w.endpoint for w in want}
    segments = of_type(got, "segment")
    assert_segments_equal(segments, want)
    assert got["ready"]["endpoint"] == {**dataclasses.asdict(EndpointRules()), **RULES}
    final = got["final"]
    assert final["segments"] == [{k: v for k, v in s.items() if k != "type"} for s in segments]
    tokens = [tok for w in want for tok in w.tokens]
    assert final["tokens"] == tokens
    assert final["text"] == reference.text.tokenizer.tokens2text(tokens)
    assert [t["time"] for t in final["token_timestamps"]] == pytest.approx(
        [t for w in want for t in w.token_times], abs=1e-6)
    assert got["messages"][-1] is final
    current = 0  # index of the segment in progress
    for m in got["messages"][1:-1]:
        if m["type"] == "segment":
            assert m["index"] == current
            current += 1
        else:
            assert m["type"] == "partial" and m["segment"] == current
            start = want[current].start
            assert all(start < t["time"] <= start + m["samples"] / FS
                       for t in m["token_timestamps"]), m
    assert current == len(want)
    assert [p["samples"] for p in got["partial"]] == sorted({p["samples"] for p in got["partial"]})


# (clips, pauses, chunk samples, the stream's own rules: None for the server's defaults)
CLIENTS = [([0, 2, 3], [1.0, 1.0], 800, RULES),
           ([1, 4], [0.8], 1600, {"trailing_silence_after_token": 0.5}),
           ([5, 0, 2], [1.2, 0.6], 4000, RULES),
           ([3, 1], [2.0], 2560, None)]


def test_concurrent_clients_get_their_own_segments(server, corpus, reference):
    """Four clients at once, with different recordings, chunk sizes and rules: each gets
    exactly the segments LongFormRecognizer finds in its own recording with its rules,
    and the engine decoded several streams in one batched step."""
    stats = server["engine"].stats
    batched_before = stats.batched_rounds
    recordings = [recording(corpus, clips, pauses, seed=i)
                  for i, (clips, pauses, _, _) in enumerate(CLIENTS)]

    async def all_clients():
        return await asyncio.gather(*(
            stream_wav(server["http"], pcm, {"nbest": NBEST, **({"endpoint": rules} if rules else {})},
                       chunk=chunk)
            for pcm, (_, _, chunk, rules) in zip(recordings, CLIENTS)))

    results = asyncio.run(all_clients())
    counts = []
    for pcm, got, (_, _, _, rules) in zip(recordings, results, CLIENTS):
        want = longform(reference, pcm, {**dataclasses.asdict(EndpointRules()), **(rules or {})})
        assert_segments_equal(of_type(got, "segment"), want)
        assert_segments_equal(got["final"]["segments"], want)
        counts.append(len(want))
    assert min(counts[:3]) >= 2  # the short rules did cut these recordings
    assert stats.batched_rounds > batched_before


def test_offline_redecode_of_each_segment(server, corpus, reference, toy_model, monkeypatch):
    """With offline_head: one offline message per segment, in index order, each after its
    segment message (the last after the final), equal to the shared attention head on
    that segment's speech (the engine's margin around its tokens; a small one here, so
    that the toy clips' short segments are trimmed)."""
    margin = 0.1
    monkeypatch.setattr(server["engine"], "two_pass_margin", margin)
    pcm = recording(corpus, [0, 2, 3], [1.0, 1.0])
    got = asyncio.run(stream_wav(server["http"], pcm, {"nbest": NBEST, "endpoint": RULES,
                                                       "offline_head": "attention"}))
    want = longform(reference, pcm, RULES)
    messages = got["messages"]
    offline = of_type(got, "offline")
    assert len(want) >= 3
    assert [m["index"] for m in offline] == list(range(len(want)))
    where = {(m["type"], m.get("index")): i for i, m in enumerate(messages)}
    for m in offline:
        assert where[("offline", m["index"])] > where[("segment", m["index"])]
    assert where[("offline", len(want) - 1)] > where[("final", None)]
    head = shared_offline_head(reference.model, toy_model["config"], "attention",
                               beam_size=BEAM, nbest=NBEST)
    spans = [speech_span(seg, margin) for seg in want]
    assert any(span != (seg.start, seg.end) for seg, span in zip(want, spans))
    for m, seg, (start, end) in zip(offline, want, spans):
        audio = pcm[round(start * FS):round(end * FS)].astype(np.float32) / 32768
        ref = head([audio])[0]
        assert m["head"] == "attention"
        assert (m["start"], m["end"]) == pytest.approx((seg.start, seg.end), abs=1e-6)
        assert m["text"] == ref[0].text
        assert [h["text"] for h in m["nbest"]] == [r.text for r in ref]
        assert [h["score"] for h in m["nbest"]] == pytest.approx([r.score for r in ref], abs=1e-4)


BAD_RULES = {
    "negative": ({"max_segment": -1}, "endpoint rule max_segment must be a positive number"),
    "not_a_number": ({"trailing_silence_after_token": "long"},
                     "endpoint rule trailing_silence_after_token must be a positive number"),
    "boolean": ({"trailing_silence_no_token": True}, "must be a positive number"),
    "unknown_rule": ({"silence": 1.0}, "endpoint must be an object with some of"),
    "not_an_object": ([0.3], "endpoint must be an object with some of"),
    "shorter_than_a_block": ({"max_segment": 0.1},
                             "is shorter than the streaming encoder's first block"),
}


@pytest.mark.parametrize("case", sorted(BAD_RULES))
def test_bad_endpoint_rule_gets_an_error_and_others_are_served(server, corpus, expected, case):
    rules, reason = BAD_RULES[case]
    answers = with_good_stream(server, corpus, expected,
                               bad_stream(server["http"], [{**START, "endpoint": rules}]))
    assert len(answers) == 1 and answers[0]["type"] == "error", answers
    assert reason in answers[0]["message"], answers


def test_serve_has_the_longform_rule_options():
    """The same endpoint options and defaults on both command lines; a bad value is a
    usage error before any model is loaded."""
    names = [f.name for f in dataclasses.fields(EndpointRules)]
    common = ["--asr_train_config", "c.yaml", "--asr_model_file", "m.pth"]
    served = serve.get_parser().parse_args(common)
    batch = dualmode_asr_longform.get_parser().parse_args(common + ["--wav", "x.wav"])
    assert {n: getattr(served, n) for n in names} == {n: getattr(batch, n) for n in names} == (
        dataclasses.asdict(EndpointRules()))
    given = serve.get_parser().parse_args(common + ["--max_segment", "7.5"])
    assert EndpointRules.from_args(given).max_segment == 7.5
    with pytest.raises(SystemExit):
        serve.main(common + ["--trailing_silence_no_token", "0"])


def test_client_leaving_with_offline_redecodes_pending_is_freed(server, corpus):
    """A client that asked for offline re-decodes leaves after segments were cut and
    before their offline messages: the stream is freed and the server serves on."""
    pcm = recording(corpus, [0, 2, 3], [1.0, 1.0])

    async def leave():
        async with aiohttp.ClientSession() as client, \
                client.ws_connect(server["http"] + "/ws/stream") as ws:
            await ws.send_json({**START, "endpoint": RULES, "offline_head": "attention"})
            await ws.receive_json()
            await ws.send_bytes(pcm[:3 * FS // 2].astype("<i2").tobytes())  # cut in 1.5 s
            while (await ws.receive_json())["type"] != "segment":
                pass
        # gone without an end message, re-decodes under way or queued

    asyncio.run(leave())
    deadline = time.time() + 10
    while health(server["http"])["active_streams"] and time.time() < deadline:
        time.sleep(0.05)
    assert health(server["http"])["active_streams"] == 0
    assert server["engine"].decoder.open_streams == []
    got = asyncio.run(stream_wav(server["http"], corpus[sorted(corpus)[0]][0]))
    assert got["final"]["text"] == corpus[sorted(corpus)[0]][1]
