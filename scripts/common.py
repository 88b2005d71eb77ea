"""Helpers shared by the scripts: config loading as the command line does it, overrides, and
XLA's FLOP count of a compiled function (the benchmarks' MFU)."""

from __future__ import annotations

import ast
from typing import Any

import ml_collections

from abaw_jax import config as config_lib


def load_config_arg(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/config.py[:variants]` and returns get_config(variants)."""
    path, _, arg = spec.partition(":")
    return config_lib.load_config_file(path, arg or None)


def parse_with_overrides(parser, argv: list[str] | None = None):
    """`(args, overrides)`: the parser's arguments and every `--config.KEY=VALUE` (or
    `--config.KEY VALUE`), the override syntax of the abaw_jax commands, as "KEY=VALUE" items."""
    args, rest = parser.parse_known_args(argv)
    overrides, i = [], 0
    while i < len(rest):
        arg = rest[i]
        if arg.startswith("--config.") and "=" in arg:
            overrides.append(arg[len("--config."):])
        elif arg.startswith("--config.") and i + 1 < len(rest):
            overrides.append(f"{arg[len('--config.'):]}={rest[i + 1]}")
            i += 1
        else:
            parser.error(f"unrecognized argument {arg!r} (config overrides are --config.KEY=VALUE)")
        i += 1
    return args, overrides


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


def xla_flops(compiled: Any) -> float:
    """XLA's FLOP count of one call of a compiled function (``jax.jit(f).lower(...).compile()``).

    0.0 when the backend reports none. Multiply-adds count as two FLOPs; work inside custom calls
    (e.g. a fused attention kernel) may be left out, so benchmarks print the count next to MFU.
    """
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost.get("flops", 0.0)) if cost else 0.0
