"""Remove unusable utterances from a dump directory (stage 4, as ESPnet's asr.sh).

An utterance is dropped when it is shorter than ``min_duration`` or longer than
``max_duration`` seconds (from ``utt2num_samples``) or when its transcript is empty
(unless ``keep_empty_text``: a corpus with silence/noise clips that teach the model to emit
nothing).
Every removal is counted by reason and logged; the audio stays where stage 3 wrote it
(the new ``wav.scp`` points there).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Optional, Tuple

from dualmode_recipe.kaldi_dir import Utterance, read_data_dir, write_dump_dir


def rejection(utt: Utterance, num_samples: int, rate: int, min_duration: float,
              max_duration: float, keep_empty_text: bool = False) -> Optional[str]:
    """Why ``utt`` is removed (``None``: it is kept)."""
    seconds = num_samples / rate
    if seconds < min_duration:
        return f"shorter than {min_duration} s"
    if seconds > max_duration:
        return f"longer than {max_duration} s"
    if not keep_empty_text and not utt.text.strip():
        return "empty text"
    return None


def filter_dump_dir(src: str | os.PathLike, dst: str | os.PathLike, rate: int,
                    min_duration: float, max_duration: float,
                    keep_empty_text: bool = False) -> Tuple[Path, Counter]:
    """Write the kept utterances of the dump directory ``src`` to ``dst``.

    Returns:
        ``(dst, removal counts by reason)``.

    Raises:
        ValueError: ``src`` has no ``utt2num_samples``, the bounds are inconsistent,
            or nothing is left.
    """
    if not 0 <= min_duration < max_duration:
        raise ValueError(f"need 0 <= min_duration < max_duration, got {min_duration} and "
                         f"{max_duration}")
    data = read_data_dir(src)
    if not data.num_samples:
        raise ValueError(f"{src}: no utt2num_samples (run the format stage first)")
    removed: Counter = Counter()
    kept = []
    for u in data.utterances:
        reason = rejection(u, data.num_samples[u.utt_id], rate, min_duration, max_duration,
                           keep_empty_text)
        if reason is None:
            kept.append(u)
        else:
            removed[reason] += 1
    total = len(data.utterances)
    summary = ", ".join(f"{n} {reason}" for reason, n in sorted(removed.items())) or "none"
    if not kept:
        raise ValueError(f"{src}: all {total} utterances removed ({summary})")
    write_dump_dir(dst, kept, {u.utt_id: data.wav_scp[u.utt_id] for u in kept},
                   {u.utt_id: data.num_samples[u.utt_id] for u in kept})
    logging.info("%s: kept %d of %d utterances; removed: %s", dst, len(kept), total, summary)
    return Path(dst), removed
