"""Faults in training and evaluation: exact resume, preemption, interrupted saves, non-finite
steps, bad inputs at the command line, device-count changes and atomic output files."""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from abaw_jax import checkpoints, evaluation, files, loop, runs, sharding, train, training, writers
from abaw_jax.data import affwild2
from abaw_jax.data.features import FeatureStore
from conftest import ROOT, tiny_config


def read_metrics(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def losses_by_step(workdir: pathlib.Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def restore_state(config, workdir, which="latest"):
    """(step, state) of a workdir's checkpoint, restored onto this process's devices."""
    data = runs.resolve_data(config)
    setup = runs.setup_model(config, data.feature_dims, sharding.make_mesh(config.mesh_data))
    return checkpoints.restore_params(workdir, setup.abstract_state, which)


def flat(tree) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def assert_trees_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def committed(directory: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


# Steps per epoch on the tiny demo: its train windows / the global batch.
BATCH = 32


def test_steps_per_epoch_counts_the_train_windows(tiny_demo):
    """A run's epoch (`runs.steps_per_epoch`) is its train windows over the global batch,
    checked against a count from the videos' lengths: a video of n frames has ceil(n / L)
    non-overlapping windows of L, the last one ending at its last frame. On the tiny demo it is
    one step, so the resume tests below (6 steps) cross epoch boundaries."""
    config = tiny_config("VA", tiny_demo, batch_size=BATCH)
    videos = affwild2.load_split(tiny_demo, "VA", "train")
    windows = sum(math.ceil(v.num_frames / config.data.seq_len) for v in videos)
    assert runs.steps_per_epoch(config, videos) == max(1, windows // BATCH)
    assert 2 * runs.steps_per_epoch(config, videos) < 6
    config.batch_size = 4
    assert runs.steps_per_epoch(config, videos) == windows // 4 > 2


class _SigtermAt(writers.MetricWriter):
    """A metric writer that sends this process a SIGTERM once step `at` is logged."""

    at = 0

    def write(self, step, scalars):
        super().write(step, scalars)
        if step == self.at and "train/loss" in scalars:
            signal.raise_signal(signal.SIGTERM)


def test_resume_is_bit_exact(tiny_demo, tmp_path, monkeypatch, capsys):
    # Checkpoints every step in the straight run: async saves overlap the donated updates.
    config = tiny_config("VA", tiny_demo, batch_size=BATCH, total_steps=6, log_every=1,
                         eval_every=100, checkpoint_every=1)
    handler_before = signal.getsignal(signal.SIGTERM)
    train.train_and_evaluate(config, tmp_path / "straight")

    monkeypatch.setattr(writers, "MetricWriter", type("W", (_SigtermAt,), {"at": 3}))
    stopped = train.train_and_evaluate(config, tmp_path / "resumed")
    assert stopped == {}
    assert "Preempted: saved step 3" in capsys.readouterr().err
    assert committed(tmp_path / "resumed" / "checkpoints") == [2, 3]   # keep_checkpoints=2
    monkeypatch.undo()
    train.train_and_evaluate(config, tmp_path / "resumed")
    assert "Resuming from step 3" in capsys.readouterr().err

    straight, resumed = losses_by_step(tmp_path / "straight"), losses_by_step(tmp_path / "resumed")
    assert sorted(straight) == list(range(1, 7))
    assert resumed == straight   # exact: same data order, rng, schedule and optimizer state
    step_a, a = restore_state(config, tmp_path / "straight")
    step_b, b = restore_state(config, tmp_path / "resumed")
    assert step_a == step_b == 6
    assert_trees_equal(flat(a), flat(b))
    # Each run puts back the SIGTERM handler it found (one set outside Python reads as None and
    # comes back as the default action).
    after = signal.getsignal(signal.SIGTERM)
    assert after is handler_before or (handler_before is None and after is signal.SIG_DFL)


# Command-line runs: the tiny config of conftest.tiny_config, as --config.<key> flags.
TINY_FLAGS = {
    "data.seq_len": 16, "data.num_threads": 1, "model.d_model": 16, "model.num_heads": 2,
    "model.mlp_dim": 32, "model.num_layers": 1, "batch_size": 8, "total_steps": 6,
    "optimizer.warmup_steps": 2, "log_every": 2, "eval_every": 3, "checkpoint_every": 3,
    "progress": False,
}


def cli(module: str, root, workdir, **overrides) -> list[str]:
    flags = dict(TINY_FLAGS, **{"data.root": str(root)}, **overrides)
    return [sys.executable, "-m", module, "--config", f"{ROOT / 'configs' / 'va.py'}:demo",
            "--workdir", str(workdir), *(f"--config.{k}={v}" for k, v in flags.items())]


def cli_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return dict(env, JAX_PLATFORMS="cpu")


def test_sigterm_saves_and_rerun_matches_uninterrupted(tiny_demo, tmp_path):
    steps = 80
    overrides = dict(total_steps=steps, log_every=1, eval_every=1000, checkpoint_every=1000)
    workdir = tmp_path / "preempted"
    proc = subprocess.Popen(cli("abaw_jax.train", tiny_demo, workdir, **overrides, progress=True),
                            cwd=ROOT, env=cli_env(), stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("step 3/"):
                proc.send_signal(signal.SIGTERM)
                break
        rest = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(seen) + rest
    assert proc.returncode == 0, err[-3000:]
    preempted = [l for l in err.splitlines() if l.startswith("Preempted: saved step ")]
    assert len(preempted) == 1, err[-3000:]
    saved = int(preempted[0].split()[3].rstrip(";"))
    assert 3 <= saved < steps
    assert committed(workdir / "checkpoints") == [saved]
    assert not (workdir / "final_metrics.json").exists()

    r = subprocess.run(cli("abaw_jax.train", tiny_demo, workdir, **overrides), cwd=ROOT,
                       env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Resuming from step {saved}" in r.stderr
    assert json.loads((workdir / "final_metrics.json").read_text())["step"] == steps

    config = tiny_config("VA", tiny_demo, **overrides)
    train.train_and_evaluate(config, tmp_path / "straight")
    assert losses_by_step(workdir) == losses_by_step(tmp_path / "straight")
    assert_trees_equal(flat(restore_state(config, workdir)[1]),
                       flat(restore_state(config, tmp_path / "straight")[1]))


def test_interrupted_saves_are_ignored_and_removed(tiny_demo, tmp_path, capsys):
    train.train_and_evaluate(tiny_config("VA", tiny_demo, total_steps=3), tmp_path)
    ckpts, best = tmp_path / "checkpoints", tmp_path / "best"
    assert committed(ckpts) == [3] and committed(best) == [3]
    # A step directory with its data but no commit file (a save killed before it committed),
    # and orbax temporary directories of saves killed earlier still.
    shutil.copytree(ckpts / "3", ckpts / "5")
    (ckpts / "5" / checkpoints.COMMIT_FILE).unlink()
    (ckpts / "6.orbax-checkpoint-tmp-1234567").mkdir()
    (ckpts / "6.orbax-checkpoint-tmp-1234567" / "state").mkdir()
    shutil.copytree(best / "3", best / "4")
    (best / "4" / checkpoints.COMMIT_FILE).unlink()
    (best / "5.orbax-checkpoint-tmp-99").mkdir()

    # Evaluation reads without deleting, and skips what was never committed.
    config = tiny_config("VA", tiny_demo, total_steps=6)
    assert restore_state(config, tmp_path, "latest")[0] == 3
    assert restore_state(config, tmp_path, "best")[0] == 3
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 5"):
        restore_state(config, tmp_path, "5")
    assert (ckpts / "5").exists()

    capsys.readouterr()
    train.train_and_evaluate(config, tmp_path)
    err = capsys.readouterr().err
    assert "Resuming from step 3" in err
    assert f"Removing incomplete checkpoint {ckpts / '5'}" in err
    assert sorted(p.name for p in ckpts.iterdir()) == ["3", "6"]
    assert all(p.name.isdigit() for p in best.iterdir())
    assert losses_by_step(tmp_path).keys() == {2, 3, 4, 6}


def test_resume_reevaluates_a_step_whose_best_state_was_kept(tiny_demo, tmp_path):
    # Evaluated (and the best kept) at step 5, the checkpoint of step 5 lost: the resumed run
    # starts at 4 and evaluates step 5 again.
    config = tiny_config("VA", tiny_demo, total_steps=5, eval_every=5, checkpoint_every=4)
    train.train_and_evaluate(config, tmp_path)
    shutil.rmtree(tmp_path / "checkpoints" / "5")
    assert committed(tmp_path / "best") == [5]
    train.train_and_evaluate(config, tmp_path)
    assert committed(tmp_path / "checkpoints") == [4, 5]
    assert committed(tmp_path / "best") == [5]


def _nan_grad_loss(real_make_loss):
    """A loss whose value is the real one but whose gradient is NaN (d sqrt(u)/du at u = 0)."""

    def make(config, videos):
        real = real_make_loss(config, videos)
        return lambda out, labels, valid: (real(out, labels, valid)
                                           + jnp.sum(jnp.sqrt(out - out)))

    return make


def test_nan_gradient_with_finite_loss_stops(tiny_demo, tmp_path, monkeypatch):
    config = tiny_config("VA", tiny_demo, total_steps=6, log_every=1)
    train.train_and_evaluate(tiny_config("VA", tiny_demo, total_steps=3, log_every=1), tmp_path)
    monkeypatch.setattr(training, "make_loss", _nan_grad_loss(training.make_loss))
    with pytest.raises(loop.NonFiniteLossError, match=r"grad_norm \(nan\) at step 4"):
        train.train_and_evaluate(config, tmp_path)
    assert committed(tmp_path / "checkpoints") == [3]
    # The loss itself stayed finite: only the gradient check caught it.
    assert np.isfinite(losses_by_step(tmp_path)[3])
    for which in ("latest", "best"):
        step, state = restore_state(config, tmp_path, which)
        assert step == 3
        assert all(np.isfinite(x).all() for x in flat(state).values() if x.dtype.kind == "f")


def test_nan_step_is_not_offered_as_best(tiny_demo, tmp_path, monkeypatch):
    # Evaluation between logging points: the pending steps are checked before the state is kept.
    monkeypatch.setattr(training, "make_loss", _nan_grad_loss(training.make_loss))
    config = tiny_config("VA", tiny_demo, total_steps=6, log_every=5, eval_every=1,
                         checkpoint_every=5)
    with pytest.raises(loop.NonFiniteLossError, match="at step 1"):
        train.train_and_evaluate(config, tmp_path)
    assert committed(tmp_path / "best") == []
    assert committed(tmp_path / "checkpoints") == []


def _copy_demo(tiny_demo, tmp_path) -> pathlib.Path:
    root = tmp_path / "affwild2"
    shutil.copytree(tiny_demo, root)
    return root


def _break_missing_shard(root):
    (root / "features" / "vit" / "shard-p0-00000.bin").unlink()
    return "shard-p0-00000.bin is missing"


def _break_frame_count(root):
    # One video's annotation loses its last frames: the store has more frames than the labels.
    path = sorted(affwild2.annotation_dir(root, "VA").glob("Train_Set/*.txt"))[0]
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-3]) + "\n")
    return f"video {path.stem!r} has {len(lines) - 1} frames in the store but {len(lines) - 4}"


def _break_nan_features(root):
    # Every row of one train video: whichever of its windows a step reads, and whatever the
    # random frame masking hides, the step sees NaN.
    store = FeatureStore(root / "features" / "vit")
    video = affwild2.load_split(root, "VA", "train")[0].name
    frame = int(np.argmax(store.present(video)))
    entry = [json.loads(l) for l in (store.path / "index-p0.jsonl").read_text().splitlines()
             if json.loads(l)["video"] == video][0]
    rows = np.memmap(store.path / entry["shard"], dtype=store.dtype, mode="r+")
    rows = rows.reshape(-1, store.dim)
    rows[entry["offset"] : entry["offset"] + entry["length"]] = np.nan
    rows.flush()
    return f"video {video!r} frame index {frame} holds NaN/inf features"


def _break_annotation_line(root):
    path = sorted(affwild2.annotation_dir(root, "VA").glob("Train_Set/*.txt"))[1]
    lines = path.read_text().splitlines()
    lines[5] = "0.1;banana"
    path.write_text("\n".join(lines) + "\n")
    return f"{path.name}:6:"   # 1-based line 6


@pytest.mark.parametrize("breaks, file", [
    (_break_missing_shard, "features/vit"),
    (_break_frame_count, "features/vit"),
    (_break_nan_features, "features/vit"),
    (_break_annotation_line, "Train_Set/"),
], ids=["missing_shard", "frame_count", "nan_features", "annotation_line"])
def test_cli_bad_input_is_one_line_error(tiny_demo, tmp_path, breaks, file):
    root = _copy_demo(tiny_demo, tmp_path)
    detail = breaks(root)
    # Three steps of 32 windows read a whole epoch of the tiny demo (see test_epoch_is_a_few_steps).
    r = subprocess.run(cli("abaw_jax.train", root, tmp_path / "run", log_every=1, batch_size=BATCH,
                           total_steps=3), cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and file in last and detail in last, last
    assert str(root) in last


def test_cli_keeps_traceback_of_unexpected_errors(tiny_demo, tmp_path):
    # A directory where the config file is expected: not an input error of the project.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").mkdir()
    r = subprocess.run(cli("abaw_jax.train", tiny_demo, tmp_path / "run"), cwd=ROOT,
                       env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "Traceback" in r.stderr and "IsADirectoryError" in r.stderr


_ON_DEVICES = """
import json, sys
sys.path.insert(0, {tests!r})
import jax, numpy as np
from conftest import tiny_config
from abaw_jax import checkpoints, runs, sharding, train
c = tiny_config("VA", {root!r}, total_steps={steps}, log_every=1, eval_every=3, checkpoint_every=3)
if {dump!r}:
    data = runs.resolve_data(c)
    setup = runs.setup_model(c, data.feature_dims, sharding.make_mesh(-1))
    step, state = checkpoints.restore_params({dump!r}, setup.abstract_state, "latest")
    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    assert all(len(x.sharding.device_set) == jax.device_count() for _, x in leaves)
    np.savez({dump!r} + ".npz", **{{jax.tree_util.keystr(k): np.asarray(x) for k, x in leaves}})
train.train_and_evaluate(c, {workdir!r})
print(json.dumps({{"devices": jax.device_count()}}))
"""


def _run_on(devices: int, root, workdir, steps: int, dump: str = "") -> None:
    env = dict(cli_env(), XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    code = _ON_DEVICES.format(tests=str(ROOT / "tests"), root=str(root), workdir=str(workdir),
                              steps=steps, dump=dump)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["devices"] == devices


def test_checkpoint_moves_between_device_counts(tiny_demo, tmp_path):
    w8, w4, w1 = tmp_path / "w8", tmp_path / "w4", tmp_path / "w1"
    _run_on(8, tiny_demo, w8, steps=3)
    assert committed(w8 / "checkpoints") == [3]
    shutil.copytree(w8, w4)
    shutil.copytree(w8, w1)
    # On 4 devices: restore the 8-device checkpoint (dumped for comparison), then resume.
    _run_on(4, tiny_demo, w4, steps=6, dump=str(w8))

    config = tiny_config("VA", tiny_demo, total_steps=6, log_every=1, eval_every=3,
                         checkpoint_every=3)
    assert jax.device_count() == 1
    _, on_one = restore_state(config, w8)
    on_four = dict(np.load(str(w8) + ".npz"))
    assert_trees_equal(flat(on_one), on_four)

    train.train_and_evaluate(config, w1)
    four, one = losses_by_step(w4), losses_by_step(w1)
    assert sorted(four) == sorted(one) == list(range(1, 7))
    np.testing.assert_allclose([four[s] for s in (4, 5, 6)], [one[s] for s in (4, 5, 6)],
                               rtol=1e-5, atol=1e-6)

    # Evaluation on 1 device of a run trained on 8 then 4 devices.
    results = evaluation.evaluate(config, w4, splits=("val",))
    best = max(r["val/va_ccc"] for r in read_metrics(w4) if "val/va_ccc" in r)
    assert results["val"]["score"] == pytest.approx(best, abs=1e-5)


def test_write_atomic_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "out" / "metrics.json"
    files.write_atomic(path, '{"old": 1}\n')

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        files.write_json(path, {"new": 2})
    monkeypatch.undo()
    assert path.read_text() == '{"old": 1}\n'
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_outputs_npz_is_replaced_whole(tmp_path, monkeypatch):
    path = tmp_path / "VA_outputs.npz"
    evaluation.save_outputs(path, ["a"], [np.ones((3, 2), np.float32)])

    real_savez = np.savez

    def savez_then_crash(file, **arrays):
        real_savez(file, **arrays)
        raise KeyboardInterrupt   # killed after the data was serialised, before the rename

    monkeypatch.setattr(np, "savez", savez_then_crash)
    with pytest.raises(KeyboardInterrupt):
        evaluation.save_outputs(path, ["a", "b"], [np.zeros((3, 2)), np.zeros((4, 2))])
    monkeypatch.undo()
    with np.load(path) as saved:
        assert saved.files == ["a"] and np.array_equal(saved["a"], np.ones((3, 2)))
    assert [p.name for p in tmp_path.iterdir()] == ["VA_outputs.npz"]
