"""One loaded model behind every connection: per-stream recognizers and offline heads.

Every streaming connection gets its own :class:`Speech2TextStreaming` (its own feature
buffer, encoder state and search state) built around the one loaded model; each offline
head is one :class:`Speech2Text`, created on first use, whose weights are the same
tensors. All model calls run on ONE worker thread, in arrival order: ESPnet's positional
encodings replace their module's ``pe`` tensor when a longer input arrives, so concurrent
forwards on shared modules are not safe; the event loop stays free to serve.
Batching the streams of that queue (issue 12, item 2) belongs here.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar

import numpy as np

from espnet2_dualmode.inference.latency import frame_end_seconds
from espnet2_dualmode.inference.model_io import Result
from espnet2_dualmode.inference.offline import HEADS, Speech2Text
from espnet2_dualmode.inference.streaming import Speech2TextStreaming, StreamingFeatures

T = TypeVar("T")


class Engine:
    """The model, its recognizer factory and the worker thread that runs every decode.

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
        for head in preload_heads:
            self.offline_head(head)

    def new_stream(self) -> Speech2TextStreaming:
        """A recognizer with its own stream state on the shared model and search settings
        (the search object holds no stream state: that lives in ``search_state``)."""
        stream = copy.copy(self.prototype)
        stream.features = StreamingFeatures(self.model.frontend)
        stream.reset()
        return stream

    def frame_end(self, frame: int) -> float:
        """End time (s) of an encoder frame: the same frame rate for every head."""
        return frame_end_seconds(self.prototype, frame)

    def offline_head(self, head: str) -> Speech2Text:
        """The kept :class:`Speech2Text` of ``head``; its weights are the shared model's."""
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, not {head!r}")
        with self._offline_lock:
            if head not in self.offline:
                s2t = Speech2Text(self.config, self.model_file, decode_head=head, **self.options)
                # the same tensors, not a second copy of the weights
                s2t.model.load_state_dict(self.model.state_dict(), assign=True)
                self.offline[head] = s2t
            return self.offline[head]

    def decode_offline(self, head: str, wav: np.ndarray) -> List[Result]:
        """The n-best of one whole waveform with one offline head (runs on the worker)."""
        return self.offline_head(head)([wav])[0]

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a model call on the worker thread, in arrival order."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
