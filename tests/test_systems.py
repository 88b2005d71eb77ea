"""Every shipped config (systems A, B, C on VA, EXPR, AU) loads, validates and trains 2 steps."""

from __future__ import annotations

import numpy as np
import pytest

from abaw_jax import config as config_lib
from abaw_jax import metrics, train
from conftest import load_config

MODELS = ["transformer", "tcn", "fusion"]


def short(config, root, **extra):
    config.data.root = str(root)
    config.data.feature_set = "vit"   # a dataset root names its store: the tiny demo's frame features
    config.data.num_threads = 1
    config.batch_size = 8
    config.total_steps = 2
    config.optimizer.warmup_steps = 1
    config.log_every = config.eval_every = config.checkpoint_every = 2
    config.progress = False
    for k, v in extra.items():
        setattr(config.data, k, v)
    return config


def traced_step(config) -> None:
    """Traces one train step of the run `train` builds for `config` (device bank included) on a
    real batch of its data (shapes only, nothing is compiled) and checks that the new state has
    the shapes and dtypes of the old one and that the loss is a scalar: the model, its heads and
    the task's loss fit together."""
    import jax
    from abaw_jax import training
    built = training.build_run(config)
    # data.device_bank "auto": the tiny demo fits on the device, so the step traced here is the
    # bank's, as in a real run of this config.
    assert built.bank is not None
    run = built.run
    batch = run.to_batch(next(run.train_iter))
    new, stats = jax.eval_shape(run.train_step, run.abstract_state, batch)
    shape = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
    assert shape(new) == shape(run.abstract_state)
    assert stats["loss"].shape == () and stats["grad_norm"].shape == ()


# Each system trains on one task (and each task with one system) long enough to beat chance;
# the other combinations are traced: their step is built and checked for shapes without
# compiling it.
TRAINED = (("va", "transformer"), ("expr", "tcn"), ("au", "fusion"))
DEMO_STEPS = {"va": 20, "expr": 2, "au": 40}


def shuffled_f1(videos) -> float:
    """Chance for AU: scikit-learn's mean F1 of the validation labels against a shuffle of
    themselves (a guess with the right positive rate)."""
    from sklearn.metrics import f1_score
    labels = np.concatenate([v.labels for v in videos])
    valid = np.concatenate([v.valid for v in videos])
    rng = np.random.default_rng(0)
    return float(np.mean([f1_score(labels[valid[:, j], j], rng.permutation(labels[valid[:, j], j]))
                          for j in range(labels.shape[1])]))


@pytest.mark.parametrize("task,model", [(t, m) for m in MODELS for t in ("va", "expr", "au")])
def test_demo_variant_trains(tiny_demo, tmp_path, task, model):
    config = short(load_config(task, f"demo,model={model}"), tiny_demo, seq_len=32,
                   train_stride=0, eval_stride=0)
    config_lib.validate(config)
    if (task, model) not in TRAINED:
        traced_step(config)
        return
    config.total_steps = config.log_every = config.eval_every = DEMO_STEPS[task]
    config.checkpoint_every = DEMO_STEPS[task]
    result = train.train_and_evaluate(config, tmp_path)
    score = result[f"val/{metrics.score_name(task.upper())}"]
    # Measured on the tiny demo (2-core CPU): VA CCC 0.22 after 20 steps (0.02 after 2; chance
    # 0); AU F1 0.47 after 40 steps against 0.31 for shuffled labels. EXPR: the tiny demo's
    # validation frames are 93% two classes, and 40 (or 120) steps reach a macro F1 of 0.06
    # (0.05), below the shuffled labels' 0.12: EXPR takes 2 steps and only finiteness is checked.
    if task == "va":
        assert score > 0.1
    elif task == "au":
        from abaw_jax.data import affwild2
        assert score > shuffled_f1(affwild2.load_split(tiny_demo, "AU", "val")) + 0.1
    else:
        assert np.isfinite(score)


@pytest.mark.parametrize("task,model", [("va", "transformer"), ("expr", "tcn"), ("au", "fusion")])
def test_paper_size_config_trains(tiny_demo, tmp_path, task, model):
    """The paper-size models (not only the laptop variants) build and take 2 steps (system B,
    the one with batch statistics); A and C, whose laptop variants train above, are traced."""
    config = short(load_config(task, f"model={model}"), tiny_demo, seq_len=32,
                   train_stride=0, eval_stride=0)
    # The tiny demo's feature sets stand in for the systems' own (B's fine-tuned MAE features,
    # C's ResNet-18 + POSTER2 + FAU).
    config.data.feature_set = "vit"
    if model == "fusion":
        config.model.feature_sets = ("vit", "openface")
    config_lib.validate(config)
    if model != "tcn":
        traced_step(config)
        return
    result = train.train_and_evaluate(config, tmp_path)
    assert np.isfinite(result[f"val/{metrics.score_name(task.upper())}"])


def test_folds_are_the_papers(tiny_demo):
    """Fold 0 is the official split; folds 1.. re-split Train + Validation into num_folds - 1
    video-disjoint parts, each video validated exactly once, deterministically."""
    from abaw_jax.data import affwild2
    from abaw_jax.data.folds import fold_split
    train = affwild2.load_split(tiny_demo, "VA", "train")
    val = affwild2.load_split(tiny_demo, "VA", "val")
    videos = train + val
    assert fold_split(train, val, 0, 4) == (train, val)
    assert fold_split(train, val, -1, 4) == (train, val)
    seen = []
    for k in (1, 2, 3):
        tr, va = fold_split(train, val, k, 4)
        assert not {v.name for v in tr} & {v.name for v in va}
        assert {v.name for v in tr} | {v.name for v in va} == {v.name for v in videos}
        # _left/_right crops of one source video never straddle train and val.
        assert not ({affwild2.source_video(v.name) for v in tr}
                    & {affwild2.source_video(v.name) for v in va})
        seen += [v.name for v in va]
        assert [v.name for v in fold_split(train, val, k, 4)[1]] == [v.name for v in va]
    assert sorted(seen) == sorted(v.name for v in videos)
    with pytest.raises(ValueError, match="fold 4 is not in"):
        fold_split(train, val, 4, 4)


def test_ungrouped_folds_are_kfold_over_sorted_names(tiny_demo):
    """The authors' code's split: scikit-learn KFold without shuffling over the sorted videos."""
    from sklearn.model_selection import KFold
    from abaw_jax.data import affwild2
    from abaw_jax.data.folds import fold_split
    train = affwild2.load_split(tiny_demo, "VA", "train")
    val = affwild2.load_split(tiny_demo, "VA", "val")
    names = sorted(v.name for v in train + val)
    for k, (_, idx) in enumerate(KFold(n_splits=3).split(names), start=1):
        got = [v.name for v in fold_split(train, val, k, 4, "ungrouped")[1]]
        assert got == [names[i] for i in idx]


def test_fold_config_trains(tiny_demo, tmp_path):
    config = short(load_config("va", "demo"), tiny_demo, seq_len=16)
    config.data.fold, config.data.num_folds = 1, 3
    result = train.train_and_evaluate(config, tmp_path)
    assert np.isfinite(result["val/va_ccc"])


def test_ensemble_averages_members(tiny_demo, tmp_path):
    from abaw_jax import ensemble
    members = []
    for seed in (0, 1):
        config = short(load_config("expr", "demo"), tiny_demo, seq_len=16)
        config.seed = seed
        train.train_and_evaluate(config, tmp_path / f"m{seed}")
        members.append(tmp_path / f"m{seed}")
    result = ensemble.ensemble(members, tmp_path / "ens", splits=("val",))
    assert np.isfinite(result["val"]["score"])
    outs = [np.load(m / "predictions" / "val" / "EXPR_outputs.npz") for m in members]
    ens = np.load(tmp_path / "ens" / "val" / "EXPR_outputs.npz")
    for name in ens.files:
        # Averaged softmax probabilities, computed here independently.
        p = [np.exp(o[name]) / np.exp(o[name]).sum(-1, keepdims=True) for o in outs]
        np.testing.assert_allclose(np.exp(ens[name]), (p[0] + p[1]) / 2, rtol=1e-5, atol=1e-7)


def test_ablation_script_writes_table(tiny_demo, tmp_path):
    import subprocess
    import sys
    from conftest import ROOT
    r = subprocess.run(
        [sys.executable, "scripts/ablations.py", "--set", "B", "--out", str(tmp_path),
         "--tasks", "va", "--steps", "2", "--size", "demo", f"--config.data.root={tiny_demo}",
         "--config.data.feature_set=vit", "--config.batch_size=8", "--config.data.seq_len=32",
         "--config.data.train_stride=0", "--config.data.eval_stride=0"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    table = (tmp_path / "table.md").read_text()
    assert "w/o TCN" in table and "w/o Transformer" in table
    assert (tmp_path / "table.png").stat().st_size > 1000


def test_causal_readout_sees_no_future_frame(tmp_path):
    """`:windows=causal` (system A's code): frame t is predicted from the window ending at t;
    changing any later frame changes nothing before it, and each frame gets one prediction."""
    from abaw_jax import runs, sharding
    from abaw_jax.data import affwild2
    from abaw_jax.data.features import FeatureStore, FeatureStoreWriter
    config = load_config("va", "demo,windows=causal")
    assert config.data.train_stride == 1 and config.data.eval_readout == "last"
    config.data.seq_len, config.eval_batch_size = 8, 4
    config.model.update(d_model=16, num_heads=2, mlp_dim=32, num_layers=1)
    rng = np.random.default_rng(0)
    t, k = 20, 11
    feats = rng.normal(size=(t, 24)).astype(np.float32)
    later = feats.copy()
    later[k + 1:] = rng.normal(size=(t - k - 1, 24))
    outs = []
    for name, x in (("a", feats), ("b", later)):
        with FeatureStoreWriter(tmp_path / name, dim=24, dtype="float32") as w:
            w.write("clip", x, np.ones(t, bool))
        store = FeatureStore(tmp_path / name)
        video = affwild2.Video("clip", t, np.zeros((t, 2), np.float32), np.ones((t, 2), bool),
                               np.ones(t, bool))
        mesh = sharding.make_mesh(1)
        setup = runs.setup_model(config, 24, mesh)
        state = setup.init_fn(setup.init_rng)
        outs.append(runs.predict_split(runs.jit_predict(setup.model, mesh),
                                       {"params": state["params"]}, [video], store, config,
                                       mesh)[0])
    np.testing.assert_allclose(outs[0][:k + 1], outs[1][:k + 1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(outs[0][k + 1:], outs[1][k + 1:])
