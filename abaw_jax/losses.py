"""Training losses for the three tasks (jax.numpy).

Every loss takes `(outputs, labels, valid)` shaped as in docs/architecture.md with leading batch
axes, e.g. VA `[B, L, 2]` / `[B, L, 2]` / `[B, L, 2]`, EXPR `[B, L, 8]` / `[B, L]` / `[B, L]`,
AU `[B, L, 12]` / `[B, L, 12]` / `[B, L, 12]`, and returns a float32 scalar. Entries whose `valid`
is False contribute nothing; the reduction is a mean over the valid entries (frames for EXPR,
frame-columns for VA and AU). When nothing is valid the loss is exactly 0.0 and its gradient is
finite (zero): every division uses a denominator made safe with `jnp.where`, and labels on
invalid entries are replaced by 0 first, so a stray -1 or -5 cannot leak in either.

`get_loss(task, name, **kwargs)` is the registry the trainer uses.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

LossFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _prepare(outputs, labels, valid, *, classes: bool = False):
    """Float32 outputs, labels zeroed where invalid (int32 class ids if `classes`), bool valid."""
    outputs = jnp.asarray(outputs, jnp.float32)
    valid = jnp.asarray(valid, bool)
    labels_shape = jnp.shape(labels)
    # Class labels have no class axis; every other loss compares outputs entry by entry.
    expected = outputs.shape[:-1] if classes else outputs.shape
    if labels_shape != expected or valid.shape != expected:
        raise ValueError(f"shapes do not match: outputs {outputs.shape}, labels {labels_shape}, "
                         f"valid {valid.shape} (labels and valid must be {expected})")
    labels = jnp.where(valid, jnp.asarray(labels), 0)
    labels = labels.astype(jnp.int32 if classes else jnp.float32)
    return outputs, labels, valid


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den where den > 0, else 0, with finite gradients in both branches."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
    values = jnp.where(valid, values, 0.0)
    return _safe_div(jnp.sum(values), jnp.sum(valid, dtype=jnp.float32)).astype(jnp.float32)


def _focal_power(base: jax.Array, gamma: float) -> jax.Array:
    # x ** 0 has a NaN gradient at x = 0 in JAX (0 * 0 ** -1); a zero exponent means no factor.
    if gamma == 0:
        return jnp.ones_like(base)
    return jnp.power(jnp.maximum(base, 0.0), gamma)


# ----------------------------------------------------------------------------------------------
# VA


def ccc_per_column(outputs: jax.Array, labels: jax.Array, valid: jax.Array) -> jax.Array:
    """CCC of each last-axis column over all its valid entries (population variances) -> [C].

    A column with fewer than 2 valid entries, or a zero denominator, has CCC 0.
    """
    x, y, valid = _prepare(outputs, labels, valid)
    c = x.shape[-1]
    x, y, w = x.reshape(-1, c), y.reshape(-1, c), valid.reshape(-1, c).astype(jnp.float32)
    n = jnp.sum(w, axis=0)
    mean_x = _safe_div(jnp.sum(w * x, axis=0), n)
    mean_y = _safe_div(jnp.sum(w * y, axis=0), n)
    # Centre before multiplying: one-pass E[x^2] - E[x]^2 loses precision in float32.
    dx, dy = w * (x - mean_x), w * (y - mean_y)
    var_x = _safe_div(jnp.sum(dx * dx, axis=0), n)
    var_y = _safe_div(jnp.sum(dy * dy, axis=0), n)
    cov = _safe_div(jnp.sum(dx * dy, axis=0), n)
    denom = var_x + var_y + (mean_x - mean_y) ** 2
    return jnp.where(n >= 2, _safe_div(2.0 * cov, denom), 0.0)


def ccc_loss(outputs: jax.Array, labels: jax.Array, valid: jax.Array) -> jax.Array:
    """1 - mean CCC over the columns (valence, arousal), each over its valid entries in the batch.

    Columns with fewer than 2 valid entries are left out of the mean (CCC is undefined there);
    with no such column the loss is 0.
    """
    per_column = ccc_per_column(outputs, labels, valid)
    c = per_column.shape[0]
    counts = jnp.sum(jnp.asarray(valid, bool).reshape(-1, c), axis=0)
    used = counts >= 2
    return _safe_div(jnp.sum(jnp.where(used, 1.0 - per_column, 0.0)),
                     jnp.sum(used, dtype=jnp.float32)).astype(jnp.float32)


def mse_loss(outputs: jax.Array, labels: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean squared error over the valid entries."""
    x, y, valid = _prepare(outputs, labels, valid)
    return _masked_mean((x - y) ** 2, valid)


def va_mse_ccc_loss(outputs: jax.Array, labels: jax.Array, valid: jax.Array,
                    mse_weight: float = 1.0, ccc_weight: float = 1.0) -> jax.Array:
    """mse_weight * MSE + ccc_weight * (1 - mean CCC), the VA loss of system C."""
    return (mse_weight * mse_loss(outputs, labels, valid)
            + ccc_weight * ccc_loss(outputs, labels, valid))


# ----------------------------------------------------------------------------------------------
# EXPR


def softmax_focal_loss(logits: jax.Array, labels: jax.Array, valid: jax.Array,
                       alpha: float | Any = 0.25, gamma: float = 2.0) -> jax.Array:
    """Multi-class focal loss -alpha_t (1 - p_t)^gamma log p_t (Lin et al.), mean over valid frames.

    `alpha` is a scalar or a per-class vector [C] (then alpha_t = alpha[label]).
    """
    logits, labels, valid = _prepare(logits, labels, valid, classes=True)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    log_pt = jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
    # 1 - exp(log p_t) via expm1 keeps precision when p_t is close to 1.
    modulator = _focal_power(-jnp.expm1(log_pt), gamma)
    alpha = jnp.asarray(alpha, jnp.float32)
    alpha_t = alpha[labels] if alpha.ndim == 1 else alpha
    return _masked_mean(-alpha_t * modulator * log_pt, valid)


def cross_entropy(logits: jax.Array, labels: jax.Array, valid: jax.Array,
                  label_smoothing: float = 0.0, class_weights: Any = None) -> jax.Array:
    """Softmax cross-entropy with optional label smoothing and class weights, as PyTorch defines it.

    Per frame i with target y_i and smoothing e: (1 - e) w[y_i] (-log p_i[y_i]) +
    (e / C) sum_c w[c] (-log p_i[c]); the sum over valid frames is divided by sum_i w[y_i]
    (the number of valid frames when unweighted).
    """
    logits, labels, valid = _prepare(logits, labels, valid, classes=True)
    num_classes = logits.shape[-1]
    log_p = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
    if class_weights is None:
        weights = jnp.ones((num_classes,), jnp.float32)
    else:
        weights = jnp.asarray(class_weights, jnp.float32)
    per_frame = (1.0 - label_smoothing) * weights[labels] * nll
    if label_smoothing:
        per_frame += label_smoothing / num_classes * jnp.sum(-log_p * weights, axis=-1)
    total = jnp.sum(jnp.where(valid, per_frame, 0.0))
    norm = jnp.sum(jnp.where(valid, weights[labels], 0.0))
    return _safe_div(total, norm).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# AU


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, valid: jax.Array,
                       alpha: float = 0.25, gamma: float = 2.0) -> jax.Array:
    """Binary focal loss of torchvision.ops.sigmoid_focal_loss, mean over the valid entries.

    BCE(x, t) (1 - p_t)^gamma, times alpha on positives and (1 - alpha) on negatives; alpha < 0
    disables the weighting.
    """
    logits, targets, valid = _prepare(logits, targets, valid)
    p = jax.nn.sigmoid(logits)
    bce = -(targets * jax.nn.log_sigmoid(logits) + (1.0 - targets) * jax.nn.log_sigmoid(-logits))
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    loss = bce * _focal_power(1.0 - p_t, gamma)
    if alpha >= 0:
        loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
    return _masked_mean(loss, valid)


def bce_with_logits(logits: jax.Array, targets: jax.Array, valid: jax.Array,
                    pos_weight: Any = None) -> jax.Array:
    """Binary cross-entropy on logits, -[w t log p + (1 - t) log(1 - p)], mean over valid entries.

    `pos_weight` (scalar or per-column [C]) weights the positive term, as in PyTorch.
    """
    logits, targets, valid = _prepare(logits, targets, valid)
    w = 1.0 if pos_weight is None else jnp.asarray(pos_weight, jnp.float32)
    loss = -(w * targets * jax.nn.log_sigmoid(logits)
             + (1.0 - targets) * jax.nn.log_sigmoid(-logits))
    return _masked_mean(loss, valid)


def weighted_asymmetric_loss(logits: jax.Array, targets: jax.Array, valid: jax.Array,
                             weights: Any, gamma_pos: float = 0.0, gamma_neg: float = 4.0,
                             clip: float = 0.05) -> jax.Array:
    """Asymmetric loss (Ridnik et al., ICCV 2021) with a weight per AU, mean over valid entries.

    With p = sigmoid(x) and the shifted probability p_m = max(p - clip, 0), entry j of a frame
    costs -w[j] [t (1 - p)^gamma_pos log p + (1 - t) p_m^gamma_neg log(1 - p_m)]. `weights` has
    one value per last-axis column (see `au_weights_from_rates`). gamma_neg=1, clip=0 gives the
    weighted asymmetric loss exactly as written in the system C paper (eq. 7).
    """
    logits, targets, valid = _prepare(logits, targets, valid)
    p = jax.nn.sigmoid(logits)
    p_shift = jnp.maximum(p - clip, 0.0) if clip > 0 else p
    log_pos = jax.nn.log_sigmoid(logits)
    # 1 - p_m = min(1 - p + clip, 1) >= clip, so the log is safe once clip > 0.
    log_neg = (jnp.log(jnp.minimum(jax.nn.sigmoid(-logits) + clip, 1.0)) if clip > 0
               else jax.nn.log_sigmoid(-logits))
    pos = targets * _focal_power(1.0 - p, gamma_pos) * log_pos
    neg = (1.0 - targets) * _focal_power(p_shift, gamma_neg) * log_neg
    w = jnp.asarray(weights, jnp.float32)
    return _masked_mean(-w * (pos + neg), valid)


def au_weights_from_rates(rates: Any) -> np.ndarray:
    """Per-AU loss weights from occurrence rates: w_j = C (1 / r_j) / sum_k (1 / r_k).

    Rare AUs get larger weights; the C weights average to 1, so the loss keeps its scale. Rates
    must lie in (0, 1] (an AU that never occurs in training cannot be weighted by its rate).
    """
    rates = np.asarray(rates, dtype=np.float64)
    if rates.ndim != 1 or rates.size == 0:
        raise ValueError(f"rates: expected a non-empty 1-D array, got shape {rates.shape}")
    bad = ~((rates > 0) & (rates <= 1))
    if bad.any():
        j = int(np.argmax(bad))
        raise ValueError(f"rates[{j}] = {float(rates[j])!r}: occurrence rates must lie in (0, 1]")
    inverse = 1.0 / rates
    return (rates.size * inverse / inverse.sum()).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Registry

_LOSSES: dict[str, dict[str, Callable[..., jax.Array]]] = {
    "VA": {"ccc": ccc_loss, "mse": mse_loss, "mse_ccc": va_mse_ccc_loss},
    "EXPR": {"focal": softmax_focal_loss, "ce": cross_entropy},
    "AU": {"focal": sigmoid_focal_loss, "bce": bce_with_logits, "wal": weighted_asymmetric_loss},
}


def loss_names(task: str) -> tuple[str, ...]:
    """The loss names `get_loss` accepts for a task."""
    if task not in _LOSSES:
        raise ValueError(f"task must be one of {tuple(_LOSSES)}, got {task!r}")
    return tuple(_LOSSES[task])


def get_loss(task: str, name: str, **kwargs: Any) -> LossFn:
    """The loss `name` of `task` with its options bound: a function of (outputs, labels, valid).

    Names: VA "ccc", "mse", "mse_ccc"; EXPR "focal", "ce"; AU "focal", "bce", "wal". Options are
    the keyword arguments of the loss function (e.g. alpha, gamma for "focal"); "wal" needs
    `weights`, or `rates` (per-AU occurrence rates, turned into weights by
    `au_weights_from_rates`). An unknown option is an error naming it.
    """
    names = loss_names(task)
    if name not in names:
        raise ValueError(f"unknown {task} loss {name!r}; known: {', '.join(names)}")
    fn = _LOSSES[task][name]
    if fn is weighted_asymmetric_loss and "rates" in kwargs:
        if "weights" in kwargs:
            raise ValueError("loss 'wal': give either weights or rates, not both")
        kwargs["weights"] = au_weights_from_rates(kwargs.pop("rates"))
    options = list(inspect.signature(fn).parameters)[3:]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(f"{task} loss {name!r} has no option {unknown[0]!r}; "
                         f"options: {', '.join(options) or 'none'}")
    if fn is weighted_asymmetric_loss and "weights" not in kwargs:
        raise ValueError("AU loss 'wal' needs weights=[per-AU weights] or rates=[per-AU "
                         "occurrence rates in the training split]")
    return functools.partial(fn, **kwargs)


# ----------------------------------------------------------------------------------------------
# The multi-task challenge


def multi_task_loss(task_losses: dict[str, LossFn], weights: dict[str, float]) -> LossFn:
    """The MTL loss: the sum over tasks of `weights[task]` x that task's loss on its columns.

    Outputs are packed as `data.mtl.OUTPUT_COLUMNS` (VA 2, EXPR 8 logits, AU 12 logits), labels
    and valid masks as `data.mtl.LABEL_COLUMNS` (VA 2, the class as a number, AU 12). Each task's
    loss sees only its own valid entries, so a frame missing one task's labels still trains the
    other two.
    """
    from abaw_jax.data import mtl

    def loss(outputs, labels, valid):
        total = jnp.zeros((), jnp.float32)
        for task, fn in task_losses.items():
            out = outputs[..., mtl.OUTPUT_COLUMNS[task]]
            lab = labels[..., mtl.LABEL_COLUMNS[task]]
            val = valid[..., mtl.LABEL_COLUMNS[task]]
            if task == "EXPR":
                lab, val = lab[..., 0], val[..., 0]
            if task != "VA":
                lab = jnp.round(lab).astype(jnp.int32)
            total = total + weights[task] * fn(out, lab, val)
        return total

    return loss
