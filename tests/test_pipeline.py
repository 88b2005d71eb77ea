"""Window pipelines: coverage, padding, values, shuffling, iterator state, process splits."""

from __future__ import annotations

import numpy as np
import pytest

from abaw_jax.data.affwild2 import Video
from abaw_jax.data.features import FeatureSets, FeatureStore, FeatureStoreWriter, StoreError
from abaw_jax.data.pipeline import Assembler, eval_batches, eval_windows, train_dataset, window_starts

L = 8  # seq_len
DIM = 5
# Shorter than, equal to, and longer than seq_len (with and without a leftover tail).
LENGTHS = {"short": 3, "exact": 8, "long": 21, "v4": 16, "v5": 11}
ONE = dict(process_index=0, process_count=1)


def _make(tmp_path, task="EXPR", lengths=LENGTHS, dtype="float16", name="s", seed=0):
    """A store of random features and Video objects whose presence differs from the store's."""
    rng = np.random.default_rng(seed)
    videos = []
    with FeatureStoreWriter(tmp_path / name, dim=DIM, dtype=dtype) as w:
        for v, t in lengths.items():
            w.write(v, rng.normal(size=(t, DIM)), rng.random(t) > 0.2)
            if task == "EXPR":
                labels = rng.integers(0, 8, t).astype(np.int32)
                valid = rng.random(t) > 0.2
            else:
                labels = rng.integers(0, 2, (t, 12)).astype(np.int32)
                valid = rng.random((t, 12)) > 0.2
            labels = np.where(valid, labels, 0)
            videos.append(Video(v, t, labels, valid, rng.random(t) > 0.1))
    return videos, FeatureStore(tmp_path / name)


def _reference_features(video, store) -> np.ndarray:
    """float64 features of every frame, zero where the video or the store has no face."""
    x = np.asarray(store.read(video.name), np.float64)
    return np.where((video.present & store.present(video.name))[:, None], x, 0.0)


def test_window_starts():
    # Written out by hand: stride steps, then one window right-aligned to the end.
    assert window_starts(3, 8, 8).tolist() == [0]
    assert window_starts(8, 8, 8).tolist() == [0]
    assert window_starts(21, 8, 8).tolist() == [0, 8, 13]
    assert window_starts(16, 8, 8).tolist() == [0, 8]
    assert window_starts(21, 8, 5).tolist() == [0, 5, 10, 13]
    assert window_starts(20, 8, 4).tolist() == [0, 4, 8, 12]
    videos = [Video("a", 3, np.zeros(3), np.zeros(3, bool), np.ones(3, bool)),
              Video("b", 21, np.zeros(21), np.zeros(21, bool), np.ones(21, bool))]
    assert eval_windows(videos, seq_len=8).tolist() == [[0, 0], [1, 0], [1, 8], [1, 13]]
    with pytest.raises(ValueError, match=r"stride must be an int in \[1, seq_len=8\], got 9"):
        eval_windows(videos, seq_len=8, stride=9)
    with pytest.raises(ValueError, match=r"seq_len must be a positive int, got 0"):
        eval_windows(videos, seq_len=0)


@pytest.mark.parametrize("task", ["EXPR", "AU"])
@pytest.mark.parametrize("stride, batch_size", [(None, 4), (3, 5), (8, 64), (1, 7)])
def test_eval_assembles_every_frame_back(tmp_path, task, stride, batch_size):
    videos, store = _make(tmp_path, task)
    feats = Assembler(videos, DIM)
    labels = Assembler(videos, int(np.prod(videos[0].labels.shape[1:])))
    present = Assembler(videos, 1)
    cover = [np.zeros(v.num_frames, int) for v in videos]
    n_windows = len(eval_windows(videos, seq_len=L, stride=stride))
    batches = list(eval_batches(videos, store, seq_len=L, stride=stride, batch_size=batch_size, **ONE))
    assert len(batches) == -(-n_windows // batch_size)
    for b in batches:
        assert b["features"].dtype == np.float32 and b["features"].shape == (batch_size, L, DIM)
        assert b["batch_mask"].sum() == min(batch_size, n_windows)
        n_windows -= int(b["batch_mask"].sum())
        # Padding rows carry nothing.
        assert not b["frame_mask"][~b["batch_mask"]].any() and not b["features"][~b["batch_mask"]].any()
        lab = b["labels"].reshape(batch_size, L, -1)
        feats.add(b["features"], b["video"], b["start"], b["frame_mask"])
        labels.add(lab, b["video"], b["start"], b["frame_mask"])
        present.add(b["present"][..., None], b["video"], b["start"], b["frame_mask"])
        for i in np.flatnonzero(b["batch_mask"]):
            s = b["start"][i]
            cover[b["video"][i]][s : s + L] += b["frame_mask"][i, : videos[b["video"][i]].num_frames - s]
    assert n_windows == 0
    for v, f, lab, p, c in zip(videos, feats.result(), labels.result(), present.result(), cover):
        assert (c >= 1).all()
        np.testing.assert_array_equal(f, _reference_features(v, store).astype(np.float32))
        np.testing.assert_array_equal(lab, v.labels.reshape(v.num_frames, -1))
        np.testing.assert_array_equal(p[:, 0], v.present & store.present(v.name))


def test_windows_hold_the_right_frames_and_padding(tmp_path):
    videos, store = _make(tmp_path, "AU")
    (batch,) = list(eval_batches(videos[:1], store, seq_len=L, batch_size=2, **ONE))
    v = videos[0]  # 3 frames: one window padded with 5 frames
    assert batch["batch_mask"].tolist() == [True, False]
    assert batch["video"].tolist() == [0, 0] and batch["start"].tolist() == [0, 0]
    assert batch["frame_mask"][0].tolist() == [True] * 3 + [False] * 5
    np.testing.assert_array_equal(batch["labels"][0, :3], v.labels)
    assert not batch["labels"][0, 3:].any() and not batch["valid"][0, 3:].any()
    np.testing.assert_array_equal(batch["valid"][0, :3], v.valid)
    np.testing.assert_array_equal(batch["present"][0, :3], v.present & store.present(v.name))
    assert not batch["present"][0, 3:].any()
    np.testing.assert_array_equal(batch["features"][0, :3], _reference_features(v, store).astype(np.float32))
    assert not batch["features"][0, 3:].any()
    assert batch["labels"].dtype == np.int32 and batch["labels"].shape == (2, L, 12)
    assert batch["valid"].dtype == bool and batch["video"].dtype == np.int32


def _expected_windows(videos, stride=L) -> set[tuple[int, int]]:
    return {(i, int(s)) for i, v in enumerate(videos) for s in window_starts(v.num_frames, L, stride)}


def test_train_epochs_cover_every_window_once(tmp_path):
    videos, store = _make(tmp_path)
    expected = _expected_windows(videos, stride=3)
    n = len(expected)
    it = train_dataset(videos, store, seq_len=L, stride=3, batch_size=4, seed=3, num_threads=2, **ONE)
    rows = []
    while len(rows) < 2 * n:
        b = next(it)
        rows += list(zip(b["video"].tolist(), b["start"].tolist()))
        for i in range(4):
            v = videos[b["video"][i]]
            s, t = b["start"][i], min(L, v.num_frames - b["start"][i])
            np.testing.assert_array_equal(b["labels"][i, :t], v.labels[s : s + t])
            ref = _reference_features(v, store)[s : s + t].astype(np.float32)
            np.testing.assert_array_equal(b["features"][i, :t], ref)
            assert not b["frame_mask"][i, t:].any() and b["frame_mask"][i, :t].all()
    epoch1, epoch2 = rows[:n], rows[n : 2 * n]
    assert sorted(epoch1) == sorted(expected) and sorted(epoch2) == sorted(expected)
    assert epoch1 != epoch2  # a new order each epoch
    covered = [np.zeros(v.num_frames, bool) for v in videos]
    for v, s in epoch1:
        covered[v][s : s + L] = True
    assert all(c.all() for c in covered)
    # Same seed, same stream; another seed, another.
    again = train_dataset(videos, store, seq_len=L, stride=3, batch_size=4, seed=3, **ONE)
    other = train_dataset(videos, store, seq_len=L, stride=3, batch_size=4, seed=4, **ONE)
    first = [tuple(next(again)["start"]) for _ in range(3)]
    assert first == [tuple(r[1] for r in rows[4 * k : 4 * k + 4]) for k in range(3)]
    assert first != [tuple(next(other)["start"]) for _ in range(3)]


def test_train_skip_unlabelled(tmp_path):
    videos, store = _make(tmp_path)
    long = videos[2]
    valid = long.valid.copy()
    valid[:8] = False  # window (2, 0) has no valid label
    videos[2] = Video(long.name, long.num_frames, long.labels, valid, long.present)
    n = len(_expected_windows(videos))
    b = next(train_dataset(videos, store, seq_len=L, batch_size=n - 1, seed=0, skip_unlabelled=True, **ONE))
    assert set(zip(b["video"].tolist(), b["start"].tolist())) == _expected_windows(videos) - {(2, 0)}
    b = next(train_dataset(videos, store, seq_len=L, batch_size=n, seed=0, **ONE))
    assert set(zip(b["video"].tolist(), b["start"].tolist())) == _expected_windows(videos)


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_train_iterator_state_round_trip(tmp_path):
    videos, store = _make(tmp_path)
    n = len(_expected_windows(videos))  # 9 windows: an epoch is 2.25 batches of 4
    kwargs = dict(seq_len=L, batch_size=4, seed=11, num_threads=2, **ONE)
    it = train_dataset(videos, store, **kwargs)
    for _ in range(2):
        next(it)
    state = it.get_state()
    later = [next(it) for _ in range(4)]  # crosses the first and second epoch boundaries
    assert n == 9
    resumed = train_dataset(videos, store, **kwargs)
    resumed.set_state(state)
    for a, b in zip(later, [next(resumed) for _ in range(4)]):
        _same(a, b)


def test_two_processes_reproduce_one(tmp_path):
    videos, store = _make(tmp_path)
    kwargs = dict(seq_len=L, stride=5, batch_size=6, seed=2, num_threads=1)
    single = train_dataset(videos, store, process_index=0, process_count=1, **kwargs)
    parts = [train_dataset(videos, store, process_index=p, process_count=2, **kwargs) for p in range(2)]
    for _ in range(5):
        whole = next(single)
        halves = [next(p) for p in parts]
        assert halves[0]["features"].shape[0] == 3
        _same(whole, {k: np.concatenate([h[k] for h in halves]) for k in whole})

    ev = dict(seq_len=L, stride=4, batch_size=4)
    single = list(eval_batches(videos, store, **ev, **ONE))
    parts = [list(eval_batches(videos, store, process_index=p, process_count=2, **ev)) for p in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(single)
    for whole, a, b in zip(single, *parts):
        _same(whole, {k: np.concatenate([a[k], b[k]]) for k in whole})


def test_jax_process_defaults(tmp_path):
    """Without process arguments the pipelines read JAX's (one process here): the same batches,
    key for key, as with process_index=0, process_count=1 given."""
    import jax
    assert (jax.process_index(), jax.process_count()) == (0, 1)
    videos, store = _make(tmp_path)
    default = train_dataset(videos, store, seq_len=L, batch_size=4, seed=0)
    given = train_dataset(videos, store, seq_len=L, batch_size=4, seed=0, **ONE)
    for _ in range(3):
        batch = next(default)
        assert batch["features"].shape == (4, L, DIM)
        _same(batch, next(given))
    for a, b in zip(eval_batches(videos, store, seq_len=L, batch_size=4),
                    eval_batches(videos, store, seq_len=L, batch_size=4, **ONE), strict=True):
        _same(a, b)


def test_feature_sets(tmp_path):
    videos, a = _make(tmp_path, name="a", seed=1)
    _, b = _make(tmp_path, name="b", dtype="bfloat16", seed=2)
    sets = FeatureSets({"vit": a, "of": b})
    (batch,) = list(eval_batches(videos[1:2], sets, seq_len=L, batch_size=1, **ONE))
    assert "features" not in batch
    assert batch["features/vit"].shape == batch["features/of"].shape == (1, L, DIM)
    v = videos[1]
    both = v.present & a.present(v.name) & b.present(v.name)
    np.testing.assert_array_equal(batch["present"][0], both)
    for key, store in (("features/vit", a), ("features/of", b)):
        ref = np.where(both[:, None], np.asarray(store.read(v.name), np.float64), 0)
        np.testing.assert_array_equal(batch[key][0], ref.astype(np.float32))
    with FeatureStoreWriter(tmp_path / "c", dim=2) as w:
        w.write("short", np.zeros((3, 2)))
    with pytest.raises(StoreError, match=r"feature set 'c' \(.*\) has no video 'exact'"):
        eval_batches(videos, FeatureSets({"vit": a, "c": tmp_path / "c"}), seq_len=L, batch_size=2, **ONE)


def test_store_mismatch_errors(tmp_path):
    videos, store = _make(tmp_path)
    extra = Video("absent", 4, np.zeros(4, np.int32), np.ones(4, bool), np.ones(4, bool))
    with pytest.raises(StoreError, match=rf"{store.path}: video 'absent' is not in the feature store"):
        train_dataset(videos + [extra], store, seq_len=L, batch_size=2, seed=0, **ONE)
    v = videos[2]
    longer = Video(v.name, v.num_frames + 1, np.append(v.labels, 1), np.append(v.valid, True),
                   np.append(v.present, True))
    with pytest.raises(StoreError, match=r"video 'long' has 21 frames in the"
                       r" store but 22 in the annotations"):
        eval_batches([longer], store, seq_len=L, batch_size=2, **ONE)
    # Within the tolerance, the frame the store lacks is not present and has zero features.
    (b,) = list(eval_batches([longer], store, seq_len=L, batch_size=4, length_tolerance=1, **ONE))
    last = int(np.flatnonzero(b["start"] == 14)[0])
    assert b["frame_mask"][last, 7] and not b["present"][last, 7] and not b["features"][last, 7].any()
    ref = _reference_features(v, store)[14:21].astype(np.float32)
    np.testing.assert_array_equal(b["features"][last, :7], ref)
    bad = Video("short", 3, np.zeros(4, np.int32), np.ones(4, bool), np.ones(3, bool))
    with pytest.raises(ValueError, match=r"video 'short': labels \(4,\), valid \(4,\),"
                       r" present \(3,\) do not match num_frames 3"):
        eval_batches([bad], store, seq_len=L, batch_size=2, **ONE)
    mixed = Video("exact", 8, np.zeros((8, 12), np.int32), np.ones((8, 12), bool), np.ones(8, bool))
    with pytest.raises(ValueError, match=r"video 'exact': labels int32\[12\] differ from video 'short'"):
        eval_batches(videos[:1] + [mixed], store, seq_len=L, batch_size=2, **ONE)
    with pytest.raises(ValueError, match=r"batch_size 5 must be a positive multiple of process_count 2"):
        train_dataset(videos, store, seq_len=L, batch_size=5, seed=0, process_index=0, process_count=2)
    with pytest.raises(ValueError, match=r"process_index 2 outside \[0, process_count=2\)"):
        eval_batches(videos, store, seq_len=L, batch_size=4, process_index=2, process_count=2)
    assert list(eval_batches([], store, seq_len=L, batch_size=4, **ONE)) == []
    with pytest.raises(ValueError, match=r"^no videos$"):
        train_dataset([], store, seq_len=L, batch_size=4, seed=0, **ONE)
    with pytest.raises(TypeError, match=r"features must be a FeatureStore or FeatureSets"):
        eval_batches(videos, str(store.path), seq_len=L, batch_size=4, **ONE)


def test_assembler_averages_and_checks():
    videos = [Video("a", 5, np.zeros(5), np.zeros(5, bool), np.ones(5, bool)),
              Video("b", 3, np.zeros(3), np.zeros(3, bool), np.ones(3, bool))]
    asm = Assembler(videos, 2)
    out = np.arange(2 * 4 * 2, dtype=np.float32).reshape(2, 4, 2)
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
    asm.add(out, [0, 1], [0, 0], mask)
    with pytest.raises(ValueError, match=r"video 'a': frame 4 \(and 0 other frames\) received no output"):
        asm.result()
    asm.add(out[:1] + 100, [0], [1], mask[:1])  # frames 1..4 of a, overlapping 1..3
    a, b = asm.result()
    expected_a = np.array([out[0, 0], (out[0, 1] + out[0, 0] + 100) / 2, (out[0, 2] + out[0, 1] + 100) / 2,
                           (out[0, 3] + out[0, 2] + 100) / 2, out[0, 3] + 100])
    np.testing.assert_allclose(a, expected_a)
    np.testing.assert_array_equal(b, out[1, :3])
    with pytest.raises(ValueError, match=r"video 'b': frame 3 outside its 3 frames"):
        asm.add(out[1:], [1], [0], np.ones((1, 4), bool))
    with pytest.raises(ValueError, match=r"video index 2 outside \[0, 2\)"):
        asm.add(out[1:], [2], [0], mask[1:])
    with pytest.raises(ValueError, match=r"outputs must be \[B, L, 2\], got \(2, 4\)"):
        asm.add(out[..., 0], [0, 1], [0, 0], mask)
    with pytest.raises(ValueError, match=r"frame_mask \(2, 3\) do not match outputs \(2, 4, 2\)"):
        asm.add(out, [0, 1], [0, 0], mask[:, :3])


def test_batches_kept_by_the_consumer_are_never_overwritten(tmp_path):
    videos, store = _make(tmp_path)
    it = train_dataset(videos, store, seq_len=L, batch_size=4, seed=5, num_threads=2, **ONE)
    kept = next(it)
    kept_copy = {k: v.copy() for k, v in kept.items()}
    view = next(it)["features"][1:3, 2:]  # a view outlives its batch and array
    view_copy = view.copy()
    for _ in range(12):  # later batches reuse the memory of dropped ones only
        next(it)
    _same(kept, kept_copy)
    np.testing.assert_array_equal(view, view_copy)


def test_overlaps_are_averaged_in_probability_space_like_ensembles():
    """Overlapping windows of one run are averaged as an ensemble averages runs: EXPR softmax,
    AU sigmoid, VA as is, and the multi-task columns each by its task's rule (float64 NumPy
    references)."""
    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def sigmoid(x):
        return 1 / (1 + np.exp(-x))

    rng = np.random.default_rng(0)
    # Frame 0 seen by two windows: one sure of class 0, one mildly for class 1 and sure it is not
    # class 0. Averaged probabilities pick class 0 (p .5), averaged logits class 1.
    expr = np.array([[[9.0, 0, 0, 0, 0, 0, 0, -9.0]], [[-9.0, 1.0, 0, 0, 0, 0, 0, 0]]])
    asm = Assembler([1], 8, task="EXPR")
    asm.add(expr, [0, 0], [0, 0], np.ones((2, 1), bool))
    got = asm.result()[0]
    np.testing.assert_allclose(np.exp(got), softmax(expr).mean(0), rtol=1e-5)
    assert int(np.argmax(got)) == 0 != int(np.argmax(expr.mean(0)))
    results = {}
    for task, dim in (("AU", 12), ("VA", 2), ("MTL", 22)):
        outs = rng.normal(size=(3, 1, dim)) * 3
        asm = Assembler([1], dim, task=task)
        asm.add(outs, [0, 0, 0], [0, 0, 0], np.ones((3, 1), bool))
        results[task] = outs, asm.result()[0]
    outs, got = results["AU"]
    np.testing.assert_allclose(sigmoid(got), sigmoid(outs).mean(0), rtol=1e-5)
    outs, got = results["VA"]
    np.testing.assert_allclose(got, outs.mean(0), rtol=1e-5, atol=1e-6)
    # MTL: valence and arousal as is, the 8 expression logits by softmax, the 12 AUs by sigmoid.
    outs, got = results["MTL"]
    np.testing.assert_allclose(got[:, :2], outs[..., :2].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(softmax(got[:, 2:10]), softmax(outs[..., 2:10]).mean(0),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sigmoid(got[:, 10:]), sigmoid(outs[..., 10:]).mean(0),
                               rtol=1e-5, atol=1e-7)
