"""The aiohttp application: ``/`` (the browser page), ``/ws/stream`` (streaming, see
:mod:`.protocol`) and ``POST /recognize?head=HEAD`` (a whole audio file).

``POST /recognize`` takes the file as the request body (any format soundfile reads:
WAV, FLAC, ...) or as the first file field of a multipart form; it must be mono at
16 kHz. ``head`` is one of rnnt, ctc, attention, maskctc, joint, streaming_rnnt
(default attention). The answer is the protocol's ``offline`` message with
``"type": "result"``; a file that is not such audio gets 400 with the reason.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

import numpy as np
import soundfile
from aiohttp import WSMsgType, web

from espnet2_dualmode.inference.model_io import Result
from espnet2_dualmode.inference.offline import HEADS
from espnet2_dualmode.serving.engine import Engine
from espnet2_dualmode.serving.protocol import (
    SAMPLE_RATE,
    ProtocolError,
    error_message,
    parse_control,
    parse_start,
    pcm_to_float,
    results_message,
)

STATIC = Path(__file__).resolve().parent / "static"
ENGINE = web.AppKey("engine", Engine)
RECORD_DIR = web.AppKey("record_dir", Optional[Path])
ACTIVE = web.AppKey("active", Set[int])  # ids of the streams open now
log = logging.getLogger(__name__)
_session_ids = itertools.count(1)


def create_app(engine: Engine, record_dir: Optional[Path] = None) -> web.Application:
    """The application serving ``engine``; with ``record_dir``, each stream's received
    audio is written there as ``<session>.wav`` (what the page sent, for checking)."""
    app = web.Application(client_max_size=64 * 1024 ** 2)
    app[ENGINE] = engine
    app[RECORD_DIR] = record_dir
    app[ACTIVE] = set()
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/ws/stream", stream)
    app.router.add_post("/recognize", recognize)
    app.router.add_static("/static/", STATIC)
    return app


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def health(request: web.Request) -> web.Response:
    """``{"active_streams": n, "offline_heads": [...]}``: open streams and loaded heads."""
    return web.json_response({"active_streams": len(request.app[ACTIVE]),
                              "offline_heads": sorted(request.app[ENGINE].offline)})


class StreamSession:
    """One WebSocket stream: its stream of the engine's batched decoder, the samples
    received and (if needed) the audio."""

    def __init__(self, engine: Engine, stream_id: int, options: Dict[str, Any],
                 keep_audio: bool):
        self.id = next(_session_ids)
        self.engine, self.nbest = engine, options["nbest"]
        self.offline_head: Optional[str] = options["offline_head"]
        self.stream_id = stream_id
        self.samples = 0
        self.audio: Optional[List[np.ndarray]] = [] if keep_audio or self.offline_head else None

    def _message(self, kind: str, nbest: List[Result], **fields: Any) -> Dict[str, Any]:
        return results_message(kind, nbest[: self.nbest], self.engine.frame_end,
                               self.samples / SAMPLE_RATE, **fields)

    async def feed(self, chunk: np.ndarray, is_final: bool) -> Dict[str, Any]:
        self.samples += chunk.size
        if self.audio is not None:
            self.audio.append(chunk)
        nbest = await self.engine.feed(self.stream_id, chunk, is_final)
        return self._message("final" if is_final else "partial", nbest, samples=self.samples)

    def whole(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)

    async def offline(self) -> Dict[str, Any]:
        nbest = await self.engine.run(self.engine.decode_offline, self.offline_head, self.whole())
        return self._message("offline", nbest, head=self.offline_head)


async def stream(request: web.Request) -> web.WebSocketResponse:
    """The streaming endpoint: see :mod:`espnet2_dualmode.serving.protocol`."""
    ws = web.WebSocketResponse(max_msg_size=16 * 1024 ** 2)
    await ws.prepare(request)
    engine, record_dir, active = request.app[ENGINE], request.app[RECORD_DIR], request.app[ACTIVE]
    session: Optional[StreamSession] = None
    peer = request.remote
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT and session is None:
                options = parse_start(msg.data, engine.nbest)
                stream_id = await engine.open_stream()
                session = StreamSession(engine, stream_id, options, keep_audio=record_dir is not None)
                active.add(session.id)
                log.info(f"stream {session.id} from {peer}: started")
                await ws.send_json({"type": "ready", "session": session.id,
                                    "sample_rate": SAMPLE_RATE})
            elif msg.type == WSMsgType.BINARY:
                if session is None:
                    raise ProtocolError('audio before the start message: send {"type": "start", '
                                        f'"sample_rate": {SAMPLE_RATE}}} first')
                await ws.send_json(await session.feed(pcm_to_float(msg.data), is_final=False))
            elif msg.type == WSMsgType.TEXT:
                parse_control(msg.data)
                await finish(ws, session, record_dir)
                break
            elif msg.type == WSMsgType.ERROR:
                log.warning(f"stream from {peer}: connection error {ws.exception()}")
        else:
            if session is not None:
                log.warning(f"stream {session.id} from {peer}: client left after "
                            f"{session.samples} samples without an end message; state freed")
    except ProtocolError as e:
        log.warning(f"stream from {peer}: {e}")
        await send_if_open(ws, error_message(str(e)))
    except ConnectionResetError:
        log.warning(f"stream from {peer}: client disconnected; state freed")
    except Exception as e:  # a decoding failure ends this stream only
        log.exception(f"stream from {peer}: decoding failed")
        await send_if_open(ws, error_message(f"decoding failed: {e}"))
    finally:
        if session is not None:
            await engine.close_stream(session.stream_id)
            active.discard(session.id)
    await ws.close()
    return ws


async def send_if_open(ws: web.WebSocketResponse, msg: Dict[str, Any]) -> None:
    """Send unless the client has already gone (then there is no one to tell)."""
    try:
        await ws.send_json(msg)
    except ConnectionResetError:
        log.warning("could not send the error: the client has gone")


async def finish(ws: web.WebSocketResponse, session: StreamSession,
                 record_dir: Optional[Path]) -> None:
    """The end message: the final result, the optional offline re-decode, the recording."""
    if session.samples == 0:
        raise ProtocolError("the stream ended without audio")
    if record_dir is not None:
        soundfile.write(record_dir / f"{session.id}.wav", session.whole(), SAMPLE_RATE,
                        subtype="PCM_16")
    try:
        await ws.send_json(await session.feed(np.zeros(0, np.float32), is_final=True))
        if session.offline_head is not None:
            await ws.send_json(await session.offline())
    except ValueError as e:  # audio too short for the frontend or encoder
        raise ProtocolError(f"cannot decode this stream: {e}") from e
    log.info(f"stream {session.id}: finished, {session.samples} samples")


def read_audio(data: bytes) -> np.ndarray:
    """Decode an uploaded file; a ProtocolError says why it is not 16 kHz mono audio."""
    if not data:
        raise ProtocolError("empty upload: send an audio file (e.g. 16 kHz mono WAV)")
    try:
        wav, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
        reason = getattr(e, "error_string", None) or str(e)
        raise ProtocolError(f"the upload is not an audio file soundfile can read ({reason})") from e
    if rate != SAMPLE_RATE:
        raise ProtocolError(f"the audio is {rate} Hz; send {SAMPLE_RATE} Hz")
    if wav.ndim != 1:
        raise ProtocolError(f"the audio has {wav.shape[1]} channels; send mono")
    return wav


async def recognize(request: web.Request) -> web.Response:
    """Decode a whole file with ``?head=`` (default attention)."""
    engine: Engine = request.app[ENGINE]
    head = request.query.get("head", "attention")
    try:
        if head not in HEADS:
            raise ProtocolError(f"head must be one of {HEADS}, not {head!r}")
        if request.content_type.startswith("multipart/"):
            data = b""
            async for part in await request.multipart():
                if getattr(part, "filename", None):
                    data = await part.read()
                    break
        else:
            data = await request.read()
        wav = read_audio(data)
        nbest = await engine.run(engine.decode_offline, head, wav)
    except ProtocolError as e:
        log.warning(f"/recognize from {request.remote}: {e}")
        return web.json_response(error_message(str(e)), status=400)
    except ValueError as e:  # audio too short for the encoder, a head the model lacks
        log.warning(f"/recognize from {request.remote}: {e}")
        return web.json_response(error_message(f"cannot decode with head {head}: {e}"), status=400)
    msg = results_message("result", nbest, engine.frame_end, wav.size / SAMPLE_RATE, head=head)
    return web.Response(text=json.dumps(msg), content_type="application/json")
