"""The on-device feature bank gives the host pipeline's batches, and the same training losses."""

from __future__ import annotations

import json
import pathlib

import jax
import ml_dtypes
import numpy as np
import pytest

from abaw_jax import config as config_lib, sharding, train
from abaw_jax.data import device_bank, pipeline
from abaw_jax.data.affwild2 import Video
from abaw_jax.data.features import FeatureSets, FeatureStore, FeatureStoreWriter, StoreError
from conftest import tiny_config

SEQ_LEN = 8
# Lengths include a video shorter than a window (padded) and one that ends mid-window.
LENGTHS = {"a": 20, "b": 5, "c": 13, "d": 8}


def write_store(path: pathlib.Path, dim: int, dtype: str, seed: int, stored: dict[str, int]):
    """A store with random features, about 20% of frames without a face image."""
    rng = np.random.default_rng(seed)
    with FeatureStoreWriter(path, dim=dim, dtype=dtype) as writer:
        for name, t in stored.items():
            writer.write(name, rng.standard_normal((t, dim)).astype(np.float32) * 3,
                         rng.random(t) > 0.2)
    return FeatureStore(path)


def make_videos(lengths: dict[str, int], seed: int = 0) -> list[Video]:
    rng = np.random.default_rng(seed)
    return [Video(name, t, rng.integers(0, 8, t).astype(np.int32), rng.random(t) > 0.1,
                  rng.random(t) > 0.1) for name, t in lengths.items()]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("bank")
    # The "short" sets lack the last 2 frames of video "a" (accepted with length_tolerance).
    short = dict(LENGTHS, a=LENGTHS["a"] - 2)
    return {
        "vit": write_store(root / "vit", 6, "float16", 1, LENGTHS),
        "short": FeatureSets({"vit": write_store(root / "vit_short", 6, "float16", 3, short),
                              "openface": write_store(root / "openface", 3, "bfloat16", 2, short)}),
    }


def mesh1():
    return sharding.make_mesh(1)


def host_and_index_batches(videos, features, n, **kwargs):
    """n batches from the host pipeline and from the index pipeline with the same seed."""
    common = dict(seq_len=SEQ_LEN, stride=3, batch_size=4, seed=7, num_threads=1,
                  process_index=0, process_count=1, **kwargs)
    host = pipeline.train_dataset(videos, features, **common)
    index = pipeline.train_dataset(videos, features, read_features=False, **common)
    return [next(host) for _ in range(n)], [next(index) for _ in range(n)]


def reference_window(store: FeatureStore, video: Video, start: int, present_all) -> np.ndarray:
    """Plain loop: the store's rows as float32 where the frame is present everywhere, else 0."""
    out = np.zeros((SEQ_LEN, store.dim), np.float32)
    rows = store.read(video.name)
    for j in range(SEQ_LEN):
        t = start + j
        if t < video.num_frames and present_all[t]:
            out[j] = rows[t].astype(np.float32)
    return out


def test_gather_is_bit_exact_with_host_pipeline_single_store(stores):
    videos = make_videos(LENGTHS)
    store = stores["vit"]
    bank = device_bank.build(videos, store, SEQ_LEN, mesh1())
    host, index = host_and_index_batches(videos, store, 6)
    for h, i in zip(host, index):
        assert "features" not in i
        for key in ("labels", "valid", "present", "frame_mask", "video", "start"):
            np.testing.assert_array_equal(i[key], h[key], err_msg=key)
        got = jax.device_get(device_bank.gather(bank.arrays, i["video"], i["start"],
                                                i["frame_mask"]))
        assert got["features"].dtype == np.float32
        # Bit-exact, signed zeros included.
        np.testing.assert_array_equal(got["features"].view(np.uint32),
                                      h["features"].view(np.uint32))
        np.testing.assert_array_equal(got["present"], h["present"])
        for row, (v, s) in enumerate(zip(i["video"], i["start"])):
            video = videos[v]
            present_all = video.present & store.present(video.name)
            np.testing.assert_array_equal(got["features"][row],
                                          reference_window(store, video, int(s), present_all))


def test_gather_matches_host_for_feature_sets_with_short_store(stores):
    videos = make_videos(LENGTHS, seed=3)
    sets = stores["short"]
    with pytest.raises(StoreError, match="'a' has 18 frames in the store but 20"):
        device_bank.build(videos, sets, SEQ_LEN, mesh1())
    bank = device_bank.build(videos, sets, SEQ_LEN, mesh1(), length_tolerance=2)
    assert set(bank.arrays["features"]) == {"features/vit", "features/openface"}
    assert bank.arrays["features"]["features/openface"].dtype == ml_dtypes.bfloat16
    host, index = host_and_index_batches(videos, sets, 6, length_tolerance=2)
    seen_short = False
    for h, i in zip(host, index):
        got = jax.device_get(device_bank.gather(bank.arrays, i["video"], i["start"],
                                                i["frame_mask"]))
        for key in ("features/vit", "features/openface"):
            np.testing.assert_array_equal(got[key].view(np.uint32), h[key].view(np.uint32))
        np.testing.assert_array_equal(got["present"], h["present"])
        seen_short |= bool(np.any((i["video"] == 0) & (i["start"] + SEQ_LEN > 18)))
    assert seen_short   # the frames the short store lacks were in some window


def test_host_arrays_layout(stores):
    videos = make_videos(LENGTHS)
    arrays = device_bank.host_arrays(videos, stores["vit"], SEQ_LEN)
    total = sum(LENGTHS.values())
    np.testing.assert_array_equal(arrays["offsets"], [0, 20, 25, 38])
    rows = arrays["features"]["features"]
    assert rows.shape == (total + SEQ_LEN, 6) and rows.dtype == np.float16
    assert not arrays["present"][total:].any() and not rows[total:].any()
    c = videos[2]
    present_c = c.present & stores["vit"].present("c")
    np.testing.assert_array_equal(arrays["present"][25:38], present_c)
    expected = np.where(present_c[:, None], stores["vit"].read("c"), 0)
    np.testing.assert_array_equal(rows[25:38], expected)
    assert device_bank.bank_nbytes(videos, stores["vit"], SEQ_LEN) == sum(
        x.nbytes for x in jax.tree.leaves(arrays))


def test_missing_video_names_store_and_video(stores):
    videos = make_videos(dict(LENGTHS, e=4))
    with pytest.raises(StoreError, match=r"vit.*video 'e' is not in the feature store"):
        device_bank.host_arrays(videos, stores["vit"], SEQ_LEN)


class FakeDevice:
    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_auto_on_off_decisions():
    gpus = [FakeDevice({"bytes_limit": 80 << 30}), FakeDevice({"bytes_limit": 40 << 30})]
    assert device_bank.memory_budget(gpus) == int(0.4 * (40 << 30))
    assert device_bank.memory_budget([FakeDevice(None)]) == device_bank.CPU_BUDGET_BYTES
    assert device_bank.use_bank("auto", 15 << 30, gpus)
    assert not device_bank.use_bank("auto", 17 << 30, gpus)
    assert device_bank.use_bank("on", 17 << 30, gpus)
    assert not device_bank.use_bank("off", 1, gpus)
    with pytest.raises(device_bank.BankError, match="config.data.device_bank = 'yes'"):
        device_bank.use_bank("yes", 1, gpus)


def test_config_rejects_unknown_mode(tiny_demo):
    config = tiny_config("VA", tiny_demo)
    config.data.device_bank = "always"
    with pytest.raises(config_lib.ConfigError, match="data.device_bank = 'always'"):
        config_lib.validate(config)


def train_losses(root, workdir, mode):
    config = tiny_config("EXPR", root, total_steps=3, log_every=1, eval_every=3,
                         checkpoint_every=3)
    config.data.device_bank = mode
    train.train_and_evaluate(config, workdir)
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train/loss"], r["train/grad_norm"]) for r in rows if "train/loss" in r]


def test_training_losses_identical_with_bank_on_and_off(tiny_demo, tmp_path, monkeypatch):
    built = []
    real_build = device_bank.build

    def counting_build(*args, **kwargs):
        built.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(device_bank, "build", counting_build)
    off = train_losses(tiny_demo, tmp_path / "off", "off")
    assert not built
    on = train_losses(tiny_demo, tmp_path / "on", "on")
    assert built
    assert [s for s, *_ in on] == [1, 2, 3]
    np.testing.assert_array_equal(np.array(on), np.array(off))
