"""Emission timing of the streaming path, measured as a real-time feed on one thread.

Audio arrives in chunks of ``chunk`` samples at real-time pace: chunk i is complete at
``a_i = (i + 1) * chunk / fs``. Its processing starts when it has arrived and the previous
chunk is done (queueing), ``s_i = max(a_i, f_{i-1})``, and ends at ``f_i = s_i + d_i`` with
``d_i`` the measured compute time. Every encoder frame produced by call i, and every token
emitted on it, is emitted at ``f_i``.

Per-token emission delay = emission time - the token's end time in a reference alignment:
CTC forced alignment (torchaudio) of the recognised tokens with the model's full-context
CTC head; a token ends at the end of the last encoder frame of its span. That reference
depends on the model being measured.

Utterance-level latency (:class:`SpeechSegmentLatency`) takes its reference from a file
that does not: ``<utt_id> <speech_start_s> <speech_end_s>`` per line
(:func:`read_speech_segments`; the demo corpus writes it from its own synthesis timing).
Per utterance, the last-token delay is the emission time of the last token of the final
hypothesis minus the end of speech: the Dual-mode ASR paper's latency (Yu et al., ICLR
2021, Sec. 4.1), negative when the model emits before the speaker has finished; its 50th
and 90th percentiles over utterances are Latency@50 and Latency@90. The first-token
delay is the emission time of the first token minus the start of speech.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np
import torch
import torchaudio

from espnet2_dualmode.inference.streaming import Speech2TextStreaming

SUBSAMPLING = 4


@dataclass
class UtteranceTiming:
    """Timing of one utterance; times in seconds from the start of the audio."""

    duration: float
    compute: float
    token_ids: List[int]
    emission_times: List[float]
    arrival_times: List[float]  # when the audio that produced each token had arrived
    delays: List[float] = field(default_factory=list)


def frame_end_seconds(s2t: Speech2TextStreaming, frame: int) -> float:
    """End time of encoder frame ``frame`` (its stride of 4 feature frames)."""
    hop = s2t.features.hop
    return SUBSAMPLING * (frame + 1) * hop / s2t.sample_rate


def samples_needed(s2t: Speech2TextStreaming, frame: int) -> int:
    """Samples the streaming path must have received before it can emit ``frame``."""
    enc = s2t.model.stream_encoder
    block = int(enc.block_of(torch.tensor(frame)))  # host: integer arithmetic, read by int()
    block_end = block * enc.hop_size + enc.block_size
    last_feature = SUBSAMPLING * (block_end - 1) + 6
    return last_feature * s2t.features.hop + s2t.features.half


def timed_recognition(s2t: Speech2TextStreaming, wav: np.ndarray, chunk: int) -> UtteranceTiming:
    """Feed ``wav`` in real time; returns the final tokens and when each was emitted.

    Each call returns Python token lists read back from the model's device, so on CUDA
    the measured compute time includes the device work (the read-back synchronises).
    """
    fs = s2t.sample_rate
    s2t.reset()
    frame_emitted_at: List[float] = []
    finish, compute, result = 0.0, 0.0, []
    starts = list(range(0, wav.size, chunk))
    for i, start in enumerate(starts):
        arrival = min(start + chunk, wav.size) / fs
        begin = max(arrival, finish)
        before = s2t.n_encoder_frames
        tic = time.perf_counter()
        out = s2t(wav[start:start + chunk], is_final=i == len(starts) - 1)
        spent = time.perf_counter() - tic
        compute += spent
        finish = begin + spent
        if out:
            result = out
        frame_emitted_at += [finish] * (s2t.n_encoder_frames - before)
    best = result[0]
    emission = [frame_emitted_at[t] for t in best.timestamps]
    arrival = [min(samples_needed(s2t, t), wav.size) / fs for t in best.timestamps]
    return UtteranceTiming(wav.size / fs, compute, best.token_ids, emission, arrival)


def has_reference_alignment(model: torch.nn.Module) -> bool:
    """Whether :func:`reference_end_times` can align: a full-context encoder with CTC."""
    return model.ctc is not None and model.full_encoder is not None


def reference_end_times(s2t: Speech2TextStreaming, wav: np.ndarray, token_ids: List[int]) -> List[float]:
    """End time of each token in a CTC forced alignment with the full-context CTC head."""
    model = s2t.model
    if not has_reference_alignment(model):
        raise ValueError("the reference alignment needs the full-context CTC head")
    if not token_ids:
        return []
    device = s2t.device
    with torch.no_grad():
        speech = torch.as_tensor(wav, dtype=torch.float32, device=device).unsqueeze(0)
        _, full, lengths = model.encode(speech, torch.tensor([speech.size(1)], device=device))
        log_probs = model.ctc.log_softmax(full)[:, : lengths[0]]
    targets = torch.tensor([token_ids], dtype=torch.int32, device=device)
    labels, _ = torchaudio.functional.forced_align(log_probs.float(), targets, blank=model.blank_id)
    labels = labels[0].tolist()
    ends: List[float] = []
    prev = model.blank_id
    for t, lab in enumerate(labels):
        if lab != model.blank_id:
            if lab == prev:  # the same token continues (no blank in between)
                ends[-1] = frame_end_seconds(s2t, t)
            else:
                ends.append(frame_end_seconds(s2t, t))
        prev = lab
    if len(ends) != len(token_ids):
        raise ValueError(f"forced alignment gave {len(ends)} spans for {len(token_ids)} tokens")
    return ends


def read_speech_segments(path: str | os.PathLike) -> Dict[str, Tuple[float, float]]:
    """``{utt_id: (speech_start_s, speech_end_s)}`` from a ``<utt_id> <start> <end>`` file.

    Blank lines are ignored.

    Raises:
        ValueError: naming the file and line, for a line without exactly three fields,
            times that are not finite numbers, a negative start, an end before the
            start, or an utterance id given twice.
    """
    segments: Dict[str, Tuple[float, float]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}:{lineno}"
            if len(fields) != 3:
                raise ValueError(f"{where}: expected '<utt_id> <speech_start_s> <speech_end_s>', "
                                 f"got {len(fields)} fields")
            key = fields[0]
            try:
                start, end = float(fields[1]), float(fields[2])
            except ValueError:
                raise ValueError(f"{where}: times must be numbers, got {fields[1:]}") from None
            if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
                raise ValueError(f"{where}: need 0 <= speech_start_s <= speech_end_s, "
                                 f"got {start} {end}")
            if key in segments:
                raise ValueError(f"{where}: utterance {key} appears twice")
            segments[key] = (start, end)
    return segments


def percentile_ms(values_s: List[float], q: float) -> float:
    """The ``q``-th percentile of ``values_s`` (seconds) in ms; NaN for no values."""
    return 1000.0 * float(np.percentile(values_s, q)) if values_s else float("nan")


class SpeechSegmentLatency:
    """Utterance-level latency against reference speech segments (module doc).

    Utterances without a segment line, or whose final hypothesis is empty, are logged
    and counted, and left out of the figures.

    Args:
        segments: ``{utt_id: (speech_start_s, speech_end_s)}`` (:func:`read_speech_segments`).
        source: where the segments come from, for messages and the results.
    """

    def __init__(self, segments: Dict[str, Tuple[float, float]], source: str) -> None:
        self.segments, self.source = segments, source
        self.first_delays: List[float] = []
        self.last_delays: List[float] = []
        self.no_segment = self.empty = 0

    def add(self, key: str, timing: UtteranceTiming) -> None:
        """Record one utterance's first/last-token delays (seconds).

        Raises:
            ValueError: the segment ends after the audio (the file does not describe it).
        """
        if key not in self.segments:
            self.no_segment += 1
            logging.warning(f"utterance {key}: no line in {self.source}; "
                            "left out of Latency@50/@90")
            return
        start, end = self.segments[key]
        if end > timing.duration + 1e-3:
            raise ValueError(f"{self.source}: speech of {key} ends at {end} s, after the end "
                             f"of its audio ({timing.duration:.3f} s)")
        if not timing.emission_times:
            self.empty += 1
            logging.warning(f"utterance {key}: empty hypothesis; left out of Latency@50/@90")
            return
        self.first_delays.append(timing.emission_times[0] - start)
        self.last_delays.append(timing.emission_times[-1] - end)

    def summary(self) -> Dict[str, float | int | str]:
        """Latency@50/@90 (last-token delay), first-token delay P50/P90 (ms) and counts."""
        return {
            "latency_at50_ms": percentile_ms(self.last_delays, 50),
            "latency_at90_ms": percentile_ms(self.last_delays, 90),
            "first_token_delay_p50_ms": percentile_ms(self.first_delays, 50),
            "first_token_delay_p90_ms": percentile_ms(self.first_delays, 90),
            "latency_utterances": len(self.last_delays),
            "latency_no_segment": self.no_segment,
            "latency_empty_hypothesis": self.empty,
            "latency_reference": self.source,
        }
