"""Tests of abaw_jax.data.mtl (MTL annotation files, test image list, layout) and the demo's MTL split."""

from __future__ import annotations

import json
import pathlib
import re
import shutil

import numpy as np
import pytest

from abaw_jax.data import affwild2 as aw
from abaw_jax.data import demo
from abaw_jax.data import mtl
from abaw_jax.data.features import FeatureStore

HEADER = "image,valence,arousal,expression,aus"
AUS_OK = ",".join(["0"] * 12)
ROW = "v/00003.jpg,0.1,0.2,4," + AUS_OK


def _write(tmp_path: pathlib.Path, text: str | bytes, name: str = "training_set_annotations.txt") -> pathlib.Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _random_videos(rng: np.random.Generator, names: list[str]) -> list[mtl.MTLVideo]:
    videos = []
    for name in names:
        n = int(rng.integers(1, 40))
        frames = np.sort(rng.choice(np.arange(1, 3000), size=n, replace=False)).astype(np.int64)
        va = (rng.integers(-1000, 1001, (n, 2)) / 1000).astype(np.float32)
        va_valid = rng.random((n, 2)) > 0.2
        expr_valid = rng.random(n) > 0.2
        au_valid = rng.random((n, 12)) > 0.1
        au_valid[rng.random(n) < 0.2] = False  # whole rows of AUs missing, as in the real files
        videos.append(mtl.MTLVideo(
            name, frames, np.where(va_valid, va, 0).astype(np.float32), va_valid,
            np.where(expr_valid, rng.integers(0, 8, n), 0).astype(np.int32), expr_valid,
            np.where(au_valid, rng.integers(0, 2, (n, 12)), 0).astype(np.int32), au_valid))
    return videos


def _assert_same(a: list[mtl.MTLVideo], b: list[mtl.MTLVideo]) -> None:
    assert [v.name for v in a] == [v.name for v in b]
    for x, y in zip(a, b):
        for field in ("frames", "va", "va_valid", "expr", "expr_valid", "au", "au_valid"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field), err_msg=f"{x.name} {field}")
            assert getattr(x, field).dtype == getattr(y, field).dtype, field


# --------------------------------------------------------------------------- reading and writing


def test_read_groups_by_video_and_orders_by_frame(tmp_path):
    path = _write(tmp_path, "\n".join([
        HEADER,
        "video5_1/00120.jpg,0.5,-5,3,1,0,0,0,0,0,0,0,0,0,0,-1",
        "1-30-1280x720/00002.jpg,-5,-5,-1," + ",".join(["-1"] * 12),
        "video5_1/00007.jpg,-0.25,1,7,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1",
        "video5_1/00009.jpg,0.123456,-1.0,0,0,1,0,1,0,1,0,1,0,1,0,1",
    ]) + "\n")
    videos = mtl.read_mtl_annotation(path)
    assert [v.name for v in videos] == ["1-30-1280x720", "video5_1"]
    a, b = videos
    assert a.frames.tolist() == [2] and a.indices.tolist() == [1]
    assert not a.va_valid.any() and not a.expr_valid.any() and not a.au_valid.any()
    assert b.frames.tolist() == [7, 9, 120] and b.indices.tolist() == [6, 8, 119]
    np.testing.assert_array_equal(b.va, np.array([[-0.25, 1], [0.123456, -1], [0.5, 0]], np.float32))
    np.testing.assert_array_equal(b.va_valid, [[True, True], [True, True], [True, False]])
    assert b.expr.tolist() == [7, 0, 3] and b.expr_valid.tolist() == [True, True, True]
    assert not b.au_valid[0].any() and b.au_valid[1].all()
    assert b.au_valid[2].tolist() == [True] * 11 + [False]
    assert b.au[1].tolist() == [0, 1] * 6 and b.au[2].tolist() == [1] + [0] * 11
    assert b.va.dtype == np.float32 and b.expr.dtype == np.int32 and b.au.dtype == np.int32
    assert b.labels("EXPR") is b.expr and b.valid("AU") is b.au_valid
    assert b.images() == ["video5_1/00007.jpg", "video5_1/00009.jpg", "video5_1/00120.jpg"]


def test_write_gives_the_official_form(tmp_path):
    v = mtl.MTLVideo("12-24-1920x1080_left", np.array([5, 9]), np.array([[0.1234, -0.0004], [1, 0.5]], np.float32),
                     np.array([[True, True], [False, True]]), np.array([6, 2], np.int32), np.array([True, False]),
                     np.eye(2, 12, dtype=np.int32), np.array([[True] * 12, [True] * 11 + [False]]))
    mtl.write_mtl_annotation(tmp_path / "a.txt", [v])
    assert (tmp_path / "a.txt").read_text() == (
        HEADER + "\n"
        "12-24-1920x1080_left/00005.jpg,0.123,0.000,6,1,0,0,0,0,0,0,0,0,0,0,0\n"
        "12-24-1920x1080_left/00009.jpg,-5,0.500,-1,0,1,0,0,0,0,0,0,0,0,0,-1\n"
    )


def test_round_trip_labels_and_bytes(tmp_path):
    rng = np.random.default_rng(0)
    names = ["103", "1-30-1280x720", "video45_1_left", "video45_1_right", "7-60-640x360-2"]
    videos = _random_videos(rng, sorted(names))
    path = tmp_path / "training_set_annotations.txt"
    mtl.write_mtl_annotation(path, videos)
    back = mtl.read_mtl_annotation(path)
    _assert_same(videos, back)
    mtl.write_mtl_annotation(tmp_path / "again.txt", back)
    assert (tmp_path / "again.txt").read_bytes() == path.read_bytes()
    # The line count is the number of selected frames: frames are a sample, not every frame.
    assert len(path.read_text().splitlines()) == 1 + sum(v.num_rows for v in videos)
    # Lines in another order read back to the same videos.
    header, *lines = path.read_text().splitlines()
    rng.shuffle(lines)
    _assert_same(videos, mtl.read_mtl_annotation(_write(tmp_path, "\n".join([header, *lines]) + "\n", "shuffled.txt")))


def test_read_tolerates_bom_crlf_and_trailing_blank_lines(tmp_path):
    path = _write(tmp_path, ("\ufeff" + HEADER + "\r\n" + ROW + "\r\n\r\n  \n").encode())
    (v,) = mtl.read_mtl_annotation(path)
    assert v.name == "v" and v.frames.tolist() == [3] and v.expr.tolist() == [4]


AU_BAD = ",".join(["0"] * 11)


@pytest.mark.parametrize("body,line,message", [
    ("", 1, "empty file"),
    ("image,valence,arousal,expression,au\n" + ROW, 1, "expected the MTL header"),
    ("image_location,valence,arousal,expression,aus\n" + ROW, 1, "expected the MTL header"),
    (HEADER + "\n", 2, "no frame lines after the header"),
    (HEADER + "\n" + ROW + "\nv/00004.jpg,0.1,0.2,4," + AU_BAD, 3,
     "expected 15 comma-separated values after the image .*, got 14"),
    (HEADER + "\nv/00004.jpg,0.1,0.2,4,0," + AUS_OK, 2, "expected 15 comma-separated values .*, got 16"),
    (HEADER + "\nv/00004.jpg", 2, "expected 15 comma-separated values .*, got 1"),
    (HEADER + "\nv/00004.jpg,0.1,x,4," + AUS_OK, 2, "non-numeric arousal value 'x'"),
    (HEADER + "\nv/00004.jpg,0.1,0.2,4,0,0,0,,0,0,0,0,0,0,0,0", 2, "non-numeric AU6 value ''"),
    (HEADER + "\nv/00004.jpg,nan,0.2,4," + AUS_OK, 2, "valence = nan is not finite"),
    (HEADER + "\nv/00004.jpg,0.1,inf,4," + AUS_OK, 2, "arousal = inf is not finite"),
    (HEADER + "\n" + ROW + "\nv/00004.jpg,1.5,0.2,4," + AUS_OK, 3,
     re.escape("valence = 1.5 is outside [-1, 1] (and not the invalid marker -5)")),
    (HEADER + "\nv/00004.jpg,0.1,-4,4," + AUS_OK, 2, re.escape("arousal = -4 is outside [-1, 1]")),
    (HEADER + "\nv/00004.jpg,0.1,0.2,8," + AUS_OK, 2, re.escape("expression = 8 is not a class index 0..7 (or -1)")),
    (HEADER + "\nv/00004.jpg,0.1,0.2,-5," + AUS_OK, 2, "expression = -5 is not a class index"),
    (HEADER + "\nv/00004.jpg,0.1,0.2,2.5," + AUS_OK, 2, "expression = 2.5 is not a class index"),
    (HEADER + "\nv/00004.jpg,0.1,0.2,2,0,0,2,0,0,0,0,0,0,0,0,0", 2, re.escape("AU4 = 2 is not 0, 1 (or -1)")),
    (HEADER + "\nv/00004.jpg,0.1,0.2,2,0,0,0,0,0,0,0,0,0,0,0,-5", 2, "AU26 = -5 is not 0, 1"),
    (HEADER + "\n" + ROW + "\nw/00003.jpg,0,0,0," + AUS_OK + "\n" + ROW.replace("0.1", "0.3"), 4,
     re.escape("frame v/00003.jpg is listed again (first on line 2)")),
    (HEADER + "\nv/3.jpg,0.1,0.2,4," + AUS_OK, 2, re.escape("image 'v/3.jpg' is not <video>/<NNNNN>.jpg")),
    (HEADER + "\nv/00003.png,0.1,0.2,4," + AUS_OK, 2, "image 'v/00003.png' is not"),
    (HEADER + "\n00003.jpg,0.1,0.2,4," + AUS_OK, 2, "image '00003.jpg' is not"),
    (HEADER + "\na/b/00003.jpg,0.1,0.2,4," + AUS_OK, 2, "image 'a/b/00003.jpg' is not"),
    (HEADER + "\nv/00000.jpg,0.1,0.2,4," + AUS_OK, 2, "image 'v/00000.jpg' is not .*from 00001"),
    (HEADER + "\n" + ROW + "\n\nv/00004.jpg,0.1,0.2,4," + AUS_OK, 3, "blank line before the last frame"),
])
def test_malformed_annotation_names_file_and_line(tmp_path, body, line, message):
    path = _write(tmp_path, body)
    with pytest.raises(aw.AnnotationError, match=re.escape(f"{path}:{line}: ") + message):
        mtl.read_mtl_annotation(path)


def test_not_utf8_and_missing_file(tmp_path):
    path = _write(tmp_path, (HEADER + "\n").encode() + b"v/00001.jpg,\xff")
    with pytest.raises(aw.AnnotationError, match=re.escape(f"{path}:2: not UTF-8")):
        mtl.read_mtl_annotation(path)
    with pytest.raises(aw.LayoutError, match="no such file"):
        mtl.read_mtl_annotation(tmp_path / "nope.txt")


def test_writer_rejects_bad_videos(tmp_path):
    rng = np.random.default_rng(1)
    (v,) = _random_videos(rng, ["a"])
    with pytest.raises(ValueError, match="video 'a' appears twice"):
        mtl.format_mtl_annotation([v, v])
    with pytest.raises(ValueError, match="no videos"):
        mtl.format_mtl_annotation([])
    bad = mtl.MTLVideo("a", v.frames, v.va, v.va_valid, np.full_like(v.expr, 9), np.ones_like(v.expr_valid),
                       v.au, v.au_valid)
    with pytest.raises(ValueError, match="valid EXPR label .* not a class index"):
        mtl.format_mtl_annotation([bad])
    with pytest.raises(ValueError, match="strictly increasing"):
        mtl.MTLVideo("a", v.frames[::-1].copy(), v.va, v.va_valid, v.expr, v.expr_valid, v.au, v.au_valid)
    with pytest.raises(ValueError, match=r"au must have shape \(\d+, 12\)"):
        mtl.MTLVideo("a", v.frames, v.va, v.va_valid, v.expr, v.expr_valid, v.au[:, :11], v.au_valid)
    with pytest.raises(ValueError, match="not a video name"):
        mtl.image_name("a/b", 1)


# --------------------------------------------------------------------------- test image list


@pytest.mark.parametrize("text", [
    "image\nv/00002.jpg\n1-30-1280x720/00010.jpg\nv/00001.jpg\n",
    HEADER + "\r\nv/00002.jpg\r\n1-30-1280x720/00010.jpg\r\n\r\nv/00001.jpg",
    "v/00002.jpg\n1-30-1280x720/00010.jpg\nv/00001.jpg\n",
    "image_location\nv/00002.jpg,,,\n1-30-1280x720/00010.jpg,\nv/00001.jpg\n\n",
])
def test_read_test_list_forms(tmp_path, text):
    images = mtl.read_mtl_test_list(_write(tmp_path, text, "MTL_Challenge_test_set_release.txt"))
    assert images == [("v", 2), ("1-30-1280x720", 10), ("v", 1)]


@pytest.mark.parametrize("text,line,message", [
    ("image\nv/00002.jpg\nv/00002.jpg\n", 3, re.escape("image v/00002.jpg is listed again (first on line 2)")),
    ("image\nv/2.jpg\n", 2, "image 'v/2.jpg' is not"),
    ("v/00002.jpg\nimage\n", 2, "image 'image' is not"),
    ("image\nv/00002.jpg,0.1\n", 2, "expected one image per line"),
    ("image\n\n", 1, "no images listed"),
])
def test_malformed_test_list(tmp_path, text, line, message):
    path = _write(tmp_path, text, "MTL_Challenge_test_set_release.txt")
    with pytest.raises(aw.AnnotationError, match=re.escape(f"{path}:{line}: ") + message):
        mtl.read_mtl_test_list(path)


def test_test_list_round_trip_and_grouping(tmp_path):
    images = [("v", 20), ("a", 3), ("v", 2), ("a", 1)]
    for header in (True, False):
        path = tmp_path / f"list{header}.txt"
        mtl.write_mtl_test_list(path, images, header=header)
        assert mtl.read_mtl_test_list(path) == images
        assert path.read_text().startswith("image\n" if header else "v/00020.jpg\n")
    videos = mtl.mtl_test_videos(images)
    assert [(v.name, v.frames.tolist()) for v in videos] == [("a", [1, 3]), ("v", [2, 20])]
    assert not any(v.va_valid.any() or v.expr_valid.any() or v.au_valid.any() for v in videos)
    per_video = {"a": np.arange(10) * 10, "v": np.arange(30) * 100}
    np.testing.assert_array_equal(mtl.gather_frames(per_video, images), [1900, 20, 100, 0])
    with pytest.raises(IndexError, match="a/00011.jpg: frame beyond the 10 frames"):
        mtl.gather_frames(per_video, [("a", 11)])
    with pytest.raises(KeyError, match="no entry for video 'b'"):
        mtl.gather_frames(per_video, [("b", 1)])


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("folder,name,val_name", [
    ("", "training_set_annotations.txt", "validation_set_annotations.txt"),
    ("MTL_Challenge", "training_set_annotations_22.txt", "validation_set_annotations_22.txt"),
    ("6th ABAW Annotations/MTL_Challenge", "training_set_annotations.txt", "validation_set_annotations.txt"),
    ("3rd ABAW Annotations", "Training_Set_Annotations_22.txt", "Validation_Set_Annotations_22.txt"),
    ("7th_ABAW_Annotations_MTL", "training_set_annotations_2024.txt", "validation_set_annotations_2024.txt"),
])
def test_annotation_path_variants(tmp_path, folder, name, val_name):
    (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    train = _write(tmp_path / folder, HEADER + "\n" + ROW + "\n", name)
    _write(tmp_path / folder, HEADER + "\n" + ROW.replace("v/", "w/") + "\n", val_name)
    assert mtl.mtl_annotation_path(tmp_path, "train") == train
    assert [v.name for v in mtl.load_mtl_split(tmp_path, "train")] == ["v"]
    assert [v.name for v in mtl.load_mtl_split(tmp_path, "val")] == ["w"]


def test_annotation_path_errors(tmp_path):
    with pytest.raises(aw.LayoutError, match="expected one MTL train annotation file .* found 0: none"):
        mtl.mtl_annotation_path(tmp_path, "train")
    (tmp_path / "MTL_Challenge").mkdir()
    _write(tmp_path, HEADER + "\n" + ROW + "\n")
    _write(tmp_path / "MTL_Challenge", HEADER + "\n" + ROW + "\n", "training_set_annotations_22.txt")
    with pytest.raises(aw.LayoutError, match="found 2: .*training_set_annotations.txt, .*_22.txt"):
        mtl.mtl_annotation_path(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        mtl.mtl_annotation_path(tmp_path, "test")
    with pytest.raises(aw.LayoutError, match="dataset root is not a folder"):
        mtl.mtl_annotation_path(tmp_path / "missing", "train")


@pytest.mark.parametrize("folder,name", [
    ("names_of_videos_in_each_test_set", "MTL_Challenge_test_set_release.txt"),
    ("", "MTL_Challenge_test_set_release.txt"),
    ("MTL_Challenge", "test_set_images.txt"),
    ("6th ABAW Annotations", "Multi_Task_Learning_Challenge_test_set_release.txt"),
])
def test_test_list_path_variants(tmp_path, folder, name):
    lists = tmp_path / aw.TEST_LISTS_DIR
    lists.mkdir()
    # The single-task lists next to it are not taken for the MTL one.
    for other in demo.TEST_LISTS.values():
        (lists / other).write_text("103\n")
    (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    path = _write(tmp_path / folder, "image\nv/00001.jpg\n", name)
    assert mtl.mtl_test_list_path(tmp_path) == path
    assert mtl.load_mtl_test(tmp_path) == [("v", 1)]


def test_test_list_path_missing(tmp_path):
    with pytest.raises(aw.LayoutError, match="expected one MTL test image list .* found 0: none"):
        mtl.mtl_test_list_path(tmp_path)


# --------------------------------------------------------------------------- the demo's MTL split

SMALL = dict(num_videos=8, seed=3, length_scale=0.03, feature_sets={"vit": 24, "openface": 17}, jpeg=True,
             jpeg_size=16)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> pathlib.Path:
    return demo.build_demo(tmp_path_factory.mktemp("demo") / "small", **SMALL)


def test_demo_mtl_split_follows_the_demo_videos(small):
    folder = small / aw.ANNOTATIONS_DIR / mtl.MTL_DIR
    assert mtl.mtl_annotation_path(small, "train") == folder / "training_set_annotations.txt"
    assert mtl.mtl_annotation_path(small, "val") == folder / "validation_set_annotations.txt"
    assert mtl.mtl_test_list_path(small) == folder / demo.MTL_TEST_LIST
    plan = {v.name: v for v in demo.plan_videos(SMALL["num_videos"], seed=SMALL["seed"],
                                                length_scale=SMALL["length_scale"])}
    store = FeatureStore(small / "features" / "vit")
    rows = {}
    gaps = False
    one_task_missing = {task: False for task in aw.TASKS}
    for split in ("train", "val"):
        videos = mtl.load_mtl_split(small, split)
        rows[split] = sum(v.num_rows for v in videos)
        assert videos and all(plan[v.name].split == split for v in videos)
        for v in videos:
            video = plan[v.name]
            truth = demo.simulate(video, SMALL["seed"])
            t = v.indices
            # Selected frames have a face: an image and a non-zero feature row.
            assert truth.present[t].all() and store.present(v.name)[t].all()
            assert np.abs(np.asarray(store.read(v.name), np.float32)[t]).sum(axis=1).min() > 0
            assert all((small / aw.FRAMES_DIR / image).is_file() for image in v.images())
            gaps |= bool((np.diff(v.frames) > 1).any())
            for task in aw.TASKS:
                valid = v.valid(task)
                # Labels are the video's own, valid only where its annotation of that task is.
                assert not (valid & ~truth.valid[task][t]).any()
                if task not in video.tasks:
                    assert not valid.any()
                state = {"VA": truth.va, "EXPR": truth.expr, "AU": truth.au}[task][t]
                np.testing.assert_array_equal(v.labels(task), np.where(valid, state, 0))
            any_valid = {task: v.valid(task).reshape(v.num_rows, -1).any(axis=1) for task in aw.TASKS}
            assert (any_valid["VA"] | any_valid["EXPR"] | any_valid["AU"]).all(), "no row without any label"
            for task in aw.TASKS:
                others = [any_valid[o] for o in aw.TASKS if o != task]
                one_task_missing[task] |= bool((~any_valid[task] & others[0] & others[1]).any())
    assert gaps and all(one_task_missing.values()), one_task_missing
    images = mtl.load_mtl_test(small)
    assert images and {v for v, _ in images} <= {n for n, p in plan.items() if p.split == "test"}
    assert all(store.present(v)[f - 1] for v, f in images)
    assert json.loads((small / "demo.complete").read_text())["mtl"] == {**rows, "test": len(images)}
    # A sample, not every frame with a face.
    total_present = sum(demo.simulate(p, SMALL["seed"]).present.sum() for p in plan.values() if p.split != "test")
    assert 0.1 < (rows["train"] + rows["val"]) / total_present < 0.3


def test_ensure_demo_rebuilds_a_demo_without_the_mtl_split(tmp_path):
    kwargs = dict(num_videos=4, seed=0, length_scale=0.02, feature_sets={"vit": 4})
    path = demo.ensure_demo(tmp_path, **kwargs)
    train = (path / aw.ANNOTATIONS_DIR / mtl.MTL_DIR / "training_set_annotations.txt").read_bytes()
    shard_files = sorted((path / "features" / "vit").glob("*.bin"))
    shards = [p.read_bytes() for p in shard_files]
    # What a build from before the MTL split left behind.
    summary = json.loads((path / "demo.complete").read_text())
    del summary["mtl"]
    (path / "demo.complete").write_text(json.dumps(summary))
    shutil.rmtree(path / aw.ANNOTATIONS_DIR / mtl.MTL_DIR)
    assert not demo.is_complete(path, **kwargs)
    assert demo.ensure_demo(tmp_path, **kwargs) == path and demo.is_complete(path, **kwargs)
    assert (path / aw.ANNOTATIONS_DIR / mtl.MTL_DIR / "training_set_annotations.txt").read_bytes() == train
    assert [p.read_bytes() for p in shard_files] == shards
