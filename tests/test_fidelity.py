"""Each system as published: `--print_config` of every config-driven command, and
docs/systems.md's defaults checked against the resolved configs of every task."""

from __future__ import annotations

import ast
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, load_config


def _run(module: str, *args: str, env_extra: dict | None = None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("module, config, system, model", [
    ("abaw_jax.train", "configs/va.py", "A", "transformer"),
    ("abaw_jax.train", "configs/expr.py:model=tcn", "B", "tcn"),
    ("abaw_jax.evaluate", "configs/au.py:model=fusion", "C", "fusion"),
    ("abaw_jax.train", "configs/mtl.py", "C", "fusion"),
])
def test_print_config_prints_json_and_exits_before_device_work(module, config, system, model):
    # JAX_PLATFORMS names no backend: the first array, jit or device query would fail the run.
    r = _run(module, "--config", config, "--print_config",
             env_extra={"JAX_PLATFORMS": "no_such_backend"})
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    assert printed["system"] == system and printed["model"]["name"] == model
    name, _, arg = config.removeprefix("configs/").partition(":")
    expected = load_config(name.removesuffix(".py"), arg or None)
    assert printed == json.loads(json.dumps(expected.to_dict()))


@pytest.mark.parametrize("module, config", [
    ("abaw_jax.pretrain", "configs/finetune_expr.py:tiny"),
    ("abaw_jax.extract", "configs/extract_vit.py:demo"),
])
def test_print_config_of_pretrain_and_extract(module, config):
    key = "data.root" if "pretrain" in module else "frames"
    r = _run(module, "--config", config, "--print_config", f"--config.{key}=/nonexistent",
             env_extra={"JAX_PLATFORMS": "no_such_backend"})
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    name, _, arg = config.removeprefix("configs/").partition(":")
    expected = load_config(name.removesuffix(".py"), arg or None)
    node = expected.data if key == "data.root" else expected
    node[key.rpartition(".")[2]] = "/nonexistent"
    assert printed == json.loads(json.dumps(expected.to_dict()))
    assert ("model" in printed) == ("pretrain" in module)


def test_print_config_rejects_a_bad_config_and_workdir_stays_required():
    r = _run("abaw_jax.train", "--config", "configs/va.py", "--print_config",
             "--config.batch_size=0")
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.strip().splitlines()[-1] == "error: config.batch_size = 0: must be >= 1"
    r = _run("abaw_jax.train", "--config", "configs/va.py")
    assert r.returncode != 0 and "--workdir is required" in r.stderr


# ---------------------------------------------------------------------------------------------
# docs/systems.md: the last column of every system's table states its defaults as
# `[scope] key=value` items, checked here against the configs the command line resolves.

SYSTEMS_MD = ROOT / "docs" / "systems.md"
SYSTEM_MODELS = {"A": "transformer", "B": "tcn", "C": "fusion"}
TASKS = ("VA", "EXPR", "AU", "MTL")
ITEM = re.compile(r"`(?:\[(?P<scope>[^\]]+)\]\s*)?(?P<key>[\w.]+)\s*=\s*(?P<value>[^`]*)`")


def systems_table_rows(text: str) -> dict[str, list[tuple[str, str]]]:
    """{system: [(setting, checked cell)]} of the tables under '## System X' headings."""
    rows: dict[str, list[tuple[str, str]]] = {}
    system = None
    for line in text.splitlines():
        m = re.match(r"## System ([ABC])\b", line)
        if m:
            system = m.group(1)
            rows[system] = []
        elif line.startswith("## "):
            system = None
        elif system and line.startswith("|") and not set(line) <= set("|- "):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[:2] != ["setting", "paper"]:
                rows[system].append((cells[0], cells[-1]))
    return rows


def parse_value(text: str):
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def resolved(system: str, scope: str):
    """The config(s) an item's scope names: tasks ('VA', 'EXPR+AU'; default all four with the
    system's model) or a config file with its variant ('finetune_expr', 'extract_vit:mae')."""
    names = scope.split("+") if scope else list(TASKS)
    if all(n in TASKS for n in names):
        return [(n, load_config(n.lower(), f"model={SYSTEM_MODELS[system]}")) for n in names]
    name, _, arg = scope.partition(":")
    return [(scope, load_config(name, arg or None))]


def same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b)
    return a == b


def check_systems_doc(text: str) -> list[str]:
    from abaw_jax import checks
    errors = []
    rows = systems_table_rows(text)
    if sorted(rows) != ["A", "B", "C"]:
        errors.append(f"tables of systems {sorted(rows)}, expected A, B and C")
    cache: dict = {}
    for system, table in rows.items():
        for setting, cell in table:
            items = list(ITEM.finditer(cell))
            if not items:
                errors.append(f"system {system}, row {setting!r}: no `key=value` in its last cell")
            for item in items:
                scope = item["scope"] or ""
                if (system, scope) not in cache:
                    cache[system, scope] = resolved(system, scope)
                want = parse_value(item["value"])
                for where, config in cache[system, scope]:
                    try:
                        got = checks.get(config, item["key"])
                    except (KeyError, AttributeError):
                        got = "<missing>"
                    if not same(got, want):
                        errors.append(f"system {system}, row {setting!r}, {where}: "
                                      f"{item['key']} is {got!r}, the doc says {want!r}")
    return errors


def test_systems_doc_defaults_are_the_configs():
    errors = check_systems_doc(SYSTEMS_MD.read_text())
    assert not errors, "\n".join(errors)


def test_systems_doc_check_fails_on_a_doc_edit():
    """The check itself: a value edited in the doc alone, a key that does not exist, and a row
    without an item are each reported."""
    text = SYSTEMS_MD.read_text()
    assert "`model.dropout=0.3`" in text
    errors = check_systems_doc(text.replace("`model.dropout=0.3`", "`model.dropout=0.4`"))
    assert errors and all("model.dropout is 0.3, the doc says 0.4" in e for e in errors)
    errors = check_systems_doc(text.replace("`model.dropout=0.3`", "`model.drop=0.3`"))
    assert errors and "'<missing>'" in errors[0]
    errors = check_systems_doc(text.replace(" `model.dropout=0.3` |", " |"))
    assert errors == ["system B, row 'dropout': no `key=value` in its last cell"]


# ---------------------------------------------------------------------------------------------
# System B's fold schemes (data/folds.py).

def test_fold_schemes_of_the_authors_code(tiny_demo):
    from sklearn.model_selection import KFold
    from abaw_jax import config as config_lib
    from abaw_jax.data import affwild2
    from abaw_jax.data.folds import fold_split
    train = affwild2.load_split(tiny_demo, "EXPR", "train")
    val = affwild2.load_split(tiny_demo, "EXPR", "val")
    names = sorted(v.name for v in train + val)
    # The EXPR fold script: KFold(4, shuffle=True, random_state=42).
    for k, (_, idx) in enumerate(KFold(4, shuffle=True, random_state=42).split(names), start=1):
        got = [v.name for v in fold_split(train, val, k, 5, "kfold_shuffled")[1]]
        assert got == [names[i] for i in idx]
    # The released EXPR configs: the official split with other windows.
    assert fold_split(train, val, 3, 5, "windows") == (train, val)
    for k, (window, stride) in {1: (100, 50), 2: (150, 100), 3: (400, 200), 4: (50, 10)}.items():
        c = load_config("expr", f"model=tcn,folds=windows,fold={k}")
        assert (c.data.fold, c.data.fold_scheme) == (k, "windows")
        assert (c.data.seq_len, c.data.train_stride, c.data.eval_stride) == (window, stride, stride)
        config_lib.validate(c)
    c = load_config("expr", "model=tcn,folds=windows,fold=2")
    c.data.seq_len = 300
    with pytest.raises(config_lib.ConfigError, match="fold 2 of scheme 'windows' trains windows "
                       "of 150 at stride 100"):
        config_lib.validate(c)
    with pytest.raises(config_lib.ConfigError, match="variant folds='leaky'"):
        load_config("expr", "model=tcn,folds=leaky")


def test_system_a_windows_default_to_the_codes_and_chunks_is_a_variant():
    c = load_config("va")
    assert (c.data.train_stride, c.data.eval_readout) == (1, "last")
    c = load_config("va", "windows=chunks")
    assert (c.data.train_stride, c.data.eval_stride, c.data.eval_readout) == (0, 0, "average")
    c = load_config("va", "demo")
    assert (c.data.train_stride, c.data.eval_readout) == (0, "average")


# ---------------------------------------------------------------------------------------------
# System B at test time: its mode filter, its tiled windows, both EXPR scores at evaluate.

def _scipy_mode_filter(labels: np.ndarray, window: int) -> np.ndarray:
    """System B's test-time filter, frame by frame with scipy.stats.mode (a reference)."""
    from scipy import stats
    out = np.empty_like(labels)
    for i in range(len(labels)):
        lo, hi = max(0, i - window // 2), min(len(labels), i + window // 2 + 1)
        out[i] = stats.mode(labels[lo:hi], keepdims=False).mode
    return out


def test_mode_filter_is_scipys_mode_over_the_window():
    from abaw_jax import metrics
    rng = np.random.default_rng(0)
    # Runs of classes with noise, so that the filter changes something and ties occur.
    labels = np.repeat(rng.integers(0, 8, 40), rng.integers(1, 12, 40))
    labels = np.where(rng.random(labels.size) < 0.3, rng.integers(0, 8, labels.size), labels)
    for window in (2, 3, 7, 40, 1000):
        got = metrics.mode_filter(labels, window)
        np.testing.assert_array_equal(got, _scipy_mode_filter(labels, window), err_msg=window)
    assert (metrics.mode_filter(labels, 40) != labels).any()
    np.testing.assert_array_equal(metrics.mode_filter(labels, 0), labels)


def test_tiled_windows_are_the_test_codes():
    """`eval=tiled`: starts 0, L, 2L, ... while a window begins before the end, as system B's
    test loop (`range(length // stride + 1)`, stopping at a start past the end)."""
    from abaw_jax.data.pipeline import window_starts

    def code_starts(length, window, stride):
        out = []
        for i in range(length // stride + 1):
            if stride * i >= length:
                break
            out.append(stride * i)
        return out

    for length in (1, 50, 299, 300, 301, 599, 600, 601, 1234):
        assert window_starts(length, 300, 300, truncate_last=True).tolist() == \
            code_starts(length, 300, 300), length
    c = load_config("expr", "model=tcn,eval=tiled")
    assert (c.data.eval_stride, c.data.eval_last) == (0, "truncated")


def test_evaluate_reports_filtered_and_unfiltered_expr(tiny_demo, tmp_path):
    """B's EXPR evaluation: the mode-filtered F1 is the headline, the unfiltered one (the
    papers' validation protocol) is reported next to it; both recomputed here from the saved
    raw outputs with scipy's mode and scikit-learn's F1. `eval=tiled` evaluates too."""
    from sklearn.metrics import f1_score
    from abaw_jax import evaluation, train
    from abaw_jax.data import affwild2
    from conftest import tiny_config
    config = tiny_config("EXPR", tiny_demo, eval_mode_filter=8)
    config.data.eval_last = "truncated"
    train.train_and_evaluate(config, tmp_path)
    result = evaluation.evaluate(config, tmp_path, splits=("val",))["val"]
    with np.load(tmp_path / "predictions" / "val" / "EXPR_outputs.npz") as z:
        outputs = {k: z[k] for k in z.files}
    videos = affwild2.load_split(tiny_demo, "EXPR", "val")
    true = np.concatenate([v.labels for v in videos])
    valid = np.concatenate([v.valid for v in videos])
    raw = np.concatenate([outputs[v.name].argmax(-1) for v in videos])
    filt = np.concatenate([_scipy_mode_filter(outputs[v.name].argmax(-1), 8) for v in videos])

    def f1(pred):
        return f1_score(true[valid], pred[valid], average="macro", labels=list(range(8)),
                        zero_division=0)

    assert result["mode_filter"] == 8
    assert result["filtered_score"] == result["score"]
    assert math.isclose(result["filtered_score"], f1(filt), rel_tol=1e-6)
    assert math.isclose(result["unfiltered_score"], f1(raw), rel_tol=1e-6)


# ---------------------------------------------------------------------------------------------
# System C's multi-task model as its ABAW7 code runs it (models/fusion.py, configs/system_c.py).

def _abaw7_model(feature_noise=0.0):
    import jax
    import jax.numpy as jnp
    from abaw_jax.models import fusion
    cfg = fusion.tiny_config()
    cfg.update(fuse="sets", head_layers=1, task_models=(1, 1, 8, 12), mlp_ratio=4,
               head_sizes=(1, 1, 8) + (1,) * 12, feature_noise=feature_noise, dropout=0.0,
               input_dropout=0.0, feature_sets=("vit", "openface"),
               output_activation="tanh_va")
    model = fusion.from_config(cfg, 22)
    rng = np.random.default_rng(0)
    feats = {"vit": jnp.asarray(rng.normal(size=(2, 6, 32)), jnp.float32),
             "openface": jnp.asarray(rng.normal(size=(2, 6, 17)), jnp.float32)}
    mask = jnp.ones((2, 6), bool)
    variables = model.init({"params": jax.random.key(0)}, feats, mask, mask, train=False)
    return model, variables, feats, mask


def test_abaw7_task_models_each_give_their_own_outputs():
    """Four whole models trained together: outputs V, A, EXPR, AU come from models 0..3 only."""
    import jax
    model, variables, feats, mask = _abaw7_model()
    assert sorted(variables["params"]) == ["task_0", "task_1", "task_2", "task_3"]
    assert "cls_token" in variables["params"]["task_0"]
    apply = jax.jit(lambda v: model.apply(v, feats, mask, mask, train=False))
    base = np.asarray(apply(variables))
    assert base.shape == (2, 6, 22)
    groups = [slice(0, 1), slice(1, 2), slice(2, 10), slice(10, 22)]
    for k, cols in enumerate(groups):
        moved = jax.tree_util.tree_map_with_path(
            lambda path, x: x * 1.05 + 0.01 if path[1].key == f"task_{k}" else x, variables)
        out = np.asarray(apply(moved))
        changed = np.abs(out - base).max(axis=(0, 1)) > 1e-6
        assert changed[cols].all() and not np.delete(changed, np.arange(22)[cols]).any(), k


def test_abaw7_model_is_static_per_frame():
    """Tokens are the feature sets of one frame: a frame's outputs ignore every other frame."""
    model, variables, feats, mask = _abaw7_model()
    base = np.asarray(model.apply(variables, feats, mask, mask, train=False))
    feats = dict(feats, vit=feats["vit"].at[1, 3].add(1.0))
    out = np.asarray(model.apply(variables, feats, mask, mask, train=False))
    moved = np.abs(out - base).max(-1) > 1e-6
    assert moved[1, 3] and moved.sum() == 1


def test_feature_perturbation_moves_half_of_each_vector_in_training_only():
    import jax
    import jax.numpy as jnp
    from abaw_jax.models.fusion import perturb_features
    x = jnp.zeros((64, 10, 40))
    y = np.asarray(perturb_features(x, jax.random.key(0), 0.1))
    assert ((y != 0).sum(-1) == 20).all()
    assert abs(y[y != 0].std() - 0.1) < 0.01
    model, variables, feats, mask = _abaw7_model(feature_noise=0.1)
    train = jax.jit(lambda key: model.apply(variables, feats, mask, mask, train=True,
                                            rngs={"dropout": key}))
    a, b = (np.asarray(train(jax.random.key(s))) for s in (1, 2))
    assert np.abs(a - b).max() > 1e-4
    e1, e2 = (np.asarray(model.apply(variables, feats, mask, mask, train=False)) for _ in (1, 2))
    np.testing.assert_array_equal(e1, e2)


def test_mtl_defaults_are_abaw7s_and_abaw5_is_a_recipe():
    from abaw_jax import config as config_lib
    c = load_config("mtl")
    config_lib.validate(c)
    assert (c.model.fuse, c.model.d_affine, c.model.mlp_ratio, c.model.dropout) == ("sets", 384, 4, 0.5)
    assert tuple(c.model.task_models) == (1, 1, 8, 12) and c.model.head_layers == 1
    assert (c.batch_size, c.data.seq_len, c.num_epochs, c.early_stopping_patience) == (512, 1, 50.0, 0)
    assert (c.optimizer.weight_decay, c.optimizer.decay_rate) == (0.01, 0.9)
    assert dict(c.loss.task_weights) == {"VA": 1.0, "EXPR": 1.0, "AU": 2.0}
    old = load_config("mtl", "recipe=abaw5")
    config_lib.validate(old)
    assert (old.model.fuse, old.model.d_affine, old.model.mlp_ratio, old.model.head_layers) == \
        ("time", 384, 2, 2)
    assert (old.batch_size, old.data.seq_len, old.early_stopping_patience) == (128, 256, 15)
    assert dict(old.loss.task_weights) == {"VA": 1.0, "EXPR": 1.0, "AU": 1.0}
    demo = load_config("mtl", "demo")
    config_lib.validate(demo)
    assert demo.data.seq_len == 1 and demo.model.fuse == "sets"
    with pytest.raises(config_lib.ConfigError, match="recipe='abaw5'"):
        load_config("va", "model=fusion,recipe=abaw5")


# ---------------------------------------------------------------------------------------------
# Options no other test reached: class weights of system A's code, early stopping's min_delta,
# init_from, the evaluate --ensemble command line.

def test_one_minus_frequency_class_weights_are_the_codes(tiny_demo):
    """`loss.class_weights=one_minus_frequency`: EXPR focal weighted by 1 - n_c / sum(n) over the
    train split's valid frames; a float64 NumPy focal loss is the reference."""
    import jax.numpy as jnp
    from abaw_jax import training
    from abaw_jax.data import affwild2
    from conftest import tiny_config
    videos = affwild2.load_split(tiny_demo, "EXPR", "train")
    labels = np.concatenate([v.labels for v in videos])
    valid = np.concatenate([v.valid for v in videos])
    config = tiny_config("EXPR", tiny_demo)
    config.loss.class_weights = "one_minus_frequency"
    loss = training.task_loss(config, "EXPR", "focal", labels, valid)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(labels), 8)) * 2
    counts = np.bincount(labels[valid].astype(int), minlength=8).astype(np.float64)
    w = 1.0 - counts / counts.sum()
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    y = np.where(valid, labels, 0).astype(int)
    lp = logp[np.arange(len(y)), y]
    ref = (-0.25 * w[y] * (1 - np.exp(lp)) ** 2 * lp)[valid].mean()
    got = float(loss(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), jnp.asarray(valid)))
    assert math.isclose(got, ref, rel_tol=1e-4)
    config.loss.class_weights = ""
    plain = float(training.task_loss(config, "EXPR", "focal", labels, valid)(
        jnp.asarray(logits, jnp.float32), jnp.asarray(labels), jnp.asarray(valid)))
    assert not math.isclose(plain, ref, rel_tol=1e-3)


def test_early_stopping_min_delta_counts_small_gains_as_none(tmp_path):
    from abaw_jax import loop
    scores = [0.50, 0.505, 0.509]
    strict = loop._EarlyStopping(tmp_path / "a", patience=2, min_delta=0.01)
    plain = loop._EarlyStopping(tmp_path / "b", patience=2, min_delta=0.0)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    for step, score in enumerate(scores):
        strict.update(step, score)
        plain.update(step, score)
    # Each gain is under 0.01: two evaluations without improvement stop the strict run.
    assert strict.should_stop and strict.best_step == 0
    assert not plain.should_stop and plain.best_step == 2


def test_per_output_bests_need_the_codes_gain_and_reset_early_stopping(tmp_path):
    """ABAW5's VA code keeps a best-valence and a best-arousal model, each on a gain of at least
    1e-4, and resets early stopping whenever either one improves; ABAW7's multi-task code keeps
    each task's model on any gain (min_delta 0), never on a tie."""
    import ml_collections
    from flax import serialization
    from abaw_jax import best_parts, loop
    state = {"params": {"w": np.arange(3.0)}}
    tracker = best_parts.Tracker(tmp_path / "va", "VA", min_delta=1e-4)
    steps = [({"valence_ccc": 0.50, "arousal_ccc": 0.30}, ["valence", "arousal"]),
             ({"valence_ccc": 0.50005, "arousal_ccc": 0.40}, ["arousal"]),   # V gains 5e-5
             ({"valence_ccc": 0.50011, "arousal_ccc": 0.40}, ["valence"]),   # V gains 1.1e-4
             ({"valence_ccc": 0.45, "arousal_ccc": 0.39}, [])]
    for step, (values, want) in enumerate(steps, 1):
        state = {"params": {"w": np.arange(3.0) + step}}
        assert tracker.update(step, state, values) == want, step
    scores = json.loads((tmp_path / "va" / "best_parts" / "scores.json").read_text())
    assert {p: s["step"] for p, s in scores.items()} == {"valence": 3, "arousal": 2}
    assert scores["valence"]["score"] == pytest.approx(0.50011)
    saved = serialization.msgpack_restore(
        (tmp_path / "va" / "best_parts" / "arousal.msgpack").read_bytes())
    np.testing.assert_array_equal(saved["params"]["w"], np.arange(3.0) + 2)
    # A resumed tracker continues from the saved bests.
    again = best_parts.Tracker(tmp_path / "va", "VA", min_delta=1e-4)
    assert again.update(5, state, {"valence_ccc": 0.5001, "arousal_ccc": 0.40005}) == []
    # ABAW7 (min_delta 0): any gain counts, a tie does not.
    mtl = best_parts.Tracker(tmp_path / "mtl", "MTL", min_delta=0.0)
    first = {"valence_ccc": .5, "arousal_ccc": .3, "expr_f1": .2, "au_f1": .4}
    assert len(mtl.update(1, state, first)) == 4
    assert mtl.update(2, state, dict(first, expr_f1=.2 + 1e-9)) == ["expr"]

    # Early stopping: the mean CCC falls while arousal alone improves; the count restarts.
    stopper = loop._EarlyStopping(tmp_path / "va", patience=2, min_delta=1e-4)
    means = [0.40, 0.39, 0.38, 0.37]
    verdicts = [True, False, True, False]
    for step, (mean, verdict) in enumerate(zip(means, verdicts), 1):
        stopper.update(step, mean, verdict)
        assert not stopper.should_stop, step
    stopper.update(5, 0.36, False)
    assert stopper.should_stop and stopper.best == 0.40 and stopper.best_step == 1
    # What the training loop receives: an evaluation carrying the tracker's verdict.
    evaluation = loop.Evaluation(score=0.3, values={"valence_ccc": 0.9, "arousal_ccc": 0.1})
    run = loop.Run(mesh=None, plan=None, abstract_state=None, fresh_state=None,
                   train_iter=None, train_step=None, to_batch=None, items_per_step=0,
                   evaluate=lambda s, step: evaluation)
    tracked = best_parts.tracking(run, tmp_path / "t", ml_collections.ConfigDict(
        {"task": "VA", "best_per_output": True, "early_stopping_min_delta": 1e-4}))
    assert tracked.evaluate(state, 1).improved is True
    assert tracked.evaluate(state, 2).improved is False


def test_init_from_starts_from_another_runs_params(tiny_demo, tmp_path):
    """`init_from`: a run with a negligible lr started from another run's checkpoint keeps its
    params."""
    import jax
    from abaw_jax import checkpoints, train
    from conftest import tiny_config
    first = tiny_config("VA", tiny_demo, total_steps=3, eval_every=3, checkpoint_every=3)
    train.train_and_evaluate(first, tmp_path / "a")
    second = tiny_config("VA", tiny_demo, total_steps=3, eval_every=3, checkpoint_every=3,
                         seed=7, init_from=str(tmp_path / "a"))
    # An update of 1e-30 leaves float32 params of magnitude >= 1e-20 unchanged.
    second.optimizer.lr, second.optimizer.weight_decay = 1e-30, 0.0
    train.train_and_evaluate(second, tmp_path / "b")
    params = [checkpoints.restore_params(str(tmp_path / w), None)[1]["params"] for w in "ab"]
    leaves = [jax.tree.leaves(p) for p in params]
    assert len(leaves[0]) == len(leaves[1])
    for x, y in zip(*leaves):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # Without init_from the seed-7 run starts elsewhere.
    second.init_from = ""
    train.train_and_evaluate(second, tmp_path / "c")
    other = jax.tree.leaves(checkpoints.restore_params(str(tmp_path / "c"), None)[1]["params"])
    assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves[0], other))


def test_evaluate_ensemble_command_line(tiny_demo, tmp_path):
    """`python -m abaw_jax.evaluate --ensemble`: members averaged as probabilities per frame,
    the submission written under <workdir>/ensemble and the score printed."""
    from abaw_jax import ensemble, submission, train
    from conftest import tiny_config
    members = []
    for seed in (0, 1):
        config = tiny_config("EXPR", tiny_demo, seed=seed)
        train.train_and_evaluate(config, tmp_path / f"m{seed}")
        members.append(tmp_path / f"m{seed}")
    # Each member is evaluated with its own config (its workdir's config.json).
    r = _run("abaw_jax.evaluate", "--config", "configs/expr.py:demo",
             "--workdir", str(members[0]), "--ensemble", str(members[1]), "--splits", "val")
    assert r.returncode == 0, r.stderr
    assert "ensemble of 2 on val" in r.stderr
    out = members[0] / "ensemble" / "val"
    assert (out / "EXPR.txt").is_file()
    outs = [np.load(m / "predictions" / "val" / "EXPR_outputs.npz") for m in members]
    name = sorted(outs[0].files)[0]
    want = np.mean([ensemble.to_probabilities("EXPR", o[name]) for o in outs], axis=0).argmax(-1)
    got = submission.read_submission(out / "EXPR.txt", "EXPR")[name]
    np.testing.assert_array_equal([int(np.ravel(got[i])[0]) for i in sorted(got)], want)


def test_best_per_output_reads_each_output_from_its_best_parameters(tiny_demo, tmp_path,
                                                                    capsys):
    """`best_per_output` (system C's VA): each evaluation that improves valence or arousal keeps
    those parameters; `evaluate` predicts valence from the best-valence ones and arousal from
    the best-arousal ones (checked against a prediction with each part's saved parameters)."""
    import json as json_lib
    from flax import serialization
    from abaw_jax import evaluation, models, runs, sharding, train
    from conftest import tiny_config
    config = tiny_config("VA", tiny_demo, total_steps=9, eval_every=3, checkpoint_every=3)
    config.best_per_output = True
    train.train_and_evaluate(config, tmp_path)
    scores = json_lib.loads((tmp_path / "best_parts" / "scores.json").read_text())
    assert sorted(scores) == ["arousal", "valence"]
    history = [json_lib.loads(line)
               for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = {h["step"]: h for h in history if any(k.startswith("val/") and "valence" in k
                                                   for k in h)}
    for part in ("valence", "arousal"):
        key = next(k for k in evals[scores[part]["step"]] if k.startswith("val/") and part in k)
        assert scores[part]["score"] == pytest.approx(max(e[key] for e in evals.values()))
    capsys.readouterr()
    result = evaluation.evaluate(config, tmp_path, splits=("val",))["val"]
    assert (f"Each output from its own best parameters: valence from step "
            f"{scores['valence']['step']}, arousal from step {scores['arousal']['step']}"
            in capsys.readouterr().err)
    with np.load(tmp_path / "predictions" / "val" / "VA_outputs.npz") as z:
        got = {k: z[k] for k in z.files}
    # The reference: each part's saved parameters, predicted on their own.
    data = runs.resolve_data(config)
    mesh = sharding.make_mesh()
    setup = runs.setup_model(config, data.feature_dims, mesh)
    predict = runs.jit_predict(setup.model, mesh)
    state = setup.init_fn(setup.init_rng)
    for col, part in enumerate(("valence", "arousal")):
        raw = serialization.msgpack_restore(
            (tmp_path / "best_parts" / f"{part}.msgpack").read_bytes())
        outs = runs.predict_split(predict, models.model_variables(dict(state, **raw)), data.val,
                                  data.features, config, mesh)
        for v, o in zip(data.val, outs):
            np.testing.assert_allclose(got[v.name][:, col], o[:, col], rtol=1e-5, atol=1e-6)
    assert result["score"] == pytest.approx(evaluation.score_split(
        "VA", [got[v.name] for v in data.val], data.val)[0])


# ---------------------------------------------------------------------------------------------
# System B's fine-tuning: the MAE recipe's random erasing, Mixup and CutMix.

def test_mixup_and_cutmix_mix_the_batch_with_its_reverse():
    import jax
    import jax.numpy as jnp
    from abaw_jax.pretrain import mix_batch
    images = jnp.asarray(np.arange(4)[:, None, None, None] * np.ones((4, 16, 16, 3)), jnp.float32)
    seen_cut = seen_mix = False
    mix = jax.jit(lambda key: mix_batch(key, images, 0.8, 1.0))
    for seed in range(12):
        out, lam = mix(jax.random.key(seed))
        out, lam = np.asarray(out), float(lam)
        assert 0.0 <= lam <= 1.0
        own = images[:, :, :, 0] == out[:, :, :, 0]
        if np.isin(out, np.arange(4)).all():   # CutMix: every pixel from one of the two images
            seen_cut = True
            share = own[0].mean() if not np.array_equal(images[0], images[3]) else 1.0
            assert share == pytest.approx(lam, abs=1e-6)
            assert (out[0][~own[0]] == 3).all()
        else:                                  # Mixup: lam x + (1 - lam) x[::-1]
            seen_mix = True
            np.testing.assert_allclose(out, lam * images + (1 - lam) * images[::-1], atol=1e-5)
    assert seen_cut and seen_mix
    out, lam = mix_batch(jax.random.key(0), images, 0.8, 0.0)
    np.testing.assert_allclose(out, float(lam) * images + (1 - float(lam)) * images[::-1],
                               atol=1e-5)


def test_random_erasing_replaces_a_rectangle_of_some_images():
    import jax
    import jax.numpy as jnp
    from abaw_jax.pretrain import random_erase
    images = jnp.full((400, 32, 32, 3), 7.0)
    out = np.asarray(jax.jit(lambda key: random_erase(key, images, 0.25))(jax.random.key(0)))
    erased = (out != 7.0).any(-1)
    hit = erased.any(axis=(1, 2))
    assert 0.18 < hit.mean() < 0.32
    for mask in erased[hit]:
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        # One rectangle (its bounding box fully erased), of 2% to a third of the image.
        box = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert box.all()
        assert 0.015 <= box.size / mask.size <= 0.36
    assert abs(out[erased].std() - 1.0) < 0.05   # N(0, 1) noise
