"""Training configs in the recipes: read one value, and merge override files onto a base.

A recipe runs variants of one paper config (the Figure 2 block sizes, a GPU's batch size)
as small override YAMLs that hold only the keys they change; the stage script merges them
onto ``--asr_config`` into the experiment's own config file (:func:`write_merged_config`),
and that file is what training reads and what the stage-11 marker hashes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence

import yaml


def load_mapping(path: str | os.PathLike) -> Dict[str, Any]:
    """The YAML mapping in ``path`` (an empty file is an empty mapping).

    Raises:
        ValueError: the file holds something other than a mapping.
    """
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    return data


def config_value(config: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted ``key`` of a config (``stream_encoder_conf.block_size``).

    Raises:
        KeyError: a part of the key is missing.
    """
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value


def merge_config(base: Mapping[str, Any], override: Mapping[str, Any],
                 where: str = "override") -> Dict[str, Any]:
    """``base`` with ``override`` laid over it: nested mappings are merged key by key,
    any other value (scalar, list, null) replaces the base's; new keys are added.

    Raises:
        ValueError: ``override`` gives a mapping where ``base`` has a non-mapping value
            (or the reverse); the message names ``where`` and the dotted key.
    """
    merged = dict(base)
    for key, value in override.items():
        if (base.get(key) is not None and value is not None
                and isinstance(base[key], Mapping) != isinstance(value, Mapping)):
            raise ValueError(f"{where}: {key} is a {type(value).__name__} here but a "
                             f"{type(base[key]).__name__} in the base config")
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            merged[key] = merge_config(base[key], value, f"{where}: {key}")
        else:
            merged[key] = value
    return merged


def write_merged_config(base: str | os.PathLike, overrides: Sequence[str | os.PathLike],
                        output: str | os.PathLike) -> Path:
    """Write ``base`` with each file of ``overrides`` merged onto it in turn to ``output``.

    The output starts with a comment naming its sources, so its hash (the stage-11
    marker) changes when the sources or their content do.

    Raises:
        FileNotFoundError: a config file is missing.
        ValueError: a file is not a mapping, or an override clashes with the base.
    """
    config = load_mapping(base)
    for path in overrides:
        config = merge_config(config, load_mapping(path), str(path))
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    sources = " + ".join(str(p) for p in (base, *overrides))
    with open(out, "w", encoding="utf-8") as f:
        f.write(f"# Merged by `python -m dualmode_recipe merge_config`: {sources}\n")
        yaml.safe_dump(config, f, sort_keys=False, allow_unicode=True)
    return out
