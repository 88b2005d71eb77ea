"""Each system as published: `--print_config` of every config-driven command, and
docs/systems.md's defaults checked against the resolved configs of every task."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def _run(module: str, *args: str, env_extra: dict | None = None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("module, config, system, model", [
    ("abaw_jax.train", "configs/va.py", "A", "transformer"),
    ("abaw_jax.train", "configs/expr.py:model=tcn", "B", "tcn"),
    ("abaw_jax.evaluate", "configs/au.py:model=fusion", "C", "fusion"),
    ("abaw_jax.train", "configs/mtl.py", "C", "fusion"),
])
def test_print_config_prints_json_and_exits_before_device_work(module, config, system, model):
    # JAX_PLATFORMS names no backend: the first array, jit or device query would fail the run.
    r = _run(module, "--config", config, "--print_config",
             env_extra={"JAX_PLATFORMS": "no_such_backend"})
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    assert printed["system"] == system and printed["model"]["name"] == model
    from conftest import load_config
    name, _, arg = config.removeprefix("configs/").partition(":")
    expected = load_config(name.removesuffix(".py"), arg or None)
    assert printed == json.loads(json.dumps(expected.to_dict()))


@pytest.mark.parametrize("module, config", [
    ("abaw_jax.pretrain", "configs/finetune_expr.py:tiny"),
    ("abaw_jax.extract", "configs/extract_vit.py:demo"),
])
def test_print_config_of_pretrain_and_extract(module, config):
    overrides = (["--config.data.root=/nonexistent"] if "pretrain" in module
                 else ["--config.frames=/nonexistent"])
    r = _run(module, "--config", config, "--print_config", *overrides,
             env_extra={"JAX_PLATFORMS": "no_such_backend"})
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    assert ("model" in printed) == ("pretrain" in module)


def test_print_config_rejects_a_bad_config_and_workdir_stays_required():
    r = _run("abaw_jax.train", "--config", "configs/va.py", "--print_config",
             "--config.batch_size=0")
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.strip().splitlines()[-1] == "error: config.batch_size = 0: must be >= 1"
    r = _run("abaw_jax.train", "--config", "configs/va.py")
    assert r.returncode != 0 and "--workdir is required" in r.stderr
