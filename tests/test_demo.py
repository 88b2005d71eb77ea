"""Tests of abaw_jax.data.demo: layout, round trips through the official parser, realism, learnability."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import Ridge, RidgeClassifier
from sklearn.metrics import accuracy_score, f1_score

from abaw_jax.data import affwild2 as aw
from abaw_jax.data import demo
from abaw_jax.data.features import FeatureStore

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
COUNTER_FRAME = DATA / "affwild2_meta" / "counter_frame.csv"

SMALL = dict(num_videos=8, seed=3, length_scale=0.03, feature_sets={"vit": 24, "openface": 17}, jpeg=True,
             jpeg_size=32)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> pathlib.Path:
    return demo.build_demo(tmp_path_factory.mktemp("demo") / "small", **SMALL)


def _truth(**kwargs) -> dict[str, tuple[demo.DemoVideo, demo.DemoLabels]]:
    videos = demo.plan_videos(kwargs["num_videos"], seed=kwargs["seed"], length_scale=kwargs["length_scale"])
    return {v.name: (v, demo.simulate(v, kwargs["seed"])) for v in videos}


def test_parser_reads_back_the_generated_labels(small):
    truth = _truth(**SMALL)
    seen = set()
    for task in aw.TASKS:
        for split in aw.SPLITS:
            videos = aw.load_split(small, task, split)
            assert videos, f"{task} {split} is empty"
            for v in videos:
                plan, labels = truth[v.name]
                assert plan.split == split and task in plan.tasks
                assert v.num_frames == plan.num_frames
                np.testing.assert_array_equal(v.valid, labels.valid[task])
                np.testing.assert_array_equal(v.labels, labels.labels(task))
                # Images exist exactly for the frames with a face (extra images past the end ignored).
                np.testing.assert_array_equal(v.present, labels.present)
                seen.add(v.name)
    annotated = {n for n, (p, _) in truth.items() if p.split != "test"}
    assert seen == annotated
    # Not every video in every challenge, like the real data.
    assert any(len(p.tasks) < 3 for p, _ in truth.values())


def test_test_lists_and_image_counts(small):
    truth = _truth(**SMALL)
    for task in aw.TASKS:
        videos = aw.test_videos(small, task)
        expected = [n for n, (p, _) in sorted(truth.items()) if p.split == "test" and task in p.tasks]
        assert [v.name for v in videos] == expected and videos
        for v in videos:
            plan, labels = truth[v.name]
            assert v.num_frames == plan.num_frames
            np.testing.assert_array_equal(v.present, labels.present)
            assert not (small / aw.ANNOTATIONS_DIR / "VA_Estimation_Challenge" / "Train_Set" / f"{v.name}.txt").exists()


def test_feature_stores(small):
    truth = _truth(**SMALL)
    for name, dim in SMALL["feature_sets"].items():
        store = FeatureStore(small / "features" / name)
        assert store.videos == sorted(truth) and store.dim == dim and store.dtype == np.float16
        for video, (plan, labels) in truth.items():
            x = np.asarray(store.read(video), np.float32)
            assert x.shape == (plan.num_frames, dim)
            np.testing.assert_array_equal(store.present(video), labels.present)
            assert not x[~labels.present].any(), "features are zero where there is no face"
            assert np.abs(x[labels.present]).sum(axis=1).min() > 0
            if name == "openface":
                assert x.min() >= 0 and x.max() <= 5


def test_images_are_jpegs_of_the_requested_size(small):
    from PIL import Image

    folder = small / aw.FRAMES_DIR
    some = sorted(folder.iterdir())[0]
    with Image.open(sorted(some.iterdir())[0]) as img:
        assert img.format == "JPEG" and img.size == (32, 32) and img.mode == "RGB"


def _all_files(root: pathlib.Path) -> dict[str, bytes]:
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "meta.json":  # the feature store records its creation time
                meta = json.loads(data)
                meta.pop("created")
                data = json.dumps(meta, sort_keys=True).encode()
            files[str(p.relative_to(root))] = data
    return files


def test_deterministic(tmp_path):
    kwargs = dict(num_videos=5, seed=7, length_scale=0.02, feature_sets={"vit": 8, "openface": 17}, jpeg=True,
                  jpeg_size=24)
    a = _all_files(demo.build_demo(tmp_path / "a", **kwargs))
    b = _all_files(demo.build_demo(tmp_path / "b", **kwargs))
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], name
    assert any(name.endswith(".jpg") for name in a) and any(name.endswith(".bin") for name in a)
    c = _all_files(demo.build_demo(tmp_path / "c", **{**kwargs, "seed": 8}))
    shards = [n for n in a if n.startswith("features/vit/") and n.endswith(".bin")]
    assert shards and all(a[n] != c.get(n) for n in shards)


def test_names_in_every_real_form():
    videos = demo.plan_videos(120, seed=0, length_scale=0.1)
    names = [v.name for v in videos]
    assert len(set(names)) == len(names) and names == sorted(names)
    parsed = [aw.parse_video_name(n) for n in names]
    sources = {p.source for p in parsed}
    assert any(s.isdigit() for s in sources)
    assert any(p.size and p.source.count("-") == 2 for p in parsed)  # 1-30-1280x720
    assert any(p.size and p.source.count("-") == 3 for p in parsed)  # 122-60-1920x1080-3
    assert any(s.startswith("video") and s[5:].isdigit() for s in sources)  # video45
    assert any(s.startswith("video") and "_" in s for s in sources)  # video45_1
    sides = {}
    for v, p in zip(videos, parsed):
        if p.side:
            sides.setdefault(p.source, []).append(v)
    assert sides, "some videos are _left / _right pairs"
    for pair in sides.values():
        assert sorted(aw.parse_video_name(v.name).side for v in pair) == ["left", "right"]
        assert len({v.split for v in pair}) == 1 and len({v.num_frames for v in pair}) == 1
    # Source videos, not video names, are split: no source in two splits.
    split_of = {}
    for v in videos:
        assert split_of.setdefault(aw.source_video(v.name), v.split) == v.split
    counts = {s: sum(v.split == s for v in videos) for s in ("train", "val", "test")}
    assert counts["test"] >= 1 and 0.2 < counts["val"] / (counts["train"] + counts["val"]) < 0.4


@pytest.mark.skipif(not COUNTER_FRAME.exists(), reason=f"real Aff-Wild2 video lengths not found at {COUNTER_FRAME}")
def test_lengths_match_the_real_distribution():
    real = np.array([int(line.split(",")[1]) for line in COUNTER_FRAME.read_text().splitlines()[1:]])
    fake = demo.source_lengths(548, seed=0, length_scale=1.0)
    assert len(real) == len(fake) == 548
    for q in (25, 50, 75):
        assert abs(np.percentile(fake, q) / np.percentile(real, q) - 1) < 0.25, q
    assert abs(fake.sum() / real.sum() - 1) < 0.15
    assert stats.ks_2samp(fake, real).statistic < 0.08
    assert fake.min() >= 73 * 0.9 and fake.max() <= 47434
    # The plan uses these lengths; pairs add videos, not sources.
    plan = demo.plan_videos(548, seed=0, length_scale=1.0)
    by_source = {aw.source_video(v.name): v.num_frames for v in plan}
    assert sorted(by_source.values()) == sorted(fake.tolist())


def test_length_scale_keeps_short_videos():
    lengths = np.array([v.num_frames for v in demo.plan_videos(40, seed=0, length_scale=0.1)])
    assert lengths.min() >= demo.MIN_FRAMES and (lengths < 100).sum() >= 2 and lengths.max() > 1000


@pytest.fixture(scope="module")
def simulated():
    videos = demo.plan_videos(60, seed=1, length_scale=0.1)
    return [(v, demo.simulate(v, 1)) for v in videos]


def test_expression_imbalance(simulated):
    counts = np.zeros(8)
    for _, labels in simulated:
        counts += np.bincount(labels.expr, minlength=8)
    share = dict(zip(aw.EXPR_CLASSES, counts / counts.sum()))
    rest = [c for c in aw.EXPR_CLASSES if c not in ("Neutral", "Happiness")]
    assert share["Neutral"] > share["Happiness"] > max(share[c] for c in rest)
    assert share["Fear"] < 0.06 and share["Disgust"] < 0.06
    assert 0.05 < share["Other"] < share["Happiness"]
    assert set(sorted(share, key=share.get)[:3]) >= {"Fear", "Disgust"}


def test_labels_are_correlated_like_real_affect(simulated):
    expr = np.concatenate([l.expr for _, l in simulated])
    va = np.concatenate([l.va for _, l in simulated])
    au = np.concatenate([l.au for _, l in simulated])
    cls = {c: expr == i for i, c in enumerate(aw.EXPR_CLASSES)}
    a = {n: au[:, i] for i, n in enumerate(aw.AU_NAMES)}
    assert va[cls["Happiness"], 0].mean() > 0.3 > va[cls["Neutral"], 0].mean()
    assert va[cls["Sadness"], 0].mean() < -0.2 and va[cls["Anger"], 1].mean() > 0.3
    assert va.min() >= -1 and va.max() <= 1
    np.testing.assert_array_equal(np.rint(va.astype(np.float64) * 1000) / 1000, va.astype(np.float64).round(3))
    for c, aus in (("Happiness", ("AU6", "AU12")), ("Surprise", ("AU1", "AU2", "AU25", "AU26")),
                   ("Anger", ("AU4",)), ("Sadness", ("AU4", "AU15")), ("Disgust", ("AU10",))):
        for n in aus:
            assert a[n][cls[c]].mean() > 2 * a[n][cls["Neutral"]].mean() + 0.1, (c, n)
    # AUs switch on and off in runs, not frame by frame.
    changes = np.abs(np.diff(au, axis=0)).mean()
    assert changes < 0.1


def test_invalid_spans_and_missing_faces(simulated):
    va_both = va_one = expr_bad = au_rows = au_one = 0
    frames = absent = runs = 0
    for _, l in simulated:
        va_both += (~l.valid["VA"]).all(axis=1).sum()
        va_one += ((~l.valid["VA"]).sum(axis=1) == 1).sum()
        expr_bad += (~l.valid["EXPR"]).sum()
        au_rows += (~l.valid["AU"]).all(axis=1).sum()
        au_one += ((~l.valid["AU"]).sum(axis=1) == 1).sum()
        frames += len(l.present)
        absent += (~l.present).sum()
        runs += (np.diff(np.concatenate([[0], (~l.present).astype(int)])) == 1).sum()
    assert min(va_both, va_one, expr_bad, au_rows, au_one) > 0
    assert 0.03 <= absent / frames <= 0.08
    assert absent / runs > 5, "frames without a face come in runs"


def test_window_of_frames_beats_single_frames(tmp_path):
    """Features are noisy, blurred and lagged views of the state: linear models on a window of
    frames beat one on a single frame, and a window after frame t beats one before it."""
    root = demo.build_demo(tmp_path / "d", num_videos=16, seed=0, length_scale=0.1, feature_sets={"vit": 32})
    store = FeatureStore(root / "features" / "vit")
    windows = {"frame": [0], "wide": range(-12, 13, 3), "past": range(-12, 1, 3), "future": range(0, 13, 3)}

    def xy(task, split, offsets):
        x_all, y, ok = [], [], []
        for v in aw.load_split(root, task, split):
            x = np.asarray(store.read(v.name), np.float32)
            idx = np.clip(np.arange(v.num_frames)[:, None] + np.asarray(offsets), 0, v.num_frames - 1)
            x_all.append(x[idx].reshape(v.num_frames, -1))
            y.append(v.labels)
            ok.append(v.valid if task == "EXPR" else v.valid[:, 0])
        ok = np.concatenate(ok)
        return np.concatenate(x_all)[ok], np.concatenate(y)[ok]

    expr = {}
    for name, offsets in windows.items():
        (x_tr, y_tr), (x_va, y_va) = xy("EXPR", "train", offsets), xy("EXPR", "val", offsets)
        pred = RidgeClassifier(alpha=1.0).fit(x_tr, y_tr).predict(x_va)
        expr[name] = (accuracy_score(y_va, pred), f1_score(y_va, pred, average="macro"))
    chance = np.bincount(y_va).max() / len(y_va)
    assert expr["wide"][0] > expr["frame"][0] + 0.2 and expr["wide"][0] > chance + 0.1, (expr, chance)
    assert expr["wide"][1] > expr["frame"][1] + 0.1, expr
    assert expr["future"][0] > expr["past"][0] + 0.05, expr

    va = {}
    for name in ("frame", "wide"):
        (x_tr, y_tr), (x_va, y_va) = xy("VA", "train", windows[name]), xy("VA", "val", windows[name])
        pred = Ridge(alpha=1.0).fit(x_tr, y_tr[:, 0]).predict(x_va)
        va[name] = np.corrcoef(pred, y_va[:, 0])[0, 1]
    assert va["wide"] > va["frame"] + 0.15 and va["frame"] < 0.6, va


def test_openface_view_follows_the_action_units(small):
    truth = _truth(**SMALL)
    store = FeatureStore(small / "features" / "openface")
    x = np.concatenate([np.asarray(store.read(n), np.float32)[l.present] for n, (_, l) in truth.items()])
    au = np.concatenate([l.au[l.present] for _, l in truth.values()])
    au12 = au[:, aw.AU_NAMES.index("AU12")].astype(bool)
    of12 = x[:, 8]  # AU12_r in OpenFace order
    assert of12[au12].mean() > of12[~au12].mean() + 1.0


def test_ensure_demo_builds_once_and_rebuilds_partial(tmp_path, monkeypatch):
    kwargs = dict(num_videos=4, seed=0, length_scale=0.02, feature_sets={"vit": 4})
    path = demo.ensure_demo(tmp_path, **kwargs)
    assert path.parent == tmp_path and path.name.startswith("demo-") and demo.is_complete(path, **kwargs)
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary folder left behind"

    def no_build(*args, **kw):
        raise AssertionError("rebuilt a finished demo")

    monkeypatch.setattr(demo, "build_demo", no_build)
    assert demo.ensure_demo(tmp_path, **kwargs) == path
    monkeypatch.undo()

    (path / "demo.complete").unlink()  # an interrupted build
    assert not demo.is_complete(path, **kwargs)
    assert demo.ensure_demo(tmp_path, **kwargs) == path and demo.is_complete(path, **kwargs)

    other = demo.ensure_demo(tmp_path, **{**kwargs, "seed": 1})
    assert other != path and demo.is_complete(other, **{**kwargs, "seed": 1})

    monkeypatch.setenv("ABAW_JAX_DEMO_DIR", str(tmp_path / "env"))
    assert demo.demo_dir(**kwargs) == tmp_path / "env" / path.name
    assert demo.ensure_demo(**kwargs).parent == tmp_path / "env"


def test_bad_arguments(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ValueError, match="full: demo output folder must be new or empty"):
        demo.build_demo(tmp_path / "full", num_videos=4)
    with pytest.raises(ValueError, match="'openface' has 17 dims, got 16"):
        demo.build_demo(tmp_path / "a", feature_sets={"openface": 16})
    with pytest.raises(ValueError, match="feature_sets: bad entry 'vit'"):
        demo.build_demo(tmp_path / "b", feature_sets={"vit": 0})
    with pytest.raises(ValueError, match="num_videos must be at least 4"):
        demo.build_demo(tmp_path / "c", num_videos=3)
    with pytest.raises(ValueError, match="dtype must be one of"):
        demo.build_demo(tmp_path / "d", dtype="int8")


def test_command_line(tmp_path, capsys):
    demo.main(["--out", str(tmp_path / "cli"), "--videos", "4", "--seed", "2", "--length-scale", "0.02", "--dim", "8"])
    assert FeatureStore(tmp_path / "cli" / "features" / "vit").dim == 8
    assert aw.list_videos(tmp_path / "cli", "VA", "train")
    assert "demo dataset in" in capsys.readouterr().err
