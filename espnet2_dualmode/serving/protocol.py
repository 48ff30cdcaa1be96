"""The streaming WebSocket protocol (``/ws/stream``) and the JSON result layout.

One WebSocket connection carries one stream of audio, which endpoint rules cut into
segments (:mod:`espnet2_dualmode.inference.endpoint`: a segment ends after some trailing
blank following a token, after some time without any token, or at a maximum length):

1. client -> server, text: ``{"type": "start", "sample_rate": 16000, "format": "pcm_s16le"}``
   with optional ``"nbest"`` (hypotheses per result, at most the server's ``--nbest``),
   ``"offline_head"`` (a full-context head of :data:`HEADS` that re-decodes each finished
   segment's speech, the server's ``--two_pass_margin`` around its tokens: "two-pass")
   and ``"endpoint"``: an object with any of ``"trailing_silence_after_token"``,
   ``"trailing_silence_no_token"`` and ``"max_segment"`` (positive seconds; the others
   keep the server's ``--`` options of the same names). The server answers
   ``{"type": "ready", "session": id, "sample_rate": 16000, "endpoint": {the three rules
   in force}}``.
2. client -> server, binary: audio chunks, 16-bit little-endian signed PCM, mono, any
   even number of bytes. The server answers EVERY chunk with exactly one
   ``{"type": "partial", "samples": n, "segment": i, "text", "tokens",
   "token_timestamps", "nbest"}``, ``n`` being the samples received so far on this
   stream: it acknowledges the chunk, so the chunk latency is the time from sending a
   chunk to receiving the partial whose ``samples`` equals the total sent up to that
   chunk. A partial holds only the current segment (index ``i``), and only tokens from
   audio already received. Before that partial come the ``segment`` messages of the
   segments the chunk's audio finished, if any.
3. client -> server, text: ``{"type": "end"}``. The server answers with the ``segment``
   message of the last segment (what is left of the stream, ``"endpoint":
   "end_of_audio"``), then ``{"type": "final", "samples", "text", "tokens",
   "token_timestamps", "nbest", "segments": [every segment, in order]}``; then, after any
   outstanding ``offline`` messages, it closes the connection.

A segment (a ``segment`` message, and each entry of the final's ``segments`` without
``"type"``) is ``{"index": i, "start": s, "end": s, "text", "tokens",
"token_timestamps", "endpoint", "nbest"}``: ``index`` 0, 1, ... in stream order, ``end``
of one is ``start`` of the next, ``endpoint`` the rule that ended it
(``trailing_silence_after_token``, ``trailing_silence_no_token``, ``max_segment`` or
``end_of_audio``). Its text and times are those of
:class:`~espnet2_dualmode.inference.endpoint.LongFormRecognizer` on the same audio with
the same rules, whatever the chunking and the other streams batched with it.

Times are seconds from the start of the stream. ``token_timestamps`` is
``[{"token", "time"}]``, a token's time being the end of the encoder frame that emitted it
(4 feature hops per frame), ``null`` where the head's search gives no alignment (e.g.
attention). Each ``nbest`` entry is ``{"text", "tokens", "score", "token_timestamps"}``.
The final's ``text``, ``tokens`` and ``token_timestamps`` are those of every segment's
best hypothesis in order (``text`` detokenised from all the tokens); its ``nbest`` is the
segment's n-best for a stream of one segment, else its one entry is that concatenation
(score: the sum), as n-best alternatives are per segment.

With ``offline_head``, each segment ``i`` gets ``{"type": "offline", "index": i, "head",
"start", "end", "text", "tokens", "token_timestamps", "nbest"}``: that head's n-best of
the segment's audio (empty, ``"nbest": []``, for a segment too short to decode).

Order guarantees on one connection: partials come in chunk order, one per chunk;
``segment`` messages come in index order, each before any partial of a later chunk and
before the ``final``; the ``final`` comes after every ``segment`` message. ``offline``
messages come in index order, each after its segment's ``segment`` message, but may come
after partials of later segments (a client matches them by ``index``); the last
segment's comes after the ``final``. A stream of one segment thus gets ``segment``,
``final``, then one ``offline`` message for the whole stream.

Errors: ``{"type": "error", "message": ...}``, then the server closes that connection
only (a bad start message or endpoint rule, a wrong sample rate or format, an odd-length
or text frame where audio is expected, audio before ``start``, audio too short to
decode).

Extensibility: clients must ignore message types and fields they do not know; batching
changes nothing on the wire.
"""

from __future__ import annotations

import json
import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from espnet2_dualmode.inference.endpoint import EndpointRules, Segment
from espnet2_dualmode.inference.model_io import Result
from espnet2_dualmode.inference.offline import HEADS

SAMPLE_RATE = 16000
FORMAT = "pcm_s16le"


class ProtocolError(ValueError):
    """A client message that breaks the protocol; its text goes back to that client."""


def parse_start(text: str, max_nbest: int, rules: EndpointRules = EndpointRules()) -> Dict[str, Any]:
    """Validate the start message; returns ``{"nbest": int, "offline_head": str | None,
    "rules": EndpointRules}`` (``rules``: the server's, with the message's ``endpoint``)."""
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"the first message must be a JSON start message: {e}") from e
    if not isinstance(msg, dict) or msg.get("type") != "start":
        raise ProtocolError('the first message must be {"type": "start", ...}')
    rate = msg.get("sample_rate")
    if rate != SAMPLE_RATE:
        raise ProtocolError(f"sample_rate must be {SAMPLE_RATE}, not {rate!r}")
    fmt = msg.get("format", FORMAT)
    if fmt != FORMAT:
        raise ProtocolError(f"format must be {FORMAT!r} (16-bit little-endian PCM), not {fmt!r}")
    nbest = msg.get("nbest", 1)
    if not isinstance(nbest, int) or not 1 <= nbest <= max_nbest:
        raise ProtocolError(f"nbest must be an integer from 1 to {max_nbest}, not {nbest!r}")
    head = msg.get("offline_head")
    if head is not None and head not in HEADS:
        raise ProtocolError(f"offline_head must be one of {HEADS}, not {head!r}")
    return {"nbest": nbest, "offline_head": head, "rules": parse_rules(msg.get("endpoint"), rules)}


def parse_rules(given: Any, rules: EndpointRules) -> EndpointRules:
    """``rules`` with the start message's ``endpoint`` values (None: unchanged)."""
    if given is None:
        return rules
    names = [f.name for f in dataclasses.fields(EndpointRules)]
    if not isinstance(given, dict) or set(given) - set(names):
        raise ProtocolError(f"endpoint must be an object with some of {names} (seconds), "
                            f"not {given!r}")
    try:
        return EndpointRules(**{**dataclasses.asdict(rules), **given})
    except ValueError as e:
        raise ProtocolError(str(e)) from e


def parse_control(text: str) -> str:
    """A text message after start: only ``{"type": "end"}`` is allowed; returns its type."""
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"expected {{\"type\": \"end\"}} or binary audio, got invalid JSON: {e}") from e
    if not isinstance(msg, dict) or msg.get("type") != "end":
        raise ProtocolError(f'expected {{"type": "end"}} or binary audio, got {text[:80]!r}')
    return "end"


def pcm_to_float(data: bytes) -> np.ndarray:
    """16-bit little-endian PCM bytes -> float32 samples in [-1, 1)."""
    if len(data) % 2:
        raise ProtocolError(f"an audio frame of {len(data)} bytes is not 16-bit PCM (odd length)")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


FrameEnd = Callable[[int], float]  # encoder frame -> its end time in seconds


def token_times(result: Result, frame_end: FrameEnd, offset: float = 0.0) -> List[Dict[str, Any]]:
    """Each token with the end time (s) of the encoder frame that emitted it, plus
    ``offset`` (the start of its segment; None for a head without timestamps)."""
    stamps: Sequence[Optional[int]] = result.timestamps or [None] * len(result.tokens)
    return [{"token": tok, "time": None if t is None else round(offset + frame_end(t), 6)}
            for tok, t in zip(result.tokens, stamps)]


def hypothesis(result: Result, frame_end: FrameEnd, offset: float = 0.0) -> Dict[str, Any]:
    """One hypothesis as JSON (times from ``offset``, its segment's start)."""
    return {"text": result.text, "tokens": result.tokens, "score": result.score,
            "token_timestamps": token_times(result, frame_end, offset)}


EMPTY = {"text": "", "tokens": [], "score": 0.0, "token_timestamps": []}  # no block decoded yet


def partial_message(samples: int, segment: int, partial: Optional[Result], offset: float,
                    frame_end: FrameEnd) -> Dict[str, Any]:
    """The partial of the current segment (index ``segment``, starting at ``offset`` s)."""
    best = EMPTY if partial is None else hypothesis(partial, frame_end, offset)
    return {"type": "partial", "samples": samples, "segment": segment, "text": best["text"],
            "tokens": best["tokens"], "token_timestamps": best["token_timestamps"],
            "nbest": [best]}


def segment_entry(segment: Segment, nbest: int, frame_end: FrameEnd) -> Dict[str, Any]:
    """A finished segment as JSON (the ``segment`` message without its type)."""
    return {**segment.to_json(), "nbest": [hypothesis(r, frame_end, segment.start)
                                          for r in segment.nbest[:nbest]]}


def final_message(samples: int, segments: Sequence[Dict[str, Any]],
                  join: Callable[[List[str]], str]) -> Dict[str, Any]:
    """The final message over every segment entry; ``join``: tokens -> text."""
    if len(segments) == 1:
        nbest = segments[0]["nbest"]
    else:
        tokens = [tok for seg in segments for tok in seg["tokens"]]
        nbest = [{"text": join(tokens), "tokens": tokens,
                  "score": sum(seg["nbest"][0]["score"] for seg in segments),
                  "token_timestamps": [t for seg in segments for t in seg["token_timestamps"]]}]
    best = nbest[0]
    return {"type": "final", "samples": samples, "text": best["text"], "tokens": best["tokens"],
            "token_timestamps": best["token_timestamps"], "nbest": nbest,
            "segments": list(segments)}


def offline_message(segment: Segment, head: str, nbest: Optional[Sequence[Result]],
                    frame_end: FrameEnd) -> Dict[str, Any]:
    """The ``offline`` re-decode of a segment (``nbest`` None: too short to decode)."""
    hyps = [hypothesis(r, frame_end, segment.start) for r in nbest or []]
    best = hyps[0] if hyps else EMPTY
    return {"type": "offline", "index": segment.index, "head": head,
            "start": round(segment.start, 6), "end": round(segment.end, 6),
            "text": best["text"], "tokens": best["tokens"],
            "token_timestamps": best["token_timestamps"], "nbest": hyps}


def results_message(kind: str, nbest: Sequence[Result], frame_end: FrameEnd, duration: float,
                    **fields: Any) -> Dict[str, Any]:
    """A whole-file message (``POST /recognize``): the best hypothesis, the n-best and one
    segment."""
    hyps = [hypothesis(r, frame_end) for r in nbest]
    best = hyps[0]
    return {"type": kind, **fields, "text": best["text"], "tokens": best["tokens"],
            "token_timestamps": best["token_timestamps"], "nbest": hyps,
            "segments": [{"start": 0.0, "end": round(duration, 6), "text": best["text"],
                          "tokens": best["tokens"], "token_timestamps": best["token_timestamps"]}]}


def error_message(message: str) -> Dict[str, Any]:
    return {"type": "error", "message": message}
