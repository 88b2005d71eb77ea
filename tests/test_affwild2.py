"""Tests of abaw_jax.data.affwild2: annotation files, layout, frames present, names, test lists."""

from __future__ import annotations

import logging
import pathlib
import re

import numpy as np
import pytest

from abaw_jax.data import affwild2 as aw

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
COUNTER_FRAME = DATA / "affwild2_meta" / "counter_frame.csv"

VA_HEADER = "valence,arousal"
EXPR_HEADER = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
AU_HEADER = "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"


def _write(tmp_path: pathlib.Path, text: str | bytes, name: str = "v.txt") -> pathlib.Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# --------------------------------------------------------------------------- reading and writing


def test_write_gives_the_official_bytes(tmp_path):
    va = np.array([[0.123, -0.456], [1.0, -1.0], [0.3, 0.5], [-0.0004, 0.05]], np.float32)
    va_valid = np.array([[1, 1], [1, 0], [0, 0], [1, 1]], bool)
    aw.write_annotation(tmp_path / "va.txt", "VA", va, va_valid)
    assert (tmp_path / "va.txt").read_bytes() == (
        b"valence,arousal\n0.123,-0.456\n1.000,-5\n-5,-5\n0.000,0.050\n"
    )
    aw.write_annotation(tmp_path / "expr.txt", "EXPR", np.array([0, 7, 4]), np.array([1, 1, 0], bool))
    assert (tmp_path / "expr.txt").read_bytes() == (EXPR_HEADER + "\n0\n7\n-1\n").encode()
    au = np.zeros((2, 12), int)
    au[0, [0, 11]] = 1
    au_valid = np.ones((2, 12), bool)
    au_valid[1, 3] = False
    aw.write_annotation(tmp_path / "au.txt", "AU", au, au_valid)
    assert (tmp_path / "au.txt").read_bytes() == (
        AU_HEADER + "\n1,0,0,0,0,0,0,0,0,0,0,1\n0,0,0,-1,0,0,0,0,0,0,0,0\n"
    ).encode()


def test_round_trip_labels_and_bytes(tmp_path):
    rng = np.random.default_rng(0)
    t = 500
    va = (rng.integers(-1000, 1001, (t, 2)) / 1000).astype(np.float32)
    va_valid = rng.random((t, 2)) > 0.1
    expr = rng.integers(0, 8, t)
    expr_valid = rng.random(t) > 0.1
    au = rng.integers(0, 2, (t, 12))
    au_valid = rng.random((t, 12)) > 0.05
    for task, labels, valid in (("VA", va, va_valid), ("EXPR", expr, expr_valid), ("AU", au, au_valid)):
        path = tmp_path / f"{task}.txt"
        aw.write_annotation(path, task, labels, valid)
        ann = aw.read_annotation(path, task)
        np.testing.assert_array_equal(ann.valid, valid)
        np.testing.assert_array_equal(ann.labels, np.where(valid, labels, 0))
        assert ann.labels.dtype == (np.float32 if task == "VA" else np.int32)
        # Written text, read back and written again, is the same bytes.
        aw.write_annotation(tmp_path / "again.txt", task, ann.labels, ann.valid)
        assert (tmp_path / "again.txt").read_bytes() == path.read_bytes()
        # Plain Python parse of the text, as an independent reference.
        rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
        ref = np.array([[float(x) for x in r] for r in rows])
        marker = -5 if task == "VA" else -1
        np.testing.assert_array_equal(ann.valid.reshape(t, -1), ref != marker)
        np.testing.assert_array_equal(
            ann.labels.reshape(t, -1), np.where(ref == marker, 0, ref).astype(ann.labels.dtype)
        )


def test_read_tolerates_bom_crlf_trailing_whitespace(tmp_path):
    text = "\ufeffvalence,arousal  \r\n0.5,-0.25 \r\n-5,0.1\r\n1,-1\r\n\r\n  \n"
    ann = aw.read_annotation(_write(tmp_path, text), "VA")
    np.testing.assert_array_equal(ann.labels, np.array([[0.5, -0.25], [0, 0.1], [1, -1]], np.float32))
    np.testing.assert_array_equal(ann.valid, [[True, True], [False, True], [True, True]])
    assert ann.num_frames == 3


def test_read_full_precision_values_and_one_invalid_column(tmp_path):
    text = f"{VA_HEADER}\n0.2352941176470588,-0.0862745098\n-5,0.3\n0.7,-5\n"
    ann = aw.read_annotation(_write(tmp_path, text), "VA")
    np.testing.assert_array_equal(
        ann.labels, np.array([[0.2352941176470588, -0.0862745098], [0, 0.3], [0.7, 0]], np.float32)
    )
    np.testing.assert_array_equal(ann.valid, [[True, True], [False, True], [True, False]])


def test_read_expr_and_au(tmp_path):
    ann = aw.read_annotation(_write(tmp_path, f"{EXPR_HEADER}\n0\n7\n-1\n4\n"), "EXPR")
    np.testing.assert_array_equal(ann.labels, [0, 7, 0, 4])
    np.testing.assert_array_equal(ann.valid, [True, True, False, True])
    rows = ["1,0,0,0,0,0,0,0,0,0,0,1", "-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1", "0,1,0,1,0,1,0,1,0,1,0,-1"]
    ann = aw.read_annotation(_write(tmp_path, AU_HEADER + "\n" + "\n".join(rows)), "AU")
    assert ann.labels.shape == (3, 12) and ann.valid.shape == (3, 12)
    assert not ann.valid[1].any() and ann.valid[2, :11].all() and not ann.valid[2, 11]
    np.testing.assert_array_equal(ann.labels[2], [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0])


AU_ROW = "0,0,0,0,0,0,0,0,0,0,0,0"
MALFORMED = [
    ("empty", "VA", "", 1, "empty file"),
    ("only whitespace", "AU", " \n\n", 1, "empty file"),
    ("header only", "VA", f"{VA_HEADER}\n", 2, "no frame lines"),
    ("wrong VA header", "VA", "Valence,Arousal\n0.1,0.2\n", 1, "expected the VA header"),
    ("spaced VA header", "VA", "valence, arousal\n0.1,0.2\n", 1, "expected the VA header"),
    ("AU header for EXPR", "EXPR", f"{AU_HEADER}\n1\n", 1, "expected the EXPR header"),
    ("AU header missing a name", "AU", AU_HEADER.replace(",AU26", "") + f"\n{AU_ROW}\n", 1, "header"),
    ("one VA column", "VA", f"{VA_HEADER}\n0.1,0.2\n0.3\n", 3, "expected 2 comma-separated values"),
    ("three VA columns everywhere", "VA", f"{VA_HEADER}\n0.1,0.2,0.3\n0.1,0.2,0.3\n", 2, "got 3"),
    ("eleven AU columns", "AU", f"{AU_HEADER}\n{AU_ROW}\n{AU_ROW[2:]}\n", 3, "expected 12"),
    ("one-hot EXPR", "EXPR", f"{EXPR_HEADER}\n1,0,0,0,0,0,0,0\n", 2, "expected 1 comma-separated value"),
    ("non-numeric", "VA", f"{VA_HEADER}\n0.1,0.2\n0.1,abc\n", 3, "non-numeric value 'abc'"),
    ("empty field", "VA", f"{VA_HEADER}\n0.1,\n", 2, "non-numeric value ''"),
    ("NaN", "VA", f"{VA_HEADER}\n0.1,0.2\nnan,0.2\n", 3, "NaN"),
    ("NaN before a non-number", "VA", f"{VA_HEADER}\n0.1,0.2\n-nan,0.2\nx,0\n", 3, "NaN"),
    ("NaN in EXPR", "EXPR", f"{EXPR_HEADER}\n1\nNaN\n", 3, "NaN"),
    ("inf", "VA", f"{VA_HEADER}\n0.1,inf\n", 2, "not finite"),
    ("valence above 1", "VA", f"{VA_HEADER}\n0.1,0.2\n1.5,0.2\n", 3, "valence = 1.5 is outside [-1, 1]"),
    ("arousal -4", "VA", f"{VA_HEADER}\n0.1,-4\n", 2, "arousal = -4 is outside"),
    ("EXPR 8", "EXPR", f"{EXPR_HEADER}\n0\n1\n8\n", 4, "expression = 8 is not a class index"),
    ("EXPR non-integer", "EXPR", f"{EXPR_HEADER}\n2.5\n", 2, "expression = 2.5"),
    ("EXPR -2", "EXPR", f"{EXPR_HEADER}\n-2\n", 2, "expression = -2"),
    ("AU 2", "AU", f"{AU_HEADER}\n{AU_ROW}\n0,0,0,0,0,0,0,0,0,2,0,0\n", 3, "AU24 = 2 is not 0, 1"),
    ("AU 0.5", "AU", f"{AU_HEADER}\n0.5,0,0,0,0,0,0,0,0,0,0,0\n", 2, "AU1 = 0.5"),
    ("AU -5", "AU", f"{AU_HEADER}\n-5,0,0,0,0,0,0,0,0,0,0,0\n", 2, "AU1 = -5"),
    ("blank line", "VA", f"{VA_HEADER}\n0.1,0.2\n\n0.3,0.4\n", 3, "blank line"),
    ("blank line after header", "EXPR", f"{EXPR_HEADER}\n\n1\n", 2, "blank line"),
    ("whitespace line", "VA", f"{VA_HEADER}\n0.1,0.2\n0.1,0.2\n \t\n0.3,0.4\n", 4, "blank line"),
    ("blank line in CRLF", "VA", f"{VA_HEADER}\r\n0.1,0.2\r\n\r\n0.3,0.4\r\n", 3, "blank line"),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_annotation_names_file_and_line(tmp_path, case):
    _, task, text, line, fragment = case
    path = _write(tmp_path, text, "bad video.txt")
    with pytest.raises(aw.AnnotationError) as info:
        aw.read_annotation(path, task)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert fragment in message, message
    assert isinstance(info.value, ValueError)


def test_not_utf8_names_file_and_line(tmp_path):
    path = _write(tmp_path, VA_HEADER.encode() + b"\n0.1,0.2\n0.1,\xff\xfe\n")
    with pytest.raises(aw.AnnotationError, match=rf"^{re.escape(str(path))}:3: not UTF-8"):
        aw.read_annotation(path, "VA")


def test_missing_file_and_unknown_task(tmp_path):
    with pytest.raises(aw.LayoutError, match="nope.txt: no such file"):
        aw.read_annotation(tmp_path / "nope.txt", "VA")
    with pytest.raises(ValueError, match="unknown task 'FOO'"):
        aw.read_annotation(_write(tmp_path, f"{VA_HEADER}\n0,0\n"), "FOO")


@pytest.mark.parametrize(
    "task, labels, valid, fragment",
    [
        ("VA", np.array([[0.5, 1.5]]), np.ones((1, 2), bool), "frame index 0"),
        ("VA", np.array([[0.5, np.nan]]), np.ones((1, 2), bool), "not in [-1, 1]"),
        ("VA", np.zeros((3,)), np.ones((3,), bool), "shape [T > 0, 2]"),
        ("EXPR", np.array([1, 9]), np.ones(2, bool), "frame index 1"),
        ("EXPR", np.array([1, 2]), np.ones(3, bool), "valid must have shape (2,)"),
        ("AU", np.full((2, 12), 2), np.ones((2, 12), bool), "not 0 or 1"),
        ("AU", np.zeros((0, 12)), np.ones((0, 12), bool), "T > 0"),
    ],
)
def test_write_rejects_bad_arrays(tmp_path, task, labels, valid, fragment):
    path = tmp_path / "out.txt"
    with pytest.raises(ValueError) as info:
        aw.write_annotation(path, task, labels, valid)
    assert str(path) in str(info.value) and fragment in str(info.value)
    assert not path.exists()


def test_write_ignores_labels_that_are_not_valid(tmp_path):
    aw.write_annotation(tmp_path / "a.txt", "VA", np.array([[7.0, 0.25]]), np.array([[False, True]]))
    assert (tmp_path / "a.txt").read_text() == f"{VA_HEADER}\n-5,0.250\n"


# --------------------------------------------------------------------------- layout


def _layout(root: pathlib.Path, annotations: str = aw.ANNOTATIONS_DIR, expr_dir: str = "EXPR_Recognition_Challenge",
            videos: dict[str, int] | None = None) -> pathlib.Path:
    """A small official layout: videos (name -> frames) annotated in VA train, EXPR val."""
    videos = videos or {"video2": 3, "10-60-1280x720_right": 4, "1-30-1280x720": 2}
    base = root / annotations if annotations else root
    for challenge, split, task in (("VA_Estimation_Challenge", "Train_Set", "VA"),
                                   (expr_dir, "Validation_Set", "EXPR")):
        folder = base / challenge / split
        folder.mkdir(parents=True)
        for name, t in videos.items():
            if task == "VA":
                labels, valid = np.full((t, 2), 0.5, np.float32), np.ones((t, 2), bool)
            else:
                labels, valid = np.arange(t) % 8, np.ones(t, bool)
            aw.write_annotation(folder / f"{name}.txt", task, labels, valid)
    return root


def _frames(root: pathlib.Path, video: str, numbers) -> None:
    folder = root / aw.FRAMES_DIR / video
    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        (folder / f"{n:05d}.jpg").write_bytes(b"\xff\xd8\xff")


@pytest.mark.parametrize("annotations", [aw.ANNOTATIONS_DIR, "5th ABAW Annotations", "Annotations", ""])
@pytest.mark.parametrize("expr_dir", ["EXPR_Recognition_Challenge", "EXPR_Classification_Challenge"])
def test_annotation_dir_forms(tmp_path, annotations, expr_dir):
    root = _layout(tmp_path, annotations, expr_dir)
    base = root / annotations if annotations else root
    assert aw.annotation_dir(root, "EXPR") == base / expr_dir
    assert aw.annotation_dir(root, "VA") == base / "VA_Estimation_Challenge"
    assert aw.list_videos(root, "EXPR", "val") == ["1-30-1280x720", "10-60-1280x720_right", "video2"]


def test_missing_folders_are_named(tmp_path):
    root = _layout(tmp_path)
    with pytest.raises(aw.LayoutError) as info:
        aw.annotation_dir(root, "AU")
    assert str(root) in str(info.value) and "AU_Detection_Challenge" in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FileNotFoundError)
    val_dir = root / aw.ANNOTATIONS_DIR / "VA_Estimation_Challenge" / "Validation_Set"
    with pytest.raises(aw.LayoutError, match=re.escape(str(val_dir))):
        aw.list_videos(root, "VA", "val")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        aw.list_videos(root, "VA", "test")
    with pytest.raises(aw.LayoutError, match="dataset root is not a folder"):
        aw.annotation_dir(tmp_path / "absent", "VA")
    (root / aw.ANNOTATIONS_DIR / "VA_Estimation_Challenge" / "Validation_Set").mkdir()
    with pytest.raises(aw.LayoutError, match=r"Validation_Set: no annotation \(.txt\) files"):
        aw.list_videos(root, "VA", "val")


def test_load_split_sorted_without_frames(tmp_path):
    root = _layout(tmp_path)
    videos = aw.load_split(root, "VA", "train")
    assert [v.name for v in videos] == sorted(["video2", "10-60-1280x720_right", "1-30-1280x720"])
    for v in videos:
        assert v.labels.shape == (v.num_frames, 2) and v.valid.all()
        # No cropped_aligned/ at all: present carries no information and is all True.
        assert v.present.dtype == bool and v.present.shape == (v.num_frames,) and v.present.all()
    assert [v.num_frames for v in videos] == [2, 4, 3]
    expr = aw.load_split(root, "EXPR", "val")
    np.testing.assert_array_equal(expr[1].labels, [0, 1, 2, 3])


def test_load_split_reconciles_frames_with_annotation(tmp_path, caplog):
    root = _layout(tmp_path)
    _frames(root, "1-30-1280x720", [1, 2, 3])  # one image more than the 2 annotated frames
    _frames(root, "10-60-1280x720_right", [2, 3])  # frames 1 and 4 have no face
    _frames(root, "video2", [1, 2, 3])
    (root / aw.FRAMES_DIR / "video2" / "notes.txt").write_text("not a frame")
    with caplog.at_level(logging.WARNING, logger="abaw_jax.data.affwild2"):
        videos = {v.name: v for v in aw.load_split(root, "VA", "train")}
        aw.load_split(root, "EXPR", "val")
    assert videos["1-30-1280x720"].num_frames == 2
    np.testing.assert_array_equal(videos["1-30-1280x720"].present, [True, True])
    np.testing.assert_array_equal(videos["10-60-1280x720_right"].present, [False, True, True, False])
    np.testing.assert_array_equal(videos["video2"].present, [True, True, True])
    extra = [r for r in caplog.records if "beyond" in r.getMessage()]
    assert len(extra) == 1, "reported once per video"
    assert "1-30-1280x720" in extra[0].getMessage() and "1 image(s)" in extra[0].getMessage()


def test_frames_present(tmp_path):
    assert aw.frames_present(tmp_path, "v", 5) is None
    _frames(tmp_path, "v", [1, 3, 5, 6])
    np.testing.assert_array_equal(aw.frames_present(tmp_path, "v", 5), [True, False, True, False, True])
    np.testing.assert_array_equal(aw.frames_present(tmp_path, "v", 8), [1, 0, 1, 0, 1, 1, 0, 0])
    with pytest.raises(aw.LayoutError, match=re.escape(str(tmp_path / aw.FRAMES_DIR / "w")) + ": missing frame folder"):
        aw.frames_present(tmp_path, "w", 5)
    (tmp_path / aw.FRAMES_DIR / "empty").mkdir()
    (tmp_path / aw.FRAMES_DIR / "empty" / "1.jpg").write_bytes(b"")  # not 5-digit: not a frame
    with pytest.raises(aw.LayoutError, match=re.escape(str(tmp_path / aw.FRAMES_DIR / "empty")) + ": no frame images"):
        aw.frames_present(tmp_path, "empty", 5)


def test_load_split_fails_when_a_video_has_no_frame_folder(tmp_path):
    root = _layout(tmp_path)
    _frames(root, "video2", [1, 2, 3])
    with pytest.raises(aw.LayoutError, match="1-30-1280x720: missing frame folder"):
        aw.load_split(root, "VA", "train")


# --------------------------------------------------------------------------- video names

NAMES = [
    ("1-30-1280x720", "1-30-1280x720", None, 30, (1280, 720)),
    ("103", "103", None, None, None),
    ("video45_1", "video45_1", None, None, None),
    ("video45", "video45", None, None, None),
    ("10-60-1280x720_right", "10-60-1280x720", "right", 60, (1280, 720)),
    ("video59_left", "video59", "left", None, None),
    ("46-30-484x360_left", "46-30-484x360", "left", 30, (484, 360)),
    ("122-60-1920x1080-3", "122-60-1920x1080-3", None, 60, (1920, 1080)),
    ("video10_1_right", "video10_1", "right", None, None),
    ("135_left", "135", "left", None, None),
]


@pytest.mark.parametrize("name, source, side, fps, size", NAMES)
def test_parse_video_name(name, source, side, fps, size):
    parsed = aw.parse_video_name(name)
    assert parsed == aw.VideoName(name=name, source=source, side=side, fps=fps, size=size)
    assert aw.source_video(name) == source


@pytest.mark.parametrize("bad", ["", " 12", "a/b", "12\n"])
def test_bad_video_names(bad):
    with pytest.raises(ValueError, match="not a video name"):
        aw.parse_video_name(bad)


@pytest.mark.skipif(not COUNTER_FRAME.exists(), reason=f"real Aff-Wild2 video list not found at {COUNTER_FRAME}")
def test_parse_every_real_video_name():
    names = [line.split(",")[0].rsplit(".", 1)[0] for line in COUNTER_FRAME.read_text().splitlines()[1:]]
    assert len(names) == 548
    with_size = 0
    for name in names:
        parsed = aw.parse_video_name(name)
        assert parsed.source == name and parsed.side is None
        parts = name.split("-")
        if len(parts) >= 3 and "x" in parts[2]:
            with_size += 1
            w, h = parts[2].split("x")
            assert parsed.fps == int(parts[1]) and parsed.size == (int(w), int(h))
        else:
            assert parsed.fps is None and parsed.size is None
        for side in ("left", "right"):
            assert aw.source_video(f"{name}_{side}") == name
    assert with_size == 150


# --------------------------------------------------------------------------- test sets

REAL_LIST_NAMES = {
    "VA": "Valence_Arousal_Estimation_Challenge_test_set_release.txt",
    "EXPR": "Expression_Recognition_Challenge_test_set_release.txt",
    "AU": "Action_Unit_Detection_Challenge_test_set_release.txt",
}


def test_read_test_list(tmp_path):
    path = _write(tmp_path, "\ufeff2-30-640x360\r\n\r\n  video7_left  \r\n103\n\n")
    assert aw.read_test_list(path) == ["2-30-640x360", "video7_left", "103"]
    bad = _write(tmp_path, "a\nb\na\n", "dup.txt")
    with pytest.raises(aw.AnnotationError, match=rf"^{re.escape(str(bad))}:3: video 'a' is listed again"):
        aw.read_test_list(bad)
    bad = _write(tmp_path, "a\nb c\n", "space.txt")
    with pytest.raises(aw.AnnotationError, match=rf"^{re.escape(str(bad))}:2: not a video name"):
        aw.read_test_list(bad)
    bad = _write(tmp_path, "\n\n", "empty.txt")
    with pytest.raises(aw.AnnotationError, match="no video names"):
        aw.read_test_list(bad)


def test_test_videos(tmp_path):
    lists = tmp_path / aw.TEST_LISTS_DIR
    lists.mkdir()
    for task, filename in REAL_LIST_NAMES.items():
        (lists / filename).write_text({"VA": "t1\nt2_left\n", "EXPR": "t2_left\n", "AU": "t1\n"}[task])
    # No images: the length must come from frame_counts.
    with pytest.raises(aw.LayoutError, match="frame count of test video 't1' unknown"):
        aw.test_videos(tmp_path, "VA")
    videos = aw.test_videos(tmp_path, "VA", frame_counts={"t1": 4, "t2_left": 2})
    assert [(v.name, v.num_frames) for v in videos] == [("t1", 4), ("t2_left", 2)]
    assert videos[0].labels.shape == (4, 2) and not videos[0].valid.any() and videos[0].present.all()

    _frames(tmp_path, "t1", [1, 2, 5])
    _frames(tmp_path, "t2_left", [2])
    (v,) = aw.test_videos(tmp_path, "AU")
    assert v.num_frames == 5 and v.labels.shape == (5, 12) and v.labels.dtype == np.int32
    np.testing.assert_array_equal(v.present, [True, True, False, False, True])
    (v,) = aw.test_videos(tmp_path, "AU", frame_counts={"t1": 7})
    np.testing.assert_array_equal(v.present, [1, 1, 0, 0, 1, 0, 0])
    (v,) = aw.test_videos(tmp_path, "EXPR")
    assert v.labels.shape == (2,) and v.valid.dtype == bool and not v.valid.any()
    np.testing.assert_array_equal(v.present, [False, True])


@pytest.mark.parametrize(
    "files, task, ok",
    [
        (["VA_test.txt", "EXPR_test.txt", "AU_test.txt"], "AU", "AU_test.txt"),
        (["CVPR_ABAW_Valence_Arousal_test.txt", "Expression_test.txt"], "VA", "CVPR_ABAW_Valence_Arousal_test.txt"),
        (["Action_Unit_test_set.txt", "VA_list.txt"], "EXPR", None),
        (["Expression_test.txt", "Expr_old.txt"], "EXPR", None),
    ],
)
def test_test_list_matching(tmp_path, files, task, ok):
    lists = tmp_path / aw.TEST_LISTS_DIR
    lists.mkdir()
    for f in files:
        (lists / f).write_text("v\n")
    if ok:
        assert aw.test_list_path(tmp_path, task) == lists / ok
    else:
        with pytest.raises(aw.LayoutError, match=rf"{re.escape(str(lists))}: expected one {task} test-set list"):
            aw.test_list_path(tmp_path, task)


def test_missing_test_list_folder(tmp_path):
    with pytest.raises(aw.LayoutError, match=re.escape(str(tmp_path / aw.TEST_LISTS_DIR))):
        aw.test_videos(tmp_path, "VA")
