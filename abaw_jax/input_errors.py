"""One `error:` line for a mistake on the command line, before any flag reaches a command.

absl and ml_collections report a bad `--config` file, an unknown variant or an unknown
`--config.<key>` override as a traceback (or a FATAL line that embeds one). `parse_flags` is the
flags parser of every config-driven command: it parses as absl does and turns such failures into
one line naming the flag, with "did you mean" for an unknown key (`--debug` keeps the original
exception and its traceback).
"""

from __future__ import annotations

import difflib
import re
import sys
from typing import Any

_EMBEDDED = re.compile(r"^\s*(?:[\w.]+\.)?(\w*Error): (.+)$")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing; a failure exits with one `error:` line (a traceback with --debug)."""
    from absl import flags
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - every failure here is a mistake in the arguments
        if "--debug" in argv or "--debug=true" in argv:
            raise
        sys.exit(f"error: {describe(argv, e)}")


def config_flag() -> Any:
    """The value of --config; a file that cannot be loaded (ml_collections loads it on first
    access) exits with one `error:` line naming it (a traceback with --debug)."""
    from absl import flags
    try:
        config = flags.FLAGS.config
        config.to_dict   # a file that failed to load raises on first use
        return config
    except Exception as e:  # noqa: BLE001
        if flags.FLAGS["debug"].value:
            raise
        sys.exit(f"error: {describe(sys.argv, e)}")


def _config_arg(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _overrides(argv: list[str]) -> list[tuple[str, str]]:
    """(dotted key, the argument) of every `--config.<key>[=value]` argument."""
    out = []
    for a in argv:
        if a.startswith("--config."):
            out.append((a[len("--config."):].split("=", 1)[0], a))
    return out


def _keys(tree: Any, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out.append(prefix + k)
        if hasattr(v, "items") and not isinstance(v, str):
            out.extend(_keys(v, prefix + k + "."))
    return out


def unknown_key_line(config: Any, key: str, arg: str) -> str | None:
    """"unknown config key ...; did you mean ..." when `key` is not a field of `config`."""
    node, parts = config, key.split(".")
    for i, part in enumerate(parts):
        if hasattr(node, "keys") and part in node.keys():
            node = node[part]
            continue
        if i and not hasattr(node, "keys"):
            return None   # a field of a plain value: not an unknown key
        parent = ".".join(parts[:i])
        siblings = [parent + "." + k if parent else k for k in (node.keys() if hasattr(
            node, "keys") else [])]
        close = difflib.get_close_matches(key, _keys(config), n=3, cutoff=0.6) or \
            difflib.get_close_matches(".".join(parts[:i + 1]), siblings, n=3, cutoff=0.5)
        hint = (f"; did you mean {' or '.join('config.' + c for c in close)}?" if close else
                f"; config.{parent or ''}{'.' if parent else ''}* has "
                f"{', '.join(sorted(node.keys())[:12]) if hasattr(node, 'keys') else 'no fields'}")
        return f"{arg}: unknown config key config.{key}{hint}"
    return None


def describe(argv: list[str], error: BaseException) -> str:
    """The one line for a failed flag parse."""
    overrides = _overrides(argv)
    spec = _config_arg(argv)
    if overrides and spec and isinstance(error, (AttributeError, KeyError)):
        try:
            from abaw_jax import config as config_lib
            path, _, arg = spec.partition(":")
            config = config_lib.load_config_file(path, arg or None)
        except Exception:  # noqa: BLE001 - the file itself is reported below
            config = None
        if config is not None:
            for key, a in overrides:
                line = unknown_key_line(config, key, a)
                if line:
                    return line
    text = str(error)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if "Failed loading config file" in text:
        return f"--config={spec}: cannot load the config file ({lines[-1].strip()})"
    # A config file's exception, embedded with its traceback: keep the flag and the last line.
    embedded = [m for m in (_EMBEDDED.match(ln) for ln in lines) if m]
    flag = re.search(r"flag (--[\w.]+=?\S*)", text)
    if embedded:
        message = embedded[-1].group(2).strip()
        return f"{flag.group(1).rstrip(':')}: {message}" if flag else message
    if lines:
        first = lines[0].strip()
        return first if len(lines) == 1 else " ".join(x.strip() for x in lines[:3])
    return type(error).__name__
