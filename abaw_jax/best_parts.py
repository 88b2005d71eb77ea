"""The best checkpoint of each output kept apart (`config.best_per_output`): system C's code keeps
a best-valence and a best-arousal model for VA (ABAW5) and the best model of each task for the
multi-task challenge (ABAW7), each chosen by its own validation metric.

During training, each evaluation that improves an output's metric writes the state's parameters
(and batch statistics) to `<workdir>/best_parts/<part>.msgpack`, with the metrics so far in
`best_parts/scores.json` (a resumed run keeps them). An improvement is a gain of at least
`config.early_stopping_min_delta` (ABAW5's VA code: 1e-4), or any gain where that is 0 (ABAW7's
multi-task code), and such an evaluation resets early stopping's count, as ABAW5's code resets it
when valence or arousal improves. The first evaluation is always kept, where ABAW5's code starts
each best at 0 (a part whose CCC never exceeds 1e-4 would have no model there). `evaluate` with the
best checkpoint then predicts with each part's parameters and reads that part's output columns from
them, the rest of a frame's columns from the other parts. Tasks with one output group (EXPR, AU)
have nothing to split: their parts are the run's best checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable

import jax
import numpy as np
from flax import serialization

from abaw_jax import files, loop

DIRECTORY = "best_parts"
# part -> (the evaluation value of its metric, its output columns).
PARTS = {
    "VA": {"valence": ("valence_ccc", slice(0, 1)), "arousal": ("arousal_ccc", slice(1, 2))},
    "MTL": {"valence": ("valence_ccc", slice(0, 1)), "arousal": ("arousal_ccc", slice(1, 2)),
            "expr": ("expr_f1", slice(2, 10)), "au": ("au_f1", slice(10, 22))},
}


def enabled(config) -> bool:
    return bool(config.get("best_per_output", False)) and config.task in PARTS


def tracking(run, workdir: str | pathlib.Path, config):
    """`run` (a `loop.Run`) whose evaluations also keep each output's best parameters when
    `config.best_per_output` asks for it."""
    if not enabled(config) or run.evaluate is None:
        return run
    tracker = Tracker(workdir, config.task, config.get("early_stopping_min_delta", 0.0))
    evaluate = run.evaluate

    def tracked(state, step: int):
        result = evaluate(state, step)
        better = tracker.update(step, state, result.values)
        return dataclasses.replace(result, improved=bool(better))

    return dataclasses.replace(run, evaluate=tracked)


class PartsError(ValueError):
    """A part checkpoint or `scores.json` that cannot be read; names the file."""


def _read_scores(path: pathlib.Path) -> dict:
    if not path.is_file():
        return {}
    try:
        scores = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise PartsError(f"{path}: not the JSON of the per-output best scores ({e}); delete "
                         f"it (and the part files beside it) to start their count again") from e
    if not isinstance(scores, dict):
        raise PartsError(f"{path}: expected a JSON object of the per-output best scores")
    return scores


class Tracker:
    """Writes a part's state whenever its metric gains at least `min_delta` (any gain when
    `min_delta` is 0); process 0 writes."""

    def __init__(self, workdir: str | pathlib.Path, task: str, min_delta: float = 0.0):
        self.dir = pathlib.Path(workdir) / DIRECTORY
        self.parts = PARTS[task]
        self.min_delta = float(min_delta)
        self.best = _read_scores(self.dir / "scores.json")

    def update(self, step: int, state: dict, values: dict) -> list[str]:
        """Keeps `state` for each part it improves; returns those parts."""
        better = [p for p, (key, _) in self.parts.items() if key in values and loop.gains(
            float(values[key]), self.best.get(p, {}).get("score", -np.inf), self.min_delta)]
        # Every process keeps the same bests, so that its early-stopping decisions agree.
        for part in better:
            self.best[part] = {"score": float(values[self.parts[part][0]]), "step": step}
        if not better or jax.process_index() != 0:
            return better
        kept = {k: state[k] for k in ("params", "model_state") if k in state}
        data = serialization.msgpack_serialize(serialization.to_state_dict(jax.device_get(kept)))
        self.dir.mkdir(parents=True, exist_ok=True)
        for part in better:
            with files.atomic_open(self.dir / f"{part}.msgpack", "wb") as f:
                f.write(data)
        files.write_json(self.dir / "scores.json", self.best)
        return better


def available(workdir: str | pathlib.Path, config) -> bool:
    """Whether `workdir` has every part's parameters of a `best_per_output` run."""
    directory = pathlib.Path(workdir) / DIRECTORY
    return enabled(config) and all((directory / f"{p}.msgpack").is_file()
                                   for p in PARTS[config.task])


def load(workdir: str | pathlib.Path, task: str, state: dict) -> dict[str, dict]:
    """Each part's state (`state` with the part's parameters and batch statistics), on the
    devices as `state`'s arrays are; read once, for every split."""
    directory = pathlib.Path(workdir) / DIRECTORY
    loaded = {}
    for part in PARTS[task]:
        path = directory / f"{part}.msgpack"
        try:
            raw = serialization.msgpack_restore(path.read_bytes())
            template = {k: state[k] for k in raw}
            restored = serialization.from_state_dict(template, raw)
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise PartsError(f"{path}: not this run's per-output parameters ({e})") from e
        loaded[part] = dict(state, **jax.tree.map(
            lambda x, like: jax.device_put(x, like.sharding), restored, template))
    return loaded


def compose(task: str, part_states: dict[str, dict],
            predict: Callable[[dict], list[np.ndarray]],
            variables: Callable[[dict], Any]) -> list[np.ndarray]:
    """Per-video outputs with each part's columns predicted from its own state (`load`).
    `predict(variables)` predicts the split, `variables(state)` makes a model's variables."""
    composed = None
    for part, (_, cols) in PARTS[task].items():
        outputs = predict(variables(part_states[part]))
        if composed is None:
            composed = [np.array(o) for o in outputs]
        for c, o in zip(composed, outputs):
            c[:, cols] = o[:, cols]
    return composed


def describe(workdir: str | pathlib.Path) -> str:
    """"valence from step 200, arousal from step 400" for the log line of `evaluate`."""
    best = _read_scores(pathlib.Path(workdir) / DIRECTORY / "scores.json")
    return ", ".join(f"{p} from step {b['step']}" for p, b in best.items())
