"""Fault injection: a process killed (SIGKILL) at each step of a write, then the same command
again, ends with the same result as a run that was never interrupted.

For each of the checkpoint save, the restore (a damaged checkpoint set aside), evaluate's
submission files and feature extraction, a subprocess is killed at one point:
- "before": as the write starts (nothing of it on disk yet),
- "during": when its data is complete in a temporary place, just before the rename (or, for a
  feature store, the index line) that publishes it,
- "after": just after that rename,
then the command is run again to its end and its outputs are compared with an uninterrupted
run's: the train state bit for bit, every logged step once with the same loss, the same
submission files and metrics, the same stored features.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from abaw_jax import checkpoints, config as config_lib, evaluation, extract, runs, sharding, train
from abaw_jax.data import features as features_lib
from conftest import ROOT, tiny_config

# Runs in a subprocess: installs one kill point, then runs a command in-process.
_DRIVER = r"""
import json, os, re, signal, sys
sys.path.insert(0, {tests!r})
spec = json.loads({spec!r})

def die():
    os.kill(os.getpid(), signal.SIGKILL)

kill = spec["kill"]
if "rename" in kill:                       # a rename whose destination matches
    pattern = re.compile(kill["rename"])
    for name in ("rename", "replace"):
        real = getattr(os, name)
        def hooked(src, dst, *a, _real=real, **k):
            hit = pattern.search(os.fspath(dst))
            if hit and kill["when"] == "before":
                die()
            out = _real(src, dst, *a, **k)
            if hit:
                die()
            return out
        setattr(os, name, hooked)
else:                                      # the n-th call of a function
    import importlib
    module = importlib.import_module(kill["module"])
    owner = module
    *parents, leaf = kill["name"].split(".")
    for p in parents:
        owner = getattr(owner, p)
    real = getattr(owner, leaf)
    calls = [0]
    def hooked(*a, **k):
        calls[0] += 1
        if calls[0] == kill["nth"] and kill["when"] == "before":
            die()
        out = real(*a, **k)
        if calls[0] == kill["nth"] and kill["when"] == "after":
            die()
        return out
    setattr(owner, leaf, hooked)

from conftest import tiny_config
if spec["op"] == "train":
    from abaw_jax import train
    train.train_and_evaluate(tiny_config("VA", spec["root"], **spec["overrides"]), spec["workdir"])
elif spec["op"] == "evaluate":
    from abaw_jax import evaluation
    evaluation.evaluate(tiny_config("VA", spec["root"], **spec["overrides"]), spec["workdir"],
                      out_dir=spec["out"])
else:
    from abaw_jax import extract
    from abaw_jax import config as config_lib
    c = config_lib.load_config_file(spec["config"], "demo")
    for k, v in spec["overrides"].items():
        c[k] = v
    extract.extract(c, spec["workdir"])
print("finished without the fault")
"""


def killed_run(spec: dict) -> None:
    """Runs `spec` in a subprocess that must die by SIGKILL at its kill point."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    code = _DRIVER.format(tests=str(ROOT / "tests"), spec=json.dumps(spec))
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stdout[-500:], r.stderr[-3000:])


def rename_at(pattern: str, when: str) -> dict:
    return {"rename": pattern, "when": when}


def call_of(module: str, name: str, nth: int = 1, when: str = "before") -> dict:
    return {"module": module, "name": name, "nth": nth, "when": when}


def state_of(config, workdir) -> dict[str, np.ndarray]:
    data = runs.resolve_data(config)
    setup = runs.setup_model(config, data.feature_dims, sharding.make_mesh(-1))
    _, state = checkpoints.restore_params(workdir, setup.abstract_state, "latest")
    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def logged(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(config, workdir: pathlib.Path, reference: pathlib.Path) -> None:
    """Same final state (bitwise), losses per step, validation rows and final metrics."""
    got, want = state_of(config, workdir), state_of(config, reference)
    assert got.keys() == want.keys()
    for k in want:
        assert np.array_equal(got[k], want[k]), k

    def rows(w):
        out = [(r["step"], {k: v for k, v in r.items() if not k.startswith("perf/")})
               for r in logged(w)]
        return sorted(out, key=lambda sr: (sr[0], sorted(sr[1])))

    assert rows(workdir) == rows(reference)   # every step once, the same values
    assert (json.loads((workdir / "final_metrics.json").read_text())
            == json.loads((reference / "final_metrics.json").read_text()))


OVERRIDES = {"log_every": 1}   # tiny_config: 6 steps, checkpoints and evaluations at 3 and 6


@pytest.fixture(scope="module")
def straight(tiny_demo, tmp_path_factory):
    """An uninterrupted tiny run: the result every interrupted one must end with."""
    workdir = tmp_path_factory.mktemp("straight") / "run"
    train.train_and_evaluate(tiny_config("VA", tiny_demo, **OVERRIDES), workdir)
    return workdir


# --- save ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kill", [
    call_of("abaw_jax.checkpoints", "RunCheckpoints.save", nth=2, when="before"),
    rename_at(r"/checkpoints/6$", "before"),
    rename_at(r"/checkpoints/6$", "after"),
], ids=["before", "during", "after"])
def test_killed_save_then_rerun_equals_uninterrupted(tiny_demo, straight, tmp_path, kill):
    workdir = tmp_path / "run"
    killed_run({"op": "train", "root": str(tiny_demo), "workdir": str(workdir),
                "overrides": OVERRIDES, "kill": kill})
    config = tiny_config("VA", tiny_demo, **OVERRIDES)
    train.train_and_evaluate(config, workdir)
    assert_same_run(config, workdir, straight)


# --- restore (a damaged checkpoint is set aside, the previous one restored) -------------------

def _damage(step_dir: pathlib.Path) -> None:
    """Truncates every data file of a checkpoint to a third (a full disk's partial writes)."""
    for data in (p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"):
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])


@pytest.mark.parametrize("kill", [
    call_of("abaw_jax.checkpoints", "_set_aside", when="before"),
    rename_at(r"/checkpoints/damaged-6$", "before"),
    rename_at(r"/checkpoints/damaged-6$", "after"),
], ids=["before", "during", "after"])
def test_killed_restore_then_rerun_equals_uninterrupted(tiny_demo, straight, tmp_path, kill):
    workdir = tmp_path / "run"
    shutil.copytree(straight, workdir)
    _damage(workdir / "checkpoints" / "6")
    (workdir / "final_metrics.json").unlink()
    killed_run({"op": "train", "root": str(tiny_demo), "workdir": str(workdir),
                "overrides": OVERRIDES, "kill": kill})
    config = tiny_config("VA", tiny_demo, **OVERRIDES)
    train.train_and_evaluate(config, workdir)
    assert (workdir / "checkpoints" / "damaged-6").is_dir()
    assert_same_run(config, workdir, straight)


# --- evaluate --------------------------------------------------------------------------------

def _listing(directory: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def evaluated(tiny_demo, straight, tmp_path_factory) -> pathlib.Path:
    """The predictions of an uninterrupted evaluate of the straight run."""
    out = tmp_path_factory.mktemp("evaluated") / "predictions"
    evaluation.evaluate(tiny_config("VA", tiny_demo, **OVERRIDES), straight, out_dir=out)
    return out


@pytest.mark.parametrize("kill", [
    call_of("abaw_jax.submission", "write_submission", when="before"),
    rename_at(r"/val/VA\.txt$", "before"),
    rename_at(r"/val/VA\.txt$", "after"),
], ids=["before", "during", "after"])
def test_killed_evaluate_then_rerun_equals_uninterrupted(tiny_demo, straight, evaluated,
                                                         tmp_path, kill):
    config = tiny_config("VA", tiny_demo, **OVERRIDES)
    out = tmp_path / "predictions"
    killed_run({"op": "evaluate", "root": str(tiny_demo), "workdir": str(straight),
                "out": str(out), "overrides": OVERRIDES, "kill": kill})
    evaluation.evaluate(config, straight, out_dir=out)
    got, want = _listing(out), _listing(evaluated)
    assert sorted(got) == sorted(want)   # no temporary file left behind either
    for name in want:
        if name.endswith(".npz"):
            with np.load(out / name) as a, np.load(evaluated / name) as b:
                assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
        else:
            assert got[name] == want[name], name


# --- extract ---------------------------------------------------------------------------------

EXTRACT = {"batch_size": 4, "num_threads": 1, "progress": False}


@pytest.fixture(scope="module")
def frame_folders(tmp_path_factory) -> pathlib.Path:
    """Four short videos of random 32-px frames (one with gaps)."""
    from PIL import Image
    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for name, numbers in (("vid_a", [1, 2, 3, 4, 5]), ("vid_b", [2, 3, 6, 7]),
                          ("vid_c", [1, 2, 3]), ("vid_d", [1, 2, 3, 4, 5, 6, 7])):
        (root / name).mkdir()
        for n in numbers:
            image = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            Image.fromarray(image).resize((32, 32)).save(root / name / f"{n:05d}.png")
    return root


def _extract_config(frames: pathlib.Path):
    c = config_lib.load_config_file(ROOT / "configs" / "extract_vit.py", "demo")
    c.frames = str(frames)
    for k, v in EXTRACT.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def extracted(frame_folders, tmp_path_factory) -> pathlib.Path:
    """An uninterrupted extraction of `frame_folders`."""
    out = tmp_path_factory.mktemp("extracted") / "store"
    extract.extract(_extract_config(frame_folders), out)
    return out


@pytest.mark.parametrize("kill", [
    call_of("abaw_jax.data.features", "FeatureStoreWriter.write", nth=2, when="before"),
    # The second video's rows are on disk (fsynced), its index line is not.
    call_of("abaw_jax.data.features", "_fsync", nth=5, when="after"),
    call_of("abaw_jax.data.features", "FeatureStoreWriter.write", nth=2, when="after"),
    rename_at(r"/store/meta\.json$", "before"),
], ids=["before", "during", "after", "meta_before_rename"])
def test_killed_extract_then_rerun_equals_uninterrupted(frame_folders, extracted, tmp_path,
                                                        kill):
    out = tmp_path / "store"
    overrides = dict(EXTRACT, frames=str(frame_folders))
    killed_run({"op": "extract", "config": str(ROOT / "configs" / "extract_vit.py"),
                "workdir": str(out), "overrides": overrides, "kill": kill})
    extract.extract(_extract_config(frame_folders), out)
    got, want = features_lib.FeatureStore(out), features_lib.FeatureStore(extracted)
    assert got.videos == want.videos
    for v in want.videos:
        np.testing.assert_array_equal(np.asarray(got.read(v)), np.asarray(want.read(v)))
        np.testing.assert_array_equal(got.present(v), want.present(v))
