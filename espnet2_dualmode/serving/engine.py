"""One loaded model behind every connection: batched streams and offline heads.

Every streaming connection is a stream of ONE :class:`MultiStreamDecoder` on the loaded
model (its own feature buffer, encoder state and hypotheses); each offline head is one
:class:`Speech2Text`, created on first use, whose weights are the same tensors. All model
calls run on ONE worker thread, in arrival order: ESPnet's positional encodings replace
their module's ``pe`` tensor when a longer input arrives, so concurrent forwards on shared
modules are not safe; the event loop stays free to serve.

Batching: a chunk that arrives is queued for its stream; a decoding step on the worker
feeds the oldest queued chunk of EVERY stream that has one and advances them all in one
:meth:`MultiStreamDecoder.step` (batched encoder blocks, one batched search), then answers
each chunk with its own stream's result. A stream with more chunks queued gets the next
one in the next step, so each chunk's answer covers exactly the audio up to that chunk.
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

from espnet2_dualmode.inference.latency import frame_end_seconds
from espnet2_dualmode.inference.model_io import Result
from espnet2_dualmode.inference.multistream import MultiStreamDecoder, MultiStreamStats
from espnet2_dualmode.inference.offline import HEADS, Speech2Text, shared_offline_head
from espnet2_dualmode.inference.streaming import Speech2TextStreaming

T = TypeVar("T")
log = logging.getLogger(__name__)


class _Chunk(NamedTuple):
    """A queued chunk of one stream and where its answer goes."""

    samples: np.ndarray
    is_final: bool
    loop: asyncio.AbstractEventLoop
    answer: "asyncio.Future[List[Result]]"


def _answer(future: "asyncio.Future[List[Result]]", result: Optional[List[Result]],
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
    """

    def __init__(self, asr_train_config: str | Path, asr_model_file: Optional[str | Path],
                 beam_size: int = 10, nbest: int = 1, max_sym_per_frame: int = 10,
                 device: str = "cpu", geometry: Optional[Dict[str, Optional[int]]] = None,
                 preload_heads: Sequence[str] = ()):
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
        self._queued: Dict[int, Deque[_Chunk]] = {}  # per stream, chunks not yet decoded
        self._queue_lock = threading.Lock()
        self._step_pending = False  # a step is submitted to the worker
        for head in preload_heads:
            self.offline_head(head)

    @property
    def stats(self) -> MultiStreamStats:
        """How many streams the decoding steps batched (read-only use)."""
        return self.decoder.stats

    async def open_stream(self) -> int:
        """A new stream of the batched decoder; returns its id."""
        return await self.run(self.decoder.open)

    async def feed(self, stream_id: int, samples: np.ndarray, is_final: bool) -> List[Result]:
        """Queue a chunk of a stream; returns that stream's n-best after it (final with
        ``is_final``), decoded in a step shared with every stream that has a chunk queued.
        An error in this stream's audio is raised here, for this stream only."""
        loop = asyncio.get_running_loop()
        answer: "asyncio.Future[List[Result]]" = loop.create_future()
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
        """Feed the oldest queued chunk of every stream, decode them in one
        :meth:`MultiStreamDecoder.step` and answer each chunk on its own loop."""
        with self._queue_lock:
            batch = {i: q.popleft() for i, q in self._queued.items()}
            self._queued = {i: q for i, q in self._queued.items() if q}
        errors: Dict[int, BaseException] = {}
        for stream_id, chunk in batch.items():
            try:
                self.decoder.feed(stream_id, chunk.samples, chunk.is_final)
            except Exception as e:  # this stream's audio (or a closed stream) only
                errors[stream_id] = e
        results: Dict[int, List[Result]] = {}
        try:
            results = self.decoder.step()
        except Exception as e:  # not a per-stream failure: every stream of the step hears it
            errors.update((i, e) for i in batch if i not in errors)
        for stream_id, chunk in batch.items():
            try:
                chunk.loop.call_soon_threadsafe(_answer, chunk.answer, results.get(stream_id),
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

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a model call on the worker thread, in arrival order."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
