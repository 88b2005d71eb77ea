"""Optimizers and learning-rate schedules shared by `train` and `pretrain`.

`config.optimizer.schedule` names the schedule:
- "warmup_cosine": linear warmup to `lr`, cosine decay to `lr * end_lr_factor` at the last step;
- "constant": `lr` throughout (after an optional linear warmup);
- "exponential": `lr * decay_rate ** epoch` (the factor applies once per epoch, as a per-epoch
  `ExponentialLR` scheduler does), after an optional warmup.

Warmups are given in steps (`warmup_steps`) or epochs (`warmup_epochs`, which wins when > 0).
A run's length is `total_steps`, or `num_epochs` turned into steps from the number of batches of
an epoch when `num_epochs` > 0 and `total_steps` was not set on the command line
(`resolve_steps`). A warmup as long as the run would leave no step to decay: it is shortened to a
tenth of the run, and the log says so.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ("warmup_cosine", "constant", "exponential")


@dataclasses.dataclass(frozen=True)
class Plan:
    """A run's length and warmup in steps, and how they were derived (for the log)."""
    total_steps: int
    warmup_steps: int
    steps_per_epoch: int
    notes: tuple[str, ...] = ()


def resolve_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> Plan:
    """The run's length and warmup in steps.

    `steps_per_epoch` is the number of global batches in one pass over the training split.
    `config.total_steps` > 0 fixes the length; otherwise `config.num_epochs` epochs.
    """
    o = config.optimizer
    notes = []
    steps_per_epoch = max(1, int(steps_per_epoch))
    total = int(config.total_steps)
    if total <= 0:
        total = max(1, int(round(config.num_epochs * steps_per_epoch)))
        notes.append(f"{config.num_epochs:g} epochs x {steps_per_epoch} steps = {total} steps")
    warmup = int(o.warmup_steps)
    if o.get("warmup_epochs", 0) > 0:
        warmup = int(round(o.warmup_epochs * steps_per_epoch))
        notes.append(f"warmup {o.warmup_epochs:g} epochs = {warmup} steps")
    if warmup >= total:
        shorter = total // 10
        notes.append(f"warmup {warmup} >= total_steps {total}: warmup shortened to {shorter} steps")
        warmup = shorter
    return Plan(total, warmup, steps_per_epoch, tuple(notes))


def report(plan: Plan, what: str = "run") -> None:
    """Prints how the run's length was derived (process 0 only)."""
    if jax.process_index() == 0 and plan.notes:
        print(f"{what}: " + "; ".join(plan.notes), file=sys.stderr, flush=True)


def make_schedule(o: ml_collections.ConfigDict, plan: Plan) -> optax.Schedule:
    """The learning-rate schedule named by `o.schedule` over `plan`'s steps."""
    name = o.get("schedule", "warmup_cosine")
    warmup = plan.warmup_steps
    if name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=o.lr, warmup_steps=warmup,
            decay_steps=max(plan.total_steps, warmup + 1), end_value=o.lr * o.end_lr_factor)
    if name == "constant":
        main = optax.constant_schedule(o.lr)
    elif name == "exponential":
        main = optax.exponential_decay(init_value=o.lr, transition_steps=plan.steps_per_epoch,
                                       decay_rate=o.decay_rate, staircase=True)
    else:
        raise ValueError(f"optimizer.schedule = {name!r}: one of {SCHEDULES}")
    if not warmup:
        return main
    ramp = optax.linear_schedule(0.0, o.lr, warmup)
    return optax.join_schedules([ramp, main], [warmup])


def kernels_only(params: Any) -> Any:
    """A weight-decay mask that decays kernels only, not biases, norms, tokens or position tables."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: getattr(path[-1], "key", "") == "kernel", params)


def make_optimizer(o: ml_collections.ConfigDict, plan: Plan, *, decay_mask: Any = None,
                   lr_scales: Any = None, skip_nonfinite: bool = False):
    """(tx, schedule): AdamW (`weight_decay` 0 is Adam) on `o`'s schedule.

    Optional: global-norm clipping first (`o.grad_clip` > 0), a weight-decay mask, per-parameter
    learning-rate multipliers (layer-wise decay), and skipping of non-finite updates.
    """
    schedule = make_schedule(o, plan)
    chain = []
    if o.grad_clip > 0:
        chain.append(optax.clip_by_global_norm(o.grad_clip))
    chain += [optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.get("eps", 1e-8)),
              optax.add_decayed_weights(o.weight_decay, mask=decay_mask),
              optax.scale_by_learning_rate(schedule)]
    if lr_scales is not None:
        chain.append(optax.stateless(
            lambda updates, _: jax.tree.map(jnp.multiply, updates, lr_scales)))
    tx = optax.chain(*chain)
    if skip_nonfinite:
        # Skips (and counts) updates whose gradients are not finite instead of stopping the run.
        tx = optax.apply_if_finite(tx, max_consecutive_errors=1_000_000)
    return tx, schedule


def check(need, config: ml_collections.ConfigDict) -> None:
    """Validates the optimizer and run-length fields with `need(ok, key, why)`."""
    o = config.optimizer
    need(math.isfinite(o.lr) and o.lr > 0, "optimizer.lr", "must be a positive finite number")
    need(o.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
    need(o.grad_clip >= 0, "optimizer.grad_clip", "must be >= 0 (0 disables)")
    need(0.0 <= o.end_lr_factor <= 1.0, "optimizer.end_lr_factor", "must be in [0, 1]")
    need(o.warmup_steps >= 0, "optimizer.warmup_steps", "must be >= 0")
    need(o.get("warmup_epochs", 0) >= 0, "optimizer.warmup_epochs", "must be >= 0")
    need(o.get("schedule", "warmup_cosine") in SCHEDULES, "optimizer.schedule",
         f"must be one of {SCHEDULES}")
    need(0 < o.get("decay_rate", 1.0) <= 1.0, "optimizer.decay_rate", "must be in (0, 1]")
    need(config.total_steps >= 1 or config.get("num_epochs", 0) > 0, "total_steps",
         "must be >= 1, or 0 with num_epochs > 0")
    need(config.get("num_epochs", 0) >= 0, "num_epochs", "must be >= 0")
