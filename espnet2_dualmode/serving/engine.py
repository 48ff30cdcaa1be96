"""One loaded model behind every connection: batched streams and offline heads.

Every streaming connection is a stream of ONE :class:`MultiStreamDecoder` on the loaded
model (its own feature buffer, encoder state and hypotheses); each offline head is one
:class:`Speech2Text`, created on first use, whose weights are the same tensors. All model
calls run on ONE worker thread, in arrival order: ESPnet's positional encodings replace
their module's ``pe`` tensor when a longer input arrives, so concurrent forwards on shared
modules are not safe; the event loop stays free to serve.

Batching: a chunk that arrives is queued for its stream; a decoding round on the worker
takes the oldest queued chunk of EVERY stream that has one and decodes them together with
:func:`~espnet2_dualmode.inference.endpoint.decode_segments`: one
:meth:`MultiStreamDecoder.step` (batched encoder blocks, one batched search) per encoder
block, the endpoint rules of each stream checked after each of its blocks, exactly as
:class:`~espnet2_dualmode.inference.endpoint.LongFormRecognizer` does for one stream.
Each chunk is then answered with its own stream's update (segments it finished, partial).
A stream with more chunks queued gets the next one in the next round, so each chunk's
answer covers exactly the audio up to that chunk.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, NamedTuple, Optional, Sequence, TypeVar

import numpy as np

from espnet2_dualmode.inference.endpoint import (
    EndpointRules,
    FinishedSegment,
    TWO_PASS_MARGIN,
    StreamSegmenter,
    check_two_pass_margin,
    decode_segments,
    second_pass_of,
)
from espnet2_dualmode.inference.latency import frame_end_seconds
from espnet2_dualmode.inference.model_io import Result
from espnet2_dualmode.inference.multistream import MultiStreamDecoder, MultiStreamStats
from espnet2_dualmode.inference.offline import HEADS, Speech2Text, shared_offline_head
from espnet2_dualmode.inference.streaming import Speech2TextStreaming

T = TypeVar("T")
log = logging.getLogger(__name__)


class StreamUpdate(NamedTuple):
    """A stream after one of its chunks.

    Attributes:
        segments: the segments the chunk finished, in order, with their audio (with
            ``is_final``, the last one is the rest of the stream).
        partial: best partial hypothesis of the current segment (None before its first
            block; timestamps in encoder frames of the segment).
        segment: index of the current segment.
        segment_start: its start (s from the start of the stream).
    """

    segments: List[FinishedSegment]
    partial: Optional[Result]
    segment: int
    segment_start: float


class _Chunk(NamedTuple):
    """A queued chunk of one stream and where its answer goes."""

    samples: np.ndarray
    is_final: bool
    loop: asyncio.AbstractEventLoop
    answer: "asyncio.Future[StreamUpdate]"


def _answer(future: "asyncio.Future[StreamUpdate]", result: Optional[StreamUpdate],
            error: Optional[BaseException]) -> None:
    """Resolve a chunk's future on its event loop (unless its client has gone)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Engine:
    """The model, its batched stream decoder and the worker thread that runs every decode.

    Args:
        asr_train_config, asr_model_file: the training run's config.yaml and weights.
        beam_size, nbest, max_sym_per_frame, device: search settings of every head.
        geometry: ``block_size/hop_size/look_ahead`` of the streaming encoder.
        preload_heads: offline heads to build now rather than on first use.
        rules: the endpoint rules of a stream that does not give its own.
        two_pass_margin: seconds kept around a segment's tokens for its offline re-decode.
    """

    def __init__(self, asr_train_config: str | Path, asr_model_file: Optional[str | Path],
                 beam_size: int = 10, nbest: int = 1, max_sym_per_frame: int = 10,
                 device: str = "cpu", geometry: Optional[Dict[str, Optional[int]]] = None,
                 preload_heads: Sequence[str] = (), rules: EndpointRules = EndpointRules(),
                 two_pass_margin: float = TWO_PASS_MARGIN):
        self.two_pass_margin = check_two_pass_margin(two_pass_margin)
        self.options: Dict[str, Any] = dict(beam_size=beam_size, nbest=nbest,
                                            max_sym_per_frame=max_sym_per_frame, device=device,
                                            **(geometry or {}))
        self.config, self.model_file = asr_train_config, asr_model_file
        self.prototype = Speech2TextStreaming(asr_train_config, asr_model_file, **self.options)
        self.model = self.prototype.model
        self.nbest = nbest
        self.sample_rate = self.prototype.sample_rate
        self.offline: Dict[str, Speech2Text] = {}
        self._offline_lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr-model")
        self.decoder = MultiStreamDecoder(self.prototype)
        check = StreamSegmenter(self.prototype, rules)  # the rules fit the geometry
        self.rules, self.min_samples = rules, check.min_samples
        self._segmenters: Dict[int, StreamSegmenter] = {}  # per open stream (worker only)
        self._queued: Dict[int, Deque[_Chunk]] = {}  # per stream, chunks not yet decoded
        self._queue_lock = threading.Lock()
        self._step_pending = False  # a step is submitted to the worker
        for head in preload_heads:
            self.offline_head(head)

    @property
    def stats(self) -> MultiStreamStats:
        """How many streams the decoding steps batched (read-only use)."""
        return self.decoder.stats

    async def open_stream(self, rules: Optional[EndpointRules] = None) -> int:
        """A new stream of the batched decoder, cut by ``rules`` (None: the engine's);
        returns its id.

        Raises:
            ValueError: ``rules`` that do not fit the streaming encoder's geometry.
        """
        return await self.run(self._open_stream, rules or self.rules)

    def _open_stream(self, rules: EndpointRules) -> int:
        segmenter = StreamSegmenter(self.prototype, rules)
        stream_id = self.decoder.open()
        self._segmenters[stream_id] = segmenter
        return stream_id

    async def feed(self, stream_id: int, samples: np.ndarray, is_final: bool) -> StreamUpdate:
        """Queue a chunk of a stream; returns that stream's update after it (its last
        segment with ``is_final``), decoded in steps shared with every stream that has a
        chunk queued. An error in this stream's audio is raised here, for this stream only."""
        loop = asyncio.get_running_loop()
        answer: "asyncio.Future[StreamUpdate]" = loop.create_future()
        with self._queue_lock:
            self._queued.setdefault(stream_id, deque()).append(
                _Chunk(samples, is_final, loop, answer))
            start = not self._step_pending
            self._step_pending = True
        if start:
            self.executor.submit(self._step)
        return await answer

    def _step(self) -> None:
        """On the worker: one batched step, then again while chunks are queued (whatever
        happened, so that no queued chunk is left waiting)."""
        try:
            self._decode_queued()
        finally:
            with self._queue_lock:
                self._step_pending = bool(self._queued)
                if self._step_pending:
                    self.executor.submit(self._step)

    def _decode_queued(self) -> None:
        """Decode the oldest queued chunk of every stream together (batched steps, the
        endpoint rules after every block) and answer each chunk on its own loop."""
        with self._queue_lock:
            batch = {i: q.popleft() for i, q in self._queued.items()}
            self._queued = {i: q for i, q in self._queued.items() if q}
        errors: Dict[int, BaseException] = {}
        streams: Dict[int, StreamSegmenter] = {}
        for stream_id, chunk in batch.items():
            try:
                streams[stream_id] = self._segmenters[stream_id]
                streams[stream_id].push(chunk.samples)
            except KeyError:
                errors[stream_id] = ValueError(f"no open stream {stream_id}")
        ending = [i for i in streams if batch[i].is_final]
        done, failed = decode_segments(self.decoder, streams, ending)
        errors.update(failed)
        updates = {i: StreamUpdate(done[i], s.partial, s.segments_done, s.segment_start_seconds)
                   for i, s in streams.items() if i not in errors}
        for stream_id, chunk in batch.items():
            try:
                chunk.loop.call_soon_threadsafe(_answer, chunk.answer, updates.get(stream_id),
                                                errors.get(stream_id))
            except RuntimeError:  # that connection's event loop has closed: no one waits
                log.warning(f"stream {stream_id}: result dropped, its event loop has closed")

    async def close_stream(self, stream_id: int) -> None:
        """Forget a stream (finished, failed or abandoned), with any chunk still queued."""
        await self.run(self._close_stream, stream_id)

    def _close_stream(self, stream_id: int) -> None:
        with self._queue_lock:
            dropped = self._queued.pop(stream_id, deque())
        for chunk in dropped:
            chunk.loop.call_soon_threadsafe(chunk.answer.cancel)
        self._segmenters.pop(stream_id, None)
        if stream_id in self.decoder.open_streams:
            self.decoder.close(stream_id)

    def frame_end(self, frame: int) -> float:
        """End time (s) of an encoder frame: the same frame rate for every head."""
        return frame_end_seconds(self.prototype, frame)

    def offline_head(self, head: str) -> Speech2Text:
        """The kept :class:`Speech2Text` of ``head``; its weights are the shared model's."""
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, not {head!r}")
        with self._offline_lock:
            if head not in self.offline:
                self.offline[head] = shared_offline_head(self.model, self.config, head,
                                                         **self.options)
            return self.offline[head]

    def decode_offline(self, head: str, wav: np.ndarray) -> List[Result]:
        """The n-best of one whole waveform with one offline head (runs on the worker)."""
        return self.offline_head(head)([wav])[0]

    def redecode(self, head: str, segment: FinishedSegment) -> Optional[List[Result]]:
        """A finished segment's n-best with one offline head (on its speech:
        :func:`second_pass_of`), None for one too short to decode (runs on the worker)."""
        return second_pass_of(self.offline_head(head), segment, self.sample_rate,
                              self.two_pass_margin, self.min_samples)

    def join(self, tokens: List[str]) -> str:
        """Tokens -> text with the model's tokenizer (several segments' tokens)."""
        return self.prototype.text.tokenizer.tokens2text(tokens)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a model call on the worker thread, in arrival order."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
