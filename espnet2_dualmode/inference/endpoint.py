"""Long-form streaming recognition: endpoint rules cut an unbounded stream into segments.

:class:`LongFormRecognizer` feeds the audio to one :class:`Speech2TextStreaming` one
encoder block at a time: it splits incoming chunks at the sample counts where the next
block completes (:func:`samples_needed`), so the streaming recognizer gets the same calls
whatever the caller's chunking (the segments do not depend on it), and
:class:`EndpointRules` are checked after every block. When a rule fires at encoder frame
``n`` of the segment, the segment ends at frame ``n``: its result is the search's final
n-best over frames ``[0, n)`` (the look-ahead audio already received is not flushed as if
the stream ended). The features, encoder and search are then reset and the audio after the
cut (from ``n`` x 4 feature hops past the segment start) is fed again to the fresh state.
Positions, the search history and the prediction-net cache so never outgrow one segment,
and a segment is decoded exactly as a fresh recognizer fed that slice of audio would
decode it.

A rule is a duration in seconds of encoder frames (4 feature hops each):

* ``trailing_silence_after_token``: frames after the last token of the best partial
  hypothesis ("silence" is what the RNN-T decodes as blank, as in sherpa).
* ``trailing_silence_no_token``: frames of a segment with no token yet (its result is
  empty: a stretch of silence or noise).
* ``max_segment``: a segment ends at the last block end that keeps it within this length.

Rules are checked at block ends, so a silence rule fires up to one block hop (0.64 s at
the paper geometry) after its threshold. At the end of the audio the last segment is
flushed normally (``is_final``): it may pass ``max_segment`` by about the look-ahead
(0.64 s at the paper geometry).
"""

from __future__ import annotations

import collections
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Deque, Dict, List, Optional, Sequence

import numpy as np
import torch

from espnet2_dualmode.decoding import Hypothesis
from espnet2_dualmode.inference.latency import SUBSAMPLING, frame_end_seconds, samples_needed
from espnet2_dualmode.inference.model_io import Result
from espnet2_dualmode.inference.offline import Speech2Text
from espnet2_dualmode.inference.streaming import Speech2TextStreaming
from espnet2_dualmode.tasks.dualmode_asr import min_speech_samples


@dataclass(frozen=True)
class EndpointRules:
    """When a segment ends; every value in seconds (module doc).

    Defaults: 0.8 s of trailing blank after a token is longer than the usual pauses
    inside a sentence while keeping the final result of a spoken command within about a
    second of its end (checked at block ends: up to one hop later); sherpa's 1.2 s
    favours fewer cuts. 5 s without any token ends an empty segment of silence or noise,
    so that the next utterance's segment starts at most about 5 s before its speech (its
    start time stays informative). 20 s (sherpa's value) bounds the work and memory of
    one segment and the wait for a final result during continuous speech.
    """

    trailing_silence_after_token: float = 0.8
    trailing_silence_no_token: float = 5.0
    max_segment: float = 20.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"endpoint rule {name} must be a positive number of seconds, "
                                 f"got {value}")

    def check(self, frames: int, last_token_frame: Optional[int], frame_seconds: float,
              next_block_frames: int) -> Optional[str]:
        """The rule that ends a segment of ``frames`` decoded encoder frames, or None.

        Args:
            frames: encoder frames decoded in the segment so far.
            last_token_frame: frame of the best partial hypothesis' last token (None: no
                token yet).
            frame_seconds: duration of one encoder frame.
            next_block_frames: frames the next block would add.
        """
        if (frames + next_block_frames) * frame_seconds > self.max_segment + 1e-9:
            return "max_segment"
        if last_token_frame is None:
            if frames * frame_seconds >= self.trailing_silence_no_token - 1e-9:
                return "trailing_silence_no_token"
        elif (frames - 1 - last_token_frame) * frame_seconds >= (
                self.trailing_silence_after_token - 1e-9):
            return "trailing_silence_after_token"
        return None


@dataclass
class Segment:
    """One finished segment; times in seconds from the start of the recording.

    Attributes:
        index: 0, 1, ... in recording order.
        start, end: the segment's audio span (``end`` of one is ``start`` of the next).
        nbest: the streaming search's n-best, best first; ``timestamps`` in encoder frames
            of the segment.
        token_times: end time of the encoder frame that emitted each token of the best
            hypothesis (absolute).
        endpoint: the rule that ended it, or ``end_of_audio``.
        second_pass: n-best of the two-pass head on the segment's audio (None without a
            second pass, or for a segment shorter than one encoder frame's input).
    """

    index: int
    start: float
    end: float
    nbest: List[Result]
    token_times: List[float]
    endpoint: str
    second_pass: Optional[List[Result]] = field(default=None)

    @property
    def text(self) -> str:
        return self.nbest[0].text

    @property
    def tokens(self) -> List[str]:
        return self.nbest[0].tokens

    def to_json(self, two_pass_head: Optional[str] = None) -> Dict[str, Any]:
        """JSON-ready dict; token timestamps as ``[{"token", "time"}]`` (the server's layout)."""
        out: Dict[str, Any] = {
            "segment": self.index, "start": round(self.start, 6), "end": round(self.end, 6),
            "text": self.text, "tokens": self.tokens,
            "token_timestamps": [{"token": tok, "time": round(t, 6)}
                                 for tok, t in zip(self.tokens, self.token_times)],
            "endpoint": self.endpoint}
        if self.second_pass is not None:
            out["two_pass"] = {"head": two_pass_head, "text": self.second_pass[0].text,
                               "tokens": self.second_pass[0].tokens}
        return out


class _SampleQueue:
    """Received samples not yet fed, as a queue of arrays (no copying until taken)."""

    def __init__(self) -> None:
        self.pieces: Deque[np.ndarray] = collections.deque()
        self.size = 0

    def push(self, samples: np.ndarray, front: bool = False) -> None:
        if samples.size:
            (self.pieces.appendleft if front else self.pieces.append)(samples)
            self.size += samples.size

    def take(self, n: int) -> np.ndarray:
        """The first ``n`` samples (``n`` <= size), removed from the queue."""
        out = []
        while n > 0:
            piece = self.pieces.popleft()
            if piece.size > n:
                self.pieces.appendleft(piece[n:])
                piece = piece[:n]
            out.append(piece)
            n -= piece.size
            self.size -= piece.size
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


class LongFormRecognizer:
    """Streaming recognition of unbounded audio, cut into segments by endpoint rules.

    Usage::

        lf = LongFormRecognizer(Speech2TextStreaming(config, weights), EndpointRules())
        for chunk in chunks:                  # any number of samples each
            for segment in lf(chunk, is_final=False):
                print(segment.to_json())
        segments = lf(last_chunk, is_final=True)
        lf.reset()                            # before the next recording

    Args:
        s2t: the streaming recognizer (its model, search settings and stream state; this
            object resets it).
        rules: the endpoint rules.
        second_pass: optional full-context recognizer that re-decodes each finished
            segment's audio (e.g. ``inference.offline.shared_offline_head`` with
            ``attention``).

    Attributes:
        partial: best partial hypothesis of the current segment after the last block
            (timestamps in encoder frames of the segment), None before its first block.
        segment_start: first sample of the current segment in the recording.
    """

    def __init__(self, s2t: Speech2TextStreaming, rules: EndpointRules = EndpointRules(),
                 second_pass: Optional[Speech2Text] = None) -> None:
        self.s2t, self.rules, self.second_pass = s2t, rules, second_pass
        self.encoder = s2t.model.stream_encoder
        self.frame_samples = SUBSAMPLING * s2t.features.hop
        self.frame_seconds = self.frame_samples / s2t.sample_rate
        self.min_samples = min_speech_samples(s2t.train_args.frontend_conf)
        first_block = self.encoder.emission_range(0)[1]
        if first_block * self.frame_seconds > rules.max_segment:
            raise ValueError(f"max_segment {rules.max_segment} s is shorter than the streaming "
                             f"encoder's first block ({first_block * self.frame_seconds:.2f} s)")
        self.reset()

    def reset(self) -> None:
        """Forget the current recording."""
        self.s2t.reset()
        self.queue = _SampleQueue()
        self.segment_audio: List[np.ndarray] = []  # fed samples of the current segment
        self.fed = 0  # samples of the current segment fed to s2t
        self.segment_start = 0  # absolute sample where the current segment starts
        self.segments_done = 0
        self.partial: Optional[Result] = None  # best partial hypothesis of the segment
        self.finished = False

    def __call__(self, speech_chunk: np.ndarray | torch.Tensor, is_final: bool) -> List[Segment]:
        """Feed the next samples; returns the segments finished by them (the last one,
        ended by the end of the audio, when ``is_final``).

        Raises:
            ValueError: the whole recording is shorter than one encoder frame's input.
            RuntimeError: called again after ``is_final`` without :meth:`reset`.
        """
        if self.finished:
            raise RuntimeError("the recording has ended (is_final); call reset() first")
        # The segment buffer is numpy (re-fed after a cut); the recognizer moves it back.
        chunk = torch.as_tensor(speech_chunk).detach().to("cpu", torch.float32)  # host: buffer
        chunk = chunk.reshape(-1)
        self.queue.push(chunk.numpy().copy())  # kept past this call: the caller may reuse it
        done = self._drain()
        if is_final:
            done += self._flush()
            self.finished = True
        return done

    def _drain(self) -> List[Segment]:
        """Feed every complete block in the queue, checking the rules after each."""
        done = []
        while True:
            frames = self.s2t.n_encoder_frames
            need = samples_needed(self.s2t, frames) - self.fed
            if self.queue.size < need:
                return done
            block = self.queue.take(need)
            self.partial = self.s2t(block, is_final=False)[0]
            self.segment_audio.append(block)
            self.fed += block.size
            if self.s2t.n_encoder_frames == frames:  # would loop forever on empty blocks
                raise RuntimeError(f"{self.fed} samples did not complete encoder frame {frames}")
            frames = self.s2t.n_encoder_frames
            stamps = self.partial.timestamps
            rule = self.rules.check(frames, stamps[-1] if stamps else None, self.frame_seconds,
                                    self.encoder.hop_size)
            if rule is not None:
                done.append(self._cut(frames, rule))

    def _cut(self, frames: int, rule: str) -> Segment:
        """End the segment at encoder frame ``frames``; re-queue the audio after the cut."""
        nbest = self._results(self.s2t.search.finalize(self.s2t.search_state)[0])
        audio = np.concatenate(self.segment_audio)
        cut = frames * self.frame_samples
        segment = self._segment(nbest, audio[:cut], rule)
        self.queue.push(audio[cut:], front=True)
        self.s2t.reset()
        self.segment_audio, self.fed, self.partial = [], 0, None
        self.segment_start += cut
        return segment

    def _flush(self) -> List[Segment]:
        """Decode the rest of the audio as the last segment. After a cut the rest holds at
        least the re-fed look-ahead audio (more than half an STFT window), so the final
        call always has samples enough; it may give no encoder frame (no token)."""
        rest = self.queue.take(self.queue.size)
        audio = np.concatenate(self.segment_audio + [rest])
        if self.segments_done == 0 and audio.size < self.min_samples:
            raise ValueError(f"audio of {audio.size} samples is shorter than one encoder "
                             f"frame's input ({self.min_samples} samples)")
        return [self._segment(self.s2t(rest, is_final=True), audio, "end_of_audio")]

    def _results(self, hyps: Sequence[Hypothesis]) -> List[Result]:
        return self.s2t.text.results(hyps)

    def _segment(self, nbest: List[Result], audio: np.ndarray, rule: str) -> Segment:
        fs = self.s2t.sample_rate
        start = self.segment_start / fs
        times = [start + frame_end_seconds(self.s2t, t) for t in nbest[0].timestamps or []]
        second = None
        if self.second_pass is not None and audio.size >= self.min_samples:
            second = self.second_pass([audio])[0]
        segment = Segment(self.segments_done, start, start + audio.size / fs, nbest, times,
                          rule, second)
        self.segments_done += 1
        return segment
