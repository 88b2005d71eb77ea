"""abaw_jax.predict and abaw_jax.data.video: face video -> per-frame CSV, plot and overlay."""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import time

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2", reason="needs opencv-python-headless 4.x (the 'video' extra)")

from abaw_jax import predict as predict_lib  # noqa: E402
from abaw_jax.data import affwild2, video as video_lib  # noqa: E402
from conftest import TINY_DIM, tiny_config  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
FER_TEST = SHARED / "videos" / "fer_test.mp4"
CKPLUS = SHARED / "ckplus48"
FACE_MODEL = SHARED / "models" / "mediapipe" / "face_detection_full_range.tflite"
# A random-weight ViT whose 32-d output matches the tiny demo's features.
TINY_ENCODER = f"vit:Ti/16,width={TINY_DIM},depth=1,num_heads=2,mlp_dim=64,image_size=32"


@pytest.fixture(scope="module")
def runs(tiny_demo, tmp_path_factory):
    """Tiny VA and EXPR runs on the tiny demo (no AU run: its columns must stay empty)."""
    from abaw_jax import train
    out = tmp_path_factory.mktemp("predict_runs")
    workdirs = {}
    for task in ("VA", "EXPR"):
        config = tiny_config(task, tiny_demo, total_steps=2, **{
            "optimizer.warmup_steps": 1, "eval_every": 2, "checkpoint_every": 2, "log_every": 1})
        train.train_and_evaluate(config, out / task)
        workdirs[task] = out / task
    return workdirs


def _detector():
    """predict's default: BlazeFace with the full-range weights shipped with the package."""
    from abaw_jax.data import faces
    return faces.BlazeFaceDetector()


@pytest.fixture(scope="module")
def predictor(runs):
    return predict_lib.Predictor([runs["VA"], runs["EXPR"]], encoder=TINY_ENCODER, batch_size=8,
                                 detector=_detector())


def _face_image() -> np.ndarray:
    if not CKPLUS.is_dir():
        pytest.skip(f"real face images not found at {CKPLUS}")
    face = cv2.imread(str(sorted((CKPLUS / "happy").glob("*.png"))[0]), cv2.IMREAD_GRAYSCALE)
    return cv2.resize(face, (80, 80), interpolation=cv2.INTER_CUBIC)


def _write_clip(path: pathlib.Path, face_frames: set[int], n: int = 40, fps: float = 10.0) -> None:
    """A 160x120 mp4: a CK+ face pasted on `face_frames`, flat grey elsewhere."""
    face = _face_image()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (160, 120))
    assert writer.isOpened()
    for t in range(n):
        frame = np.full((120, 160), 90, np.uint8)
        if t in face_frames:
            frame[20:100, 40 + t % 3:120 + t % 3] = face
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()


def _read_csv_plainly(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _reference_outputs(run: predict_lib.Run, features: np.ndarray, present: np.ndarray,
                       tmp_path: pathlib.Path) -> np.ndarray:
    """The evaluation path of training: a feature store, eval windows and runs.predict_split."""
    from abaw_jax import runs, sharding
    from abaw_jax.data import features as features_lib
    t = len(present)
    path = tmp_path / f"store_{run.task}_{run.config.data.get('eval_readout', 'average')}"
    with features_lib.FeatureStoreWriter(path, dim=features.shape[1], dtype="float16") as w:
        w.write("clip", features, present)
    store = features_lib.FeatureStore(path)
    shape = (t, 2) if run.task == "VA" else (t,)
    video = affwild2.Video("clip", t, np.zeros(shape, np.float32), np.zeros(shape, bool), present)
    mesh = sharding.make_mesh(1)
    fn = runs.jit_predict(run.model, mesh)
    config = run.config.copy_and_resolve_references()
    config.eval_batch_size = 4
    return runs.predict_split(fn, run.params, [video], store, config, mesh)[0]


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_fer_video_to_csv_and_plot(runs, tmp_path):
    if not FER_TEST.is_file():
        pytest.skip(f"test video not found at {FER_TEST}")
    out, png = tmp_path / "clip.csv", tmp_path / "clip.png"
    rc = predict_lib.main(["--video", str(FER_TEST), "--workdir", str(runs["VA"]),
                           "--workdir", str(runs["EXPR"]), "--encoder", TINY_ENCODER,
                           "--out", str(out), "--plot", str(png), "--batch-size", "8",
                           "--min-face", "0.2", "--face-model", str(FACE_MODEL)])
    assert rc == 0
    rows = _read_csv_plainly(out)
    assert len(rows) == 115
    assert tuple(rows[0]) == predict_lib.COLUMNS
    found = np.array([int(r["face_found"]) for r in rows])
    assert found.mean() >= 0.95
    fps = cv2.VideoCapture(str(FER_TEST)).get(cv2.CAP_PROP_FPS)
    for i, r in enumerate(rows):
        assert int(r["frame"]) == i + 1
        assert float(r["timestamp_ms"]) == pytest.approx(i * 1000 / fps, abs=1e-3)
        va = [float(r["valence"]), float(r["arousal"])]
        assert all(-1 <= v <= 1 for v in va)
        probs = np.array([float(r[f"prob_{c}"]) for c in affwild2.EXPR_CLASSES])
        assert probs.sum() == pytest.approx(1.0, abs=2e-4)
        # The class is the argmax of the unrounded probabilities; the file keeps 4 decimals, so
        # a near-tie can put another class first there, never one more than 1e-4 below the top.
        chosen = probs[affwild2.EXPR_CLASSES.index(r["expression"])]
        assert chosen == pytest.approx(probs.max(), abs=1.01e-4)
        assert all(r[au] == "" for au in affwild2.AU_NAMES)   # no AU workdir
        if r["face_found"] == "1":
            x, y, w, h = (float(r[k]) for k in "xywh")
            assert w == pytest.approx(h, abs=0.1) and w > 40
            assert -w < x < 596 and -h < y < 336
    from PIL import Image
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 400


def test_fer_woman2_out_of_the_box(runs, tmp_path, monkeypatch):
    """No detector argument, no $ABAW_FACE_MODEL, no model file and no package beyond the
    'video' extra (the tflite parser is made unimportable): a face in >= 98% of 464 frames."""
    video = SHARED / "videos" / "fer_woman2.mp4"
    if not video.is_file():
        pytest.skip(f"test video not found at {video}")
    import sys
    from abaw_jax.data import faces
    monkeypatch.delenv(faces.MODEL_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "tflite", None)
    out = tmp_path / "woman.csv"
    assert predict_lib.main(["--video", str(video), "--workdir", str(runs["VA"]), "--encoder",
                             TINY_ENCODER, "--out", str(out), "--batch-size", "16"]) == 0
    rows = _read_csv_plainly(out)
    assert len(rows) == 464
    found = np.array([int(r["face_found"]) for r in rows])
    assert found.mean() >= 0.98
    interpolated = np.array([int(r["face_interpolated"]) for r in rows])
    scores = np.array([float(r["face_score"]) if r["face_score"] else 0.0 for r in rows])
    # Detected frames have the detector's score; bridged ones are flagged and score 0.
    assert ((scores >= 0.6) == (found.astype(bool) & ~interpolated.astype(bool))).all()
    assert all(r["x"] and -1 <= float(r["valence"]) <= 1 for r, f in zip(rows, found) if f)


def test_temporal_outputs_match_the_evaluation_path(predictor, tmp_path):
    """Windows, overlaps, absent frames and store rounding as in runs.predict_split."""
    present = np.ones(45, bool)
    present[[0, 1, 17, 18, 19, 44]] = False
    rng = np.random.default_rng(0)
    features = np.where(present[:, None], rng.normal(size=(45, TINY_DIM)), 0).astype(np.float32)
    for run in predictor.runs:
        got = predict_lib.run_temporal(run, features, present, batch_size=4)
        want = _reference_outputs(run, features, present, tmp_path)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        # System A's default readout: each frame from the window ending at it.
        config = run.config.copy_and_resolve_references()
        config.data.eval_readout = "last"
        causal = dataclasses.replace(run, config=config)
        got = predict_lib.run_temporal(causal, features, present, batch_size=4)
        want = _reference_outputs(causal, features, present, tmp_path)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert not np.allclose(got, predict_lib.run_temporal(run, features, present, batch_size=4),
                               atol=1e-4), "the readouts should differ"


def test_no_face_frames_are_flagged_and_predicted(predictor, tmp_path):
    # Frames 12..29 show a face except a 2-frame dropout at 20-21 (filled: max gap 0.5 s = 5
    # frames at 10 fps); 0..11 and 30..39 are blank.
    face = set(range(12, 30)) - {20, 21}
    clip = tmp_path / "blank.mp4"
    _write_clip(clip, face)
    table = predictor.predict_video(clip)
    assert len(table["frame"]) == 40
    found = table["face_found"].astype(bool)
    blank = np.array([t < 12 or t >= 30 for t in range(40)])
    assert not found[blank].any()
    assert found[~blank].all()
    assert (table["face_score"][[20, 21]] == 0).all()      # filled, not detected
    assert (table["face_score"][sorted(face)] > 0).all()
    assert np.isnan(table["x"][blank]).all() and np.isfinite(table["x"][~blank]).all()
    for col in ("valence", "arousal", *predict_lib.EXPR_COLUMNS):
        assert np.isfinite(table[col]).all(), col
    assert np.isnan(table["AU12"]).all()
    # Blank frames reach the model as absent, with zero features.
    np.testing.assert_array_equal(predictor.last_present, found)
    assert not predictor.last_features[blank].any()
    assert np.abs(predictor.last_features[~blank]).sum(1).min() > 0
    for run in predictor.runs:
        want = _reference_outputs(run, predictor.last_features, found, tmp_path / run.task)
        if run.task == "VA":
            np.testing.assert_allclose(table["valence"], np.clip(want[:, 0], -1, 1), atol=1e-5)
        else:
            np.testing.assert_allclose(
                np.stack([table[c] for c in predict_lib.EXPR_COLUMNS], 1), _softmax(want),
                atol=1e-5)
    out = tmp_path / "blank.csv"
    predict_lib.write_csv(table, out)
    rows = _read_csv_plainly(out)
    assert [r["x"] for r in rows[:12]] == [""] * 12
    assert rows[0]["face_found"] == "0" and rows[15]["face_found"] == "1"
    # The overlay has every frame.
    overlay = tmp_path / "overlay.mp4"
    predict_lib.write_overlay(clip, table, overlay)
    cap = cv2.VideoCapture(str(overlay))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 40
    assert sorted(x.name for x in tmp_path.glob("*overlay*")) == ["overlay.mp4"]
    # A table that runs out mid-video (a failure while drawing) leaves no video behind.
    broken = tmp_path / "broken.mp4"
    with pytest.raises(KeyError):
        predict_lib.write_overlay(clip, {k: v for k, v in table.items() if k != "face_found"},
                                  broken)
    assert not list(tmp_path.glob("*broken*"))


def test_clip_without_any_face_warns(predictor, tmp_path):
    frames = np.full((12, 96, 128, 3), 128, np.uint8)
    with pytest.warns(RuntimeWarning, match="no face found in any of its 12 frames"):
        table = predictor.predict_frames(frames, fps=25)
    assert (table["face_found"] == 0).all()
    assert np.isfinite(table["valence"]).all() and np.isfinite(table["prob_Neutral"]).all()
    assert not predictor.last_features.any()
    assert table["timestamp_ms"][-1] == pytest.approx(11 * 40.0)


def test_frame_folder_equals_array(predictor, tmp_path):
    face = _face_image()
    frames = np.full((6, 120, 160, 3), 90, np.uint8)
    frames[:, 20:100, 40:120] = face[..., None]
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, f in enumerate(frames):   # natural order: frame_2 before frame_10
        cv2.imwrite(str(folder / f"frame_{t * 4}.png"), f)
    a = predictor.predict_video(folder, fps=10)
    b = predictor.predict_frames(frames, fps=10)
    assert a["face_found"].all()
    for col in predict_lib.COLUMNS:
        if col == "expression":
            assert (a[col] == b[col]).all()
        else:
            np.testing.assert_array_equal(a[col], b[col], err_msg=col)


# ---------------------------------------------------------------------------------------------
# Tracking and crops against plain references.


def test_track_fills_short_gaps_and_prefers_the_tracked_face():
    det = [np.array([[10.0 + t, 20.0, 40.0, 40.0, 0.9]]) for t in range(30)]
    for t in (5, 6, 7):            # a 3-frame gap: filled
        det[t] = np.zeros((0, 5))
    for t in range(15, 25):        # a 10-frame gap: not filled
        det[t] = np.zeros((0, 5))
    # A larger face far away at frame 10: the track keeps the overlapping one.
    det[10] = np.array([[10.0 + 10, 20.0, 40.0, 40.0, 0.9], [100.0, 100.0, 60.0, 60.0, 0.8]])
    tr = video_lib.track_faces(det, max_gap=5, smooth=0.0)
    assert tr.found.tolist() == [t not in range(15, 25) for t in range(30)]
    assert tr.detected[[5, 6, 7]].tolist() == [False] * 3 and tr.score[[5, 6, 7]].tolist() == [0] * 3
    # Linear interpolation between frames 4 and 8.
    np.testing.assert_allclose(tr.boxes[4:9, 0], [14, 15, 16, 17, 18])
    np.testing.assert_allclose(tr.boxes[10], [20, 20, 40, 40])
    assert (tr.boxes[15:25] == 0).all()
    # Without a track, the largest face wins.
    single = video_lib.track_faces([det[10]], max_gap=5, smooth=0.0)
    np.testing.assert_allclose(single.boxes[0], [100, 100, 60, 60])


def test_track_smoothing_is_a_gaussian_inside_runs():
    rng = np.random.default_rng(1)
    x = 50 + rng.normal(size=20) * 3
    det = [np.array([[v, 10.0, 30.0, 30.0, 0.5]]) for v in x]
    tr = video_lib.track_faces(det, max_gap=0, smooth=2.0)
    k = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2)
    cx = x + 15
    want = [np.dot(k[max(0, 6 - i):13 - max(0, i + 7 - 20)], cx[max(0, i - 6):i + 7])
            / k[max(0, 6 - i):13 - max(0, i + 7 - 20)].sum() for i in range(20)]
    np.testing.assert_allclose(tr.boxes[:, 0] + 15, want, rtol=1e-5)


def test_crop_is_the_enlarged_square_with_black_padding():
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 255, (200, 300, 3), np.uint8)
    # Side 80 * (1 + 0.4) = 112: the crop is the frame slice itself, no resampling.
    crop = video_lib.crop_faces(frame[None], np.array([[100, 50, 80, 80]]), size=112, margin=0.4)
    np.testing.assert_array_equal(crop[0], frame[34:146, 84:196])
    # Half outside the top-left corner: the outside part is black.
    crop = video_lib.crop_faces(frame[None], np.array([[-40, -40, 80, 80]]), size=112, margin=0.4)
    np.testing.assert_array_equal(crop[0, :56, :56], 0)
    np.testing.assert_array_equal(crop[0, 56:, 56:], frame[:56, :56])


# ---------------------------------------------------------------------------------------------
# Bad input.


def test_restore_takes_evaluates_checkpoint_and_feature_store(runs, tmp_path):
    """predict restores the step `evaluate` restores (committed steps only: a newer step whose
    save was interrupted is skipped) and finds the store `runs.open_features` opens."""
    import shutil
    from abaw_jax import checkpoints, runs as runs_lib
    wd = tmp_path / "run"
    shutil.copytree(runs["VA"], wd)
    for sub in ("best", "checkpoints"):
        (wd / sub / "999" / "state").mkdir(parents=True)   # no commit marker: interrupted
    for which in ("best", "latest"):
        run = predict_lib.load_run(wd, which)
        assert run.step == checkpoints.find_step(wd, which)[1] == 2
    config = runs_lib.load_run_config(wd)
    store = runs_lib.open_features(config, runs_lib.data_root(config, build=False))
    assert run.store is not None and run.store.path == store.path
    assert run.store_dtype == store.dtype and run.extractor == store.extractor
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 7 .* have \[2\]"):
        predict_lib.load_run(wd, "7")


def test_transformer_fed_features_of_its_own_width_restores(tiny_demo, tmp_path):
    """System A at its published size takes 768-d features into a 768-d model: no input
    projection, so no parameter tells the input width; the model's width does."""
    from abaw_jax import train
    config = tiny_config("VA", tiny_demo, total_steps=1, **{
        "model.d_model": TINY_DIM, "optimizer.warmup_steps": 0, "eval_every": 1,
        "checkpoint_every": 1, "log_every": 1})
    train.train_and_evaluate(config, tmp_path / "run")
    run = predict_lib.load_run(tmp_path / "run")
    assert run.feature_dim == TINY_DIM and not any(
        "input" in str(k).lower() for k in run.params["params"])


def test_encoder_width_must_match_the_model(runs):
    wide = "vit:Ti/16,width=48,depth=1,num_heads=2,mlp_dim=64,image_size=32"
    with pytest.raises(predict_lib.PredictError, match=r"VA: the model takes 32-d features but "
                                                        r"encoder .* gives 48-d"):
        predict_lib.Predictor([runs["VA"]], encoder=wide)


def test_demo_runs_need_an_explicit_encoder(runs):
    with pytest.raises(predict_lib.PredictError, match=r"extractor 'demo:vit'.*pass --encoder"):
        predict_lib.Predictor([runs["VA"]])


def test_encoder_read_from_the_store_meta(runs, tmp_path):
    """A store written by abaw_jax.extract records the encoder: --encoder is then not needed."""
    config = json.loads((runs["VA"] / "config.json").read_text())
    store = tmp_path / "store"
    store.mkdir()
    # The meta keys abaw_jax.extract writes: the spec as given, then what it ran with.
    meta = {"format": "abaw_jax.features/1", "dim": TINY_DIM, "dtype": "float16",
            "extractor": f"{TINY_ENCODER} seed=3 pool=gap image_size=64x64",
            "params": {"encoder": TINY_ENCODER, "pool": "gap", "image_size": [64, 64], "seed": 3}}
    (store / "meta.json").write_text(json.dumps(meta))
    wd = tmp_path / "run"
    import shutil
    shutil.copytree(runs["VA"], wd)
    config["data"]["features"] = str(store)
    (wd / "config.json").write_text(json.dumps(config))
    p = predict_lib.Predictor([wd])
    assert p.encoder.spec == TINY_ENCODER
    assert p.encoder.module.image_size == 64 and p.encoder.module.pool == "gap"
    assert p.encoder.info["seed"] == 3


def test_bad_encoder_spec_and_missing_workdir(runs, tmp_path):
    with pytest.raises(predict_lib.PredictError, match=r"encoder 'vit:width=3'.*no variant"):
        predict_lib.Predictor([runs["VA"]], encoder="vit:width=3")
    with pytest.raises(predict_lib.PredictError, match=r"encoder 'vit:Zz/16'"):
        predict_lib.Predictor([runs["VA"]], encoder="vit:Zz/16")
    with pytest.raises(predict_lib.PredictError, match=r"encoder '.*missing.npz'"):
        predict_lib.Predictor([runs["VA"]], encoder=str(tmp_path / "missing.npz"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope" / "config.json")):
        predict_lib.Predictor([tmp_path / "nope"], encoder=TINY_ENCODER)


def test_bad_videos_name_the_file(tmp_path, capsys, runs):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(video_lib.VideoError, match=str(text)):
        video_lib.open_source(text)
    assert predict_lib.main(["--video", str(text), "--workdir", str(runs["VA"]), "--encoder",
                             TINY_ENCODER, "--out", str(tmp_path / "x.csv")]) == 2
    assert str(text) in capsys.readouterr().err
    with pytest.raises(video_lib.VideoError, match=r"no such video file"):
        video_lib.open_source(tmp_path / "missing.mp4")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(video_lib.VideoError, match=rf"{empty}: folder holds no frame images"):
        video_lib.open_source(empty)
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "00001.png"), np.zeros((20, 30, 3), np.uint8))
    cv2.imwrite(str(folder / "00002.png"), np.zeros((20, 40, 3), np.uint8))
    (folder / "00003.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(video_lib.VideoError, match=r"00002.png: frame is 40x20, the first"):
        list(video_lib.open_source(folder).chunks())
    (folder / "00002.png").unlink()
    with pytest.raises(video_lib.VideoError, match=r"00003.jpg: not a readable image"):
        list(video_lib.open_source(folder).chunks())
    with pytest.raises(video_lib.VideoError, match=r"uint8 \[T > 0, H, W, 3\]"):
        video_lib.open_source(np.zeros((0, 4, 4, 3), np.uint8))


def test_read_csv_names_the_line(tmp_path):
    path = tmp_path / "p.csv"
    header = ",".join(predict_lib.COLUMNS)
    path.write_text(header + "\n" + "1,2,3\n")
    with pytest.raises(predict_lib.PredictError, match=rf"{path}: line 2: 3 columns"):
        predict_lib.read_csv(path)
    path.write_text("frame,valence\n")
    with pytest.raises(predict_lib.PredictError, match=rf"{path}: line 1: header"):
        predict_lib.read_csv(path)


def test_timings_flag_prints_each_stage(runs, tmp_path, capsys):
    """`predict --timings`: a row per stage with seconds and frames/s over the clip's frames,
    the total their sum, and the one-time compilation apart."""
    clip = tmp_path / "clip.mp4"
    _write_clip(clip, set(range(5, 25)), n=30)
    start = time.perf_counter()
    rc = predict_lib.main(["--video", str(clip), "--workdir", str(runs["VA"]), "--encoder",
                           TINY_ENCODER, "--out", str(tmp_path / "clip.csv"), "--batch-size", "8",
                           "--detector", "haar", "--timings"])
    wall = time.perf_counter() - start
    assert rc == 0
    lines = capsys.readouterr().err.strip().splitlines()
    at = next(i for i, line in enumerate(lines) if line.split() == ["stage", "seconds", "frames/s"])
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]]
            for line in lines[at + 1:at + 2 + len(predict_lib.STAGES)]}
    assert list(rows) == [*predict_lib.STAGES, "total"]
    for stage, (seconds, rate) in rows.items():
        # frames/s is 30 over the unrounded seconds; the table rounds seconds to 0.01.
        assert seconds >= 0 and (seconds < 0.01 or
                                 30 / (seconds + 0.005) <= rate * 1.001 and
                                 rate <= 30 / (seconds - 0.005) * 1.001), stage
    assert rows["total"][0] == pytest.approx(sum(rows[s][0] for s in predict_lib.STAGES), abs=0.02)
    assert 0 < rows["total"][0] <= wall
    assert rows["decode"][0] > 0 and rows["detect"][0] > 0
    assert lines[at + 2 + len(predict_lib.STAGES)].endswith("30 frames)")


def test_restore_prints_no_orbax_metadata_warning(runs, caplog):
    """The input width is read from the checkpoint's metadata without orbax's expected warning
    about item metadata (a manager keeps it per step), as evaluate restores quietly."""
    import logging
    from abaw_jax import checkpoints
    with caplog.at_level(logging.WARNING):
        step, saved = checkpoints.state_metadata(runs["VA"], "best")
        predict_lib.load_run(runs["VA"])
    assert step >= 1 and "params" in saved
    assert not [r for r in caplog.records if "Metadata file does not exist" in r.getMessage()]


def test_a_damaged_run_or_a_bad_checkpoint_name_is_one_error_line(tmp_path, capsys):
    """Input mistakes reach the user as one line naming the file or the flag, not a traceback."""
    from abaw_jax import checkpoints
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{not json")
    assert predict_lib.main(["--video", str(FER_TEST), "--workdir", str(run),
                             "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert f"error: {run / 'config.json'}" in err and "Traceback" not in err
    assert not (tmp_path / "x.csv").exists()
    step = run / "checkpoints" / "5"
    step.mkdir(parents=True)
    (step / checkpoints.COMMIT_FILE).write_text("")
    with pytest.raises(checkpoints.CheckpointError, match=r"checkpoint 'abc': expected best, "
                       r"latest or a step number \(steps in .*: \[5\]\)"):
        checkpoints.find_step(run, "abc")
    assert checkpoints.find_step(run, "5")[1] == 5
