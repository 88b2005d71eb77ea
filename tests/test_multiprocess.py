"""Two processes on this machine (jax.distributed on localhost, gloo CPU collectives) train like
one process with the same global batch, each reading only its own rows, and stop together on a
preemption notice sent to one of them."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import ROOT

_DRIVER = """
import json, sys
sys.path.insert(0, {tests!r})
import numpy as np
from abaw_jax import sharding, train
from abaw_jax.data import pipeline
coordinator, count, index = {coordinator!r}, {count}, int(sys.argv[1])
if count > 1:
    sharding.initialize_distributed(coordinator, count, index)
import jax
from conftest import tiny_config

loaded = []
real_load = pipeline.WindowReader.load

def load(self, windows, rows=None, **kwargs):
    if rows is None:   # training batches; evaluation pads to `rows`
        loaded.append(np.asarray(windows).tolist())
    return real_load(self, windows, rows, **kwargs)

pipeline.WindowReader.load = load
c = tiny_config("VA", {root!r}, batch_size=16, log_every=1, progress=index == 0, **{overrides!r})
train.train_and_evaluate(c, {workdir!r})
if {causal!r}:
    # System A's default readout, each frame from the window ending at it, over both processes.
    from abaw_jax import evaluation
    c.data.eval_readout = "last"
    evaluation.evaluate(c, {workdir!r}, checkpoint="latest", splits=("val",),
                        out_dir={workdir!r} + "/causal")
with open({workdir!r} + f"/loaded-{{index}}.json", "w") as f:
    json.dump({{"loaded": loaded, "processes": jax.process_count(),
               "devices": jax.device_count()}}, f)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(count: int, root, workdir: pathlib.Path, causal: bool = False,
          **overrides) -> list[subprocess.Popen]:
    """`count` processes of one run (one process: no jax.distributed); `causal`: then evaluate
    the latest checkpoint with causal windows into `<workdir>/causal`."""
    workdir.mkdir(parents=True, exist_ok=True)
    code = _DRIVER.format(tests=str(ROOT / "tests"), coordinator=f"127.0.0.1:{free_port()}",
                          count=count, root=str(root), workdir=str(workdir), overrides=overrides,
                          causal=causal)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu")
    return [subprocess.Popen([sys.executable, "-c", code, str(i)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(count)]


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    """Waits for every process (one shared deadline); on failure or timeout, the message holds
    the stderr tail of each, so a hang in one process shows what the other was doing."""
    errs = [""] * len(procs)

    def drain(i):
        errs[i] = procs[i].communicate()[1] or ""

    threads = [threading.Thread(target=drain, args=(i,), daemon=True) for i in range(len(procs))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = [i for i, p in enumerate(procs) if p.poll() is None]
    for i in hung:
        procs[i].kill()
    for t in threads:
        t.join(10)
    report = "\n".join(f"--- process {i} (rc {p.returncode}) ---\n{errs[i][-3000:]}"
                        for i, p in enumerate(procs))
    assert not hung, f"processes {hung} still running after {timeout} s\n{report}"
    assert all(p.returncode == 0 for p in procs), report
    return errs


def train_losses(workdir: pathlib.Path) -> dict[int, float]:
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_two_processes_train_like_one(tiny_demo, tmp_path):
    # One warmup step: the learning rates of steps 0 and 1 do not depend on total_steps.
    overrides = {"total_steps": 4, "eval_every": 2, "checkpoint_every": 2,
                 "optimizer.warmup_steps": 1}
    finish(start(1, tiny_demo, tmp_path / "one", causal=True, **overrides))
    finish(start(2, tiny_demo, tmp_path / "two", causal=True, **overrides))

    one = json.loads((tmp_path / "one" / "loaded-0.json").read_text())
    two = [json.loads((tmp_path / "two" / f"loaded-{i}.json").read_text()) for i in (0, 1)]
    assert one["processes"] == 1 and [t["processes"] for t in two] == [2, 2]
    assert [t["devices"] for t in two] == [2, 2]
    # Each process loads only its half of every global batch: rows [0, 8) and [8, 16).
    for step in range(4):
        rows = one["loaded"][step]
        assert len(rows) == 16
        assert two[0]["loaded"][step] == rows[:8]
        assert two[1]["loaded"][step] == rows[8:]

    # Same global batches, same losses (the cross-process sums may round differently).
    a, b = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5, atol=1e-6)
    # Causal evaluation: two processes split each batch's windows and predict what one does.
    causal = [np.load(tmp_path / run / "causal" / "val" / "VA_outputs.npz")
              for run in ("one", "two")]
    assert sorted(causal[0].files) == sorted(causal[1].files) and causal[0].files
    for name in causal[0].files:
        np.testing.assert_allclose(causal[1][name], causal[0][name], rtol=1e-4, atol=1e-5)
    # Only process 0 writes run files; both processes wrote their part of the checkpoints.
    step4 = tmp_path / "two" / "checkpoints" / "4"
    assert (step4 / "state" / "ocdbt.process_0").exists()
    assert (step4 / "state" / "ocdbt.process_1").exists()
    assert sorted(p.name for p in (step4 / "data").glob("process_*")) == [
        "process_0-of-2.json", "process_1-of-2.json"]

    # One process takes over the two-process run at step 2: the iterator states of the two
    # are the same global position, so it reads what the single-process run read.
    shutil.rmtree(step4)
    (tmp_path / "two" / "metrics.jsonl").unlink()
    finish(start(1, tiny_demo, tmp_path / "two", **overrides))
    c = train_losses(tmp_path / "two")
    assert sorted(c) == [3, 4]
    np.testing.assert_allclose([c[3], c[4]], [a[3], a[4]], rtol=1e-5, atol=1e-6)


def test_sigterm_to_one_process_stops_both_at_one_step(tiny_demo, tmp_path):
    procs = start(2, tiny_demo, tmp_path / "run", total_steps=300, eval_every=1000,
                  checkpoint_every=1000)
    lines = []
    try:
        for line in procs[0].stderr:
            lines.append(line)
            if line.startswith("step 3/"):
                # The notice reaches process 1 only; JAX's preemption service tells process 0.
                procs[1].send_signal(signal.SIGTERM)
                break
        else:
            pytest.fail("process 0 ended before step 3:\n" + "".join(lines)[-3000:])
    finally:
        errs = finish(procs, timeout=180)
    err0 = "".join(lines) + errs[0]
    saved = [l for l in err0.splitlines() if l.startswith("Preempted: saved step ")]
    assert len(saved) == 1, err0[-3000:]
    step = int(saved[0].split()[3].rstrip(";"))
    assert 3 <= step < 300
    ckpt = tmp_path / "run" / "checkpoints"
    assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == [step]
    assert sorted(p.name for p in (ckpt / str(step) / "data").glob("process_*")) == [
        "process_0-of-2.json", "process_1-of-2.json"]
