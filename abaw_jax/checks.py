"""The one validation helper of the package: configs, model options and extraction settings all
report a bad value the same way, naming the key and the value found. Imports nothing of the
package, so models and configs alike can use it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def get(config: Any, dotted: str) -> Any:
    """The value at a dotted key ("optimizer.lr") of a ConfigDict, mapping or object."""
    node = config
    for part in dotted.split("."):
        try:
            node = node[part]
        except (TypeError, KeyError):
            node = getattr(node, part)
    return node


def checker(config: Any, *, prefix: str = "config.",
            error: type[Exception] = ValueError) -> Callable[[bool, str, str], None]:
    """`need(ok, key, why)`: raises `error("<prefix><key> = <value>: <why>")` when not `ok`."""
    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise error(f"{prefix}{key} = {get(config, key)!r}: {why}")
    return need
