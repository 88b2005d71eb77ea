"""The MTL submission file: writer, reader, checker against the test list, scoring."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.metrics import f1_score

from abaw_jax import submission
from abaw_jax.data import mtl

HEADER = "image,valence,arousal,expression,aus"
AUS = ",".join(["0"] * 12)


def _outputs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"VA": rng.uniform(-1.3, 1.3, (n, 2)), "EXPR": rng.normal(size=(n, 8)), "AU": rng.normal(size=(n, 12))}


def test_writes_the_official_form(tmp_path):
    images = [("v", 12), ("1-30-1280x720", 3)]
    expr = np.full((2, 8), -1.0)
    expr[0, 6] = expr[1, 0] = 2.0
    au = np.full((2, 12), -0.5)
    au[0, [0, 11]] = 0.0  # sigmoid(0) = 0.5 counts as present
    au[1, 4] = 3.0
    va = np.array([[0.12345, -0.0004], [1.7, -1.2]])
    path = submission.write_mtl_submission(tmp_path / "out" / "mtl.txt", images, {"VA": va, "EXPR": expr, "AU": au})
    assert path.read_text() == (
        HEADER + "\n"
        "v/00012.jpg,0.123,0.000,6,1,0,0,0,0,0,0,0,0,0,0,1\n"
        "1-30-1280x720/00003.jpg,1.000,-1.000,0,0,0,0,0,1,0,0,0,0,0,0,0\n"
    )
    assert [p.name for p in path.parent.iterdir()] == ["mtl.txt"], "no temporary file left behind"


def test_round_trip_in_test_list_order(tmp_path):
    rng = np.random.default_rng(0)
    images = [("video45_1_left", 400), ("103", 7), ("video45_1_left", 2), ("103", 1), ("9-25-640x360-2", 12)]
    mtl.write_mtl_test_list(tmp_path / "MTL_Challenge_test_set_release.txt", images)
    listed = mtl.load_mtl_test(tmp_path)
    outputs = _outputs(rng, len(listed))
    path = submission.write_mtl_submission(tmp_path / "sub.txt", listed, outputs)
    got = submission.check_mtl_submission(path, listed)
    assert got.images == images
    decided = submission.mtl_decisions(outputs)
    np.testing.assert_allclose(got.va, decided["VA"], atol=0.0005 + 1e-12)
    np.testing.assert_array_equal(got.va, np.round(got.va, 3))
    np.testing.assert_array_equal(got.expr, outputs["EXPR"].argmax(1))
    np.testing.assert_array_equal(got.au, (outputs["AU"] >= 0).astype(int))
    # Writing what was read gives the same bytes.
    again = submission.write_mtl_submission(
        tmp_path / "again.txt", got.images,
        {"VA": got.va, "EXPR": np.eye(8)[got.expr], "AU": np.where(got.au == 1, 1.0, -1.0)})
    assert again.read_bytes() == path.read_bytes()
    # Rows in another order are a valid submission too.
    header, *rows = path.read_text().splitlines()
    (tmp_path / "shuffled.txt").write_text("\n".join([header, *rows[::-1]]) + "\n")
    shuffled = submission.check_mtl_submission(tmp_path / "shuffled.txt", listed)
    np.testing.assert_array_equal(shuffled.rows(listed)["AU"], got.au)


def test_checker_names_missing_and_extra_images(tmp_path):
    path = tmp_path / "sub.txt"
    path.write_text(HEADER + "\n" + "\n".join(f"v/{f:05d}.jpg,0.1,0.2,3,{AUS}" for f in (1, 2, 5, 6)) + "\n")
    listed = [("v", 1), ("v", 2), ("v", 3), ("v", 4), ("w", 1)]
    with pytest.raises(submission.SubmissionError,
                       match=re.escape(f"{path}: 3 of 5 listed images missing, e.g. v/00003.jpg, v/00004.jpg, "
                                       "w/00001.jpg; 2 images not in the list, e.g. v/00005.jpg, v/00006.jpg")):
        submission.check_mtl_submission(path, listed)
    assert submission.check_mtl_submission(path, [("v", f) for f in (6, 5, 2, 1)]).images == [
        ("v", 1), ("v", 2), ("v", 5), ("v", 6)]


@pytest.mark.parametrize("body,message", [
    ("", ":1: header '' is not"),
    ("image_location,valence,arousal,expression,aus\n", ":1: header 'image_location,"),
    (HEADER + "\n", ": no rows after the header"),
    (HEADER + "\nv/00001.jpg,0.1,0.2,3," + ",".join(["0"] * 11), ":2: expected 16 fields .*, got 15"),
    (HEADER + "\nv/1.jpg,0.1,0.2,3," + AUS, ":2: image 'v/1.jpg' is not <video>/<NNNNN>.jpg"),
    (HEADER + "\nv/00001.jpg,0.1,abc,3," + AUS, ":2: non-numeric value"),
    (HEADER + "\nv/00001.jpg,nan,0.2,3," + AUS, ":2: value is not finite"),
    (HEADER + "\nv/00001.jpg,0.1,1.2,3," + AUS, re.escape(":2: valence/arousal outside [-1, 1]")),
    (HEADER + "\nv/00001.jpg,-5,0.2,3," + AUS, ":2: valence/arousal outside"),
    (HEADER + "\nv/00001.jpg,0.1,0.2,8," + AUS, ":2: expression 8 is not one of 0..7"),
    (HEADER + "\nv/00001.jpg,0.1,0.2,-1," + AUS, ":2: expression -1 is not one of 0..7"),
    (HEADER + "\nv/00001.jpg,0.1,0.2,2.5," + AUS, ":2: expression 2.5 is not one of 0..7"),
    (HEADER + "\nv/00001.jpg,0.1,0.2,2,0,0,0,0,0,0,0,0,0,0,0,-1", ":2: action units must be 0 or 1"),
    (HEADER + "\nv/00001.jpg,0.1,0.2,2,0.7,0,0,0,0,0,0,0,0,0,0,0", ":2: action units must be 0 or 1"),
    (HEADER + f"\nv/00001.jpg,0.1,0.2,3,{AUS}\n\nv/00001.jpg,0,0,0,{AUS}",
     re.escape(":4: image v/00001.jpg appears twice (first on line 2)")),
])
def test_malformed_submission(tmp_path, body, message):
    path = tmp_path / "sub.txt"
    path.write_text(body)
    with pytest.raises(submission.SubmissionError, match=re.escape(str(path)) + message):
        submission.read_mtl_submission(path)


def test_reader_tolerates_bom_crlf_and_float_classes(tmp_path):
    path = tmp_path / "sub.txt"
    path.write_bytes(("\ufeff" + HEADER + "\r\nv/00001.jpg,0.5,-0.25,4.0," + AUS + "\r\n").encode())
    got = submission.read_mtl_submission(path)
    assert got.images == [("v", 1)] and got.expr.tolist() == [4] and got.va.tolist() == [[0.5, -0.25]]
    with pytest.raises(submission.SubmissionError, match="no such file"):
        submission.read_mtl_submission(tmp_path / "nope.txt")


def test_writer_rejects_bad_input(tmp_path):
    rng = np.random.default_rng(1)
    out = _outputs(rng, 2)
    images = [("v", 1), ("v", 2)]
    with pytest.raises(ValueError, match="2 images but 3 rows of outputs"):
        submission.write_mtl_submission(tmp_path / "a.txt", images, _outputs(rng, 3))
    with pytest.raises(ValueError, match="an image is listed twice"):
        submission.write_mtl_submission(tmp_path / "a.txt", [("v", 1), ("v", 1)], out)
    with pytest.raises(ValueError, match="outputs: missing AU"):
        submission.write_mtl_submission(tmp_path / "a.txt", images, {"VA": out["VA"], "EXPR": out["EXPR"]})
    with pytest.raises(ValueError, match=r"outputs EXPR: expected shape \[N, 8\], got \(2,\)"):
        submission.write_mtl_submission(tmp_path / "a.txt", images, {**out, "EXPR": np.array([1, 2])})
    with pytest.raises(ValueError, match="outputs VA: non-finite value in row 1"):
        submission.write_mtl_submission(tmp_path / "a.txt", images, {**out, "VA": np.array([[0, 0], [np.nan, 0]])})
    with pytest.raises(ValueError, match="different numbers of rows per task"):
        submission.write_mtl_submission(tmp_path / "a.txt", images, {**out, "AU": out["AU"][:1]})
    assert not (tmp_path / "a.txt").exists()


def test_score_of_a_validation_submission(tmp_path):
    """A submission for the annotated frames of a split scores what scikit-learn and numpy say."""
    rng = np.random.default_rng(2)
    videos = []
    for name in ("a", "b", "c"):
        n = 60
        frames = np.sort(rng.choice(np.arange(1, 500), n, replace=False))
        va_valid = rng.random((n, 2)) > 0.2
        expr_valid = rng.random(n) > 0.2
        au_valid = rng.random((n, 12)) > 0.2
        videos.append(mtl.MTLVideo(
            name, frames, np.where(va_valid, np.round(rng.uniform(-1, 1, (n, 2)), 3), 0).astype(np.float32), va_valid,
            np.where(expr_valid, rng.integers(0, 8, n), 0).astype(np.int32), expr_valid,
            np.where(au_valid, rng.integers(0, 2, (n, 12)), 0).astype(np.int32), au_valid))
    images = [(v.name, int(f)) for v in videos for f in v.frames]
    labels, valid = mtl.split_arrays(videos)
    outputs = {"VA": 0.5 * labels["VA"] + rng.normal(0, 0.3, (len(images), 2)),
               "EXPR": np.eye(8)[labels["EXPR"]] + rng.normal(0, 0.8, (len(images), 8)),
               "AU": 2 * labels["AU"] - 1 + rng.normal(0, 1.2, (len(images), 12))}
    path = submission.write_mtl_submission(tmp_path / "val.txt", images, outputs)
    got = submission.score_mtl_submission(path, videos)

    written = submission.read_mtl_submission(path)
    ccc = []
    for j in range(2):
        x, y = written.va[valid["VA"][:, j], j], labels["VA"][valid["VA"][:, j], j].astype(np.float64)
        ccc.append(2 * np.mean((x - x.mean()) * (y - y.mean())) / (x.var() + y.var() + (x.mean() - y.mean()) ** 2))
    e = f1_score(labels["EXPR"][valid["EXPR"]], written.expr[valid["EXPR"]], labels=list(range(8)), average="macro",
                 zero_division=0)
    u = np.mean([f1_score(labels["AU"][valid["AU"][:, j], j], written.au[valid["AU"][:, j], j], zero_division=0)
                 for j in range(12)])
    assert got["valence_ccc"] == pytest.approx(ccc[0], abs=1e-9)
    assert got["arousal_ccc"] == pytest.approx(ccc[1], abs=1e-9)
    assert got["expr_f1"] == pytest.approx(e, abs=1e-12) and got["au_f1"] == pytest.approx(u, abs=1e-12)
    assert got["score"] == pytest.approx((ccc[0] + ccc[1]) / 2 + e + u, abs=1e-9)
    with pytest.raises(submission.SubmissionError, match="1 of 181 listed images missing, e.g. d/00001.jpg"):
        submission.score_mtl_submission(path, videos + [mtl.mtl_test_videos([("d", 1)])[0]])
