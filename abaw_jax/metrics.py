"""Challenge metrics over a whole split (numpy, float64).

Every function takes arrays concatenated over all frames of a split, with an optional boolean
`valid` mask of the same layout as the labels (see docs/architecture.md); without one, labels in
the official form mark their own invalid entries (-5 for VA, -1 for EXPR and AU). Scores are computed once over all valid
frames, never averaged over windows or videos: that is how the ABAW challenges rank entries.

- VA: concordance correlation coefficient (CCC) per column, and their mean.
- EXPR: macro F1 over the 8 classes (a class with no true and no predicted frame scores 0).
- AU: binary F1 of each AU over that AU's valid frames (prediction = p >= 0.5), and their mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

NUM_EXPR_CLASSES = 8


def _as_array(name: str, x: Any, ndim: int, dtype: Any = None) -> np.ndarray:
    a = np.asarray(x, dtype=dtype)
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {a.shape}")
    return a


def _check_same_shape(**arrays: np.ndarray) -> None:
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shapes differ: {listed}")


def _check_finite(name: str, x: np.ndarray, valid: np.ndarray) -> None:
    bad = ~np.isfinite(x) & valid
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}: {int(bad.sum())} non-finite values on valid frames "
                         f"(first at index {first})")


def _check_binary(name: str, x: np.ndarray, valid: np.ndarray) -> None:
    bad = (x != 0) & (x != 1) & valid
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}: values must be 0 or 1 on valid frames, got {x[first].item()!r} "
                         f"at index {first}")


def ccc(x: Any, y: Any) -> float:
    """Concordance correlation coefficient of two 1-D series (population variances, float64).

    CCC = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2). Degenerate input returns 0.0,
    never NaN: fewer than 2 samples, or either series constant (if only one is constant the
    formula gives exactly 0; if both are, it is 0/0, and rounding could otherwise turn it into any
    value).
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"ccc: x has {x.size} values, y has {y.size}")
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    mx, my = x.mean(), y.mean()
    dx, dy = x - mx, y - my
    cov = np.mean(dx * dy)
    denom = np.mean(dx * dx) + np.mean(dy * dy) + (mx - my) ** 2
    return float(2.0 * cov / denom)


# The official markers of a missing label.
INVALID = {"VA": -5, "EXPR": -1, "AU": -1}
SCORE_NAMES = {"VA": "CCC", "EXPR": "F1", "AU": "F1"}
# The key of each challenge's score in metrics.jsonl, final_metrics.json, TensorBoard ("val/"
# prefixed) and the predictions' metrics.json.
SCORE_KEYS = {"VA": "va_ccc", "EXPR": "expr_f1", "AU": "au_f1", "MTL": "p_mtl"}
# The logged parts of each score, by their key in the details of `task_score` / `mtl_score`.
PART_KEYS = {"VA": {"valence": "valence_ccc", "arousal": "arousal_ccc"},
             "EXPR": {"accuracy": "expr_accuracy"},
             "AU": {},
             "MTL": {p: p for p in ("valence_ccc", "arousal_ccc", "expr_f1", "au_f1")}}


def score_name(task: str) -> str:
    """The key of `task`'s challenge score: "va_ccc", "expr_f1", "au_f1" or "p_mtl"."""
    if task not in SCORE_KEYS:
        raise ValueError(f"task must be one of {tuple(SCORE_KEYS)}, got {task!r}")
    return SCORE_KEYS[task]


def named_values(task: str, score: float, details: dict[str, Any]) -> dict[str, float]:
    """The score under its name (`score_name`) and its parts under theirs, as floats."""
    parts = {name: float(details[key]) for key, name in PART_KEYS[task].items() if key in details}
    return {score_name(task): float(score), **parts}


def _valid_or_official(task: str, true: np.ndarray, valid: Any) -> Any:
    """`valid`, or (when None) the entries of `true` that are not the official invalid marker."""
    if valid is not None:
        return valid
    return np.asarray(true) != INVALID[task]


def va_score(pred: Any, true: Any, valid: Any = None) -> dict[str, float]:
    """CCC of valence and arousal, each over its own valid frames; `mean` is the VA score."""
    pred = _as_array("pred", pred, 2, np.float64)
    true = _as_array("true", true, 2, np.float64)
    valid = _as_array("valid", _valid_or_official("VA", true, valid), 2, bool)
    _check_same_shape(pred=pred, true=true, valid=valid)
    if pred.shape[1] != 2:
        raise ValueError(f"pred: expected [N, 2] (valence, arousal), got shape {pred.shape}")
    _check_finite("pred", pred, valid)
    _check_finite("true", true, valid)
    v = ccc(pred[valid[:, 0], 0], true[valid[:, 0], 0])
    a = ccc(pred[valid[:, 1], 1], true[valid[:, 1], 1])
    return {"valence": v, "arousal": a, "mean": (v + a) / 2.0}


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    # 2tp / (2tp + fp + fn) equals the harmonic mean of precision and recall, and is defined as 0
    # when the denominator is 0 (zero_division=0 in scikit-learn).
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    denom = 2.0 * tp + fp + fn
    return np.divide(2.0 * tp, denom, out=np.zeros_like(denom), where=denom > 0)


def expr_f1(pred_labels: Any, true: Any, valid: Any = None,
            num_classes: int = NUM_EXPR_CLASSES) -> dict[str, Any]:
    """Macro F1 over all `num_classes` classes (absent ones count as 0), per-class F1, accuracy."""
    pred = _as_array("pred_labels", pred_labels, 1)
    true = _as_array("true", true, 1)
    valid = _as_array("valid", _valid_or_official("EXPR", true, valid), 1, bool)
    _check_same_shape(pred_labels=pred, true=true, valid=valid)
    for name, a in (("pred_labels", pred), ("true", true)):
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name}: expected integer class labels, got dtype {a.dtype}")
    p, t = pred[valid].astype(np.int64), true[valid].astype(np.int64)
    for name, a in (("pred_labels", p), ("true", t)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            bad = a[(a < 0) | (a >= num_classes)][0]
            raise ValueError(
                f"{name}: class {bad} on a valid frame is outside 0..{num_classes - 1}")
    confusion = np.bincount(t * num_classes + p, minlength=num_classes ** 2)
    confusion = confusion.reshape(num_classes, num_classes)   # [true, pred]
    tp = np.diag(confusion)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    per_class = _f1_from_counts(tp, fp, fn)
    accuracy = float(tp.sum() / t.size) if t.size else 0.0
    return {"f1": float(per_class.mean()), "per_class": per_class.tolist(), "accuracy": accuracy}


def au_f1(pred_probs: Any, true: Any, valid: Any = None, threshold: float = 0.5) -> dict[str, Any]:
    """Binary F1 of each AU over its valid frames (positive where p >= threshold) and their mean."""
    probs = _as_array("pred_probs", pred_probs, 2, np.float64)
    true = _as_array("true", true, 2)
    valid = _as_array("valid", _valid_or_official("AU", true, valid), 2, bool)
    _check_same_shape(pred_probs=probs, true=true, valid=valid)
    _check_finite("pred_probs", probs, valid)
    _check_binary("true", true, valid)
    pred = probs >= threshold
    positive = true == 1
    tp = np.sum(pred & positive & valid, axis=0)
    fp = np.sum(pred & ~positive & valid, axis=0)
    fn = np.sum(~pred & positive & valid, axis=0)
    per_au = _f1_from_counts(tp, fp, fn)
    return {"f1": float(per_au.mean()) if per_au.size else 0.0, "per_au": per_au.tolist()}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # The tanh form never overflows, unlike 1 / (1 + exp(-x)) for large negative x.
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def task_score(task: str, outputs: Any, labels: Any, valid: Any = None) -> tuple[float, dict[str, Any]]:
    """The challenge score of raw model outputs (VA values, EXPR logits, AU logits) and its details.

    Returns (score, details): VA -> mean CCC and `va_score`'s dict; EXPR -> macro F1 of the argmax
    and `expr_f1`'s dict; AU -> mean F1 of sigmoid(logits) >= 0.5 and `au_f1`'s dict.
    """
    outputs = np.asarray(outputs)
    if task in INVALID:
        valid = _valid_or_official(task, labels, valid)
    if task == "VA":
        details = va_score(outputs, labels, valid)
        return details["mean"], details
    if task == "EXPR":
        logits = _as_array("outputs", outputs, 2, np.float64)
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != logits.shape[:1]:
            raise ValueError(f"shapes differ: outputs {logits.shape} (frames first), "
                             f"valid {valid.shape}")
        _check_finite("outputs", logits, np.broadcast_to(valid[:, None], logits.shape))
        details = expr_f1(np.argmax(logits, axis=-1), labels, valid, num_classes=logits.shape[1])
        return details["f1"], details
    if task == "AU":
        logits = _as_array("outputs", outputs, 2, np.float64)
        details = au_f1(_sigmoid(logits), labels, valid)
        return details["f1"], details
    raise ValueError(f"task must be one of 'VA', 'EXPR', 'AU', got {task!r}")


def describe(task: str, score: float, details: dict[str, Any]) -> str:
    """The score with its metric named, for progress and eval lines: "VA CCC 0.6333 (valence
    CCC 0.6012, arousal CCC 0.6654)", "EXPR F1 0.2600 (accuracy 0.4100)", "AU F1 0.3400"."""
    if task == "MTL" and "valence_ccc" in details:
        return (f"P_MTL {score:.4f} (valence CCC {details['valence_ccc']:.4f}, arousal CCC "
                f"{details['arousal_ccc']:.4f}, EXPR F1 {details['expr_f1']:.4f}, AU F1 "
                f"{details['au_f1']:.4f})")
    head = f"{task} {SCORE_NAMES.get(task, 'score')} {score:.4f}"
    if task == "VA" and "valence" in details:
        return f"{head} (valence CCC {details['valence']:.4f}, arousal CCC {details['arousal']:.4f})"
    if task == "EXPR" and "accuracy" in details:
        return f"{head} (accuracy {details['accuracy']:.4f})"
    return head


def mode_filter(labels: Any, window: int, num_classes: int = NUM_EXPR_CLASSES) -> np.ndarray:
    """Each frame's class replaced by the most frequent class among frames i - window // 2 ..
    i + window // 2 of the same video (truncated at the ends; ties go to the smaller class id,
    as scipy.stats.mode). System B's code smooths its test-set expressions with window 40."""
    labels = _as_array("labels", labels, 1).astype(np.int64)
    half = int(window) // 2
    if half <= 0 or labels.size == 0:
        return labels.copy()
    counts = np.zeros((labels.size + 1, num_classes), np.int64)
    counts[1:] = np.cumsum(np.eye(num_classes, dtype=np.int64)[labels], axis=0)
    i = np.arange(labels.size)
    lo, hi = np.maximum(i - half, 0), np.minimum(i + half + 1, labels.size)
    return np.argmax(counts[hi] - counts[lo], axis=1)


# --------------------------------------------------------------------------- multi-task challenge

MTL_TASKS = ("VA", "EXPR", "AU")
MTL_PARTS = ("valence_ccc", "arousal_ccc", "expr_f1", "au_f1")


def mtl_combine(valence_ccc: float, arousal_ccc: float, expr_f1: float, au_f1: float) -> float:
    """P_MTL from its four parts: (CCC_V + CCC_A) / 2 + F1_EXPR + F1_AU (range -1 .. 3)."""
    return float((valence_ccc + arousal_ccc) / 2.0 + expr_f1 + au_f1)


def _mtl_inputs(name: str, x: Any) -> Any:
    if not isinstance(x, Mapping):
        raise ValueError(f"{name}: expected a mapping with keys {MTL_TASKS}, got {type(x).__name__}")
    missing = [t for t in MTL_TASKS if t not in x]
    if missing:
        raise ValueError(f"{name}: missing {', '.join(missing)} (expected keys {MTL_TASKS})")
    return x


def _check_rows(**tasks: Any) -> None:
    # The three label sets belong to the same frames, so every array has one row per frame.
    rows = {name: np.shape(a)[0] if np.ndim(a) else None for name, a in tasks.items()}
    if len(set(rows.values())) > 1:
        listed = ", ".join(f"{name} {n}" for name, n in rows.items())
        raise ValueError(f"the tasks have different numbers of frames: {listed}")


def p_mtl(pred: Any, true: Any, valid: Any, au_threshold: float = 0.5) -> dict[str, float]:
    """The multi-task challenge score P_MTL and its four parts, over all frames of a split.

    `pred`, `true` and `valid` map "VA", "EXPR" and "AU" to arrays of one row per frame:
    pred VA [N, 2] values, EXPR [N] class indices, AU [N, 12] probabilities (or 0/1 decisions;
    positive where >= au_threshold); true as in the annotation (VA float, EXPR 0..7, AU 0/1, any
    value where not valid); valid VA [N, 2] and AU [N, 12] per column, EXPR [N]. Each part uses
    its own task's valid entries only (`va_score`, `expr_f1` over 8 classes, `au_f1`).

    Returns {"score", "valence_ccc", "arousal_ccc", "expr_f1", "au_f1"}.
    """
    pred, true, valid = (_mtl_inputs(n, x) for n, x in (("pred", pred), ("true", true), ("valid", valid)))
    _check_rows(**{f"{kind} {t}": d[t] for kind, d in (("pred", pred), ("true", true), ("valid", valid))
                   for t in MTL_TASKS})
    va = va_score(pred["VA"], true["VA"], valid["VA"])
    expr = expr_f1(pred["EXPR"], true["EXPR"], valid["EXPR"], num_classes=NUM_EXPR_CLASSES)
    au = au_f1(pred["AU"], true["AU"], valid["AU"], threshold=au_threshold)
    parts = {"valence_ccc": va["valence"], "arousal_ccc": va["arousal"], "expr_f1": expr["f1"], "au_f1": au["f1"]}
    return {"score": mtl_combine(**parts), **parts}


def mtl_score(outputs: Any, labels: Any, valid: Any) -> tuple[float, dict[str, Any]]:
    """P_MTL of raw model outputs (VA values, EXPR logits [N, 8], AU logits [N, 12]) and its details.

    The decisions are those of `task_score`: EXPR argmax, AU sigmoid(logit) >= 0.5. Returns
    (score, details): `p_mtl`'s dict plus "expr_per_class" and "au_per_au" (per-class F1 lists).
    """
    outputs, labels, valid = (_mtl_inputs(n, x) for n, x in (("outputs", outputs), ("labels", labels),
                                                              ("valid", valid)))
    expr_logits = _as_array("outputs EXPR", outputs["EXPR"], 2, np.float64)
    if expr_logits.shape[1] != NUM_EXPR_CLASSES:
        raise ValueError(f"outputs EXPR: expected [N, {NUM_EXPR_CLASSES}] logits, got shape {expr_logits.shape}")
    expr_valid = np.asarray(valid["EXPR"], dtype=bool)
    if expr_valid.shape != expr_logits.shape[:1]:
        raise ValueError(f"shapes differ: outputs EXPR {expr_logits.shape} (frames first), valid EXPR "
                         f"{expr_valid.shape}")
    _check_finite("outputs EXPR", expr_logits, np.broadcast_to(expr_valid[:, None], expr_logits.shape))
    au_logits = _as_array("outputs AU", outputs["AU"], 2, np.float64)
    pred = {"VA": outputs["VA"], "EXPR": np.argmax(expr_logits, axis=-1), "AU": _sigmoid(au_logits)}
    details: dict[str, Any] = p_mtl(pred, labels, valid)
    details["expr_per_class"] = expr_f1(pred["EXPR"], labels["EXPR"], valid["EXPR"])["per_class"]
    details["au_per_au"] = au_f1(pred["AU"], labels["AU"], valid["AU"])["per_au"]
    return details["score"], details
