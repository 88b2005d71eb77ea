"""The training loop that `train` (temporal models) and `pretrain` (MAE, fine-tuning) both drive.

A command builds a `Run` from its config (`training.build_run`, `pretrain.build_run`) and hands
it to `execute`, which opens the checkpoints, resumes or starts the state, drives the `Loop` and
writes `final_metrics.json`. One loop owns what every run needs around its jitted update step:
- preemption: SIGTERM (single process) or JAX's preemption service (several processes) saves a
  checkpoint at the current step and returns; re-running the command resumes there;
- the metric buffer: step metrics stay on the device and are fetched every `log_every` steps,
  so the host never waits on the step it just dispatched;
- the non-finite policy: a NaN or infinite loss or gradient stops the run naming the step, and
  no checkpoint after it is written (`skip_nonfinite` runs count skipped updates instead);
- the checkpoint and evaluation cadence, the best checkpoint by the validation score, and early
  stopping on that score (`patience` evaluations without improvement; 0 disables it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from abaw_jax import checkpoints, files, workdirs, writers

EARLY_STOPPING_FILE = "early_stopping.json"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient; the message names the step."""


class Sigterm:
    """A context in which SIGTERM sets `requested` instead of killing the process.

    The previous handler is put back on exit (a handler installed outside Python reads as None
    and cannot be put back: the default action is restored then). With several processes the
    flag of one would not stop the others, so the handler stays JAX's: `jax.distributed` starts a
    preemption service that catches SIGTERM and agrees on a step at which every process saves.
    Outside the main thread (some test runners) nothing is installed.
    """

    def __init__(self, multiprocess_aware: bool = True):
        self.requested = False
        self._installed = False
        self._previous: Any = None
        self._skip = multiprocess_aware and jax.process_count() > 1

    def _handler(self, signum, frame) -> None:
        self.requested = True

    def __enter__(self) -> "Sigterm":
        if not self._skip:
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handler)
                self._installed = True
            except ValueError:   # not the main thread
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            previous = self._previous
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
            self._installed = False


@dataclasses.dataclass
class Evaluation:
    """What an evaluation returns to the loop: the score that picks the best checkpoint (higher is
    better), the values to log (keys without the "val/" prefix) and the line to print."""
    score: float
    values: dict[str, float]
    line: str = ""
    # Whether this evaluation counts as an improvement for early stopping, when the evaluation
    # decides it itself (per-output best checkpoints: any output's gain, `best_parts.py`); None:
    # the score against the best one so far.
    improved: bool | None = None


@dataclasses.dataclass
class LoopResult:
    state: Any
    step: int
    last_eval: dict
    preempted: bool = False
    stopped_early: bool = False


@dataclasses.dataclass
class Loop:
    """The cadence and policies of a run (see the module docstring)."""
    workdir: pathlib.Path
    total_steps: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    ckpt: checkpoints.RunCheckpoints
    writer: writers.MetricWriter
    progress: writers.Progress
    skip_nonfinite: bool = False
    patience: int = 0
    min_delta: float = 0.0
    check_keys: tuple[str, ...] = ("loss", "grad_norm")
    # Appended to the non-finite error (e.g. the first NaN feature of the data); called lazily.
    nonfinite_hint: Callable[[], str] = lambda: ""
    # Progress and perf names: "frames" for windows of frames, "images" for image batches.
    unit: str = "frames"

    def run(self, state: Any, step: int, train_iter: Iterator, train_step: Callable,
            to_batch: Callable[[dict], dict], evaluate: Callable[[Any, int], Evaluation] | None,
            ) -> LoopResult:
        """Steps from `step` to `total_steps`; returns the final state and last evaluation."""
        is_main = jax.process_index() == 0
        pending: list[tuple[int, Any]] = []
        last_eval: dict = {}
        stopper = _EarlyStopping(self.workdir, self.patience, self.min_delta)

        def flush() -> None:
            """Fetches pending step metrics, stops on non-finite values, logs their mean."""
            if not pending:
                return
            fetched = jax.device_get([m for _, m in pending])
            for (s, _), m in zip(pending, fetched):
                # A finite loss can still come with NaN gradients (and so NaN parameters).
                bad = [k for k in self.check_keys if k in m and not np.isfinite(m[k])]
                if bad and not self.skip_nonfinite:
                    self.ckpt.wait()
                    what = " and ".join(f"{k} ({m[k]})" for k in bad)
                    raise NonFiniteLossError(
                        f"non-finite training {what} at step {s}; "
                        f"{checkpoints.intact_note(self.ckpt)}{self.nonfinite_hint()}")
            last = pending[-1][0]
            # Losses are averaged over the logging interval; the schedule and counters are current.
            mean = {f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
            for k in ("lr", "skipped_updates"):
                if k in fetched[-1]:
                    mean[f"train/{k}"] = float(fetched[-1][k])
            stats = self.progress.update(last, f"loss {mean['train/loss']:.4f}")
            mean["perf/steps_per_sec"] = stats["steps_per_sec"]
            mean[f"perf/{self.unit}_per_sec"] = stats["frames_per_sec"]
            self.writer.write(last, mean)
            pending.clear()

        def evaluate_now(s: int) -> dict:
            flush()   # the state offered as the best must have followed finite steps
            result = evaluate(state, s)
            values = {f"val/{k}": v for k, v in result.values.items()}
            self.writer.write(s, values)
            if is_main:
                print(f"eval at step {s}: {result.line or _line(values)}", file=sys.stderr,
                      flush=True)
            self.ckpt.save_best(s, state, result.score)
            stopper.update(s, result.score, result.improved)
            return values

        with Sigterm() as stop:
            while step < self.total_steps:
                batch = to_batch(next(train_iter))
                state, stats = train_step(state, batch)
                step += 1
                pending.append((step, stats))
                final = step == self.total_steps
                if step % self.log_every == 0 or final or stop.requested:
                    flush()
                preempted = stop.requested or self.ckpt.latest.reached_preemption(step)
                evaluating = evaluate is not None and (step % self.eval_every == 0 or final)
                if evaluating and not preempted:
                    last_eval = evaluate_now(step)
                early = evaluating and not preempted and stopper.should_stop
                if step % self.checkpoint_every == 0 or final or preempted or early:
                    flush()   # never save a state that followed a non-finite loss
                    self.ckpt.save(step, state, train_iter, force=True)
                if preempted:
                    self.ckpt.wait()
                    if is_main:
                        print(f"Preempted: saved step {step}; re-run the same command to "
                              f"resume", file=sys.stderr, flush=True)
                    return LoopResult(state, step, last_eval, preempted=True)
                if early:
                    if is_main:
                        print(stopper.message(step), file=sys.stderr, flush=True)
                    self.ckpt.wait()
                    return LoopResult(state, step, last_eval, stopped_early=True)
            if not last_eval and evaluate is not None:
                last_eval = evaluate_now(step)
        return LoopResult(state, step, last_eval)


def _line(values: dict) -> str:
    return "  ".join(f"{k}={v:.4f}" for k, v in values.items() if isinstance(v, float))


def gains(value: float, best: float, min_delta: float) -> bool:
    """Whether a validation value improves on the best one: by at least `min_delta`, and by
    something when that is 0 (a tie is no gain), as the seeds' code compares them."""
    return bool(value > best and value - best >= min_delta)


class _EarlyStopping:
    """Counts evaluations since the best score; the count survives a resume (a JSON file)."""

    def __init__(self, workdir: pathlib.Path, patience: int, min_delta: float = 0.0):
        self.patience = patience
        self.min_delta = min_delta
        self.path = workdir / EARLY_STOPPING_FILE
        self.best, self.best_step, self.since = -np.inf, -1, 0
        if patience and self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
                self.best, self.best_step, self.since = (
                    float(saved["best"]), int(saved["best_step"]), int(saved["since"]))
            except (ValueError, KeyError, TypeError):
                pass   # a damaged counter restarts the count; the best checkpoint is unaffected

    def update(self, step: int, score: float, improved: bool | None = None) -> None:
        """Counts one evaluation. `improved`, an evaluation's own verdict (per-output best: any
        output's gain), replaces the comparison of `score` with the best score so far plus
        `min_delta`; `best` is then only the best score seen, for the message."""
        if not self.patience:
            return
        if improved is None:
            improved = gains(score, self.best, self.min_delta)
            if improved:
                self.best, self.best_step = float(score), step
        elif score > self.best:
            self.best, self.best_step = float(score), step
        self.since = 0 if improved else self.since + 1
        if jax.process_index() == 0:
            files.write_json(self.path, {"best": self.best, "best_step": self.best_step,
                                         "since": self.since, "patience": self.patience})

    @property
    def should_stop(self) -> bool:
        return bool(self.patience) and self.since >= self.patience

    def message(self, step: int) -> str:
        return (f"Early stopping at step {step}: no better validation score in {self.since} "
                f"evaluations (best {self.best:.4f} at step {self.best_step})")


def start(workdir: pathlib.Path, abstract_state: Any, init_fn: Callable[[], Any], train_iter,
          keep: int) -> tuple[checkpoints.RunCheckpoints, Any, int]:
    """Opens the run's checkpoints and returns (ckpt, state, step): the newest intact checkpoint
    of `workdir` with the data iterator's position, else `init_fn()`."""
    ckpt = checkpoints.RunCheckpoints(workdir, keep=keep)
    restored = ckpt.restore_latest(abstract_state, train_iter)
    if restored is not None:
        step, state = restored
        if jax.process_index() == 0:
            print(f"Resuming from step {step} in {workdir}", file=sys.stderr, flush=True)
    else:
        state = init_fn()
    if jax.process_index() == 0:   # steps logged after the checkpoint are logged again
        workdirs.drop_metrics_after(workdir, int(state["step"]))
    return ckpt, state, int(state["step"])


def cadence(config, steps_per_epoch: int) -> tuple[int, int]:
    """(eval_every, checkpoint_every) in steps: `config.evals_per_epoch` > 0 evaluates (and
    checkpoints) that many times per epoch, as the systems' sources do; else the step counts."""
    if config.get("evals_per_epoch", 0) > 0:
        every = max(1, math.ceil(steps_per_epoch / config.evals_per_epoch))
        return every, every
    return config.eval_every, config.checkpoint_every


@dataclasses.dataclass
class Run:
    """A run built from a config, everything `execute` drives: the mesh, the length plan, the
    state's shapes and first value, the input, the jitted step and the evaluation."""
    mesh: Any
    plan: Any                              # optim.Plan
    abstract_state: Any                    # shapes and shardings: the checkpoint restore target
    fresh_state: Callable[[], Any]         # the first state (scratch, or an init_from run's)
    train_iter: Iterator                   # grain iterator, its position checkpointed
    train_step: Callable                   # jitted (state, batch) -> (state, step metrics)
    to_batch: Callable[[dict], dict]       # a host batch -> the step's global arrays
    evaluate: Callable[[Any, int], Evaluation] | None
    items_per_step: int                    # frames (or images) one step reads, for the progress
    unit: str = "frames"
    check_keys: tuple[str, ...] = ("loss", "grad_norm")
    skip_nonfinite: bool = False
    nonfinite_hint: Callable[[], str] = lambda: ""
    # Called with the result of a run that was not preempted, before final_metrics.json.
    on_finish: Callable[[LoopResult], None] | None = None


def prepare_workdir(config, workdir: str | pathlib.Path) -> pathlib.Path:
    """Creates `workdir` and writes the run's config.json there (process 0), once the workdir
    is known to be writable and to hold this run or none (`workdirs.claim`)."""
    return workdirs.claim(config, workdir, is_main=jax.process_index() == 0)


def execute(run: Run, config, workdir: pathlib.Path) -> LoopResult:
    """Resumes (or starts) `run` in `workdir` and trains it to the end of its plan; writes
    `final_metrics.json` with the last evaluation unless the run was preempted."""
    is_main = jax.process_index() == 0
    ckpt, state, step = start(workdir, run.abstract_state, run.fresh_state, run.train_iter,
                              config.keep_checkpoints)
    eval_every, checkpoint_every = cadence(config, run.plan.steps_per_epoch)
    writer = writers.MetricWriter(workdir)
    progress = writers.Progress(run.plan.total_steps, run.items_per_step, step,
                                enabled=is_main and config.progress)
    loop = Loop(
        workdir=workdir, total_steps=run.plan.total_steps, log_every=config.log_every,
        eval_every=eval_every, checkpoint_every=checkpoint_every, ckpt=ckpt, writer=writer,
        progress=progress, skip_nonfinite=run.skip_nonfinite,
        patience=config.early_stopping_patience, min_delta=config.early_stopping_min_delta,
        check_keys=run.check_keys, nonfinite_hint=run.nonfinite_hint, unit=run.unit)
    try:
        result = loop.run(state, step, run.train_iter, run.train_step, run.to_batch, run.evaluate)
    finally:
        ckpt.wait()
        ckpt.close()
        writer.close()
    if is_main and not result.preempted:
        if run.on_finish is not None:
            run.on_finish(result)
        files.write_json(workdir / "final_metrics.json", {"step": result.step, **result.last_eval})
    return result
