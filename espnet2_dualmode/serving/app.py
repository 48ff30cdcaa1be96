"""The aiohttp application: ``/`` (the browser page), ``/ws/stream`` (streaming, see
:mod:`.protocol`) and ``POST /recognize?head=HEAD`` (a whole audio file).

``POST /recognize`` takes the file as the request body (any format soundfile reads:
WAV, FLAC, ...) or as the first file field of a multipart form; it must be mono at
16 kHz. ``head`` is one of rnnt, ctc, attention, maskctc, joint, streaming_rnnt
(default attention). The answer is the protocol's ``offline`` message with
``"type": "result"``; a file that is not such audio gets 400 with the reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

import numpy as np
import soundfile
from aiohttp import WSMsgType, web

from espnet2_dualmode.inference.endpoint import FinishedSegment
from espnet2_dualmode.inference.offline import HEADS
from espnet2_dualmode.serving.engine import Engine
from espnet2_dualmode.serving.protocol import (
    SAMPLE_RATE,
    ProtocolError,
    error_message,
    final_message,
    offline_message,
    parse_control,
    parse_start,
    partial_message,
    pcm_to_float,
    results_message,
    segment_entry,
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
    received, its segments, the offline re-decodes under way and (if needed) the audio."""

    def __init__(self, engine: Engine, ws: web.WebSocketResponse, stream_id: int,
                 options: Dict[str, Any], keep_audio: bool):
        self.id = next(_session_ids)
        self.engine, self.ws, self.nbest = engine, ws, options["nbest"]
        self.offline_head: Optional[str] = options["offline_head"]
        self.stream_id = stream_id
        self.samples = 0
        self.segments: List[Dict[str, Any]] = []  # segment entries, in index order
        self.offline_tasks: List["asyncio.Task[None]"] = []  # in index order
        self.send_lock = asyncio.Lock()  # the handler and the offline tasks both send
        self.audio: Optional[List[np.ndarray]] = [] if keep_audio else None

    async def send(self, msg: Dict[str, Any]) -> None:
        async with self.send_lock:
            await self.ws.send_json(msg)

    async def feed(self, chunk: np.ndarray, is_final: bool) -> None:
        """Decode a chunk; send the segments it finished, then its partial (or the final),
        then start the offline re-decode of those segments."""
        self.samples += chunk.size
        if self.audio is not None:
            self.audio.append(chunk)
        update = await self.engine.feed(self.stream_id, chunk, is_final)
        for segment, _ in update.segments:
            entry = segment_entry(segment, self.nbest, self.engine.frame_end)
            self.segments.append(entry)
            await self.send({"type": "segment", **entry})
        if is_final:
            await self.send(final_message(self.samples, self.segments, self.engine.join))
        else:
            await self.send(partial_message(self.samples, update.segment, update.partial,
                                            update.segment_start, self.engine.frame_end))
        if self.offline_head is not None:
            for finished in update.segments:
                previous = self.offline_tasks[-1] if self.offline_tasks else None
                self.offline_tasks.append(asyncio.create_task(self.offline(finished, previous)))

    async def offline(self, finished: FinishedSegment,
                      previous: Optional["asyncio.Task[None]"]) -> None:
        """Re-decode a segment; sent after the previous segment's (index order)."""
        nbest = await self.engine.run(self.engine.redecode, self.offline_head, finished)
        if previous is not None:
            await previous
        await self.send(offline_message(finished.segment, self.offline_head, nbest[: self.nbest]
                                        if nbest else None, self.engine.frame_end))

    def whole(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)


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
                options = parse_start(msg.data, engine.nbest, engine.rules)
                try:
                    stream_id = await engine.open_stream(options["rules"])
                except ValueError as e:  # rules that do not fit the encoder's geometry
                    raise ProtocolError(str(e)) from e
                session = StreamSession(engine, ws, stream_id, options,
                                        keep_audio=record_dir is not None)
                active.add(session.id)
                log.info(f"stream {session.id} from {peer}: started")
                await session.send({"type": "ready", "session": session.id,
                                    "sample_rate": SAMPLE_RATE,
                                    "endpoint": dataclasses.asdict(options["rules"])})
            elif msg.type == WSMsgType.BINARY:
                if session is None:
                    raise ProtocolError('audio before the start message: send {"type": "start", '
                                        f'"sample_rate": {SAMPLE_RATE}}} first')
                await session.feed(pcm_to_float(msg.data), is_final=False)
            elif msg.type == WSMsgType.TEXT:
                parse_control(msg.data)
                await finish(session, record_dir)
                break
            elif msg.type == WSMsgType.ERROR:
                log.warning(f"stream from {peer}: connection error {ws.exception()}")
        else:
            if session is not None:
                log.warning(f"stream {session.id} from {peer}: client left after "
                            f"{session.samples} samples without an end message; state freed")
    except ProtocolError as e:
        log.warning(f"stream from {peer}: {e}")
        await send_if_open(ws, session, error_message(str(e)))
    except ConnectionResetError:
        log.warning(f"stream from {peer}: client disconnected; state freed")
    except Exception as e:  # a decoding failure ends this stream only
        log.exception(f"stream from {peer}: decoding failed")
        await send_if_open(ws, session, error_message(f"decoding failed: {e}"))
    finally:
        if session is not None:
            for task in session.offline_tasks:  # unfinished only on an error or a client gone
                task.cancel()
            await asyncio.gather(*session.offline_tasks, return_exceptions=True)
            await engine.close_stream(session.stream_id)
            active.discard(session.id)
    await ws.close()
    return ws


async def send_if_open(ws: web.WebSocketResponse, session: Optional[StreamSession],
                       msg: Dict[str, Any]) -> None:
    """Send unless the client has already gone (then there is no one to tell); through the
    session's lock when there is one (its offline re-decodes may be sending)."""
    try:
        if session is None:
            await ws.send_json(msg)
        else:
            await session.send(msg)
    except ConnectionResetError:
        log.warning("could not send the error: the client has gone")


async def finish(session: StreamSession, record_dir: Optional[Path]) -> None:
    """The end message: the last segment and the final result, the outstanding offline
    re-decodes, the recording."""
    if session.samples == 0:
        raise ProtocolError("the stream ended without audio")
    if record_dir is not None:
        soundfile.write(record_dir / f"{session.id}.wav", session.whole(), SAMPLE_RATE,
                        subtype="PCM_16")
    try:
        await session.feed(np.zeros(0, np.float32), is_final=True)
    except ValueError as e:  # audio too short for the frontend or encoder
        raise ProtocolError(f"cannot decode this stream: {e}") from e
    if session.offline_tasks:
        await session.offline_tasks[-1]  # each awaits the one before
    log.info(f"stream {session.id}: finished, {session.samples} samples, "
             f"{len(session.segments)} segments")


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
