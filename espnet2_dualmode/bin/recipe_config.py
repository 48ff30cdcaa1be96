"""Print one top-level value of a training YAML config (for decisions in the stage script).

Usage:
    python -m espnet2_dualmode.bin.recipe_config --config conf/train.yaml --key normalize

Prints the value (``null`` and a missing key print an empty line), so that the recipe
passes ``--normalize_conf stats_file=...`` only to configs with ``normalize: global_mvn``.
"""

from __future__ import annotations

import argparse
from typing import List, Optional

import yaml

from espnet2_dualmode.recipe.cli import run


def config_value(path: str, key: str) -> str:
    """The value of ``key`` in the YAML mapping at ``path`` as text ('' when null/absent).

    Raises:
        ValueError: the file is not a YAML mapping.
    """
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    value = data.get(key)
    return "" if value is None else str(value)


def get_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--key", required=True)
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    """Parse ``cmd`` (default: sys.argv) and print the value."""
    args = get_parser().parse_args(cmd)
    run("recipe_config", lambda: print(config_value(args.config, args.key)))


if __name__ == "__main__":
    main()
