"""Per-recording processing shared by speed perturbation (stage 2) and dumping (stage 3).

A CSJ talk is one 20-minute recording cut into hundreds of segments, so the work unit
is a recording: it is read once and all its utterances are cut from it. Recordings are
spread over ``nj`` worker processes; results come back in utterance-id order whatever
``nj`` is, so the outputs do not depend on it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from dualmode_recipe.kaldi_dir import Utterance

# Kaldi's extract-segments clamps a segment end that lies at most this far after the end
# of its recording (--max-overshoot); a larger overshoot skips the segment.
MAX_OVERSHOOT_SECONDS = 0.5


class SkipUtterance(Exception):
    """An utterance that cannot be produced: ``kind`` is the counting key, the message
    the details (both logged)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass(frozen=True)
class Produced:
    """One output utterance of a worker: its record, audio file and sample count."""

    utterance: Utterance
    path: str
    num_samples: int


# A worker's result for one recording: produced utterances and (utt id, kind, message)
# of the skipped ones.
RecordingResult = Tuple[List[Produced], List[Tuple[str, str, str]]]


def cut_segment(samples: np.ndarray, rate: int, utt: Utterance) -> np.ndarray:
    """The samples of ``utt`` (the whole recording when it has no segment times).

    Sample indices are ``round(time * rate)`` (``int()`` would turn 1.003 s at 16 kHz
    into 16047 because of floating-point error).

    Args:
        samples: (T,) the recording.
        rate: its sample rate.
        utt: the utterance, with ``start``/``end`` in seconds or ``None``.

    Returns:
        (T',) a view of ``samples``.

    Raises:
        SkipUtterance: the segment starts after the recording ends, ends more than
            :data:`MAX_OVERSHOOT_SECONDS` after it, or is empty.
    """
    if utt.start is None:
        return samples
    total = samples.shape[0]
    begin, end = round(utt.start * rate), round(utt.end * rate)
    if begin >= total:
        raise SkipUtterance("segment starts after the recording",
                            f"{utt.start} s, recording {utt.recording!r} lasts "
                            f"{total / rate:.3f} s")
    if end > total:
        if (end - total) / rate > MAX_OVERSHOOT_SECONDS:
            raise SkipUtterance(f"segment ends > {MAX_OVERSHOOT_SECONDS} s after the "
                                "recording", f"{utt.end} s, recording {utt.recording!r} "
                                f"lasts {total / rate:.3f} s")
        end = total
    if end <= begin:
        raise SkipUtterance("empty segment", f"{utt.start}..{utt.end} s")
    return samples[begin:end]


def _single_threaded() -> None:
    """Pool initializer: one intra-op thread per worker, since nj workers share the CPUs
    (torch reads OMP_NUM_THREADS when a worker first imports it)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def group_by_recording(utterances: Sequence[Utterance], wav_scp: Dict[str, str]
                       ) -> List[Tuple[str, List[Utterance]]]:
    """``[(wav.scp value, utterances of that recording)]`` sorted by recording id."""
    groups: Dict[str, List[Utterance]] = {}
    for u in utterances:
        groups.setdefault(u.recording, []).append(u)
    return [(wav_scp[rec], utts) for rec, utts in sorted(groups.items())]


def map_recordings(
    worker: Callable[[str, List[Utterance]], RecordingResult],
    groups: Sequence[Tuple[str, List[Utterance]]],
    nj: int,
    what: str,
) -> List[Produced]:
    """Run ``worker(wav.scp value, utterances)`` for every group on ``nj`` processes.

    Skipped utterances are logged one by one and counted by reason.

    Returns:
        The produced utterances, sorted by utterance id.

    Raises:
        ValueError: ``nj`` < 1, or every utterance was skipped.
    """
    if nj < 1:
        raise ValueError(f"nj must be >= 1, got {nj}")
    if nj == 1 or len(groups) < 2:
        results = [worker(rec, utts) for rec, utts in groups]
    else:
        with ProcessPoolExecutor(max_workers=min(nj, len(groups)),
                                 initializer=_single_threaded) as pool:
            results = list(pool.map(worker, [g[0] for g in groups], [g[1] for g in groups],
                                    chunksize=max(1, len(groups) // (4 * nj))))
    produced: List[Produced] = []
    reasons: Counter = Counter()
    for done, skipped in results:
        produced.extend(done)
        for utt_id, kind, message in skipped:
            logging.warning("%s: skipping utterance %s: %s", what, utt_id, message)
            reasons[kind] += 1
    if reasons:
        logging.warning("%s: skipped %d utterance(s): %s", what, sum(reasons.values()),
                        dict(reasons))
    if not produced:
        raise ValueError(f"{what}: every utterance was skipped ({dict(reasons)})")
    return sorted(produced, key=lambda p: p.utterance.utt_id)


def produce(utterances: Sequence[Utterance],
            make: Callable[[Utterance], List[Produced]]) -> RecordingResult:
    """Apply ``make`` to each utterance, turning :class:`SkipUtterance` into a skip."""
    done: List[Produced] = []
    skipped: List[Tuple[str, str, str]] = []
    for u in utterances:
        try:
            done.extend(make(u))
        except SkipUtterance as err:
            skipped.append((u.utt_id, err.kind, str(err)))
    return done, skipped
