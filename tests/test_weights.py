"""Loading pretrained weights: parity with timm and Hugging Face, .npz layouts, resizing, errors."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file as save_numpy

from abaw_jax.models import vit, weights

from conftest import timm_state


def _rel(a, b):
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch runs the reference models")


@pytest.fixture(scope="module")
def timm(torch):
    return pytest.importorskip("timm", reason="timm is the reference ViT")


@pytest.fixture(scope="module")
def transformers(torch):
    return pytest.importorskip("transformers", reason="Hugging Face ViT / ViTMAE are references")


def _nhwc(x):
    return jnp.asarray(x.permute(0, 2, 3, 1).numpy())


def _save_state(torch, model, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def _timm_tokens(torch, model, x):
    with torch.no_grad():
        return model.forward_features(x).numpy()


# ---------------------------------------------------------------------------------------------
# Readers and resampling.


def test_read_safetensors_matches_torch_for_every_dtype(torch, tmp_path):
    from safetensors.torch import save_file

    tensors = {
        "f32": torch.randn(3, 4), "f16": torch.randn(5).half(), "bf16": torch.randn(2, 3).bfloat16(),
        "i64": torch.arange(6).reshape(2, 3), "scalar": torch.tensor(7),
    }
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "x"})
    arrays, metadata = weights.read_safetensors(path)
    assert metadata == {"format": "pt", "note": "x"}
    for key, t in tensors.items():
        ref = t.float().numpy() if t.is_floating_point() else t.numpy()
        assert arrays[key].shape == tuple(t.shape)
        np.testing.assert_array_equal(np.asarray(arrays[key]).astype(ref.dtype), ref)


def test_read_safetensors_errors_name_the_file(tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(weights.WeightsError, match=f"{short}: not a safetensors file"):
        weights.read_safetensors(short)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes((10_000).to_bytes(8, "little") + b"{}")
    with pytest.raises(weights.WeightsError, match="header size 10000 exceeds the file"):
        weights.read_safetensors(huge)
    bad_json = tmp_path / "json.safetensors"
    bad_json.write_bytes((3).to_bytes(8, "little") + b"{x}")
    with pytest.raises(weights.WeightsError, match="bad JSON header"):
        weights.read_safetensors(bad_json)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(weights.WeightsError, match=f"{truncated}: tensor 'w' .* do not fit"):
        weights.read_safetensors(truncated)
    header = json.dumps({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    odd = tmp_path / "odd.safetensors"
    odd.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(weights.WeightsError, match="tensor 'w' has a bad header entry"):
        weights.read_safetensors(odd)


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("antialias", [False, True])
def test_resample_matrix_is_torch_interpolate(torch, method, antialias):
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    for n_in, n_out in [(14, 7), (7, 14), (14, 4), (5, 3), (3, 5), (24, 16), (2, 9), (9, 1)]:
        grid = rng.standard_normal((n_in, n_in + 1, 3))
        ours = np.einsum(
            "ih,jw,hwd->ijd", weights.resample_matrix(n_in, n_out, method, antialias),
            weights.resample_matrix(n_in + 1, n_out + 2, method, antialias), grid)
        ref = F.interpolate(torch.tensor(grid).permute(2, 0, 1)[None], size=(n_out, n_out + 2),
                            mode=method, align_corners=False, antialias=antialias)
        np.testing.assert_allclose(ours, ref[0].permute(1, 2, 0).numpy(), atol=1e-12)


def test_resample_posemb_matches_timm(timm, torch):
    from timm.layers import resample_abs_pos_embed

    posemb = torch.randn(1, 1 + 14 * 14, 8)
    for new, method, aa in [((7, 7), "bicubic", True), ((20, 16), "bicubic", True),
                            ((7, 7), "bilinear", False), ((5, 9), "bilinear", False)]:
        ref = resample_abs_pos_embed(posemb, list(new), num_prefix_tokens=1,
                                     interpolation=method, antialias=aa).numpy()
        ours = weights.resample_posemb(posemb.numpy(), new, num_prefix_tokens=1, method=method,
                                       antialias=aa)
        np.testing.assert_allclose(ours, ref, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# timm.


def test_timm_vit_tiny_matches_timm_for_every_pool(timm, torch, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64).eval()
    path = tmp_path / "ti.safetensors"
    _save_state(torch, model, path)
    x = torch.randn(2, 3, 64, 64)
    ref = _timm_tokens(torch, model, x)

    m, params, info = weights.load_vit(path, pool="cls")
    assert (info["format"], info["variant"], info["dim"]) == ("timm", "Ti/16", 192)
    assert info["mean"] == (0.5, 0.5, 0.5) and info["source_image_size"] == (64, 64)
    assert info["ignored_keys"] == ["head.bias", "head.weight"] and info["posemb_resized"] is None
    assert (m.layer_norm_eps, m.num_heads, m.image_size) == (1e-6, 3, (64, 64))
    json.dumps(info)
    pooled, tokens = m.apply({"params": params}, _nhwc(x))
    assert _rel(tokens, ref) < 1e-4
    assert _rel(pooled, ref[:, 0]) < 1e-4
    for pool, expected in [("mean", ref.mean(1)), ("gap", ref[:, 1:].mean(1))]:
        m, params, _ = weights.load_vit(path, pool=pool)
        assert _rel(m.apply({"params": params}, _nhwc(x))[0], expected) < 1e-4


def test_timm_vit_small_patch32_matches_timm(timm, torch, tmp_path):
    torch.manual_seed(1)
    model = timm.create_model("vit_small_patch32_224", pretrained=False, img_size=64).eval()
    path = tmp_path / "s32.safetensors"
    _save_state(torch, model, path)
    x = torch.randn(2, 3, 64, 64)
    ref = _timm_tokens(torch, model, x)
    m, params, info = weights.load_vit(path)
    assert (info["variant"], m.pool) == ("S/32", "cls")
    pooled, tokens = m.apply({"params": params}, _nhwc(x))
    assert _rel(pooled, ref[:, 0]) < 1e-4
    m, params, _ = weights.load_vit(path, pool="mean")
    assert _rel(m.apply({"params": params}, _nhwc(x))[0], ref.mean(1)) < 1e-4


def test_timm_hub_folder_with_fc_norm_and_config(timm, torch, tmp_path):

    torch.manual_seed(2)
    model = timm.create_model(
        "vit_small_patch16_224", pretrained=False, img_size=48, global_pool="avg", depth=2,
        pretrained_cfg_overlay=dict(mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))).eval()
    timm.models.save_for_hf(model, str(tmp_path / "hub"), safe_serialization=True)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ref = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    m, params, info = weights.load_vit(tmp_path / "hub")
    assert (m.pool, m.fc_norm, m.final_norm, m.depth) == ("gap", True, False, 2)
    assert info["mean"] == (0.4, 0.5, 0.6) and info["std"] == (0.2, 0.3, 0.4)
    assert info["norm_source"] == "config.json pretrained_cfg"
    pooled, _ = m.apply({"params": params}, _nhwc(x))
    assert _rel(pooled, ref) < 1e-4


def test_position_embedding_resize_224_to_112_matches_timm(timm, torch, tmp_path):
    from timm.models.vision_transformer import checkpoint_filter_fn

    torch.manual_seed(3)
    model224 = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2)
    path = tmp_path / "ti224.safetensors"
    _save_state(torch, model224, path)
    model112 = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=112, depth=2).eval()
    model112.load_state_dict(checkpoint_filter_fn(model224.state_dict(), model112))
    x = torch.randn(2, 3, 112, 112)
    ref = _timm_tokens(torch, model112, x)

    m, params, info = weights.load_vit(path, image_size=112)
    assert info["posemb_resized"] == "14x14 -> 7x7 bicubic antialias"
    assert info["source_image_size"] == (224, 224) and params["pos_embedding"].shape == (1, 50, 192)
    pooled, tokens = m.apply({"params": params}, _nhwc(x))
    assert _rel(tokens, ref) < 1e-4
    assert _rel(pooled, ref[:, 0]) < 1e-4


# ---------------------------------------------------------------------------------------------
# .npz in the original ViT and big_vision layouts, written from timm weights by renaming.


def _timm_to_npz(model, layout: str) -> dict[str, np.ndarray]:
    """timm state dict -> original ViT (``"original"``) or big_vision (``"unscanned"``/``"scanned"``)."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    d = sd["patch_embed.proj.weight"].shape[0]
    h = model.blocks[0].attn.num_heads
    depth = len(model.blocks)
    big_vision = layout != "original"
    mha, ln1, mlp = ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if big_vision \
        else ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
    out = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
           "embedding/bias": sd["patch_embed.proj.bias"],
           "Transformer/encoder_norm/scale": sd["norm.weight"],
           "Transformer/encoder_norm/bias": sd["norm.bias"],
           "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"]}
    if "cls_token" in sd:
        out["cls"] = sd["cls_token"]
    out["pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"] = sd["pos_embed"]
    blocks = []
    for i in range(depth):
        b = f"blocks.{i}."
        qkv_w, qkv_b = sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]
        blk = {"LayerNorm_0/scale": sd[b + "norm1.weight"], "LayerNorm_0/bias": sd[b + "norm1.bias"],
               f"{ln1}/scale": sd[b + "norm2.weight"], f"{ln1}/bias": sd[b + "norm2.bias"],
               f"{mha}/out/kernel": sd[b + "attn.proj.weight"].T.reshape(h, d // h, d),
               f"{mha}/out/bias": sd[b + "attn.proj.bias"],
               f"{mlp}/Dense_0/kernel": sd[b + "mlp.fc1.weight"].T,
               f"{mlp}/Dense_0/bias": sd[b + "mlp.fc1.bias"],
               f"{mlp}/Dense_1/kernel": sd[b + "mlp.fc2.weight"].T,
               f"{mlp}/Dense_1/bias": sd[b + "mlp.fc2.bias"]}
        for j, name in enumerate(("query", "key", "value")):
            blk[f"{mha}/{name}/kernel"] = qkv_w[j * d:(j + 1) * d].T.reshape(d, h, d // h)
            blk[f"{mha}/{name}/bias"] = qkv_b[j * d:(j + 1) * d].reshape(h, d // h)
        blocks.append(blk)
    if layout == "scanned":
        for key in blocks[0]:
            out[f"Transformer/encoderblock/{key}"] = np.stack([blk[key] for blk in blocks])
    else:
        for i, blk in enumerate(blocks):
            out.update({f"Transformer/encoderblock_{i}/{k}": v for k, v in blk.items()})
    if big_vision:
        out = {f"params/{k}": v for k, v in out.items()}
    return out


def test_original_npz_layout_loads_and_matches(timm, torch, tmp_path):
    torch.manual_seed(4)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=3).eval()
    path = tmp_path / "ViT-Ti_16.npz"
    np.savez(path, **_timm_to_npz(model, "original"))
    x = torch.randn(2, 3, 64, 64)
    ref = _timm_tokens(torch, model, x)
    # timm's own .npz reader agrees that the file is in the original layout.
    check = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=3).eval()
    check.load_pretrained(str(path))
    np.testing.assert_allclose(_timm_tokens(torch, check, x), ref, atol=1e-5)

    m, params, info = weights.load_vit(path, pool="mean")
    assert (info["format"], info["mean"], m.num_heads, m.depth) == ("npz", (0.5, 0.5, 0.5), 3, 3)
    assert info["ignored_keys"] == ["head/bias", "head/kernel"]
    pooled, tokens = m.apply({"params": params}, _nhwc(x))
    assert _rel(tokens, ref) < 1e-4 and _rel(pooled, ref.mean(1)) < 1e-4

    # An in21k-style file with the representation layer: pool="pooler" is tanh(pre_logits(cls)).
    rng = np.random.default_rng(5)
    arrays = dict(np.load(path))
    kernel = rng.normal(size=(192, 192)).astype(np.float32) / np.sqrt(192)
    bias = rng.normal(size=192).astype(np.float32)
    np.savez(tmp_path / "in21k.npz", **arrays, **{"pre_logits/kernel": kernel,
                                                 "pre_logits/bias": bias})
    m, params, info = weights.load_vit(tmp_path / "in21k.npz", pool="pooler")
    assert "pre_logits/kernel" not in info["ignored_keys"]
    pooled, _ = m.apply({"params": params}, _nhwc(x))
    expected = np.tanh(ref[:, 0].astype(np.float64) @ kernel + bias)
    assert _rel(pooled, expected) < 1e-4
    with pytest.raises(weights.WeightsError, match="missing keys: pre_logits"):
        weights.load_vit(path, pool="pooler")

    # At another size the .npz is resampled as timm's .npz loader does (bilinear, no antialias).
    bigger = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=96, depth=3).eval()
    bigger.load_pretrained(str(path))
    x96 = torch.randn(1, 3, 96, 96)
    m, params, info = weights.load_vit(path, image_size=96)
    assert info["posemb_resized"] == "4x4 -> 6x6 bilinear"
    assert _rel(m.apply({"params": params}, _nhwc(x96))[1], _timm_tokens(torch, bigger, x96)) < 1e-4


@pytest.mark.parametrize("layout", ["unscanned", "scanned"])
def test_big_vision_npz_layouts_without_class_token(timm, torch, tmp_path, layout):
    torch.manual_seed(5)
    kwargs = dict(pretrained=False, img_size=32, class_token=False, global_pool="avg",
                  fc_norm=False, depth=2)
    model = timm.create_model("vit_tiny_patch16_224", **kwargs).eval()
    path = tmp_path / f"{layout}.npz"
    np.savez(path, **_timm_to_npz(model, layout), **{"opt/state/step": np.zeros(())})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    check = timm.create_model("vit_tiny_patch16_224", **kwargs).eval()
    check.load_pretrained(str(path))
    with torch.no_grad():
        np.testing.assert_allclose(check.forward_head(check.forward_features(x), pre_logits=True).numpy(),
                                   ref, atol=1e-5)
    m, params, info = weights.load_vit(path)
    assert (info["format"], m.class_token, m.pool, m.depth) == ("big_vision", False, "gap", 2)
    assert _rel(m.apply({"params": params}, _nhwc(x))[0], ref) < 1e-4


# ---------------------------------------------------------------------------------------------
# Hugging Face.


def _hf_vit(transformers, **kw):
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8, **kw)
    return transformers.ViTModel(config).eval()


def test_hf_vit_matches_and_reads_its_folder(transformers, torch, tmp_path):
    torch.manual_seed(6)
    model = _hf_vit(transformers)
    model.save_pretrained(tmp_path / "hf")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(pixel_values=x).last_hidden_state.numpy()

    m, params, info = weights.load_vit(tmp_path / "hf", pool="cls")
    assert (info["format"], m.layer_norm_eps, m.num_heads, info["mean"]) == ("hf_vit", 1e-12, 2, (0.5,) * 3)
    assert info["ignored_keys"] == ["pooler.dense.bias", "pooler.dense.weight"]
    pooled, tokens = m.apply({"params": params}, _nhwc(x))
    assert _rel(tokens, ref) < 1e-4 and _rel(pooled, ref[:, 0]) < 1e-4
    m, params, _ = weights.load_vit(tmp_path / "hf" / "model.safetensors", pool="mean")
    assert _rel(m.apply({"params": params}, _nhwc(x))[0], ref.mean(1)) < 1e-4

    # The in-memory names of transformers 5 and a sharded save give the same parameters.
    (tmp_path / "v5").mkdir()
    _save_state(torch, model, tmp_path / "v5" / "model.safetensors")
    assert any(k.startswith("layers.0.attention.q_proj") for k in model.state_dict())
    shutil.copy(tmp_path / "hf" / "config.json", tmp_path / "v5" / "config.json")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    _, reference_params, _ = weights.load_vit(tmp_path / "hf", pool="mean")
    for folder in ("v5", "sharded"):
        _, other, _ = weights.load_vit(tmp_path / folder, pool="mean")
        jax.tree_util.tree_map(np.testing.assert_array_equal, other, reference_params)

    # pool="pooler" loads HF's pooler: ViTModel(add_pooling_layer=True).pooler_output.
    with torch.no_grad():
        torch.nn.init.normal_(model.pooler.dense.bias, std=0.5)   # non-zero, to be checked
        ref_pooler = model(pixel_values=x).pooler_output.numpy()
    model.save_pretrained(tmp_path / "pooled")
    m, params, info = weights.load_vit(tmp_path / "pooled", pool="pooler")
    assert info["ignored_keys"] == [] and set(params["pooler"]) == {"kernel", "bias"}
    pooled, _ = m.apply({"params": params}, _nhwc(x))
    assert _rel(pooled, ref_pooler) < 1e-4
    assert not np.allclose(np.asarray(pooled), np.tanh(ref[:, 0]), atol=1e-2)
    # Without the pooling layer in the file, pool="pooler" names the missing keys.
    no_pooler = transformers.ViTModel(model.config, add_pooling_layer=False)
    no_pooler.save_pretrained(tmp_path / "no_pooler")
    with pytest.raises(weights.WeightsError, match="missing keys: pooler.dense"):
        weights.load_vit(tmp_path / "no_pooler", pool="pooler")

    # The image processor's statistics are the ones recorded.
    transformers.ViTImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.3, 0.2, 0.1]) \
        .save_pretrained(tmp_path / "hf")
    _, _, info = weights.load_vit(tmp_path / "hf")
    assert (info["mean"], info["std"], info["norm_source"]) == (
        (0.1, 0.2, 0.3), (0.3, 0.2, 0.1), "preprocessor_config.json")


def test_hf_vit_at_another_size_matches_interpolate_pos_encoding(transformers, torch, tmp_path):
    torch.manual_seed(7)
    model = _hf_vit(transformers)
    model.save_pretrained(tmp_path / "hf")
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ref = model(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state.numpy()
    m, params, info = weights.load_vit(tmp_path / "hf", image_size=48)
    assert info["posemb_resized"] == "4x4 -> 6x6 bicubic"
    assert _rel(m.apply({"params": params}, _nhwc(x))[1], ref) < 1e-4


def test_hf_vit_mae_encoder_matches(transformers, torch, tmp_path):
    torch.manual_seed(8)
    config = transformers.ViTMAEConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8, mask_ratio=0.0, decoder_hidden_size=16,
        decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32)
    model = transformers.ViTMAEForPreTraining(config).eval()
    model.save_pretrained(tmp_path / "mae")
    x = torch.randn(2, 3, 32, 32)
    # With mask_ratio 0 the encoder still shuffles patches by `noise`; increasing noise keeps order.
    noise = torch.arange(16, dtype=torch.float32).expand(2, 16)
    with torch.no_grad():
        ref = model.vit(pixel_values=x, noise=noise).last_hidden_state.numpy()
    m, params, info = weights.load_vit(tmp_path / "mae", pool="mean")
    assert info["format"] == "hf_vit_mae" and info["mean"] == weights.IMAGENET_MEAN
    assert info["ignored_keys"] and all(k.startswith("decoder.") for k in info["ignored_keys"])
    pooled, tokens = m.apply({"params": params}, _nhwc(x))
    assert _rel(tokens, ref) < 1e-4 and _rel(pooled, ref.mean(1)) < 1e-4


# ---------------------------------------------------------------------------------------------
# Errors (no reference library needed: timm-layout files are made from numpy).


def test_errors_name_keys_and_file(tmp_path):
    state = timm_state()
    good = tmp_path / "good.safetensors"
    save_numpy(state, str(good))
    m, params, _ = weights.load_vit(good, num_heads=4)
    assert (m.width, m.depth, m.num_heads, m.image_size) == (32, 2, 4, (32, 32))

    cases = {
        "missing": ({k: v for k, v in state.items() if k != "blocks.1.norm2.bias"},
                    "missing keys: blocks.1.norm2.bias"),
        "unexpected": ({**state, "blocks.0.ls1.gamma": np.ones(32, np.float32)},
                       "unexpected keys: blocks.0.ls1.gamma"),
        "shape": ({**state, "blocks.1.mlp.fc1.weight": np.ones((64, 33), np.float32)},
                  r"wrong shapes: blocks.1.mlp.fc1.weight \[64, 33\] \(expected \[64, 32\]\)"),
        "grid": ({**state, "pos_embed": np.ones((1, 1 + 15, 32), np.float32)},
                 "pos_embed has 16 positions; .* not a square patch grid"),
        "infer": ({k: v for k, v in state.items() if k != "blocks.0.mlp.fc1.weight"},
                  "missing key 'blocks.0.mlp.fc1.weight' \\(needed to infer mlp_dim\\)"),
    }
    for name, (bad, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_numpy(bad, str(path))
        with pytest.raises(weights.WeightsError, match=message) as err:
            weights.load_vit(path, num_heads=4)
        assert str(path) in str(err.value)

    # Everything wrong at once is reported at once.
    both = {k: v for k, v in state.items() if k != "norm.bias"}
    both["blocks.0.attn.q_norm.weight"] = np.ones(16, np.float32)
    path = tmp_path / "both.safetensors"
    save_numpy(both, str(path))
    with pytest.raises(weights.WeightsError,
                       match="missing keys: norm.bias; unexpected keys: blocks.0.attn.q_norm.weight"):
        weights.load_vit(path, num_heads=4)

    with pytest.raises(weights.WeightsError, match="cannot infer num_heads for width 32"):
        weights.load_vit(good)
    with pytest.raises(weights.WeightsError, match="unknown ViT override\\(s\\) \\['heads'\\]"):
        weights.load_vit(good, heads=4)
    with pytest.raises(weights.WeightsError, match="pool='cls' needs class_token"):
        weights.load_vit(good, num_heads=4, pool="cls", class_token=False)
    # A structural override that the file contradicts shows up as unexpected keys.
    with pytest.raises(weights.WeightsError, match="unexpected keys: blocks.1"):
        weights.load_vit(good, num_heads=4, depth=1)
    with pytest.raises(weights.WeightsError, match="use load_resnet"):
        resnet_state = {"conv1.weight": np.zeros((8, 3, 7, 7), np.float32),
                        "layer1.0.conv1.weight": np.zeros((8, 8, 3, 3), np.float32)}
        save_numpy(resnet_state, str(tmp_path / "resnet.safetensors"))
        weights.load_vit(tmp_path / "resnet.safetensors")
    odd = tmp_path / "odd.safetensors"
    save_numpy({"encoder.weight": np.zeros(3, np.float32)}, str(odd))
    with pytest.raises(weights.WeightsError, match=f"{odd}: unrecognised checkpoint layout"):
        weights.load_vit(odd)
    with pytest.raises(weights.WeightsError, match="no such weights file"):
        weights.load_vit(tmp_path / "absent.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(weights.WeightsError, match="expected one weights file"):
        weights.load_vit(tmp_path / "empty")
    bad_config = tmp_path / "cfg"
    bad_config.mkdir()
    shutil.copy(good, bad_config / "model.safetensors")
    (bad_config / "config.json").write_text('{"architecture": "vit_tiny_patch16_224",\n  oops}')
    with pytest.raises(weights.WeightsError, match=f"{bad_config / 'config.json'}: bad JSON at line 2"):
        weights.load_vit(bad_config)


def test_npz_and_hf_errors_name_keys(tmp_path):
    m = vit.vit_from_config(vit.tiny_config())
    shapes = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    flat = {"/".join(p.key for p in path): np.zeros(a.shape, np.float32)
            for path, a in jax.tree_util.tree_leaves_with_path(shapes)}
    flat = {"params/" + k: v for k, v in flat.items()}  # already big_vision layout
    ok = tmp_path / "ok.npz"
    np.savez(ok, **flat)
    assert weights.load_vit(ok)[2]["format"] == "big_vision"
    key = "Transformer/encoderblock_1/MultiHeadDotProductAttention_0/value/bias"
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{k: v for k, v in flat.items() if k != "params/" + key})
    with pytest.raises(weights.WeightsError, match=f"{bad}: missing keys: {key}"):
        weights.load_vit(bad)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(weights.WeightsError, match=f"{broken}: not a readable .npz"):
        weights.load_vit(broken)

    hf = {"embeddings.cls_token": np.zeros((1, 1, 32), np.float32),
          "embeddings.position_embeddings": np.zeros((1, 17, 32), np.float32),
          "embeddings.patch_embeddings.projection.weight": np.zeros((32, 3, 8, 8), np.float32),
          "embeddings.patch_embeddings.projection.bias": np.zeros(32, np.float32),
          "layernorm.weight": np.zeros(32, np.float32), "layernorm.bias": np.zeros(32, np.float32)}
    (tmp_path / "hf").mkdir()
    save_numpy(hf, str(tmp_path / "hf" / "model.safetensors"))
    (tmp_path / "hf" / "config.json").write_text(json.dumps(dict(
        model_type="vit", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, image_size=32, patch_size=8)))
    with pytest.raises(weights.WeightsError,
                       match="missing keys: layers.0.layernorm_before.weight, layers.0.layernorm_before.bias"):
        weights.load_vit(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps(dict(model_type="vit", hidden_act="relu")))
    with pytest.raises(weights.WeightsError, match="config.json: hidden_act 'relu'"):
        weights.load_vit(tmp_path / "hf")


def test_bfloat16_override_loads_close_to_float32(tmp_path):
    save_numpy(timm_state(), str(tmp_path / "w.safetensors"))
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 32, 32, 3)), jnp.float32)
    m32, p32, _ = weights.load_vit(tmp_path / "w.safetensors", num_heads=2)
    m16, p16, info = weights.load_vit(tmp_path / "w.safetensors", num_heads=2, dtype="bfloat16")
    assert info["config"]["dtype"] == "bfloat16"
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(p16))
    a, b = m32.apply({"params": p32}, x)[0], m16.apply({"params": p16}, x)[0]
    assert _rel(b, a) < 5e-2
