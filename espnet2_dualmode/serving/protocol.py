"""The streaming WebSocket protocol (``/ws/stream``) and the JSON result layout.

One WebSocket connection carries one stream of audio:

1. client -> server, text: ``{"type": "start", "sample_rate": 16000, "format": "pcm_s16le"}``
   with optional ``"nbest"`` (hypotheses per result, at most the server's ``--nbest``) and
   ``"offline_head"`` (a full-context head of :data:`HEADS` that re-decodes the whole
   stream after the final result). The server answers ``{"type": "ready", "session": id,
   "sample_rate": 16000}``.
2. client -> server, binary: audio chunks, 16-bit little-endian signed PCM, mono, any
   even number of bytes. The server answers EVERY chunk with exactly one
   ``{"type": "partial", "samples": n, "text", "tokens", "token_timestamps", "nbest"}``,
   ``n`` being the samples received so far on this stream: it acknowledges the chunk,
   so the chunk latency is the time from sending a chunk to receiving the partial whose
   ``samples`` equals the total sent up to that chunk. A partial holds only tokens from
   audio already received.
3. client -> server, text: ``{"type": "end"}``. The server answers
   ``{"type": "final", "samples", "text", "nbest", "segments": [...]}`` and, if an
   ``offline_head`` was asked for, ``{"type": "offline", "head", "text", "nbest",
   "segments"}``; then it closes the connection.

A segment is ``{"start": s, "end": s, "text", "tokens", "token_timestamps"}``; times
are seconds from the start of the stream. ``token_timestamps`` is ``[{"token", "time"}]``,
a token's time being the end of the encoder frame that emitted it (4 feature hops per
frame), ``null`` where the head's search gives no alignment (e.g. attention). Each
``nbest`` entry is ``{"text", "tokens", "score", "token_timestamps"}``. Today a stream
is one segment.

Errors: ``{"type": "error", "message": ...}``, then the server closes that connection
only (a bad start message, a wrong sample rate or format, an odd-length or text frame
where audio is expected, audio before ``start``, audio too short to decode).

Extensibility: clients must ignore message types and fields they do not know. Endpoint
detection will add ``{"type": "segment", ...}`` messages (a finished segment) before the
final, whose ``segments`` then lists them all; batching changes nothing on the wire.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from espnet2_dualmode.inference.model_io import Result
from espnet2_dualmode.inference.offline import HEADS

SAMPLE_RATE = 16000
FORMAT = "pcm_s16le"


class ProtocolError(ValueError):
    """A client message that breaks the protocol; its text goes back to that client."""


def parse_start(text: str, max_nbest: int) -> Dict[str, Any]:
    """Validate the start message; returns ``{"nbest": int, "offline_head": str | None}``."""
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
    return {"nbest": nbest, "offline_head": head}


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


def token_times(result: Result, frame_end: FrameEnd) -> List[Dict[str, Any]]:
    """Each token with the end time (s) of the encoder frame that emitted it (None for a
    head without timestamps)."""
    stamps: Sequence[Optional[int]] = result.timestamps or [None] * len(result.tokens)
    return [{"token": tok, "time": None if t is None else round(frame_end(t), 6)}
            for tok, t in zip(result.tokens, stamps)]


def hypothesis(result: Result, frame_end: FrameEnd) -> Dict[str, Any]:
    """One hypothesis as JSON."""
    return {"text": result.text, "tokens": result.tokens, "score": result.score,
            "token_timestamps": token_times(result, frame_end)}


def results_message(kind: str, nbest: Sequence[Result], frame_end: FrameEnd, duration: float,
                    **fields: Any) -> Dict[str, Any]:
    """A partial/final/offline message: the best hypothesis, the n-best and one segment."""
    hyps = [hypothesis(r, frame_end) for r in nbest]
    best = hyps[0]
    msg: Dict[str, Any] = {"type": kind, **fields, "text": best["text"], "tokens": best["tokens"],
                           "token_timestamps": best["token_timestamps"], "nbest": hyps}
    if kind != "partial":
        msg["segments"] = [{"start": 0.0, "end": round(duration, 6), "text": best["text"],
                            "tokens": best["tokens"],
                            "token_timestamps": best["token_timestamps"]}]
    return msg


def error_message(message: str) -> Dict[str, Any]:
    return {"type": "error", "message": message}
