"""End to end: train, resume, evaluate and submission files on a tiny demo dataset."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from abaw_jax import evaluation, loop, metrics, rngs, submission, train, training
from abaw_jax.data import affwild2
from abaw_jax.data.features import FeatureStore
from conftest import ROOT, tiny_config


def read_metrics(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("task", ["VA", "EXPR", "AU"])
def test_train_then_evaluate(tiny_demo, tmp_path, task):
    config = tiny_config(task, tiny_demo)
    result = train.train_and_evaluate(config, tmp_path)
    key = f"val/{metrics.score_name(task)}"
    assert np.isfinite(result[key])
    assert "val/score" not in result
    rows = read_metrics(tmp_path)
    losses = [r for r in rows if "train/loss" in r]
    # Logged every 2 steps, and at checkpoints (every 3), whose state is checked finite first.
    assert [r["step"] for r in losses] == [2, 3, 4, 6]
    assert all(np.isfinite(r["train/loss"]) for r in losses)
    assert [r["step"] for r in rows if key in r] == [3, 6]
    assert not any("val/score" in r for r in rows)
    assert json.loads((tmp_path / "final_metrics.json").read_text())[key] == result[key]
    assert (tmp_path / "config.json").exists()
    # TensorBoard's curve carries the metric's name (the tag is stored verbatim in the event).
    events = [p for p in (tmp_path / "tensorboard").iterdir() if p.name.startswith("events")]
    assert events and key.encode() in b"".join(p.read_bytes() for p in events)

    results = evaluation.evaluate(config, tmp_path)
    val = affwild2.load_split(tiny_demo, task, "val")
    # The submission holds one row per frame of every validation video, faceless frames included.
    submission.check_submission(tmp_path / "predictions" / "val" / f"{task}.txt", task,
                                {v.name: v.num_frames for v in val})
    store = FeatureStore(tiny_demo / "features" / "vit")
    test_names = affwild2.read_test_list(affwild2.test_list_path(tiny_demo, task))
    submission.check_submission(tmp_path / "predictions" / "test" / f"{task}.txt", task,
                                {n: store.num_frames(n) for n in test_names})
    # The best checkpoint's score is the best validation score seen in training.
    best = max(r[key] for r in rows if key in r)
    assert results["val"]["score"] == pytest.approx(best, abs=1e-5)
    assert results["val"][metrics.score_name(task)] == results["val"]["score"]
    outputs = np.load(tmp_path / "predictions" / "val" / f"{task}_outputs.npz")
    assert sorted(outputs.files) == sorted(v.name for v in val)


def test_rerun_resumes_at_saved_step(tiny_demo, tmp_path, capsys):
    train.train_and_evaluate(tiny_config("VA", tiny_demo, total_steps=3), tmp_path)
    capsys.readouterr()
    train.train_and_evaluate(tiny_config("VA", tiny_demo, total_steps=6), tmp_path)
    assert "Resuming from step 3" in capsys.readouterr().err
    steps = [r["step"] for r in read_metrics(tmp_path) if "train/loss" in r]
    assert steps == [2, 3, 4, 6]   # the second run starts after step 3, it does not redo it


_RUN_LOSSES = """
import json, sys
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from abaw_jax import train
import jax
c = tiny_config("VA", {root!r}, total_steps=4, log_every=1, eval_every=4, checkpoint_every=4)
train.train_and_evaluate(c, {workdir!r})
print(json.dumps({{"devices": jax.device_count()}}))
"""


def _losses_on(devices: int, root, workdir) -> list[float]:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    code = _RUN_LOSSES.format(tests=str(ROOT / "tests"), root=str(root), workdir=str(workdir))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["devices"] == devices
    return [row["train/loss"] for row in read_metrics(pathlib.Path(workdir)) if "train/loss" in row]


def test_eight_devices_match_one(tiny_demo, tmp_path):
    one = _losses_on(1, tiny_demo, tmp_path / "one")
    eight = _losses_on(8, tiny_demo, tmp_path / "eight")
    assert len(one) == 4
    np.testing.assert_allclose(eight, one, rtol=1e-5, atol=1e-6)


def _nan_loss(config, videos):
    import jax.numpy as jnp
    return lambda outputs, labels, valid: jnp.nan * jnp.sum(outputs)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tiny_demo, tmp_path, monkeypatch):
    train.train_and_evaluate(tiny_config("VA", tiny_demo, total_steps=3), tmp_path)
    monkeypatch.setattr(training, "make_loss", _nan_loss)
    with pytest.raises(loop.NonFiniteLossError, match="at step 4"):
        train.train_and_evaluate(tiny_config("VA", tiny_demo, total_steps=6), tmp_path)
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [3]


def test_skip_nonfinite_counts_skipped_updates(tiny_demo, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "make_loss", _nan_loss)
    train.train_and_evaluate(tiny_config("VA", tiny_demo, total_steps=4, skip_nonfinite=True),
                             tmp_path)
    rows = [r for r in read_metrics(tmp_path) if "train/skipped_updates" in r]
    assert rows[-1]["step"] == 4 and rows[-1]["train/skipped_updates"] == 4


def test_rng_impl_changes_step_randomness_not_initialisation():
    init_tf, train_tf = rngs.make_rngs(7, "threefry2x32")
    init_rbg, train_rbg = rngs.make_rngs(7, "rbg")
    # Parameters are drawn from the same threefry key whatever config.rng_impl says.
    np.testing.assert_array_equal(jax.random.key_data(init_tf), jax.random.key_data(init_rbg))
    assert "rbg" in str(jax.random.key_impl(train_rbg))
    assert "threefry" in str(jax.random.key_impl(train_tf))
    # Deterministic per seed, different across seeds.
    np.testing.assert_array_equal(jax.random.key_data(rngs.make_rngs(7, "rbg")[1]),
                                  jax.random.key_data(train_rbg))
    a = jax.random.uniform(train_rbg, (16,))
    b = jax.random.uniform(rngs.make_rngs(8, "rbg")[1], (16,))
    assert not np.allclose(np.asarray(a), np.asarray(b))
