"""Long-form streaming recognition: endpoint rules cut an unbounded stream into segments.

:class:`StreamSegmenter` holds the ONE copy of the per-stream segmentation logic; it does
not decode. :func:`decode_segments` drives any number of segmenters over a
:class:`BlockDecoder` (one stream: :class:`LongFormRecognizer` over a
:class:`Speech2TextStreaming`; many: the server's batched
:class:`~espnet2_dualmode.inference.multistream.MultiStreamDecoder`), so a stream is cut
the same way whether it is decoded alone or batched with others.

Each stream's audio is fed one encoder block at a time: incoming chunks are split at the
sample counts where the next block completes (:func:`samples_needed`), so the decoder gets
the same calls whatever the caller's chunking (the segments do not depend on it), and
:class:`EndpointRules` are checked after every block. When a rule fires at encoder frame
``n`` of the segment, the segment ends at frame ``n``: its result is the search's final
n-best over frames ``[0, n)`` (the look-ahead audio already received is not flushed as if
the stream ended). The stream's features, encoder and search are then reset and the audio
after the cut (from ``n`` x 4 feature hops past the segment start) is fed again to the
fresh state. Positions, the search history and the prediction-net cache so never outgrow
one segment, and a segment is decoded exactly as a fresh recognizer fed that slice of
audio would decode it.

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

import argparse
import collections
import math
from dataclasses import asdict, dataclass, field, fields
from typing import (Any, Collection, Deque, Dict, Hashable, List, Mapping, NamedTuple, Optional,
                    Protocol, Tuple, TypeVar)

import numpy as np
import torch

from espnet2_dualmode.inference.latency import SUBSAMPLING, frame_end_seconds, samples_needed
from espnet2_dualmode.inference.model_io import Result
from espnet2_dualmode.inference.offline import Speech2Text
from espnet2_dualmode.inference.streaming import Speech2TextStreaming
from espnet2_dualmode.tasks.dualmode_asr import min_speech_samples

K = TypeVar("K", bound=Hashable)


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
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                raise ValueError(f"endpoint rule {name} must be a positive number of seconds, "
                                 f"got {value!r}")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """The rules as command-line options (the same names and defaults in every CLI)."""
        helps = {"trailing_silence_after_token": "seconds of blank after the last token that "
                                                 "end a segment",
                 "trailing_silence_no_token": "seconds without any token that end a (silent) "
                                              "segment",
                 "max_segment": "longest segment in seconds"}
        for f in fields(EndpointRules):
            parser.add_argument(f"--{f.name}", type=float, default=f.default, help=helps[f.name])

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "EndpointRules":
        """The rules of :meth:`add_arguments`' options."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

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
        """JSON-ready dict, the layout of the longform CLI and of the server's segments:
        ``{"index", "start", "end", "text", "tokens", "token_timestamps": [{"token",
        "time"}], "endpoint"}`` (+ ``"two_pass"`` where there is one)."""
        out: Dict[str, Any] = {
            "index": self.index, "start": round(self.start, 6), "end": round(self.end, 6),
            "text": self.text, "tokens": self.tokens,
            "token_timestamps": [{"token": tok, "time": round(t, 6)}
                                 for tok, t in zip(self.tokens, self.token_times)],
            "endpoint": self.endpoint}
        if self.second_pass is not None:
            out["two_pass"] = {"head": two_pass_head, "text": self.second_pass[0].text,
                               "tokens": self.second_pass[0].tokens}
        return out


class FinishedSegment(NamedTuple):
    """A segment and its audio (for a second pass; drop it once used)."""

    segment: Segment
    audio: np.ndarray

    def speech(self, sample_rate: int, margin: float) -> np.ndarray:
        """The audio a second pass decodes: from ``margin`` s before the segment's first
        token time to ``margin`` s after its last, within the segment; all of it for a
        segment without a token, or with an infinite margin."""
        times = self.segment.token_times
        if not times or math.isinf(margin):
            return self.audio
        first = round((times[0] - margin - self.segment.start) * sample_rate)
        last = round((times[-1] + margin - self.segment.start) * sample_rate)
        return self.audio[max(0, first):max(0, last)]


TWO_PASS_MARGIN = 0.5
"""Seconds of audio kept around a segment's tokens for its second pass (why:
:func:`second_pass_of`; chosen on the demo's dev set)."""


def check_two_pass_margin(margin: float) -> float:
    """``margin`` if it is a number of seconds >= 0 (inf: no trimming); ValueError if not."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0:
        raise ValueError(f"two_pass_margin must be a number of seconds >= 0 (inf: the whole "
                         f"segment), got {margin!r}")
    return float(margin)


def add_two_pass_margin_argument(parser: argparse.ArgumentParser) -> None:
    """``--two_pass_margin``, the same in every CLI that has a second pass."""
    parser.add_argument("--two_pass_margin", type=float, default=TWO_PASS_MARGIN,
                        help="seconds of audio kept before the first and after the last token "
                             "of a segment for its second pass (inf: the whole segment)")


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


class StreamSegmenter:
    """One stream's endpointing: which samples its next block needs, the rules after each
    block, the cut and the audio fed again after it. The decoding is the caller's
    (:func:`decode_segments`).

    Args:
        s2t: the streaming recognizer whose geometry and frame timing the stream's decoder
            uses (only read here).
        rules: the endpoint rules.

    Raises:
        ValueError: ``max_segment`` is shorter than the streaming encoder's first block.

    Attributes:
        partial: best partial hypothesis of the current segment after its last block
            (timestamps in encoder frames of the segment), None before its first block.
        segment_start: first sample of the current segment in the recording.
    """

    def __init__(self, s2t: Speech2TextStreaming, rules: EndpointRules = EndpointRules()) -> None:
        self.s2t, self.rules = s2t, rules
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
        self.queue = _SampleQueue()
        self.segment_audio: List[np.ndarray] = []  # fed samples of the current segment
        self.fed = 0  # samples of the current segment fed to the decoder
        self.frames = 0  # encoder frames of the current segment before the pending block
        self.segment_start = 0  # absolute sample where the current segment starts
        self.segments_done = 0
        self.partial: Optional[Result] = None

    @property
    def segment_start_seconds(self) -> float:
        return self.segment_start / self.s2t.sample_rate

    def push(self, speech_chunk: np.ndarray | torch.Tensor) -> None:
        """Queue received samples (copied: the caller may reuse its buffer)."""
        # The queue is numpy on the host (re-fed after a cut); the decoder moves it back.
        chunk = torch.as_tensor(speech_chunk).detach().to("cpu", torch.float32)  # host: buffer
        self.queue.push(chunk.reshape(-1).numpy().copy())

    def next_block(self, frames: int) -> Optional[np.ndarray]:
        """The samples that complete the segment's next encoder block, taken from the
        queue, or None while too few are queued; ``frames``: the stream's encoder frames
        in this segment so far."""
        need = samples_needed(self.s2t, frames) - self.fed
        if self.queue.size < need:
            return None
        block = self.queue.take(need)
        self.segment_audio.append(block)
        self.fed += block.size
        self.frames = frames
        return block

    def end_of_block(self, partial: Result, frames: int) -> Optional[str]:
        """After the block of :meth:`next_block` was decoded to ``frames`` encoder frames
        with best partial hypothesis ``partial``: the rule that fires, or None."""
        if frames == self.frames:  # would loop forever on empty blocks
            raise RuntimeError(f"{self.fed} samples did not complete encoder frame {frames}")
        self.partial, self.frames = partial, frames
        stamps = partial.timestamps
        return self.rules.check(frames, stamps[-1] if stamps else None, self.frame_seconds,
                                self.encoder.hop_size)

    def cut(self, nbest: List[Result], rule: str) -> FinishedSegment:
        """End the segment at its decoded frames with the search's n-best so far; the audio
        after the cut is queued again for the stream's fresh decoder state."""
        audio = np.concatenate(self.segment_audio)
        cut = self.frames * self.frame_samples
        done = self._finished(nbest, audio[:cut], rule)
        self.queue.push(audio[cut:], front=True)
        self.segment_audio, self.fed, self.frames, self.partial = [], 0, 0, None
        self.segment_start += cut
        return done

    def rest(self) -> np.ndarray:
        """At the end of the recording: every sample not fed yet (for the final call).

        After a cut the rest holds at least the re-fed look-ahead audio (more than half
        an STFT window), so the final call always has samples enough; it may give no
        encoder frame (no token).

        Raises:
            ValueError: the whole recording is shorter than one encoder frame's input.
        """
        rest = self.queue.take(self.queue.size)
        total = self.fed + rest.size
        if self.segments_done == 0 and total < self.min_samples:
            raise ValueError(f"audio of {total} samples is shorter than one encoder "
                             f"frame's input ({self.min_samples} samples)")
        self.segment_audio.append(rest)
        return rest

    def last(self, nbest: List[Result]) -> FinishedSegment:
        """The last segment, from the final n-best of the stream after :meth:`rest`."""
        return self._finished(nbest, np.concatenate(self.segment_audio), "end_of_audio")

    def _finished(self, nbest: List[Result], audio: np.ndarray, rule: str) -> FinishedSegment:
        fs = self.s2t.sample_rate
        start = self.segment_start / fs
        times = [start + frame_end_seconds(self.s2t, t) for t in nbest[0].timestamps or []]
        segment = Segment(self.segments_done, start, start + audio.size / fs, nbest, times, rule)
        self.segments_done += 1
        return FinishedSegment(segment, audio)


class BlockDecoder(Protocol[K]):
    """Streams decoded block by block (what :func:`decode_segments` drives)."""

    def encoder_frames(self, key: K) -> int:
        """Encoder frames decoded on stream ``key`` since it started (or restarted)."""

    def feed(self, key: K, samples: np.ndarray, is_final: bool) -> None:
        """Give stream ``key`` its next samples (decoded by :meth:`step`)."""

    def step(self) -> Dict[K, List[Result]]:
        """Decode what was fed; each fed stream's partial best, or its final n-best."""

    def restart(self, key: K) -> List[Result]:
        """The n-best of stream ``key`` so far; the stream then starts afresh."""


def decode_segments(decoder: BlockDecoder[K], streams: Mapping[K, StreamSegmenter],
                    ending: Collection[K] = ()) -> Tuple[Dict[K, List[FinishedSegment]],
                                                          Dict[K, Exception]]:
    """Decode every complete block queued in ``streams`` (each a stream of ``decoder``),
    one block per stream per ``decoder.step`` so that the rules are checked after each,
    and then, for the streams in ``ending``, the rest of their audio as their last segment.

    Returns:
        the segments each stream finished, and the error of each stream that failed (its
        audio, or a step it was in); the other streams are decoded on.
    """
    done: Dict[K, List[FinishedSegment]] = {k: [] for k in streams}
    errors: Dict[K, Exception] = {}
    active = dict(streams)
    while active:
        fed: Dict[K, bool] = {}  # stream -> its final call
        for key, seg in list(active.items()):
            try:
                block = seg.next_block(decoder.encoder_frames(key))
                if block is not None:
                    decoder.feed(key, block, is_final=False)
                    fed[key] = False
                elif key in ending:
                    decoder.feed(key, seg.rest(), is_final=True)
                    fed[key] = True
                else:
                    del active[key]
            except Exception as e:  # this stream's audio only
                errors[key] = e
                del active[key]
        if not fed:
            break
        try:
            results = decoder.step()
        except Exception as e:  # not a per-stream failure: every stream of the step hears it
            errors.update((key, e) for key in fed)
            for key in fed:
                del active[key]
            continue
        for key, final in fed.items():
            seg = active[key]
            try:
                if final:
                    done[key].append(seg.last(results[key]))
                    del active[key]
                    continue
                rule = seg.end_of_block(results[key][0], decoder.encoder_frames(key))
                if rule is not None:
                    done[key].append(seg.cut(decoder.restart(key), rule))
            except Exception as e:
                errors[key] = e
                del active[key]
    return done, errors


def second_pass_of(recognizer: Speech2Text, finished: FinishedSegment, sample_rate: int,
                   margin: float, min_samples: int) -> Optional[List[Result]]:
    """The full-context n-best of a finished segment's speech (:meth:`FinishedSegment.speech`);
    None for audio shorter than one encoder frame's input (nothing a head can decode).

    Why not the whole segment: a segment holds the silence before its speech and up to
    about a second and a half after it (the trailing-silence rule, checked at block ends),
    and a model trained on tightly cut utterances decodes such audio far worse (the demo
    model's attention head: 13.1 % CER on its test utterances, 79.7 % with 1.5 s of faint
    noise on each side). The streaming tokens' times bound the speech: a token is emitted
    after the audio that carries it, with a delay, so ``margin`` is kept on both sides.
    """
    audio = finished.speech(sample_rate, margin)
    return recognizer([audio])[0] if audio.size >= min_samples else None


class _OneStream:
    """A :class:`Speech2TextStreaming` as a one-stream :class:`BlockDecoder` (key 0)."""

    def __init__(self, s2t: Speech2TextStreaming) -> None:
        self.s2t = s2t
        self.result: List[Result] = []

    def encoder_frames(self, key: int) -> int:
        return self.s2t.n_encoder_frames

    def feed(self, key: int, samples: np.ndarray, is_final: bool) -> None:
        self.result = self.s2t(samples, is_final=is_final)

    def step(self) -> Dict[int, List[Result]]:
        return {0: self.result}

    def restart(self, key: int) -> List[Result]:
        nbest = self.s2t.text.results(self.s2t.search.finalize(self.s2t.search_state)[0])
        self.s2t.reset()
        return nbest


class LongFormRecognizer(StreamSegmenter):
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
            segment's speech (e.g. ``inference.offline.shared_offline_head`` with
            ``attention``; :func:`second_pass_of`).
        two_pass_margin: seconds kept around the segment's tokens for the second pass.
    """

    def __init__(self, s2t: Speech2TextStreaming, rules: EndpointRules = EndpointRules(),
                 second_pass: Optional[Speech2Text] = None,
                 two_pass_margin: float = TWO_PASS_MARGIN) -> None:
        self.second_pass = second_pass
        self.two_pass_margin = check_two_pass_margin(two_pass_margin)
        self.decoder = _OneStream(s2t)
        super().__init__(s2t, rules)

    def reset(self) -> None:
        """Forget the current recording."""
        super().reset()
        self.s2t.reset()
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
        self.push(speech_chunk)
        done, errors = decode_segments(self.decoder, {0: self}, [0] if is_final else [])
        if errors:
            raise errors[0]
        self.finished = is_final
        segments = []
        for finished in done[0]:
            if self.second_pass is not None:
                finished.segment.second_pass = second_pass_of(
                    self.second_pass, finished, self.s2t.sample_rate, self.two_pass_margin,
                    self.min_samples)
            segments.append(finished.segment)
        return segments
