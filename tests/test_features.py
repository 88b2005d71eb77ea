"""Feature store: round trips, crash recovery, several writers, imports, and every error."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from abaw_jax.data import features as F
from conftest import ROOT
from abaw_jax.data.features import FeatureSets, FeatureStore, FeatureStoreWriter, StoreError

DIM = 6


def _videos(seed: int, lengths=(7, 12, 3, 20)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        f"vid{i}_{t}": (rng.normal(size=(t, DIM)).astype(np.float32), rng.random(t) > 0.3)
        for i, t in enumerate(lengths)
    }


def _write(path, videos, **kwargs) -> None:
    with FeatureStoreWriter(path, dim=DIM, **kwargs) as w:
        for name, (x, p) in videos.items():
            w.write(name, x, p)


def _bits(a: np.ndarray) -> np.ndarray:
    """The raw bits, so that comparisons are exact (and NaN-proof)."""
    return np.ascontiguousarray(a).view(f"u{a.dtype.itemsize}")


def _store_files(path: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.name != "meta.json"}


@pytest.mark.parametrize("dtype, np_dtype", [
    ("float16", np.float16), ("bfloat16", ml_dtypes.bfloat16), ("float32", np.float32)])
def test_round_trip_is_bit_exact(tmp_path, dtype, np_dtype):
    videos = _videos(0)
    # A tiny shard limit puts the videos in several shards.
    _write(tmp_path / "s", videos, dtype=dtype, extractor="test", shard_bytes=15 * DIM * 2,
           params={"note": "tiny"})
    store = FeatureStore(tmp_path / "s")
    assert store.videos == sorted(videos) and len(store) == len(videos)
    assert store.dim == DIM and store.dtype == np.dtype(np_dtype)
    assert store.meta["extractor"] == "test" and store.meta["params"] == {"note": "tiny"}
    assert store.meta["format"] == "abaw_jax.features/1"
    assert len(list((tmp_path / "s").glob("shard-p0-*.bin"))) > 1
    for name, (x, p) in videos.items():
        got = store.read(name)
        assert got.dtype == np.dtype(np_dtype) and got.shape == x.shape
        np.testing.assert_array_equal(_bits(got), _bits(x.astype(np_dtype)))
        np.testing.assert_array_equal(store.present(name), p)
        assert store.num_frames(name) == len(x) and name in store
        np.testing.assert_array_equal(_bits(store.read(name, 1, 3)), _bits(x[1:3].astype(np_dtype)))
    assert store.read(next(iter(videos)), 2, 2).shape == (0, DIM)


def test_index_lines_record_where_each_video_lives(tmp_path):
    videos = _videos(1)
    _write(tmp_path, videos)
    lines = [json.loads(s) for s in (tmp_path / "index-p0.jsonl").read_text().splitlines()]
    offset = 0
    for line, (name, (x, p)) in zip(lines, videos.items()):
        assert line == {"video": name, "shard": "shard-p0-00000.bin", "offset": offset,
                        "length": len(x), "n_present": int(p.sum())}
        offset += len(x)
    assert (tmp_path / "shard-p0-00000.bin").stat().st_size == offset * DIM * 2
    assert (tmp_path / "shard-p0-00000.present").stat().st_size == offset


def test_resume_after_crash_matches_uninterrupted_write(tmp_path):
    videos = _videos(2, lengths=(5, 9, 4, 8, 6))
    names = list(videos)
    _write(tmp_path / "clean", videos, shard_bytes=14 * DIM * 2)

    crashed = tmp_path / "crashed"
    _write(crashed, {n: videos[n] for n in names[:3]}, shard_bytes=14 * DIM * 2)
    # The crash: half of the next video's rows and flags, an index line cut short, and a
    # shard opened by a rollover that never got committed.
    last_shard = json.loads((crashed / "index-p0.jsonl").read_text().splitlines()[-1])["shard"]
    with open(crashed / last_shard, "ab") as f:
        f.write(videos[names[3]][0][:3].astype(np.float16).tobytes())
    with open(crashed / last_shard.replace(".bin", ".present"), "ab") as f:
        f.write(b"\x01\x01")
    with open(crashed / "index-p0.jsonl", "a") as f:
        f.write('{"video": "' + names[3] + '", "shard": "sha')
    (crashed / "shard-p0-00009.bin").write_bytes(b"junk" * 10)
    (crashed / "shard-p0-00009.present").write_bytes(b"\x01")
    # Readers ignore what the index does not commit.
    assert FeatureStore(crashed).videos == sorted(names[:3])

    with FeatureStoreWriter(crashed, dim=DIM, shard_bytes=14 * DIM * 2) as w:
        assert [w.has(n) for n in names] == [True, True, True, False, False]
        for n in names[3:]:
            w.write(n, *videos[n])
    assert _store_files(crashed) == _store_files(tmp_path / "clean")


def test_resume_refuses_a_store_that_lost_committed_rows(tmp_path):
    _write(tmp_path, _videos(2, lengths=(5, 9)))
    shard = tmp_path / "shard-p0-00000.bin"
    shard.write_bytes(shard.read_bytes()[: 10 * DIM * 2])
    with pytest.raises(StoreError, match=r"shard-p0-00000.bin: holds 120 bytes but index-p0.jsonl"
                       r" commits 168; the store lost data"):
        FeatureStoreWriter(tmp_path, dim=DIM)
    (tmp_path / "index-p0.jsonl").write_text('{"video": "x"}\n')
    with pytest.raises(StoreError, match=r"index-p0.jsonl: line 1: key 'shard' must be str, got None"):
        FeatureStoreWriter(tmp_path, dim=DIM)


def test_failed_write_leaves_no_rows_behind(tmp_path):
    videos = _videos(3)
    a, b = list(videos)[:2]
    with FeatureStoreWriter(tmp_path, dim=DIM) as w:
        w.write(a, *videos[a])
        bad = videos[b][0].copy()
        bad[2, 1] = np.nan
        with pytest.raises(StoreError, match=rf"video '{b}'.*NaN/inf.*frame index 2"):
            w.write(b, bad)
        w.write(b, *videos[b])
    store = FeatureStore(tmp_path)
    np.testing.assert_array_equal(store.read(b), videos[b][0].astype(np.float16))


def test_two_processes_write_one_store(tmp_path):
    videos = _videos(4, lengths=(4, 5, 6, 7, 8, 9))
    names = list(videos)
    # Interleaved, both open at once: the files are per process, meta.json is shared.
    with FeatureStoreWriter(tmp_path, dim=DIM, process_index=0) as w0, \
            FeatureStoreWriter(tmp_path, dim=DIM, process_index=1) as w1:
        for i, n in enumerate(names):
            (w0 if i % 2 == 0 else w1).write(n, *videos[n])
    assert {p.name for p in tmp_path.glob("index-p*.jsonl")} == {"index-p0.jsonl", "index-p1.jsonl"}
    store = FeatureStore(tmp_path)
    assert store.videos == sorted(names)
    for n, (x, p) in videos.items():
        np.testing.assert_array_equal(store.read(n), x.astype(np.float16))
        np.testing.assert_array_equal(store.present(n), p)
    # A rerun with another process layout sees what the other process already wrote.
    with FeatureStoreWriter(tmp_path, dim=DIM, process_index=2) as w2:
        assert w2.has(names[1])
        with pytest.raises(StoreError, match=rf"video '{names[1]}' is already in the"
                           rf" store \(index-p1.jsonl line 1\)"):
            w2.write(names[1], *videos[names[1]])


def test_nan_policy_zero_replaces_and_counts(tmp_path):
    x = np.arange(4 * DIM, dtype=np.float32).reshape(4, DIM)
    x[1, 2], x[3, 0] = np.nan, np.inf
    x[2, 5] = 1e6  # finite in float32, inf in float16
    with FeatureStoreWriter(tmp_path, dim=DIM, nan_policy="zero") as w:
        w.write("v", x)
        assert w.num_nonfinite == 3
    expected = x.copy()
    expected[1, 2] = expected[3, 0] = expected[2, 5] = 0
    np.testing.assert_array_equal(FeatureStore(tmp_path).read("v"), expected.astype(np.float16))
    assert json.loads((tmp_path / "index-p0.jsonl").read_text())["n_nonfinite"] == 3


def test_writer_errors_name_the_problem(tmp_path):
    x = np.zeros((3, DIM), np.float32)
    with FeatureStoreWriter(tmp_path, dim=DIM) as w:
        w.write("a", x)
        with pytest.raises(StoreError, match=r"video 'a' is already in the store \(index-p0.jsonl line 1\)"):
            w.write("a", x)
        with pytest.raises(StoreError, match=r"video 'b': features must be \[T > 0, 6\], got shape \(3, 5\)"):
            w.write("b", np.zeros((3, 5)))
        with pytest.raises(StoreError, match=r"video 'b': features must be .*got shape \(0, 6\)"):
            w.write("b", np.zeros((0, DIM)))
        with pytest.raises(StoreError, match=r"video 'b': present must be \[3\], got shape \(4,\)"):
            w.write("b", x, np.ones(4, bool))
        big = x.copy()
        big[1, 4] = 7e4  # finite in float32, not in float16
        with pytest.raises(StoreError, match=r"video 'c': 1 NaN/inf feature values \(first at"
                           r" frame index 1, after conversion to float16\)"):
            w.write("c", big)
        with pytest.raises(StoreError, match="another writer with process_index 0"):
            FeatureStoreWriter(tmp_path, dim=DIM)
    with pytest.raises(StoreError, match=r"meta.json: store has dim 6, writer was opened with 7"):
        FeatureStoreWriter(tmp_path, dim=7)
    with pytest.raises(StoreError, match=r"meta.json: store has dtype 'float16',"
                       r" writer was opened with 'bfloat16'"):
        FeatureStoreWriter(tmp_path, dim=DIM, dtype="bfloat16")
    with pytest.raises(StoreError, match=r"unsupported feature dtype 'int8'"):
        FeatureStoreWriter(tmp_path / "other", dim=DIM, dtype="int8")
    with pytest.raises(StoreError, match=r"nan_policy must be one of"):
        FeatureStoreWriter(tmp_path / "other", dim=DIM, nan_policy="ignore")
    with FeatureStoreWriter(tmp_path, dim=DIM) as w:  # the lock went with the writer
        assert w.has("a") and not w.has("b")


@pytest.fixture
def small_store(tmp_path) -> pathlib.Path:
    _write(tmp_path / "s", _videos(5, lengths=(4, 6)))
    return tmp_path / "s"


def test_reader_errors_meta(small_store):
    meta = small_store / "meta.json"
    good = meta.read_text()
    meta.write_text("{not json")
    with pytest.raises(StoreError, match=r"meta.json: not valid JSON"):
        FeatureStore(small_store)
    meta.write_text(good.replace('"float16"', '"int4"'))
    with pytest.raises(StoreError, match=r"meta.json: key 'dtype' is 'int4'"):
        FeatureStore(small_store)
    meta.write_text(good.replace('"dim": 6', '"dim": "6"'))
    with pytest.raises(StoreError, match=r"meta.json: key 'dim' must be a positive int"):
        FeatureStore(small_store)
    meta.unlink()
    with pytest.raises(StoreError, match=rf"{small_store}: meta.json missing"):
        FeatureStore(small_store)
    with pytest.raises(StoreError, match=r"feature store directory does not exist"):
        FeatureStore(small_store / "nope")


def test_reader_errors_shards(small_store):
    shard = small_store / "shard-p0-00000.bin"
    present = small_store / "shard-p0-00000.present"
    data, flags = shard.read_bytes(), present.read_bytes()
    shard.write_bytes(data[: -DIM * 2 - 1])
    with pytest.raises(StoreError, match=r"shard-p0-00000.bin holds 8 rows but the index needs"
                       r" 10 \(video 'vid1_6', index-p0.jsonl line 2\)"):
        FeatureStore(small_store)
    shard.unlink()
    with pytest.raises(StoreError, match=r"shard-p0-00000.bin is missing \(needed by video 'vid1_6'"):
        FeatureStore(small_store)
    shard.write_bytes(data)
    present.write_bytes(flags[:-1])
    with pytest.raises(StoreError, match=r"shard-p0-00000.present holds 9 rows but the index needs 10"):
        FeatureStore(small_store)
    present.write_bytes(bytes([1 - flags[0]]) + flags[1:])
    with pytest.raises(StoreError, match=r"video 'vid0_4' \(index-p0.jsonl line 1\) says"
                       r" n_present \d+ but shard-p0-00000.present has"):
        FeatureStore(small_store)


def test_reader_errors_index(small_store):
    index = small_store / "index-p0.jsonl"
    lines = index.read_text().splitlines(keepends=True)
    (small_store / "index-p1.jsonl").write_text(lines[1])
    with pytest.raises(StoreError, match=r"video 'vid1_6' appears twice \(index-p0.jsonl"
                       r" line 2, index-p1.jsonl line 1\)"):
        FeatureStore(small_store)
    (small_store / "index-p1.jsonl").unlink()
    index.write_text(lines[0] + "{oops\n")
    with pytest.raises(StoreError, match=r"index-p0.jsonl: line 2 is not valid JSON"):
        FeatureStore(small_store)
    index.write_text(lines[0] + lines[1].replace('"length": 6', '"length": "6"'))
    with pytest.raises(StoreError, match=r"index-p0.jsonl: line 2: key 'length' must be int"):
        FeatureStore(small_store)
    index.write_text(lines[0] + lines[1].replace("shard-p0-00000.bin", "../x.bin"))
    with pytest.raises(StoreError, match=r"index-p0.jsonl: line 2: bad shard name '../x.bin'"):
        FeatureStore(small_store)
    index.write_text(lines[0] + lines[1].replace('"offset": 4', '"offset": 2'))
    with pytest.raises(StoreError, match=r"videos 'vid0_4' \(index-p0.jsonl line 1\) and"
                       r" 'vid1_6' \(index-p0.jsonl line 2\) overlap"):
        FeatureStore(small_store)


def test_reader_errors_read(small_store):
    store = FeatureStore(small_store)
    with pytest.raises(StoreError, match=rf"{small_store}: video 'missing' is not in the feature store"):
        store.read("missing")
    with pytest.raises(StoreError, match=r"video 'missing' is not in"):
        store.present("missing")
    with pytest.raises(StoreError, match=r"video 'vid0_4': frames \[2, 5\) outside \[0, 4\)"):
        store.read("vid0_4", 2, 5)
    with pytest.raises(StoreError, match=r"video 'vid0_4': frames \[3, 2\) outside"):
        store.read("vid0_4", 3, 2)
    with pytest.raises(StoreError, match=r"video 'vid0_4': frames \[-1, 2\) outside"):
        store.read("vid0_4", -1, 2)


def test_feature_sets_align_and_complain(tmp_path):
    rng = np.random.default_rng(6)
    a = {"v1": rng.normal(size=(5, 3)), "v2": rng.normal(size=(7, 3))}
    b = {"v1": rng.normal(size=(5, 4)), "v2": rng.normal(size=(7, 4))}
    pa = {"v1": rng.random(5) > 0.5, "v2": np.ones(7, bool)}
    for name, data, dim in (("a", a, 3), ("b", b, 4)):
        with FeatureStoreWriter(tmp_path / name, dim=dim, dtype="float32") as w:
            for v, x in data.items():
                w.write(v, x, pa[v] if name == "a" else None)
    sets = FeatureSets({"a": tmp_path / "a", "b": FeatureStore(tmp_path / "b")})
    assert sets.names == ["a", "b"] and sets.dims == {"a": 3, "b": 4} and sets.videos == ["v1", "v2"]
    got = sets.read("v2", 1, 4)
    np.testing.assert_array_equal(got["a"], a["v2"][1:4].astype(np.float32))
    np.testing.assert_array_equal(got["b"], b["v2"][1:4].astype(np.float32))
    np.testing.assert_array_equal(sets.present("v1"), pa["v1"])
    assert sets.num_frames("v2") == 7

    with FeatureStoreWriter(tmp_path / "b", dim=4, dtype="float32") as w:
        w.write("v3", np.zeros((2, 4)))
    with FeatureStoreWriter(tmp_path / "a", dim=3, dtype="float32") as w:
        w.write("v4", np.zeros((2, 3)))
    with FeatureStoreWriter(tmp_path / "b", dim=4, dtype="float32") as w:
        w.write("v4", np.zeros((3, 4)))
    sets = FeatureSets({"a": tmp_path / "a", "b": tmp_path / "b"})
    assert "v3" not in sets and sets.videos == ["v1", "v2", "v4"]
    with pytest.raises(StoreError, match=rf"feature set 'a' \({tmp_path / 'a'}\) has no video 'v3'"):
        sets.read("v3")
    with pytest.raises(StoreError, match=r"video 'v4' has different frame counts across"
                       r" feature sets: \{'a': 2, 'b': 3\}"):
        sets.num_frames("v4")


# OpenFace 2.0 FeatureExtraction column layout (gaze, eye landmarks, pose, 2D/3D landmarks,
# shape parameters, AU intensities, AU presences), written with ", " between names.
OPENFACE_HEADER = (
    ["frame", "face_id", "timestamp", "confidence", "success"]
    + [f"gaze_{e}_{a}" for e in (0, 1) for a in "xyz"] + ["gaze_angle_x", "gaze_angle_y"]
    + [f"eye_lmk_{c}_{i}" for c in "xyXYZ" for i in range(56)]
    + [f"pose_{c}" for c in ("Tx", "Ty", "Tz", "Rx", "Ry", "Rz")]
    + [f"{c}_{i}" for c in "xyXYZ" for i in range(68)]
    + ["p_scale", "p_rx", "p_ry", "p_rz", "p_tx", "p_ty"] + [f"p_{i}" for i in range(34)]
    + [f"AU{n:02d}_r" for n in (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)]
    + [f"AU{n:02d}_c" for n in (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 28, 45)]
)
AU_R = [i for i, c in enumerate(OPENFACE_HEADER) if c.endswith("_r")]


def _openface_row(frame, face_id, confidence, success, aus, rng) -> list[str]:
    row = [f"{rng.normal():.3f}" for _ in OPENFACE_HEADER]
    row[:5] = [str(frame), str(face_id), f"{(frame - 1) / 30:.3f}", f"{confidence:.2f}", str(success)]
    for i, value in zip(AU_R, aus):
        row[i] = f"{value:.2f}"
    return row


def _write_openface(path, rows) -> None:
    path.write_text(", ".join(OPENFACE_HEADER) + "\n" + "".join(", ".join(r) + "\n" for r in rows))


def test_openface_header_matches_the_17_intensity_columns():
    assert [OPENFACE_HEADER[i] for i in AU_R] == list(F.OPENFACE_AU_COLUMNS)
    assert len(OPENFACE_HEADER) == 714


def test_import_openface(tmp_path):
    rng = np.random.default_rng(7)
    aus = np.round(rng.uniform(0, 5, size=(8, 17)), 2)
    rows = [
        _openface_row(1, 0, 0.98, 1, aus[0], rng),
        _openface_row(2, 0, 0.97, 1, aus[1], rng),
        # frame 3 has no row at all
        _openface_row(4, 0, 0.60, 1, aus[2], rng),   # two faces: the more confident one wins
        _openface_row(4, 1, 0.90, 1, aus[3], rng),
        _openface_row(5, 0, 0.10, 0, aus[4], rng),   # tracking failed: not present, zeros
        _openface_row(6, 0, 0.95, 1, aus[5], rng),
    ]
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    _write_openface(csv_dir / "12-24-1920x1080.csv", rows)
    _write_openface(csv_dir / "video5_left.csv", [_openface_row(2, 0, 0.9, 1, aus[6], rng)])
    F.import_openface(csv_dir, tmp_path / "of", num_frames={"video5_left": 3})
    store = FeatureStore(tmp_path / "of")
    assert store.videos == ["12-24-1920x1080", "video5_left"] and store.dim == 17
    assert store.dtype == np.float32 and store.meta["extractor"] == "openface_au_r"
    expected = np.zeros((6, 17), np.float32)
    expected[[0, 1, 3, 5]] = aus[[0, 1, 3, 5]]
    np.testing.assert_array_equal(store.read("12-24-1920x1080"), expected)
    np.testing.assert_array_equal(store.present("12-24-1920x1080"), [1, 1, 0, 1, 0, 1])
    expected = np.stack([np.zeros(17), aus[6], np.zeros(17)]).astype(np.float32)
    np.testing.assert_array_equal(store.read("video5_left"), expected)
    np.testing.assert_array_equal(store.present("video5_left"), [0, 1, 0])
    # Rerunning skips what is done.
    F.import_openface([csv_dir / "12-24-1920x1080.csv"], tmp_path / "of")
    assert len(FeatureStore(tmp_path / "of")) == 2


def test_import_openface_errors(tmp_path):
    rng = np.random.default_rng(8)
    good = _openface_row(1, 0, 0.9, 1, np.ones(17), rng)
    csv = tmp_path / "v.csv"
    _write_openface(csv, [good, good[:-1]])
    with pytest.raises(StoreError, match=rf"{csv}: line 3: 713 fields, the header has 714"):
        F.read_openface_csv(csv)
    bad = list(good)
    bad[AU_R[4]] = "abc"
    _write_openface(csv, [good, good, bad])
    with pytest.raises(StoreError, match=rf"{csv}: line 4: could not convert string to float: ' ?abc'"):
        F.read_openface_csv(csv)
    bad = list(good)
    bad[AU_R[0]] = "nan"
    _write_openface(csv, [bad])
    with pytest.raises(StoreError, match=rf"{csv}: line 2: NaN/inf"):
        F.read_openface_csv(csv)
    _write_openface(csv, [_openface_row(0, 0, 0.9, 1, np.ones(17), rng)])
    with pytest.raises(StoreError, match=rf"{csv}: line 2: frame '0' is not a 1-based integer"):
        F.read_openface_csv(csv)
    _write_openface(csv, [_openface_row(4, 0, 0.9, 1, np.ones(17), rng)])
    with pytest.raises(StoreError, match=rf"{csv}: line 2: frame 4 beyond the video's 3 frames"):
        F.read_openface_csv(csv, num_frames=3)
    _write_openface(csv, [_openface_row(1, 0, 0.9, 2, np.ones(17), rng)])
    with pytest.raises(StoreError, match=rf"{csv}: line 2: success '2' is not 0 or 1"):
        F.read_openface_csv(csv)
    _write_openface(csv, [])
    with pytest.raises(StoreError, match=rf"{csv}: no data rows"):
        F.read_openface_csv(csv)
    csv.write_text("frame, face_id, timestamp, confidence, success, AU01_r\n1, 0, 0, 1, 1, 0.5\n")
    with pytest.raises(StoreError, match=rf"{csv}: line 1: header lacks OpenFace column\(s\) \['AU02_r'"):
        F.read_openface_csv(csv)
    # A folder of CSVs of another form: the error, and no empty store left to be taken as one.
    with pytest.raises(StoreError, match=r"header lacks OpenFace column"):
        F.import_openface(tmp_path, tmp_path / "store")
    assert not (tmp_path / "store").exists()
    with pytest.raises(StoreError, match=r"nothing.csv: OpenFace CSV not found"):
        F.import_openface([tmp_path / "nothing.csv"], tmp_path / "out")


def test_import_npy(tmp_path):
    rng = np.random.default_rng(9)
    src = tmp_path / "npy"
    src.mkdir()
    a, b = rng.normal(size=(5, 8)).astype(np.float32), rng.normal(size=(3, 8)).astype(np.float32)
    pb = np.array([True, False, True])
    np.save(src / "a.npy", a)
    np.save(src / "b.npy", b)
    np.save(src / "b.present.npy", pb)
    F.import_npy(src, tmp_path / "s", dtype="bfloat16")
    store = FeatureStore(tmp_path / "s")
    assert store.videos == ["a", "b"] and store.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(_bits(store.read("a")), _bits(a.astype(ml_dtypes.bfloat16)))
    np.testing.assert_array_equal(store.present("a"), np.ones(5, bool))
    np.testing.assert_array_equal(store.present("b"), pb)

    np.save(src / "c.present.npy", pb)
    with pytest.raises(StoreError, match=r"c.present.npy: no matching features file c.npy"):
        F.import_npy(src, tmp_path / "s2")
    (src / "c.present.npy").unlink()
    np.save(src / "b.present.npy", np.ones(4, bool))
    with pytest.raises(StoreError, match=r"b.present.npy: shape \(4,\) does not match b.npy \(3 frames\)"):
        F.import_npy(src, tmp_path / "s3")
    np.save(src / "b.present.npy", pb)
    np.save(src / "d.npy", np.zeros((2, 8, 1)))
    with pytest.raises(StoreError, match=r"d.npy: expected a \[T, D\] array, got shape \(2, 8, 1\)"):
        F.import_npy(src, tmp_path / "s4")
    np.save(src / "d.npy", np.zeros((2, 9)))
    with pytest.raises(StoreError, match=r"the .npy files have different feature dims \[8, 9\]"):
        F.import_npy(src, tmp_path / "s5")


def _features_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "abaw_jax.data.features", *map(str, args)],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True)


def test_import_commands_write_stores_and_name_the_bad_file(tmp_path):
    rng = np.random.default_rng(3)
    npy, csv = tmp_path / "npy", tmp_path / "csv"
    npy.mkdir(), csv.mkdir()
    arrays = {v: rng.normal(size=(n, 6)).astype(np.float32) for v, n in (("v1", 4), ("v2", 3))}
    for v, a in arrays.items():
        np.save(npy / f"{v}.npy", a)
    aus = np.round(rng.uniform(0, 5, size=(2, 17)), 2)
    _write_openface(csv / "v1.csv", [_openface_row(1, 0, 0.9, 1, aus[0], rng),
                                     _openface_row(2, 0, 0.9, 1, aus[1], rng)])
    r = _features_cli("import-npy", npy, tmp_path / "poster2", "--extractor", "poster2",
                      "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    store = FeatureStore(tmp_path / "poster2")
    assert store.meta["extractor"] == "poster2" and store.videos == ["v1", "v2"]
    np.testing.assert_array_equal(store.read("v2"), arrays["v2"])
    r = _features_cli("import-openface", csv, tmp_path / "fau")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(FeatureStore(tmp_path / "fau").read("v1"),
                                  aus.astype(np.float32))
    # Bad input: one error line naming the file (and line), nothing written over.
    (npy / "v3.npy").write_bytes(b"not an array")
    r = _features_cli("import-npy", npy, tmp_path / "other")
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: ") and str(npy / "v3.npy") in r.stderr
    bad = _openface_row(3, 0, 0.9, 1, aus[0], rng)
    bad[3] = "high"
    _write_openface(csv / "v2.csv", [bad])
    r = _features_cli("import-openface", csv, tmp_path / "fau")
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert f"error: {csv / 'v2.csv'}: line 2:" in r.stderr
    assert FeatureStore(tmp_path / "fau").videos == ["v1"]
