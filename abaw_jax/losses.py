"""Training losses for the three tasks (jax.numpy).

Every loss takes `(outputs, labels, valid)` shaped as in docs/architecture.md with leading batch
axes, e.g. VA `[B, L, 2]` / `[B, L, 2]` / `[B, L, 2]`, EXPR `[B, L, 8]` / `[B, L]` / `[B, L]`,
AU `[B, L, 12]` / `[B, L, 12]` / `[B, L, 12]`, and returns a float32 scalar. Entries whose `valid`
is False contribute nothing; the reduction is a mean over the valid entries (frames for EXPR,
frame-columns for VA and AU). When nothing is valid the loss is exactly 0.0 and its gradient is
finite (zero): every division uses a denominator made safe with `jnp.where`, and labels on
invalid entries are replaced by 0 first, so a stray -1 or -5 cannot leak in either.

`get_loss(task, name, **kwargs)` is the registry the trainer uses; configs pick a loss by name
(`config.loss.name`). Where a loss reproduces a published system, its defaults are that system's
(the paper's formula, the authors' code where the paper is silent) and the docstring names the
source; the other published forms are separate names or options.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
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
                    mse_weight: float | Sequence[float] = (0.6, 0.5),
                    ccc_weight: float | Sequence[float] = (0.4, 0.5)) -> jax.Array:
    """MSE plus (1 - CCC), the VA loss of system C (paper §4.3: "MSE and CCC loss").

    Per-column weights (sequences, one entry per last-axis column, i.e. valence then arousal):
        L = mean_c [mse_weight[c] MSE_c + ccc_weight[c] (1 - CCC_c)],
    each column over its own valid entries. The defaults are the authors' ABAW7 code
    (ABAW2023-HFUT/ABAW7 `test.py`: valence 0.6 MSE + 0.4 (1 - CCC), arousal 0.5 (1 - CCC) +
    0.5 MSE, the two averaged); the paper gives no weights. A column with no valid entry is left
    out of the mean, and its (1 - CCC) term needs at least 2 valid entries (as in `ccc_loss`).

    Scalar weights give mse_weight * MSE + ccc_weight * (1 - mean CCC), MSE pooled over all
    valid entries: `va_mse_ccc_equal_loss` (1 and 1, the project's earlier form) is that.
    """
    if np.ndim(mse_weight) == 0 and np.ndim(ccc_weight) == 0:
        return (mse_weight * mse_loss(outputs, labels, valid)
                + ccc_weight * ccc_loss(outputs, labels, valid))
    x, y, ok = _prepare(outputs, labels, valid)
    c = x.shape[-1]
    if np.size(mse_weight) not in (1, c) or np.size(ccc_weight) not in (1, c):
        raise ValueError(f"mse_ccc weights: one per column ({c}), got mse_weight "
                         f"{mse_weight!r}, ccc_weight {ccc_weight!r}")
    a = jnp.broadcast_to(jnp.asarray(mse_weight, jnp.float32).reshape(-1), (c,))
    b = jnp.broadcast_to(jnp.asarray(ccc_weight, jnp.float32).reshape(-1), (c,))
    ok2 = ok.reshape(-1, c)
    counts = jnp.sum(ok2, axis=0, dtype=jnp.float32)
    sq = jnp.where(ok2, (x - y).reshape(-1, c) ** 2, 0.0)
    mse_c = _safe_div(jnp.sum(sq, axis=0), counts)
    ccc_term = jnp.where(counts >= 2, 1.0 - ccc_per_column(outputs, labels, valid), 0.0)
    used = counts >= 1
    per_column = jnp.where(used, a * mse_c + b * ccc_term, 0.0)
    return _safe_div(jnp.sum(per_column), jnp.sum(used, dtype=jnp.float32)).astype(jnp.float32)


def va_mse_ccc_equal_loss(outputs: jax.Array, labels: jax.Array, valid: jax.Array,
                          mse_weight: float = 1.0, ccc_weight: float = 1.0) -> jax.Array:
    """MSE + (1 - mean CCC) with equal weights: the variant "mse_ccc_equal" of system C's loss."""
    return va_mse_ccc_loss(outputs, labels, valid, float(mse_weight), float(ccc_weight))


# ----------------------------------------------------------------------------------------------
# EXPR


def softmax_focal_loss(logits: jax.Array, labels: jax.Array, valid: jax.Array,
                       alpha: float | Any = 0.25, gamma: float = 2.0,
                       class_weights: Any = None) -> jax.Array:
    """Multi-class focal loss w[y] alpha_t (1 - p_t)^gamma (-log p_t), mean over valid frames.

    System A's EXPR loss: Eq. 1 of the paper (Lin et al.'s focal loss, one scalar alpha .25,
    gamma 2). `alpha` may also be a per-class vector [C] (then alpha_t = alpha[label]).
    `class_weights` [C] (optional) multiplies each frame's loss by the weight of its class; the
    authors' code (msjae/ABAW `loss.py` FocalLoss, `trainer.py`) weights classes by
    w_c = 1 - n_c / sum(n) (`inverse_share_weights`). p_t is the unweighted softmax probability of
    the target and the weight is applied outside: the code's p_t = exp(-weighted CE) is not a
    probability once weights differ from 1. The reduction is a plain mean over valid frames, as
    the code's `torch.mean` of the per-frame losses (not divided by the sum of the weights).
    """
    logits, labels, valid = _prepare(logits, labels, valid, classes=True)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    log_pt = jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
    # 1 - exp(log p_t) via expm1 keeps precision when p_t is close to 1.
    modulator = _focal_power(-jnp.expm1(log_pt), gamma)
    alpha = jnp.asarray(alpha, jnp.float32)
    alpha_t = alpha[labels] if alpha.ndim == 1 else alpha
    loss = -alpha_t * modulator * log_pt
    if class_weights is not None:
        loss = loss * _column_weights(class_weights, logits.shape[-1], "class_weights")[labels]
    return _masked_mean(loss, valid)


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


ALPHA_MODES = ("scalar", "balanced")


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, valid: jax.Array,
                       alpha: float = 0.25, gamma: float = 2.0, alpha_mode: str = "scalar",
                       weights: Any = None) -> jax.Array:
    """Per-label binary focal loss w[j] a_t (1 - p_t)^gamma BCE(x, t), mean over valid entries.

    System A's AU loss: Eq. 1 of the paper, -alpha (1 - p_t)^gamma log p_t with ONE scalar alpha
    (.25) and gamma 2, applied to each AU as a binary label. alpha_mode "scalar" (the default,
    Eq. 1 as written) multiplies positives and negatives alike by alpha; "balanced" is
    torchvision.ops.sigmoid_focal_loss's alpha_t = alpha on positives and 1 - alpha on negatives.
    alpha < 0 disables the alpha factor in both modes. `weights` [C] (optional) multiplies each
    label's loss; the authors' code (msjae/ABAW `trainer.py`) weights AU j by
    w_j = 1 - n_j / sum_k n_k, n_j its positive count (`inverse_share_weights`). p_t comes from
    the unweighted probabilities; weights are applied outside.
    """
    if alpha_mode not in ALPHA_MODES:
        raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {alpha_mode!r}")
    logits, targets, valid = _prepare(logits, targets, valid)
    p = jax.nn.sigmoid(logits)
    bce = -(targets * jax.nn.log_sigmoid(logits) + (1.0 - targets) * jax.nn.log_sigmoid(-logits))
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    loss = bce * _focal_power(1.0 - p_t, gamma)
    if alpha >= 0:
        if alpha_mode == "balanced":
            loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
        else:
            loss = loss * alpha
    if weights is not None:
        loss = loss * _column_weights(weights, logits.shape[-1], "weights")
    return _masked_mean(loss, valid)


def _column_weights(weights: Any, size: int, key: str) -> jax.Array:
    """float32 [size] weights; a wrong length is an error naming `key`."""
    w = jnp.asarray(weights, jnp.float32)
    if w.shape != (size,):
        raise ValueError(f"{key}: expected one weight per class/label ({size}), got shape "
                         f"{w.shape}")
    return w


def inverse_share_weights(counts: Any) -> np.ndarray:
    """w_c = 1 - n_c / sum_k n_k: the class / AU weights of system A's authors' code.

    msjae/ABAW `trainer.py` computes these from the training counts: EXPR n_c = frames of class c
    (8 classes), AU n_j = positive frames of AU j, normalised by the sum of the positive counts
    over the 12 AUs. Frequent classes get smaller weights; every weight is in [0, 1]. Counts come
    from `class_counts` / `positive_counts` over the valid frames of the train split.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"counts: expected a non-empty 1-D array, got shape {counts.shape}")
    if np.any(counts < 0) or not np.all(np.isfinite(counts)) or counts.sum() <= 0:
        raise ValueError(f"counts must be finite, non-negative and not all zero, got "
                         f"{counts.tolist()}")
    return (1.0 - counts / counts.sum()).astype(np.float32)


def class_counts(labels: Any, valid: Any, num_classes: int) -> np.ndarray:
    """Frames of each class among the valid ones: int64 [num_classes] (EXPR label ids)."""
    labels = np.asarray(labels).reshape(-1)
    valid = np.asarray(valid, bool).reshape(-1)
    return np.bincount(labels[valid].astype(np.int64), minlength=num_classes)[:num_classes]


def positive_counts(labels: Any, valid: Any) -> np.ndarray:
    """Valid positive entries of each label column: int64 [C] (AU labels [..., C])."""
    labels = np.asarray(labels)
    valid = np.asarray(valid, bool)
    c = labels.shape[-1]
    return ((labels.reshape(-1, c) > 0) & valid.reshape(-1, c)).sum(0).astype(np.int64)


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


def _asymmetric(logits, targets, valid, weights, gamma_pos, gamma_neg, clip, detach_focus):
    """-w[j] [t (1 - p)^gamma_pos log p + (1 - t) p_m^gamma_neg log(1 - p_m)], mean over valid.

    p = sigmoid(x), p_m = max(p - clip, 0). With `detach_focus` the focusing factors
    (1 - p)^gamma_pos and p_m^gamma_neg carry no gradient (stop_gradient).
    """
    logits, targets, valid = _prepare(logits, targets, valid)
    p = jax.nn.sigmoid(logits)
    p_shift = jnp.maximum(p - clip, 0.0) if clip > 0 else p
    log_pos = jax.nn.log_sigmoid(logits)
    # 1 - p_m = min(1 - p + clip, 1) >= clip, so the log is safe once clip > 0.
    log_neg = (jnp.log(jnp.minimum(jax.nn.sigmoid(-logits) + clip, 1.0)) if clip > 0
               else jax.nn.log_sigmoid(-logits))
    focus_pos = _focal_power(1.0 - p, gamma_pos)
    focus_neg = _focal_power(p_shift, gamma_neg)
    if detach_focus:
        focus_pos, focus_neg = jax.lax.stop_gradient(focus_pos), jax.lax.stop_gradient(focus_neg)
    loss = -(targets * focus_pos * log_pos + (1.0 - targets) * focus_neg * log_neg)
    if weights is not None:
        loss = loss * _column_weights(weights, logits.shape[-1], "weights")
    return _masked_mean(loss, valid)


def weighted_asymmetric_loss(logits: jax.Array, targets: jax.Array, valid: jax.Array,
                             weights: Any, gamma_pos: float = 0.0, gamma_neg: float = 1.0,
                             clip: float = 0.0, detach_focus: bool = True) -> jax.Array:
    """System C's weighted asymmetric loss, exactly Eq. 7 of the paper by default:

        L = -(1/N) sum_i w_i [p_i log p^_i + (1 - p_i) p^_i log(1 - p^_i)],

    p the labels, p^ = sigmoid(x), N the valid (frame, AU) entries, w one weight per AU from its
    occurrence rate in the training set (`au_weights_from_rates`). The paper is silent on the
    gradient; the authors' code (WeightedAsymmetricLoss of CVI-SZU/ME-GraphAU `utils.py`, copied
    into ABAW2023-HFUT/ABAW5 and ABAW7) computes the p^ that multiplies the negative term without
    gradient: `detach_focus=True`. "wal_grad" (`weighted_asymmetric_loss_grad`) lets the gradient
    through that factor.

    The general form is -w [t (1 - p^)^gamma_pos log p^ + (1 - t) p_m^gamma_neg log(1 - p_m)],
    p_m = max(p^ - clip, 0) (Ridnik et al., ICCV 2021); Eq. 7 is gamma_pos 0, gamma_neg 1,
    clip 0. The project's earlier default was gamma_neg 4, clip .05, detach_focus False.
    """
    return _asymmetric(logits, targets, valid, weights, gamma_pos, gamma_neg, clip, detach_focus)


def weighted_asymmetric_loss_grad(logits: jax.Array, targets: jax.Array, valid: jax.Array,
                                  weights: Any, gamma_pos: float = 0.0, gamma_neg: float = 1.0,
                                  clip: float = 0.0) -> jax.Array:
    """Eq. 7 of system C with the gradient flowing through the p^ of the negative term
    (variant "wal_grad"; the authors' code detaches it)."""
    return _asymmetric(logits, targets, valid, weights, gamma_pos, gamma_neg, clip, False)


def asymmetric_loss(logits: jax.Array, targets: jax.Array, valid: jax.Array,
                    weights: Any = None, gamma_pos: float = 1.0, gamma_neg: float = 4.0,
                    clip: float = 0.05) -> jax.Array:
    """The common asymmetric loss (Alibaba-MIIL/ASL `AsymmetricLoss` defaults): gamma+ 1,
    gamma- 4, probability shift clip .05, focusing weights computed without gradient
    (`disable_torch_grad_focal_loss`), here averaged over the valid entries instead of ASL's sum.
    `weights` [C] optionally weights each label. Variant "asl" of the AU loss."""
    return _asymmetric(logits, targets, valid, weights, gamma_pos, gamma_neg, clip, True)


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
    "VA": {"ccc": ccc_loss, "mse": mse_loss, "mse_ccc": va_mse_ccc_loss,
           "mse_ccc_equal": va_mse_ccc_equal_loss},
    "EXPR": {"focal": softmax_focal_loss, "ce": cross_entropy},
    "AU": {"focal": sigmoid_focal_loss, "bce": bce_with_logits, "wal": weighted_asymmetric_loss,
           "wal_grad": weighted_asymmetric_loss_grad, "asl": asymmetric_loss},
}
_NEEDS_AU_WEIGHTS = (weighted_asymmetric_loss, weighted_asymmetric_loss_grad)
# Keyword of each focal loss that takes weights made from label counts.
_COUNT_WEIGHTS = {softmax_focal_loss: "class_weights", sigmoid_focal_loss: "weights"}


def loss_names(task: str) -> tuple[str, ...]:
    """The loss names `get_loss` accepts for a task."""
    if task not in _LOSSES:
        raise ValueError(f"task must be one of {tuple(_LOSSES)}, got {task!r}")
    return tuple(_LOSSES[task])


def get_loss(task: str, name: str, **kwargs: Any) -> LossFn:
    """The loss `name` of `task` with its options bound: a function of (outputs, labels, valid).

    Names: VA "ccc", "mse", "mse_ccc", "mse_ccc_equal"; EXPR "focal", "ce"; AU "focal", "bce",
    "wal", "wal_grad", "asl". Options are the keyword arguments of the loss function (e.g.
    alpha, gamma, alpha_mode for "focal"); "wal" and "wal_grad" need `weights`, or `rates`
    (per-AU occurrence rates, turned into weights by `au_weights_from_rates`). The focal losses
    also take `counts` (training counts per class / AU, turned into weights by
    `inverse_share_weights`). An unknown option is an error naming it.
    """
    names = loss_names(task)
    if name not in names:
        raise ValueError(f"unknown {task} loss {name!r}; known: {', '.join(names)}")
    fn = _LOSSES[task][name]
    if fn in _NEEDS_AU_WEIGHTS and "rates" in kwargs:
        if "weights" in kwargs:
            raise ValueError(f"loss {name!r}: give either weights or rates, not both")
        kwargs["weights"] = au_weights_from_rates(kwargs.pop("rates"))
    if fn in _COUNT_WEIGHTS and "counts" in kwargs:
        key = _COUNT_WEIGHTS[fn]
        if key in kwargs:
            raise ValueError(f"loss {name!r}: give either {key} or counts, not both")
        kwargs[key] = inverse_share_weights(kwargs.pop("counts"))
    options = list(inspect.signature(fn).parameters)[3:]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(f"{task} loss {name!r} has no option {unknown[0]!r}; "
                         f"options: {', '.join(options) or 'none'}")
    if fn in _NEEDS_AU_WEIGHTS and "weights" not in kwargs:
        raise ValueError(f"AU loss {name!r} needs weights=[per-AU weights] or rates=[per-AU "
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
