"""The multi-task challenge end to end on the tiny demo: train systems A, B and C on its MTL
split, score P_MTL, write the official submission for the validation split and the test list."""

from __future__ import annotations

import numpy as np
import pytest

from abaw_jax import ensemble, evaluation, losses, metrics, runs, submission, train
from abaw_jax.data import mtl
from conftest import load_config


TINY_MODELS = {
    "transformer": dict(d_model=16, num_heads=2, mlp_dim=32, num_layers=1),
    "tcn": dict(channels=(16, 8), dilations=(1, 2), d_model=16, num_heads=2, mlp_dim=32, num_layers=1,
                head_dim=8),
    "fusion": dict(d_affine=8, num_heads=2, num_layers=1),
}


def mtl_config(root, model: str, **overrides):
    """`configs/mtl.py:demo,model=<model>` with a tiny model and a 6-step run on `root`."""
    c = load_config("mtl", f"demo,model={model}")
    c.data.root, c.data.seq_len, c.data.num_threads = str(root), 16, 1
    c.data.feature_set = "vit"   # the tiny demo's frame features stand in for every system's
    c.data.train_stride = c.data.eval_stride = 0
    c.model.update(TINY_MODELS[model])
    c.batch_size, c.total_steps, c.optimizer.warmup_steps = 8, 6, 2
    c.log_every, c.eval_every, c.checkpoint_every, c.progress = 2, 3, 3, False
    c.update(overrides)
    return c


@pytest.mark.parametrize("model", ["fusion", "transformer", "tcn"])
def test_mtl_trains_and_writes_checked_submissions(tiny_demo, tmp_path, model, capsys):
    config = mtl_config(tiny_demo, model)
    result = train.train_and_evaluate(config, tmp_path)
    parts = [result[f"val/{k}"] for k in ("valence_ccc", "arousal_ccc", "expr_f1", "au_f1")]
    assert result["val/p_mtl"] == pytest.approx(metrics.mtl_combine(*parts))
    line = next(l for l in capsys.readouterr().err.splitlines() if l.startswith("eval at step 6"))
    assert "P_MTL" in line and "valence CCC" in line and "EXPR F1" in line and "AU F1" in line

    results = evaluation.evaluate(config, tmp_path)
    val_rows = mtl.load_mtl_split(tiny_demo, "val")
    val_images = [(v.name, int(f)) for v in val_rows for f in v.frames]
    got = submission.check_mtl_submission(tmp_path / "predictions" / "val" / "MTL.txt", val_images)
    assert len(got.images) == len(val_images)
    # The file scores what evaluate reported: the same classes and AUs, and VA up to the file's
    # three decimals.
    scored = submission.score_mtl_submission(tmp_path / "predictions" / "val" / "MTL.txt", val_rows)
    assert scored["expr_f1"] == pytest.approx(results["val"]["expr_f1"], abs=1e-12)
    assert scored["au_f1"] == pytest.approx(results["val"]["au_f1"], abs=1e-12)
    for part in ("valence_ccc", "arousal_ccc"):
        assert scored[part] == pytest.approx(results["val"][part], abs=2e-2)
    test_images = mtl.load_mtl_test(tiny_demo)
    submission.check_mtl_submission(tmp_path / "predictions" / "test" / "MTL.txt", test_images)


def test_every_listed_frame_gets_one_prediction_in_order(tiny_demo, tmp_path):
    """Windows run over each video's annotated frames in order; the predictions of the sampled
    frames are those of the frames' own rows (checked against a direct model call)."""
    config = mtl_config(tiny_demo, "fusion")
    train.train_and_evaluate(config, tmp_path)
    data = runs.resolve_data(config)
    lengths = {v.name: v.num_frames for v in data.val}
    rows = mtl.load_mtl_split(tiny_demo, "val")
    assert lengths == {v.name: v.num_rows for v in rows}
    # The features of row i are the store's row frame_i - 1.
    from abaw_jax.data.features import FeatureStore
    store = FeatureStore(tiny_demo / "features" / "vit")
    v = rows[0]
    np.testing.assert_array_equal(data.features.read(v.name)["vit"], store.read(v.name)[v.indices])


def test_multi_task_loss_uses_each_tasks_valid_labels_only():
    rng = np.random.default_rng(0)
    out = rng.normal(size=(2, 5, 22)).astype(np.float32)
    labels = np.zeros((2, 5, 15), np.float32)
    labels[..., 0:2] = rng.uniform(-1, 1, (2, 5, 2))
    labels[..., 2] = rng.integers(0, 8, (2, 5))
    labels[..., 3:] = rng.integers(0, 2, (2, 5, 12))
    valid = rng.random((2, 5, 15)) < 0.7
    fns = {"VA": losses.get_loss("VA", "ccc"), "EXPR": losses.get_loss("EXPR", "ce"),
           "AU": losses.get_loss("AU", "bce")}
    weights = {"VA": 1.0, "EXPR": 0.5, "AU": 2.0}
    got = float(losses.multi_task_loss(fns, weights)(out, labels, valid))
    want = (fns["VA"](out[..., 0:2], labels[..., 0:2], valid[..., 0:2])
            + 0.5 * fns["EXPR"](out[..., 2:10], labels[..., 2].astype(np.int32), valid[..., 2])
            + 2.0 * fns["AU"](out[..., 10:], labels[..., 3:].astype(np.int32), valid[..., 3:]))
    assert got == pytest.approx(float(want), rel=1e-6)
    # Labels where a task is not valid change nothing.
    scrambled = labels.copy()
    scrambled[~valid] = 7.0
    assert float(losses.multi_task_loss(fns, weights)(out, scrambled, valid)) == pytest.approx(got)


def test_ensemble_averages_mtl_tasks_in_their_own_spaces():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 22)), rng.normal(size=(6, 22))
    avg = ensemble.from_probabilities("MTL", (ensemble.to_probabilities("MTL", a)
                                              + ensemble.to_probabilities("MTL", b)) / 2)
    np.testing.assert_allclose(avg[:, :2], (a[:, :2] + b[:, :2]) / 2)
    p = lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(p(avg[:, 2:10]), (p(a[:, 2:10]) + p(b[:, 2:10])) / 2, atol=1e-6)
    s = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    np.testing.assert_allclose(s(avg[:, 10:]), (s(a[:, 10:]) + s(b[:, 10:])) / 2, atol=1e-6)


def test_one_mtl_run_fills_every_column_of_predict(tiny_demo, tmp_path):
    """predict with a single multi-task run: valence, arousal, expression and AU columns."""
    import pathlib
    from abaw_jax import predict as predict_lib
    from abaw_jax.data import faces
    config = mtl_config(tiny_demo, "transformer", total_steps=2, eval_every=2, checkpoint_every=2)
    train.train_and_evaluate(config, tmp_path / "run")
    encoder = "vit:Ti/16,width=32,depth=1,num_heads=2,mlp_dim=64,image_size=32"
    predictor = predict_lib.Predictor([tmp_path / "run"], encoder=encoder, batch_size=8,
                                      detector=faces.HaarDetector())
    assert predictor.tasks == ("VA", "EXPR", "AU")
    ckplus = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "ckplus48" / "happy"
    if not ckplus.is_dir():
        pytest.skip(f"real face images not found at {ckplus}")
    import cv2
    frames = np.full((5, 120, 160, 3), 90, np.uint8)
    face = cv2.imread(str(sorted(ckplus.glob("*.png"))[0]), cv2.IMREAD_GRAYSCALE)
    frames[:, 20:100, 40:120] = cv2.resize(face, (80, 80), interpolation=cv2.INTER_CUBIC)[..., None]
    table = predictor.predict_frames(frames, fps=10)
    for column in ("valence", "arousal", "prob_Neutral", "AU12"):
        assert np.isfinite(table[column]).all(), column
    assert np.all(np.abs(table["valence"]) <= 1)
    probs = np.stack([table[c] for c in predict_lib.EXPR_COLUMNS], axis=1)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
