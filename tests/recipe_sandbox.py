"""Run an ``egs2/<corpus>/asr1`` recipe in a scratch folder (for the test_recipe_* tests).

The scratch copy links every file of the recipe (run.sh, local/, conf/, the shared stage
script, path.sh, db.sh) back to the repository, so the scripts under test are the real
ones while data/, dump/ and exp/ are written to the scratch folder.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = {"data", "dump", "exp", "downloads"}


def make_recipe(corpus: str, root: Path) -> Path:
    """``root/asr1`` linking to the entries of ``egs2/<corpus>/asr1``."""
    src = REPO / "egs2" / corpus / "asr1"
    dst = root / "asr1"
    dst.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name not in OUTPUTS:
            (dst / entry.name).symlink_to(entry.resolve())
    return dst


def run_recipe(recipe: Path, args: List[str], script: str = "./run.sh",
               timeout: float = 600, env: Optional[Dict[str, str]] = None
               ) -> subprocess.CompletedProcess:
    """Run ``script args`` in ``recipe``; stdout and stderr are merged into ``stdout``."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(env or {}))
    return subprocess.run([script, *args], cwd=recipe, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, env=full_env)


def read_map(path: Path) -> Dict[str, str]:
    """``key value`` lines of a Kaldi file as a dict."""
    result = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(" ")
        result[key] = value
    return result
