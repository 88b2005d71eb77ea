"""Feature extraction: frames -> feature store, checked against direct encoder calls on PIL images."""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from abaw_jax import config as config_lib
from abaw_jax import extract
from abaw_jax.data import affwild2
from abaw_jax.data import features as features_lib
from abaw_jax.data import images as images_lib
from abaw_jax.models import encoders

from conftest import ROOT, SHARED_DATA, load_config

TINY_SPEC = "vit:Ti/8,width=32,depth=2,num_heads=2,mlp_dim=64"
CKPLUS = SHARED_DATA / "ckplus48"


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A random tiny ViT (32-wide, 2 layers, 8 px patches, 32 px images) saved as an encoder
    directory, and a reference image -> feature function built directly from the same weights."""
    enc = encoders.load_encoder(TINY_SPEC, seed=0, image_size=32, pool="gap", dtype=jnp.float32)
    variables = enc.variables
    path = encoders.save_encoder(tmp_path_factory.mktemp("encoder"), enc.module, variables,
                                 mean=enc.info["mean"], std=enc.info["std"])
    fn = jax.jit(enc.fn)

    def features(images: np.ndarray) -> np.ndarray:
        # Fixed chunks of 8 rows: one compiled shape per image size.
        pad = -len(images) % 8
        x = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        out = [np.asarray(fn(variables, jnp.asarray(x[i:i + 8])), np.float64)
               for i in range(0, len(x), 8)]
        return np.concatenate(out)[: len(images)]

    return str(path), features


def tiny_config(frames, encoder_dir, **overrides):
    """configs/extract_vit.py:demo (a tiny ViT at 32 px) on `frames` with the saved encoder."""
    c = load_config("extract_vit", "demo")
    c.frames = str(frames)
    c.encoder = encoder_dir
    c.batch_size = 4
    c.num_threads = 2
    c.progress = False
    for key, value in overrides.items():
        c[key] = value
    return c


def pil_rgb(path) -> np.ndarray:
    with Image.open(path) as img:
        a = np.asarray(img)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    return a[..., :3]


def write_video(folder: pathlib.Path, numbers, size=32, seed=0, suffix=".png"):
    """Random-colour images named NNNNN<suffix> for the given 1-based frame numbers."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for n in numbers:
        base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR)
        img.save(folder / f"{n:05d}{suffix}")


def store_arrays(path, video):
    store = features_lib.FeatureStore(path)
    return np.asarray(store.read(video), np.float64), np.asarray(store.present(video))


def assert_close_f16(got, want):
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


# ---------------------------------------------------------------------------------------------
# Image decoding.


def test_decode_images_grey_rgba_and_failures(tmp_path):
    grey = np.arange(48 * 48, dtype=np.uint32).reshape(48, 48) % 251
    Image.fromarray(grey.astype(np.uint8), "L").save(tmp_path / "grey.png")
    rgba = np.random.default_rng(0).integers(0, 256, (32, 32, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    (tmp_path / "text.jpg").write_text("not an image\n")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    paths = [tmp_path / n for n in ("grey.png", "rgba.png", "text.jpg", "cut.jpg", "missing.png")]

    out = images_lib.decode_images(paths, 48, num_threads=2)
    assert out.images.shape == (5, 48, 48, 3) and out.images.dtype == np.uint8
    assert out.ok.tolist() == [True, True, False, False, False]
    np.testing.assert_array_equal(out.images[0], np.repeat(grey.astype(np.uint8)[..., None], 3, -1))
    assert not out.images[2:].any()
    for i in (2, 3, 4):
        assert str(paths[i]) in out.errors[i]
    assert out.errors[0] is None and out.errors[1] is None
    # Colour images keep their pixels at their own size.
    same = images_lib.decode_images([tmp_path / "rgba.png"], 32)
    np.testing.assert_array_equal(same.images[0], rgba[..., :3])


# ---------------------------------------------------------------------------------------------
# Frame plans.


def test_plan_numbered_generic_and_counts(tmp_path, caplog):
    write_video(tmp_path / "a", [1, 2, 5, 9], size=8)
    plan = extract.plan_video(tmp_path / "a")
    assert plan.numbered and plan.num_frames == 9
    assert plan.frames.tolist() == [0, 1, 4, 8]
    with caplog.at_level(logging.WARNING):
        plan = extract.plan_video(tmp_path / "a", num_frames=6)
    assert plan.num_frames == 6 and plan.frames.tolist() == [0, 1, 4]
    assert plan.ignored == ["00009.png"] and "00009.png" in caplog.text

    g = tmp_path / "g"
    g.mkdir()
    for name in ("img10.png", "img2.png", "img1.png", "notes.txt"):
        Image.new("RGB", (4, 4)).save(g / name) if name.endswith(".png") else (g / name).write_text("x")
    plan = extract.plan_video(g)
    assert not plan.numbered and plan.num_frames == 3
    assert [pathlib.Path(p).name for p in plan.paths] == ["img1.png", "img2.png", "img10.png"]
    (tmp_path / "empty").mkdir()
    assert extract.plan_video(tmp_path / "empty") is None


def test_read_frame_counts(tmp_path):
    good = tmp_path / "counts.csv"
    good.write_text("name_video,total_frame\n1-30-1280x720.mp4,10\nvideo45_1,7\n")
    assert affwild2.read_frame_counts(good) == {"1-30-1280x720": 10, "video45_1": 7}
    real = SHARED_DATA / "affwild2_meta" / "counter_frame.csv"
    if real.is_file():
        counts = affwild2.read_frame_counts(real)
        assert len(counts) == 548 and sum(counts.values()) == 2_610_374
    bad = tmp_path / "bad.csv"
    bad.write_text("name,frames\na,3\nb,three\n")
    with pytest.raises(affwild2.AnnotationError, match=r"bad\.csv: line 3: frame count 'three'"):
        affwild2.read_frame_counts(bad)
    twice = tmp_path / "twice.csv"
    twice.write_text("a,3\na.mp4,4\n")
    with pytest.raises(affwild2.AnnotationError, match=r"twice\.csv: line 2: video 'a' listed twice"):
        affwild2.read_frame_counts(twice)
    short = tmp_path / "short.csv"
    short.write_text("a,3\nb\n")
    with pytest.raises(affwild2.AnnotationError, match=r"short\.csv: line 2"):
        affwild2.read_frame_counts(short)


# ---------------------------------------------------------------------------------------------
# Extraction.


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> pathlib.Path:
    """Four numbered videos (one with gaps) with batch size 4 crossing video boundaries."""
    root = tmp_path_factory.mktemp("frames")
    write_video(root / "vid_a", [1, 2, 3, 4, 5], seed=1)
    write_video(root / "vid_b", [2, 3, 6, 7], seed=2)         # frames 1, 4, 5 have no face
    write_video(root / "vid_c", [1, 2, 3], seed=3)
    write_video(root / "vid_d", [1, 2, 3, 4, 5, 6, 7], seed=4)
    return root


@pytest.fixture(scope="module")
def reference(frames, encoder, tmp_path_factory):
    """An uninterrupted extraction of `frames`, for comparisons."""
    out = tmp_path_factory.mktemp("reference") / "store"
    summary = extract.extract(tiny_config(frames, encoder[0]), out)
    return out, summary


def test_store_equals_direct_encoder(frames, encoder, reference):
    out, summary = reference
    assert summary["videos"] == 4 and summary["corrupt"] == 0 and summary["missing"] == 3
    for video, length in (("vid_a", 5), ("vid_b", 7), ("vid_c", 3), ("vid_d", 7)):
        got, present = store_arrays(out, video)
        assert got.shape == (length, 32)
        files = sorted((frames / video).iterdir())
        idx = [int(f.stem) - 1 for f in files]
        assert_close_f16(got[idx], encoder[1](np.stack([pil_rgb(f) for f in files])))
        expected_present = np.zeros(length, bool)
        expected_present[idx] = True
        np.testing.assert_array_equal(present, expected_present)
        assert not got[~expected_present].any()
    meta = features_lib.FeatureStore(out).meta
    assert meta["dtype"] == "float16" and "pool=gap" in meta["extractor"]
    p = meta["params"]
    assert p["pool"] == "gap" and p["image_size"] == [32, 32] and p["resize"] is None
    assert p["mean"] == [0.5] * 3 and p["std"] == [0.5] * 3 and p["format"] == "abaw_jax_encoder"
    assert (out / "config.json").is_file() and not (out / extract.CORRUPT_FILE).exists()


def _assert_same_store(a, b, exact=True):
    sa, sb = features_lib.FeatureStore(a), features_lib.FeatureStore(b)
    assert sa.videos == sb.videos
    for v in sa.videos:
        got, want = np.asarray(sa.read(v), np.float64), np.asarray(sb.read(v), np.float64)
        if exact:
            np.testing.assert_array_equal(got, want)
        else:  # other batch shapes: the float32 features may differ in their last bits
            assert_close_f16(got, want)
        np.testing.assert_array_equal(sa.present(v), sb.present(v))


def test_resume_after_crash_is_identical(frames, encoder, reference, tmp_path, monkeypatch):
    real_write = features_lib.FeatureStoreWriter.write
    calls = []

    def failing_write(self, video, features, present=None):
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        calls.append(video)
        real_write(self, video, features, present)

    out = tmp_path / "store"
    monkeypatch.setattr(features_lib.FeatureStoreWriter, "write", failing_write)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract.extract(tiny_config(frames, encoder[0]), out)
    monkeypatch.setattr(features_lib.FeatureStoreWriter, "write", real_write)
    assert features_lib.FeatureStore(out).videos == ["vid_a", "vid_b"]

    summary = extract.extract(tiny_config(frames, encoder[0]), out)
    assert summary["already_done"] == 2 and summary["videos"] == 2
    _assert_same_store(out, reference[0])


def test_sigterm_stops_cleanly_and_resumes(frames, encoder, reference, tmp_path, monkeypatch, capsys):
    real_write = features_lib.FeatureStoreWriter.write

    def write_then_term(self, video, features, present=None):
        real_write(self, video, features, present)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "store"
    monkeypatch.setattr(features_lib.FeatureStoreWriter, "write", write_then_term)
    summary = extract.extract(tiny_config(frames, encoder[0]), out)
    monkeypatch.setattr(features_lib.FeatureStoreWriter, "write", real_write)
    assert signal.getsignal(signal.SIGTERM) is before
    assert summary["interrupted"] and 1 <= summary["videos"] < 4
    assert "re-run the same command to resume" in capsys.readouterr().err
    summary = extract.extract(tiny_config(frames, encoder[0]), out)
    assert not summary["interrupted"] and summary["already_done"] >= 1
    _assert_same_store(out, reference[0])


def test_sigkill_subprocess_random_spec_two_devices_then_resume(frames, encoder, reference, tmp_path):
    # The command line with the config's random-init spec (the same seed-0 tiny ViT as the saved
    # encoder) on two CPU devices, killed once a video is committed, then resumed.
    out = tmp_path / "store"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "abaw_jax.extract", f"--config={ROOT}/configs/extract_vit.py:demo",
           f"--workdir={out}", f"--config.frames={frames}", "--config.batch_size=2",
           "--config.progress=False", "--config.num_threads=1"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    index = out / "index-p0.jsonl"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if index.is_file() and index.read_bytes().count(b"\n") >= 1:
            proc.kill()
            break
        time.sleep(0.002)
    _, err = proc.communicate(timeout=60)
    if proc.returncode not in (0, -signal.SIGKILL):
        pytest.fail(f"extract subprocess failed:\n{err.decode()[-3000:]}")
    committed = index.read_bytes().count(b"\n")
    print(f"killed with {committed} of 4 videos committed (return code {proc.returncode})")
    assert committed >= 1
    store = features_lib.FeatureStore(out)
    assert store.meta["params"]["format"] == "random" and "seed=0" in store.extractor
    # The rest with the same random spec, in this process.
    summary = extract.extract(tiny_config(frames, store.meta["params"]["encoder"]), out)
    assert summary["already_done"] == committed
    _assert_same_store(out, reference[0], exact=False)


def test_corrupt_non_image_and_empty_folder(encoder, tmp_path, caplog, capsys):
    root = tmp_path / "frames"
    write_video(root / "v", [1, 2, 3, 4], suffix=".jpg")
    data = (root / "v" / "00002.jpg").read_bytes()
    (root / "v" / "00002.jpg").write_bytes(data[: len(data) // 3])
    (root / "v" / "00003.jpg").write_text("this is text, not a JPEG\n")
    (root / "v" / "notes.txt").write_text("ignored: not an image name\n")
    (root / "empty").mkdir()
    write_video(root / "w", [1, 2], seed=5)
    write_video(root / "x", [9], seed=6)
    counts = tmp_path / "counts.csv"
    counts.write_text("name,frames\nw,5\nx,3\n")
    out = tmp_path / "store"
    with caplog.at_level(logging.WARNING):
        summary = extract.extract(tiny_config(root, encoder[0], frame_counts=str(counts)), out)
    assert summary["corrupt"] == 2 and summary["videos"] == 2
    assert summary["empty_videos"] == ["empty", "x"]
    assert "no frame images within its frame count; video 'x' skipped" in caplog.text
    assert store_arrays(out, "w")[1].tolist() == [True, True, False, False, False]
    for name in ("00002.jpg", "00003.jpg"):
        assert str(root / "v" / name) in caplog.text
    assert "no frame images; video 'empty' skipped" in caplog.text
    err = capsys.readouterr().err
    assert "2 empty video folder(s) skipped: empty, x" in err and "2 corrupt" in err
    listed = [line.split("\t")[0] for line in (out / extract.CORRUPT_FILE).read_text().splitlines()]
    assert listed == [str(root / "v" / "00002.jpg"), str(root / "v" / "00003.jpg")]

    got, present = store_arrays(out, "v")
    assert present.tolist() == [True, False, False, True]
    assert not got[1:3].any()
    want = encoder[1](np.stack([pil_rgb(root / "v" / f"0000{i}.jpg") for i in (1, 4)]))
    assert_close_f16(got[[0, 3]], want)
    assert "empty" not in features_lib.FeatureStore(out)


def test_demo_dataset_jpegs_with_device_resize(encoder, tmp_path):
    from abaw_jax.data import demo
    root = demo.build_demo(tmp_path / "demo", num_videos=4, length_scale=0.01, jpeg=True,
                           jpeg_size=32, feature_sets={"vit": 8})
    folders = sorted((root / "cropped_aligned").iterdir())[:2]
    out = tmp_path / "store"
    # Decoded at 48 px on the host (PIL upsamples the 32 px JPEGs), resized back to the ViT's
    # 32 px on the device.
    config = tiny_config(root, encoder[0], decode_size=48, videos=",".join(f.name for f in folders))
    assert extract.extract(config, out)["videos"] == 2
    for folder in folders:
        files = sorted(folder.glob("*.jpg"))
        got, present = store_arrays(out, folder.name)
        idx = [int(f.stem) - 1 for f in files]
        # As long as its annotations say (frames after the last face image included).
        assert len(present) == affwild2.frame_counts(root).get(folder.name, max(idx) + 1)
        assert present[idx].all() and present.sum() == len(idx)
        big = np.stack([np.asarray(Image.fromarray(pil_rgb(f)).resize((48, 48), Image.Resampling.BILINEAR))
                        for f in files])
        assert_close_f16(got[idx], encoder[1](big))
    assert features_lib.FeatureStore(out).meta["params"]["resize"] == "bilinear"


@pytest.mark.skipif(not CKPLUS.is_dir(), reason=f"real CK+48 images not found at {CKPLUS}")
def test_ckplus_grey_pngs_generic_mode(encoder, tmp_path):
    out = tmp_path / "store"
    summary = extract.extract(tiny_config(CKPLUS, encoder[0], videos="sadness,fear", decode_size=48), out)
    assert summary["videos"] == 2 and summary["corrupt"] == 0
    for emotion, count in (("fear", 39), ("sadness", 36)):
        files = sorted((CKPLUS / emotion).glob("*.png"))  # zero-padded names: plain order is natural
        assert len(files) == count
        got, present = store_arrays(out, emotion)
        assert present.all() and got.shape == (count, 32)
        assert_close_f16(got, encoder[1](np.stack([pil_rgb(f) for f in files])))


# ---------------------------------------------------------------------------------------------
# Encoder directories.


def test_orbax_encoder_directory(frames, encoder, reference, tmp_path):
    loaded = encoders.load_encoder(encoder[0])
    enc = encoders.save_encoder(tmp_path / "enc", loaded.module, loaded.variables,
                                mean=loaded.info["mean"], std=loaded.info["std"],
                                params_format="orbax")
    assert (enc / "params").is_dir()
    out = tmp_path / "store"
    extract.extract(tiny_config(frames, str(enc), videos="vid_b"), out)
    got, _ = store_arrays(out, "vid_b")
    want, _ = store_arrays(reference[0], "vid_b")
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------
# Config.


@pytest.mark.parametrize("key,value,match", [
    ("pool", "max", r"config\.pool = 'max'"),
    ("batch_size", 0, r"config\.batch_size = 0"),
    ("dtype", "int8", r"config\.dtype = 'int8'"),
    ("encoder", "", r"config\.encoder = ''"),
    ("frames", "", r"config\.frames = ''"),
])
def test_config_errors_name_the_key(frames, key, value, match):
    c = tiny_config(frames, "vit:Ti/8")
    c[key] = value
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.validate_extraction(c)


def test_bad_frames_and_video_list(frames, encoder, tmp_path):
    with pytest.raises(config_lib.ConfigError, match=r"config\.frames = .*no such folder"):
        extract.extract(tiny_config(tmp_path / "nowhere", encoder[0]), tmp_path / "s1")
    with pytest.raises(config_lib.ConfigError, match=r"config\.videos: .*'vid_z'"):
        extract.extract(tiny_config(frames, encoder[0], videos="vid_a,vid_z"), tmp_path / "s2")
