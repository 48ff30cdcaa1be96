"""Running NIST sclite (SCTK) the way ESPnet's stage 13 does, and reading its report."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Optional, Tuple

from dualmode_recipe.scoring.align import AlignCounts, ascii_lower

DEBIAN_SCLITE = "/usr/lib/sctk/bin/sclite"

_ID_RE = re.compile(r"^id: \((.*)\)\s*$")
_SCORES_RE = re.compile(r"^Scores: \(#C #S #D #I\) (\d+) (\d+) (\d+) (\d+)\s*$")
# "| Sum  |  Snt  Wrd | Corr Sub Del Ins Err S.Err |" in the count table
_SUM_RE = re.compile(r"^\s*\|\s*Sum\s*\|\s*(\d+)\s+(\d+)\s*\|"
                     r"\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*\|\s*$")


def find_sclite() -> Optional[str]:
    """Locate sclite: ``$SCLITE``, then ``sclite`` on PATH, then Debian's sctk path.

    Raises:
        FileNotFoundError: ``$SCLITE`` is set but is not an executable file.
    """
    env = os.environ.get("SCLITE")
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise FileNotFoundError(f"$SCLITE={env!r} is not an executable file")
        return env
    on_path = shutil.which("sclite")
    if on_path:
        return on_path
    if os.path.isfile(DEBIAN_SCLITE) and os.access(DEBIAN_SCLITE, os.X_OK):
        return DEBIAN_SCLITE
    return None


def sclite_id(trn_id: str) -> str:
    """The form in which sclite reports a ``.trn`` id: ASCII letters lower-cased."""
    return ascii_lower(trn_id)


def run_sclite(
    sclite: str, ref_trn: str | os.PathLike, hyp_trn: str | os.PathLike
) -> Tuple[str, Dict[str, AlignCounts]]:
    """Run ``sclite -r ref trn -h hyp trn -i rm -o all stdout`` (ESPnet's options).

    Returns:
        The report text (ESPnet's ``result.txt``) and the per-utterance counts keyed by
        the id as sclite prints it (see :func:`sclite_id`).

    Raises:
        RuntimeError: sclite failed, or its per-utterance counts do not add up to the
            totals of its own summary table.
    """
    cmd = [sclite, "-r", str(ref_trn), "trn", "-h", str(hyp_trn), "trn",
           "-i", "rm", "-o", "all", "stdout"]
    proc = subprocess.run(cmd, capture_output=True)
    report = proc.stdout.decode("utf-8", errors="surrogateescape")
    if proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", errors="replace").strip()
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}: "
                           f"{stderr or report[-2000:]}")
    per_utt: Dict[str, AlignCounts] = {}
    total: Optional[Tuple[int, ...]] = None
    current: Optional[str] = None
    for line in report.splitlines():
        m = _ID_RE.match(line)
        if m:
            current = m.group(1)
            continue
        m = _SCORES_RE.match(line)
        if m and current is not None:
            if current in per_utt:
                raise RuntimeError(f"sclite reported utterance {current!r} twice")
            per_utt[current] = AlignCounts(*map(int, m.groups()))
            current = None
            continue
        m = _SUM_RE.match(line)
        if m and total is None:
            total = tuple(map(int, m.groups()))
    if total is None:
        raise RuntimeError(f"no 'Sum' row found in the output of {' '.join(cmd)}")
    summed = (
        len(per_utt),
        sum(c.corr + c.sub + c.dele for c in per_utt.values()),
        sum(c.corr for c in per_utt.values()),
        sum(c.sub for c in per_utt.values()),
        sum(c.dele for c in per_utt.values()),
        sum(c.ins for c in per_utt.values()),
    )
    if summed != total[:6]:
        raise RuntimeError(f"sclite's per-utterance counts {summed} (Snt Wrd C S D I) do "
                           f"not add up to its Sum row {total[:6]}")
    return report, per_utt


def write_report(path: str | os.PathLike, report: str) -> Path:
    """Write a report read with ``surrogateescape`` back byte-for-byte."""
    out = Path(path)
    out.write_bytes(report.encode("utf-8", errors="surrogateescape"))
    return out
