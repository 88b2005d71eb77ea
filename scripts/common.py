"""Helpers shared by the scripts: config loading as the command line does it, overrides."""

from __future__ import annotations

import ast
import importlib.util

import ml_collections


def load_config_arg(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/config.py[:variants]` and returns get_config(variants)."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("abaw_config", path)
    if module_spec is None:
        raise FileNotFoundError(f"config file {path} not found")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def set_override(config: ml_collections.ConfigDict, item: str) -> None:
    """Applies `a.b=value` (value parsed as a Python literal when it is one) to `config`."""
    key, sep, raw = item.partition("=")
    if not sep:
        raise ValueError(f"override {item!r} is not KEY=VALUE")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    if leaf not in node:
        raise KeyError(f"config has no key {key!r}")
    node[leaf] = value
