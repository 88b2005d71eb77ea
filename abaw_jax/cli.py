"""The command line shared by every config-driven entry point (train, evaluate, extract, pretrain).

`run(main_fn, validate_fn)` defines --config (an ml_collections config file with `:variants`),
--workdir, --print_config and the multi-process flags, validates the config before anything
touches a device, and prints the project's input errors as one `error:` line instead of a
traceback. `--print_config` prints the resolved, validated config as JSON and exits (no
--workdir needed).
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable

from abaw_jax import config as config_lib
from abaw_jax import input_errors
from abaw_jax import workdirs
from abaw_jax.loop import NonFiniteLossError


def define_flags() -> None:
    """--config, --workdir, --print_config, --coordinator, --num_processes, --process_id."""
    from absl import flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "config file (with :variants)", lock_config=True)
    flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, predictions)")
    flags.DEFINE_string("coordinator", "", "host:port of process 0 for multi-process runs "
                        "launched by hand (SLURM, Open MPI and TPU pods are detected)")
    flags.DEFINE_integer("num_processes", 0, "number of processes (with --coordinator)")
    flags.DEFINE_integer("process_id", -1, "this process's index (with --coordinator)")
    flags.DEFINE_boolean("debug", False, "show the traceback of an input error too")
    flags.DEFINE_bool("print_config", False, "print the resolved config as JSON and exit "
                      "(before any device work; --workdir not needed)")
    flags.mark_flags_as_required(["config"])
    flags.register_multi_flags_validator(
        ["workdir", "print_config"], lambda f: f["workdir"] is not None or f["print_config"],
        message="--workdir is required (except with --print_config)")


def config_json(config) -> str:
    """The config as indented JSON, keys in the config's own order (tuples become lists)."""
    import json
    return json.dumps(config.to_dict(), indent=2, default=str)


def is_input_error(e: BaseException) -> bool:
    """Errors that describe bad input or a failed run, not a bug: shown as one line.

    These are the project's ValueError subclasses (AnnotationError, LayoutError, StoreError,
    ConfigError, SubmissionError, WeightsError, CheckpointError, ...; each names the file, line
    or key), NonFiniteLossError, and missing files.
    """
    if isinstance(e, (NonFiniteLossError, FileNotFoundError, NotADirectoryError)):
        return True
    return isinstance(e, ValueError) and type(e).__module__.startswith("abaw_jax.")


def check_workdir(workdir: str) -> None:
    """A workdir must be a directory or not exist yet."""
    path = pathlib.Path(workdir).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"--workdir {workdir}: exists and is not a directory")


def initialize_distributed() -> None:
    """Starts `jax.distributed` from the flags or a detected cluster launcher."""
    from absl import flags
    from abaw_jax import sharding
    f = flags.FLAGS
    sharding.initialize_distributed(f.coordinator, f.num_processes, f.process_id)


def _flag_value(argv: list[str], name: str) -> tuple[int, str | None]:
    """(index, value) of `--name value` / `--name=value` in `argv`; (-1, None) when absent."""
    for i, arg in enumerate(argv):
        if arg in (f"--{name}", f"-{name}"):
            return i, (argv[i + 1] if i + 1 < len(argv) else None)
        for prefix in (f"--{name}=", f"-{name}="):
            if arg.startswith(prefix):
                return i, arg[len(prefix):]
    return -1, None


def saved_config_argv(argv: list[str], from_workdir: bool = False) -> list[str]:
    """`argv` with `--config <file>.json` read as a saved run config (abaw_jax.saved_config),
    and with `from_workdir`, a missing `--config` taken as `<workdir>/config.json`."""
    from abaw_jax import saved_config
    loader = str(pathlib.Path(saved_config.__file__).resolve())
    i, value = _flag_value(argv, "config")
    if i >= 0 and value and value.endswith(".json"):
        argv = list(argv)
        if argv[i].endswith("config"):
            argv[i + 1] = f"{loader}:{value}"
        else:
            argv[i] = f"--config={loader}:{value}"
        return argv
    if i < 0 and from_workdir:
        _, workdir = _flag_value(argv, "workdir")
        if workdir:
            return [argv[0], f"--config={loader}:{pathlib.Path(workdir) / 'config.json'}",
                    *argv[1:]]
    return list(argv)


def run(main_fn: Callable, validate_fn: Callable = config_lib.validate, *,
        config_from_workdir: bool = False) -> None:
    """The absl entry of a config-driven command: flags, validation, one-line errors.

    `--config` may name a saved `config.json`; with `config_from_workdir` it defaults to the
    workdir's own `config.json`."""
    from absl import app, flags
    define_flags()
    sys.argv = saved_config_argv(sys.argv, config_from_workdir)
    _, spec = _flag_value(sys.argv, "config")
    if spec and spec.endswith(".json"):
        saved = pathlib.Path(spec.split(":", 1)[1]).expanduser()
        if not saved.is_file():
            sys.exit(f"error: {saved}: no such file (a training workdir holds the config.json "
                     f"it was trained with; or pass --config)")

    def wrapped(argv):
        from absl import logging as absl_logging
        if not flags.FLAGS["verbosity"].present:
            # Library INFO lines (every orbax save) drown the progress line; -v 0 brings them back.
            absl_logging.set_verbosity(absl_logging.WARNING)
        try:
            if flags.FLAGS.print_config:
                validate_fn(flags.FLAGS.config)
                print(config_json(flags.FLAGS.config))
                return
            check_workdir(flags.FLAGS.workdir)
            out = flags.FLAGS["out"].value if "out" in flags.FLAGS else ""   # evaluate --out
            workdirs.check_writable(out or flags.FLAGS.workdir, "--out" if out else "--workdir")
            validate_fn(input_errors.config_flag())
            main_fn(argv)
        except Exception as e:
            if not is_input_error(e) or flags.FLAGS.debug:
                raise   # a bug (or --debug): keep the traceback
            sys.exit(f"error: {e}")

    app.run(wrapped, flags_parser=input_errors.parse_flags)   # bad flags: one line too
