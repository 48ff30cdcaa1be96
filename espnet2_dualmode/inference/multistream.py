"""Batched streaming recognition of many concurrent streams on one loaded model.

Each stream has its own feature buffer, encoder state, hypotheses and chunk sizes, and
opens, ends and closes whenever its client wants. :meth:`MultiStreamDecoder.step`
processes what was fed since the last step: every complete encoder block of every stream
joins ONE batched contextual-block encoder call
(:meth:`ContextualBlockConformerEncoder.encode_blocks`: padded, masked blocks at each
stream's own block indices and inherited context), then ONE batched RNN-T search advance
covers every open stream (``enc_lens`` 0 for a stream with no new frame; the
prediction-network prefix cache is shared, as that network does not see the audio). A
stream's result equals decoding it alone with :class:`Speech2TextStreaming` (same tokens
and timestamps; scores to float rounding, as batch-mates change the shapes of matrix
products).

The shared-weights Dual-mode encoder (``--model shared``) keeps per-stream attention
caches of different lengths; it is run per stream (its own ``forward_incremental``) when
the stream is fed, and only the search is batched.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from espnet2_dualmode.decoding.transducer_search import TransducerSearchState
from espnet2_dualmode.encoders.contextual_block_conformer import ContextualBlockConformerEncoder
from espnet2_dualmode.inference.model_io import Result
from espnet2_dualmode.inference.streaming import Speech2TextStreaming, StreamingFeatures


@dataclass
class _Stream:
    """One stream's state; ``frames`` are encoder outputs (1, k, D) not yet searched."""

    features: StreamingFeatures
    encoder_state: Any
    frames: List[torch.Tensor] = field(default_factory=list)
    ended: bool = False  # is_final was fed
    fed: bool = False  # fed since the last step
    encoded: int = 0  # encoder frames produced since the stream (re)started


@dataclass
class MultiStreamStats:
    """Counters of the batching (how many streams shared each call)."""

    steps: int = 0
    rounds: int = 0  # batched search advances (steps with new encoder frames)
    encoder_calls: int = 0  # batched block-encoder calls (block encoder only)
    blocks_encoded: int = 0  # blocks those calls encoded
    largest_round: int = 0  # most streams with new frames in one search advance
    batched_rounds: int = 0  # search advances in which more than one stream had new frames


class MultiStreamDecoder:
    """N streams decoded together on the model of a :class:`Speech2TextStreaming`.

    Usage::

        dec = MultiStreamDecoder.from_config("exp/x/config.yaml", "exp/x/model.pth", beam_size=10)
        a, b = dec.open(), dec.open()
        dec.feed(a, chunk_a)                 # any number of samples, any time
        dec.feed(b, last_chunk_b, is_final=True)
        results = dec.step()                 # {a: [partial], b: n-best (final)}
        dec.close(b)

    Args:
        prototype: a loaded recognizer: its model (at its encoder geometry), search
            settings and token text are shared by every stream; its own stream state is
            not used. Not thread-safe: call from one thread.
    """

    def __init__(self, prototype: Speech2TextStreaming):
        self.prototype = prototype
        self.model = prototype.model
        self.search = prototype.search
        self.text = prototype.text
        self.sample_rate = prototype.sample_rate
        self.device = prototype.device
        self.encoder = self.model.stream_encoder
        self.batched_encoder = isinstance(self.encoder, ContextualBlockConformerEncoder)
        self.geometry = self.encoder.current_geometry if self.batched_encoder else None
        self.stats = MultiStreamStats()
        self._streams: Dict[int, _Stream] = {}
        self._rows: List[int] = []  # stream id of each search-state utterance
        self._search_state: Optional[TransducerSearchState] = None
        self._ids = itertools.count()

    @classmethod
    def from_config(cls, asr_train_config: str | Path, asr_model_file: Optional[str | Path],
                    **options: Any) -> "MultiStreamDecoder":
        """Load the model as :class:`Speech2TextStreaming` does (same ``options``)."""
        return cls(Speech2TextStreaming(asr_train_config, asr_model_file, **options))

    @property
    def open_streams(self) -> List[int]:
        """Ids of the streams open now, in opening order."""
        return list(self._rows)

    @torch.inference_mode()
    def open(self) -> int:
        """Start a new stream; returns its id."""
        if self.batched_encoder and self.encoder.current_geometry != self.geometry:
            raise ValueError(f"the streaming encoder is now at {self.encoder.current_geometry} "
                             f"but this decoder's streams run at {self.geometry}: streams of "
                             f"other geometries cannot share a batched call")
        stream_id = next(self._ids)
        self._start(stream_id)
        return stream_id

    def _start(self, stream_id: int) -> None:
        """Fresh state for ``stream_id``: features, encoder state, a search row (the last)."""
        if self._search_state is None:
            self._search_state = self.search.init(1)
        else:
            self.search.add_utterances(self._search_state)
        self._streams[stream_id] = _Stream(StreamingFeatures(self.model.frontend),
                                           self.encoder.init_state(1, device=self.device))
        self._rows.append(stream_id)

    def _stream(self, stream_id: int) -> _Stream:
        if stream_id not in self._streams:
            raise ValueError(f"no open stream {stream_id!r} (open: {self._rows})")
        return self._streams[stream_id]

    @torch.inference_mode()
    def feed(self, stream_id: int, samples: np.ndarray | torch.Tensor,
             is_final: bool = False) -> None:
        """Give a stream its next samples (``is_final``: its last); decoded by :meth:`step`.

        Features are computed now, so audio that cannot be decoded (too short for the STFT
        at the end) raises here, for this stream only; close such a stream.
        """
        stream = self._stream(stream_id)
        if stream.ended:
            raise RuntimeError(f"stream {stream_id} was fed after its final chunk "
                               f"(is_final=True); open a new stream")
        feats = self.prototype.encoder_input(stream.features, samples, is_final)
        if self.batched_encoder:
            self.encoder.ingest(feats, stream.encoder_state, is_final)
        else:
            enc, stream.encoder_state = self.encoder.forward_incremental(
                feats, stream.encoder_state, is_final=is_final)
            stream.frames.append(enc)
            stream.encoded += enc.size(1)
        stream.ended, stream.fed = is_final, True

    @torch.inference_mode()
    def step(self) -> Dict[int, List[Result]]:
        """Decode everything fed so far; returns the n-best of each stream fed since the
        last step: final (``nbest`` results) after its last chunk, else the partial best
        (tokens from complete blocks of received audio only)."""
        self.stats.steps += 1
        if self.batched_encoder:
            ready = [s for s in self._streams.values() if self.encoder.block_ready(s.encoder_state)]
            if ready:
                self.stats.blocks_encoded += sum(self.encoder.ready_blocks(s.encoder_state)
                                                 for s in ready)
                outputs = self.encoder.encode_blocks([s.encoder_state for s in ready])
                for stream, out in zip(ready, outputs):
                    stream.frames.append(out)
                    stream.encoded += out.size(1)
                self.stats.encoder_calls += 1
        if any(s.frames for s in self._streams.values()):
            self._advance()
        return self._results()

    def _advance(self) -> None:
        """One batched search advance over every open stream with its pending frames."""
        dim = self.encoder.output_size()
        new = [torch.cat(s.frames, dim=1)[0] if s.frames else torch.zeros(0, dim, device=self.device)
               for s in (self._streams[i] for i in self._rows)]  # (k_i, D)
        lens = [x.size(0) for x in new]
        enc = torch.nn.utils.rnn.pad_sequence(new, batch_first=True)  # (B, max k, D)
        self.search.advance(self._search_state, enc, torch.tensor(lens))  # host: read by .tolist()
        for i in self._rows:
            self._streams[i].frames = []
        streams = sum(n > 0 for n in lens)
        self.stats.rounds += 1
        self.stats.batched_rounds += streams > 1
        self.stats.largest_round = max(self.stats.largest_round, streams)

    def _results(self) -> Dict[int, List[Result]]:
        fed = [(row, i) for row, i in enumerate(self._rows) if self._streams[i].fed]
        if not fed:
            return {}
        partial = self.search.partial(self._search_state)
        ended = any(self._streams[i].ended for _, i in fed)
        final = self.search.finalize(self._search_state) if ended else None
        results = {}
        for row, i in fed:
            stream = self._streams[i]
            best = final[row] if stream.ended else [partial[row]]
            results[i] = self.text.results(best)
            stream.fed = False
        return results

    def encoder_frames(self, stream_id: int) -> int:
        """Encoder frames of a stream since it opened or restarted (searched at :meth:`step`)."""
        return self._stream(stream_id).encoded

    @torch.inference_mode()
    def restart(self, stream_id: int) -> List[Result]:
        """The n-best of a stream over the frames searched so far (as if they were all),
        after which the stream starts afresh under the same id: new features, encoder
        state and hypotheses. An endpoint cut (:mod:`.endpoint`); call it after a step."""
        if self._stream(stream_id).frames:
            raise RuntimeError(f"stream {stream_id} has encoder frames not searched yet: "
                               f"restart it after a step")
        row = self._rows.index(stream_id)
        nbest = self.text.results(self.search.finalize(self._search_state)[row])
        self.close(stream_id)
        self._start(stream_id)
        return nbest

    def close(self, stream_id: int) -> None:
        """Forget a stream (finished or not); its id is not reused."""
        self._stream(stream_id)
        row = self._rows.index(stream_id)
        self.search.remove_utterances(self._search_state, [row])
        del self._rows[row], self._streams[stream_id]
