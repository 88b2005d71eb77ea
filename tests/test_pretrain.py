"""Image sources, MAE pretraining and fine-tuning runs (tiny), and the CK+ experiment (slow)."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from abaw_jax import config as config_lib
from abaw_jax import pretrain
from abaw_jax.data import image_sources

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def _load_config(name: str, arg: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _image_folder(root: pathlib.Path, classes=("anger", "happy"), subjects=4, per=3, size=(20, 24),
                  grey=True) -> pathlib.Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for s in range(subjects):
            for k in range(per):
                shape = size if grey else (*size, 3)
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                pixels[..., : size[1] // 2] //= (c + 1)   # a class-dependent pattern
                Image.fromarray(pixels).save(root / name / f"S{s:03d}_{c:03d}_{k:08d}.png")
    return root


# ---------------------------------------------------------------------------------------------
# Image sources.


def test_image_folder_labels_grey_and_mapping(tmp_path):
    root = _image_folder(tmp_path / "imgs", classes=("Happy", "anger", "odd"))
    src = image_sources.ImageFolder(root)
    assert src.classes == ("Happy", "anger", "odd") and len(src) == 36
    image, label = src[0]
    assert image.shape == (20, 24, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 2]).all() and label == 0
    grey = np.asarray(Image.open(src.paths[0]))
    np.testing.assert_array_equal(image[..., 1], grey)
    named = image_sources.ImageFolder(root, "names")       # 'odd' is not an expression: skipped
    assert sorted(set(named.labels.tolist())) == [1, 4] and len(named) == 24
    assert image_sources.ImageFolder(root, {"ODD": 3}).labels.tolist() == [3] * 12


def test_split_by_group_keeps_subjects_apart(tmp_path):
    src = image_sources.ImageFolder(_image_folder(tmp_path / "imgs", subjects=10))
    train, val, held = image_sources.split_by_group(src, 0.2, pattern=r"^(S\d+)_")
    assert len(held) == 2 and len(train) + len(val) == len(src)
    subjects = lambda s: {p.name[:4] for p in s.paths}
    assert subjects(val) == set(held) and not subjects(train) & set(held)


def test_source_errors_name_the_file(tmp_path):
    with pytest.raises(image_sources.ImageSourceError, match="nowhere: no such image folder"):
        image_sources.ImageFolder(tmp_path / "nowhere")
    root = _image_folder(tmp_path / "imgs")
    with pytest.raises(image_sources.ImageSourceError, match="none of the subfolders"):
        image_sources.ImageFolder(root, {"sad": 5})
    bad = root / "anger" / "S009_000_00000000.png"
    bad.write_bytes(b"not a png")
    src = image_sources.ImageFolder(root)
    i = [p.name for p in src.paths].index(bad.name)
    with pytest.raises(image_sources.ImageSourceError, match="S009_000_00000000.png: cannot decode"):
        src[i]
    with pytest.raises(image_sources.ImageSourceError, match=r"S009_000_00000000.png: file name does not match"):
        image_sources.split_by_group(src, 0.5, pattern=r"^(S00[0-3])_")


def test_affwild2_frames_skip_missing_images_and_invalid_labels(tmp_path):
    root = tmp_path / "aw"
    ann = root / "6th ABAW Annotations" / "EXPR_Recognition_Challenge"
    for split in ("Train_Set", "Validation_Set"):
        (ann / split).mkdir(parents=True)
    (ann / "Train_Set" / "v1.txt").write_text(
        "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n4\n-1\n2\n6\n")
    (ann / "Validation_Set" / "v2.txt").write_text(
        "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n1\n")
    for video, frames in (("v1", (1, 2, 4)), ("v2", (1,))):
        (root / "cropped_aligned" / video).mkdir(parents=True)
        for f in frames:
            Image.fromarray(np.full((8, 8, 3), f * 10, np.uint8)).save(
                root / "cropped_aligned" / video / f"{f:05d}.jpg")
    src = image_sources.AffWild2Frames(root, "train")
    # Frame 2 has label -1, frame 3 has no image: frames 1 and 4 remain.
    assert [p.name for p in src.paths] == ["00001.jpg", "00004.jpg"]
    assert src.labels.tolist() == [4, 6]
    assert src[1][0].shape == (8, 8, 3)


def test_random_resized_crop_and_determinism(tmp_path):
    rng = np.random.default_rng(3)
    for _ in range(50):
        top, left, h, w = image_sources.random_resized_crop_box(40, 30, rng, scale=(0.2, 1.0))
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 30
        assert 0.2 * 1200 * 0.8 <= h * w <= 1200
    image = np.arange(20 * 20 * 3, dtype=np.uint8).reshape(20, 20, 3)
    a = image_sources.augment(image, (16, 16), np.random.default_rng(7))
    b = image_sources.augment(image, (16, 16), np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    src = image_sources.ImageFolder(_image_folder(tmp_path / "imgs"))
    it = image_sources.train_batches(src, image_size=16, batch_size=4, seed=1, num_threads=1)
    next(it)
    state = it.get_state()
    expected = next(it)
    again = image_sources.train_batches(src, image_size=16, batch_size=4, seed=1, num_threads=1)
    again.set_state(state)
    got = next(again)
    np.testing.assert_array_equal(got["image"], expected["image"])
    np.testing.assert_array_equal(got["label"], expected["label"])
    # Two processes together load exactly the rows of one.
    halves = [next(image_sources.train_batches(src, image_size=16, batch_size=4, seed=1, num_threads=1,
                                               process_index=p, process_count=2)) for p in (0, 1)]
    whole = next(image_sources.train_batches(src, image_size=16, batch_size=4, seed=1, num_threads=1))
    np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), whole["image"])
    batches = list(image_sources.eval_batches(src, image_size=16, batch_size=5))
    assert sum(b["mask"].sum() for b in batches) == len(src) and not batches[-1]["mask"][-1]


# ---------------------------------------------------------------------------------------------
# Optimizer pieces.


def test_layer_scales_and_weighted_smoothed_loss():
    params = {"encoder": {"embedding": {"kernel": 1.0}, "cls": 1.0,
                          "Transformer": {"encoderblock_0": {"a": 1.0}, "encoderblock_1": {"a": 1.0},
                                          "encoder_norm": {"scale": 1.0}}},
              "head": {"kernel": 1.0}}
    s = pretrain.layer_scales(params, depth=2, decay=0.5)
    assert s["encoder"]["embedding"]["kernel"] == 0.125 and s["encoder"]["cls"] == 0.125
    assert s["encoder"]["Transformer"]["encoderblock_0"]["a"] == 0.25
    assert s["encoder"]["Transformer"]["encoderblock_1"]["a"] == 0.5
    assert s["head"]["kernel"] == 1.0 and s["encoder"]["Transformer"]["encoder_norm"]["scale"] == 1.0
    torch = pytest.importorskip("torch", reason="the loss reference is torch's cross_entropy")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 7)
    w = np.array([0.5, 2.0, 1.0, 3.0], np.float32)
    got = pretrain.classification_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(w), 0.0)
    ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels),
                                            weight=torch.from_numpy(w))
    np.testing.assert_allclose(float(got), float(ref), rtol=1e-5)
    got = pretrain.classification_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.ones(4), 0.2)
    ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels),
                                            label_smoothing=0.2)
    np.testing.assert_allclose(float(got), float(ref), rtol=1e-5)


def test_layer_decay_scales_the_updates():
    config = _load_config("finetune_expr", "tiny")
    params = {"encoder": {"embedding": {"kernel": jnp.ones(3)},
                          "Transformer": {"encoderblock_1": {"x": {"kernel": jnp.ones(3)}}}},
              "head": {"kernel": jnp.ones(3)}}
    config.optimizer.update(layer_decay=0.5, weight_decay=0.0, warmup_steps=0)
    tx, _ = pretrain.make_optimizer(config, params, depth=2)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    head = float(updates["head"]["kernel"][0])
    assert head < 0
    np.testing.assert_allclose(float(updates["encoder"]["embedding"]["kernel"][0]), head * 0.125, rtol=1e-6)
    np.testing.assert_allclose(
        float(updates["encoder"]["Transformer"]["encoderblock_1"]["x"]["kernel"][0]), head * 0.5, rtol=1e-6)


def test_config_errors_name_the_key():
    config = _load_config("mae_face", "tiny")
    config.data.root = ""
    with pytest.raises(config_lib.ConfigError, match="config.data.root = ''"):
        config_lib.validate_image(config)
    config = _load_config("finetune_expr", "tiny")
    config.data.root = "x"
    config.optimizer.layer_decay = 1.5
    with pytest.raises(config_lib.ConfigError, match="config.optimizer.layer_decay = 1.5"):
        config_lib.validate_image(config)
    config = _load_config("mae_face", "tiny")
    config.data.root = "x"
    config.model.mask_ratio = 1.2
    with pytest.raises(config_lib.ConfigError, match="mask_ratio must be in"):
        config_lib.validate_image(config)


# ---------------------------------------------------------------------------------------------
# Runs.


def test_mae_run_resumes_and_finetune_starts_from_it(tmp_path):
    from abaw_jax.models import encoders
    from abaw_jax.models import mae as mae_lib
    root = _image_folder(tmp_path / "imgs", subjects=5, per=2, size=(36, 36))
    config = _load_config("mae_face", "tiny")
    config.data.root = str(root)
    config.data.val_fraction = 0.2
    config.total_steps = 3
    mae_dir = tmp_path / "mae"
    pretrain.train_and_evaluate(config, mae_dir)
    assert (mae_dir / "checkpoints" / "3").is_dir()
    config.total_steps = 6
    result = pretrain.train_and_evaluate(config, mae_dir)      # resumes at 3
    assert np.isfinite(result["val/loss"])
    rows = [json.loads(line) for line in (mae_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [3, 6]
    assert [r["step"] for r in rows if "val/loss" in r] == [3, 6]
    png = Image.open(mae_dir / "reconstructions" / "step_00000006.png")
    assert png.size == (3 * 32, 4 * 32)          # 1 held-out subject: 4 images x 3 panels
    # The export is extraction's encoder format and computes the MAE encoder's features.
    encoder = encoders.load_encoder(str(mae_dir / "encoder"))
    vit, variables, info = encoder.module, encoder.variables, encoder.info
    assert info["config"]["width"] == 32 and tuple(info["mean"]) == (0.5, 0.5, 0.5)
    mae = mae_lib.mae_from_config(config.model)
    _, state = pretrain.checkpoints.restore_params(
        mae_dir, pretrain.setup_model(config, pretrain.sharding.make_mesh()).abstract_state, "latest")
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    ref = mae_lib.encoder_vit(mae).apply({"params": mae_lib.encoder_params(mae, state["params"])}, images)
    np.testing.assert_allclose(np.asarray(vit.apply(variables, images)[0]), np.asarray(ref[0]), atol=1e-5)

    ft = _load_config("finetune_expr", "tiny")
    ft.data.root = str(root)
    ft.data.val_fraction = 0.2
    ft.num_classes = 2
    ft.init_from = str(mae_dir)
    ft_dir = tmp_path / "ft"
    before = jax.device_get(variables["params"]["Transformer"]["encoderblock_0"]["LayerNorm_0"]["scale"])
    setup = pretrain.setup_model(ft, pretrain.sharding.make_mesh(), pretrain.load_init(str(mae_dir)))
    start = setup.init_fn(jax.random.key(0))
    np.testing.assert_array_equal(
        start["params"]["encoder"]["Transformer"]["encoderblock_0"]["LayerNorm_0"]["scale"], before)
    result = pretrain.train_and_evaluate(ft, ft_dir)
    assert 0.0 <= result["val/accuracy"] <= 1.0
    assert (ft_dir / "encoder" / "encoder.json").is_file()
    assert json.loads((ft_dir / "final_metrics.json").read_text())["step"] == 6


def test_command_line_rejects_bad_config(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "abaw_jax.pretrain", "--config", "configs/mae_face.py:tiny",
         "--workdir", str(tmp_path / "w")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "config.data.root = ''" in proc.stderr
