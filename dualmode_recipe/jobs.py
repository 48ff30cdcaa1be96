"""Split work across parallel jobs and merge what they wrote (stages 10 and 12).

Key lists are split into contiguous, nearly equal parts, as Kaldi's ``split_scp.pl``
does: a sorted list stays sorted after the parts are concatenated again, which
ESPnet's ``aggregate_stats_dirs`` relies on. Decoding jobs write
``<job>/1best_recog/{text,token,token_int,score}`` and ``<job>/failed``; the merge
checks that every key was either decoded or reported as failed, exactly once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Sequence

from dualmode_recipe.kaldi_dir import read_kaldi_map

DECODE_FILES = ("text", "token", "token_int", "score")


def split_scp(scp: str | os.PathLike, num_splits: int, out_dir: str | os.PathLike,
              name: str = "keys") -> List[Path]:
    """Write ``<out_dir>/<name>.<i>.scp`` for i = 1..n, n = min(num_splits, #lines).

    Returns:
        The written files, in order.

    Raises:
        ValueError: ``num_splits`` < 1 or an empty ``scp``.
    """
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    with open(scp, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    if not lines:
        raise ValueError(f"{scp} is empty: nothing to split")
    n = min(num_splits, len(lines))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{name}.*.scp"):
        stale.unlink()
    paths = []
    for i in range(n):
        part = lines[len(lines) * i // n: len(lines) * (i + 1) // n]
        path = out / f"{name}.{i + 1}.scp"
        path.write_text("".join(part), encoding="utf-8")
        paths.append(path)
    return paths


def merge_decode_outputs(job_dirs: Sequence[str | os.PathLike], keys: str | os.PathLike,
                         out_dir: str | os.PathLike) -> Dict[str, int]:
    """Concatenate the jobs' outputs into ``<out_dir>/{text,token,token_int,score,failed}``
    (``text`` and ``failed`` always; the others when a job wrote them).

    Args:
        job_dirs: the ``--output_dir`` of every decoding job.
        keys: a ``key ...`` file listing every utterance that was to be decoded.
        out_dir: where the merged, sorted files are written.

    Returns:
        ``{"decoded": n, "failed": m}``.

    Raises:
        ValueError: an utterance decoded by two jobs, an output for a key that is not
            in ``keys``, or a key with neither an output nor a failure record.
    """
    expected = set(read_kaldi_map(keys))
    merged: Dict[str, Dict[str, str]] = {name: {} for name in DECODE_FILES + ("failed",)}
    found = {"text", "failed"}  # always written; the others when some job wrote them
    for job in map(Path, job_dirs):
        for name in merged:
            path = job / "failed" if name == "failed" else job / "1best_recog" / name
            if not path.is_file():
                continue
            found.add(name)
            for key, value in read_kaldi_map(path).items():
                if key in merged[name]:
                    raise ValueError(f"{path}: utterance {key!r} was also written by "
                                     "another job")
                if key not in expected:
                    raise ValueError(f"{path}: utterance {key!r} is not in {keys}")
                merged[name][key] = value
    failed = merged["failed"]
    lost = sorted(expected - set(merged["text"]) - set(failed))
    if lost:
        raise ValueError(f"{len(lost)} utterance(s) of {keys} have neither a hypothesis "
                         f"nor a failure record in {[str(j) for j in job_dirs]} (first: "
                         f"{lost[0]!r}); see the decoding logs")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(found):
        values = merged[name]
        with open(out / name, "w", encoding="utf-8") as f:
            for key in sorted(values):
                f.write(f"{key} {values[key]}\n" if values[key] else f"{key}\n")
    for key in sorted(failed):
        logging.warning("%s: decoding failed for %s: %s", out, key, failed[key])
    decoded = len(set(merged["text"]) - set(failed))
    logging.info("%s: %d decoded, %d failed", out, decoded, len(failed))
    return {"decoded": decoded, "failed": len(failed)}
