"""Encoders: specs, the encoder directory format, load_encoder's one contract, feature functions."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file as save_numpy

from abaw_jax.models import encoders, resnet, vit, weights

from conftest import timm_state

TINY_SPEC = "vit:Ti/8,width=32,depth=2,num_heads=2,mlp_dim=64"


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A random tiny ViT (32-wide, 2 layers, 8 px patches, 32 px images) saved as an encoder
    directory; the directory's path."""
    enc = encoders.load_encoder(TINY_SPEC, seed=0, image_size=32, pool="mean")
    path = encoders.save_encoder(tmp_path_factory.mktemp("encoder"), enc.module, enc.variables,
                                 mean=enc.info["mean"], std=enc.info["std"])
    return str(path)


def _resnet_state(module) -> dict[str, np.ndarray]:
    """A torchvision-named state dict of ones with the shapes of ``module``'s variables."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    state = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
        names = [p.key for p in path]
        key = ".".join(n.replace("_", ".") for n in names[1:-1])
        suffix = {"kernel": "weight", "scale": "weight", "bias": "bias",
                  "mean": "running_mean", "var": "running_var"}[names[-1]]
        shape = leaf.shape if names[-1] != "kernel" else tuple(leaf.shape[i] for i in (3, 2, 0, 1))
        state[f"{key}.{suffix}"] = np.ones(shape, np.float32)
    return state


# ---------------------------------------------------------------------------------------------
# load_encoder and feature functions.


def test_load_encoder_and_feature_fn(tmp_path):
    enc = encoders.load_encoder("vit:Ti/16,depth=1", image_size=32, pool="mean")
    m, variables, info = enc.module, enc.variables, enc.info
    assert isinstance(m, vit.ViT)
    assert (m.width, m.depth, info["dim"], info["format"]) == (192, 1, 192, "random")
    assert enc.dim == 192 and enc.spec == "vit:Ti/16,depth=1"
    fn = jax.jit(enc.fn)
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    features = fn(variables, images)
    assert features.shape == (3, 192) and features.dtype == jnp.float32
    assert np.all(np.isfinite(features))
    # uint8 and the same images as floats in [0, 1] give the same features.
    np.testing.assert_allclose(fn(variables, images.astype(np.float32) / 255), features, atol=1e-5)
    np.testing.assert_allclose(encoders.feature_fn(m, info)(variables, images), features, atol=1e-5)

    save_numpy(timm_state(width=192, depth=1, mlp=768), str(tmp_path / "ti.safetensors"))
    enc = encoders.load_encoder(tmp_path / "ti.safetensors")
    assert set(enc.variables) == {"params"} and enc.info["format"] == "timm"
    m, params, info = weights.load_vit(tmp_path / "ti.safetensors", mean=(0.2,) * 3, std=(0.1,) * 3)
    variables = {"params": params}
    assert (info["mean"], info["std"], info["norm_source"]) == ((0.2,) * 3, (0.1,) * 3, "argument")
    # The given statistics are the ones the feature function normalises with.
    expected = m.apply(variables, encoders.preprocess(images, mean=(0.2,) * 3, std=(0.1,) * 3,
                                                      image_size=32))[0]
    np.testing.assert_allclose(encoders.feature_fn(m, info)(variables, images), expected, atol=1e-5)

    rm = resnet.resnet_from_config(resnet.tiny_config())
    save_numpy(_resnet_state(rm), str(tmp_path / "resnet.safetensors"))
    enc = encoders.load_encoder(tmp_path / "resnet.safetensors")
    rm, rvariables, rinfo = enc.module, enc.variables, enc.info
    assert isinstance(rm, resnet.ResNet) and rinfo["dim"] == 64 and "batch_stats" in rvariables
    assert encoders.feature_fn(rm, rinfo)(rvariables, images).shape == (3, 64)
    assert enc.fn(rvariables, images).shape == (3, 64)
    with pytest.raises(encoders.EncoderError, match="neither an existing weights path nor a usable"):
        encoders.load_encoder("vit_base_patch16")


def test_resnet_fn_resizes_to_the_requested_size(tmp_path):
    """A ResNet takes any size; its fn resizes to image_size only when one is asked for."""
    rm = resnet.resnet_from_config(resnet.tiny_config())
    path = tmp_path / "resnet.safetensors"
    save_numpy(_resnet_state(rm), str(path))
    images = np.random.default_rng(3).integers(0, 256, (2, 20, 20, 3), dtype=np.uint8)
    plain = encoders.load_encoder(path)
    sized = encoders.load_encoder(path, image_size=32)
    x = encoders.preprocess(images, mean=sized.info["mean"], std=sized.info["std"], image_size=32)
    np.testing.assert_allclose(sized.fn(sized.variables, images),
                               sized.module.apply(sized.variables, x)[0], atol=1e-5)
    x = encoders.preprocess(images, mean=plain.info["mean"], std=plain.info["std"])
    np.testing.assert_allclose(plain.fn(plain.variables, images),
                               plain.module.apply(plain.variables, x)[0], atol=1e-5)


def test_preprocess_matches_torch_resize_and_normalise():
    torch = pytest.importorskip("torch", reason="torch is the reference")
    import torch.nn.functional as F

    images = np.random.default_rng(1).integers(0, 256, (2, 20, 28, 3), dtype=np.uint8)
    mean, std = encoders.IMAGENET_MEAN, encoders.IMAGENET_STD
    x = torch.tensor(images).permute(0, 3, 1, 2).float() / 255
    for size in [(40, 56), (10, 14), (32, 32)]:
        ref = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        ref = ((ref - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])
        ours = encoders.preprocess(jnp.asarray(images), mean=mean, std=std, image_size=size)
        np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Specs.


def test_parse_spec():
    assert encoders.parse_spec("vit:Ti/8,depth=2,pool=gap") == ("vit", "Ti/8", {"depth": 2, "pool": "gap"})
    assert encoders.parse_spec("resnet:resnet18") == ("resnet", "resnet18", {})
    assert encoders.parse_spec("resnet18") == ("resnet", "resnet18", {})
    assert encoders.parse_spec("B/16") == ("vit", "B/16", {})


def test_spec_errors():
    with pytest.raises(encoders.EncoderError, match=r"'resnet:B/16'.*not a resnet variant"):
        encoders.load_encoder("resnet:B/16")
    with pytest.raises(encoders.EncoderError, match=r"'vit:width=3': no variant"):
        encoders.load_encoder("vit:width=3")
    with pytest.raises(encoders.EncoderError, match=r"two variants \('Ti/8', 'S/16'\)"):
        encoders.load_encoder("vit:Ti/8,S/16")
    with pytest.raises(encoders.EncoderError, match=r"'Zz/16' is neither an existing weights path"):
        encoders.load_encoder("vit:Zz/16")


def test_weights_errors_are_encoder_errors_naming_the_file(tmp_path):
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(encoders.EncoderError, match=f"{broken}: not a readable .npz"):
        encoders.load_encoder(str(broken))


def test_store_encoder():
    meta = {"format": "abaw_jax.features/1", "dim": 32, "dtype": "float16",
            "extractor": f"{TINY_SPEC} seed=3 pool=gap image_size=64x64",
            "params": {"encoder": TINY_SPEC, "pool": "gap", "image_size": [64, 64], "seed": 3}}
    assert encoders.store_encoder(meta) == (TINY_SPEC, {"pool": "gap", "image_size": 64, "seed": 3})
    # Stores that name no loadable encoder.
    assert encoders.store_encoder({"extractor": "demo:vit"}) is None
    assert encoders.store_encoder({"extractor": "openface_au_r"}) is None
    assert encoders.store_encoder({"extractor": "/gone/vit.npz pool=mean",
                                   "params": {"encoder": "/gone/vit.npz"}}) is None


# ---------------------------------------------------------------------------------------------
# Encoder directories.


def test_encoder_directory_round_trip(encoder):
    enc = encoders.load_encoder(encoder)
    assert enc.info["format"] == "abaw_jax_encoder" and enc.info["norm_source"] == "encoder.json"
    spec = json.loads((pathlib.Path(encoder) / encoders.ENCODER_FILE).read_text())
    assert spec["format"] == encoders.ENCODER_FORMAT and spec["model"] == "vit"
    assert spec["config"] == encoders.module_config(enc.module)
    fresh = encoders.load_encoder(TINY_SPEC, seed=0, image_size=32, pool="mean")
    images = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(enc.fn(enc.variables, images), fresh.fn(fresh.variables, images))


def test_encoder_directory_new_image_size_resamples_posemb(encoder):
    torch = pytest.importorskip("torch")
    saved = encoders.load_encoder(encoder).variables
    enc = encoders.load_encoder(encoder, image_size=48, pool="gap")
    module, variables, info = enc.module, enc.variables, enc.info
    assert module.image_size == 48 and module.pool == "gap"
    assert info["posemb_resized"].startswith("4x4 -> 6x6")
    old = np.asarray(saved["params"]["pos_embedding"], np.float64)
    grid = torch.from_numpy(old[0, 1:].reshape(4, 4, 32)).permute(2, 0, 1)[None]
    want = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bicubic", antialias=True,
                                           align_corners=False)[0].permute(1, 2, 0).reshape(36, 32)
    new = np.asarray(variables["params"]["pos_embedding"], np.float64)
    np.testing.assert_allclose(new[0, 1:], want.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new[0, :1], old[0, :1], rtol=1e-6)


def test_encoder_directory_errors(encoder, tmp_path):
    loaded = encoders.load_encoder(encoder)
    enc = encoders.save_encoder(tmp_path / "enc", loaded.module, loaded.variables,
                                mean=loaded.info["mean"], std=loaded.info["std"])
    spec = json.loads((enc / "encoder.json").read_text())

    (enc / "encoder.json").write_text(json.dumps({k: v for k, v in spec.items() if k != "mean"}))
    with pytest.raises(encoders.EncoderError, match=r"encoder\.json: key 'mean' must be a list"):
        encoders.load_encoder(str(enc))
    (enc / "encoder.json").write_text("{not json")
    with pytest.raises(encoders.EncoderError, match=r"encoder\.json: not valid JSON"):
        encoders.load_encoder(str(enc))
    wrong = dict(spec, config=dict(spec["config"], width=64))
    (enc / "encoder.json").write_text(json.dumps(wrong))
    with pytest.raises(encoders.EncoderError,
                       match=r"params\.npz: parameters do not match the model of .*encoder\.json: "
                             r".*encoder_norm.*\[32\] \(model \[64\]\)"):
        encoders.load_encoder(str(enc))
    (enc / "encoder.json").write_text(json.dumps(dict(spec, params="gone.npz")))
    with pytest.raises(encoders.EncoderError, match=r"encoder\.json: key 'params' names .*gone\.npz"):
        encoders.load_encoder(str(enc))
