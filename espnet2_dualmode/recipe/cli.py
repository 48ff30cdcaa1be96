"""Shared plumbing of the ``espnet2_dualmode.bin.recipe_*`` entry points."""

from __future__ import annotations

import logging
import sys
from typing import Callable


def run(prog: str, body: Callable[[], None], log_level: str = "INFO") -> None:
    """Run ``body`` with logging set up; a data or file problem exits with status 1 and
    ``<prog>: error: <message>`` (the recipe prints it from the stage log)."""
    logging.basicConfig(level=log_level,
                        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    try:
        body()
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        sys.exit(f"{prog}: error: {err}")


def sample_rate(text: str) -> int:
    """``"16k"`` / ``"16000"`` -> 16000 (ESPnet's ``--fs`` spelling).

    Raises:
        ValueError: not a positive integer, optionally followed by ``k``.
    """
    value = text.strip().lower()
    scale = 1000 if value.endswith("k") else 1
    try:
        rate = int(float(value[:-1] if scale == 1000 else value) * scale)
    except ValueError:
        raise ValueError(f"sample rate {text!r} is not a number (e.g. 16k or 16000)") from None
    if rate <= 0:
        raise ValueError(f"sample rate {text!r} must be > 0")
    return rate
