"""A run's saved `config.json` as a config file for the command line.

`--config runs/va/config.json` (and, for `evaluate`, no `--config` at all: the workdir's own
`config.json`) reaches ml_collections' config-file flag as `--config <this file>:<json path>`, so
`--config.key=value` overrides apply to a saved config exactly as to a config file.
"""

from __future__ import annotations

import json
import pathlib

import ml_collections


class SavedConfigError(ValueError):
    """A saved config.json is missing or unreadable (the message names the file)."""


def _tuples(value):
    # JSON turns the configs' tuples into lists; fields such as TCN channels expect tuples.
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def load(path: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The ConfigDict of a saved config.json."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise SavedConfigError(f"{path}: no such config.json (train writes one into its workdir)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SavedConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise SavedConfigError(f"{path}: not a config (a JSON object)")
    return ml_collections.ConfigDict(_tuples(data))


def get_config(arg=None):
    if not arg:
        raise SavedConfigError("--config: name a config.json")
    return load(arg)
