"""ViT module: variants, config, parameter layout, and a float64 numpy reference forward pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from abaw_jax.models import vit


# ---------------------------------------------------------------------------------------------
# A plain float64 reference of a pre-norm ViT, written from the paper's equations.


def _ln(x, p, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _reference(params, images, *, eps, pool, class_token, final_norm, fc_norm):
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(images, np.float64)
    b, h, w, c = x.shape
    k = p["embedding"]["kernel"]
    ps, d = k.shape[0], k.shape[-1]
    patches = x.reshape(b, h // ps, ps, w // ps, ps, c).transpose(0, 1, 3, 2, 4, 5)
    t = patches.reshape(b, -1, ps * ps * c) @ k.reshape(-1, d) + p["embedding"]["bias"]
    if class_token:
        t = np.concatenate([np.broadcast_to(p["cls"], (b, 1, d)), t], axis=1)
    t = t + p["pos_embedding"]
    blocks = p["Transformer"]
    for i in range(sum(name.startswith("encoderblock_") for name in blocks)):
        blk = blocks[f"encoderblock_{i}"]
        att = blk["MultiHeadDotProductAttention_0"]
        y = _ln(t, blk["LayerNorm_0"], eps)
        q, kk, v = (np.einsum("btd,dhk->bthk", y, att[n]["kernel"]) + att[n].get("bias", 0)
                    for n in ("query", "key", "value"))
        logits = np.einsum("bqhk,bthk->bhqt", q, kk) / np.sqrt(q.shape[-1])
        prob = np.exp(logits - logits.max(-1, keepdims=True))
        prob /= prob.sum(-1, keepdims=True)
        o = np.einsum("bhqt,bthk->bqhk", prob, v)
        t = t + np.einsum("bqhk,hkd->bqd", o, att["out"]["kernel"]) + att["out"]["bias"]
        y = _ln(t, blk["LayerNorm_1"], eps)
        mlp = blk["MlpBlock_0"]
        y = y @ mlp["Dense_0"]["kernel"] + mlp["Dense_0"]["bias"]
        y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
        t = t + y @ mlp["Dense_1"]["kernel"] + mlp["Dense_1"]["bias"]
    if final_norm:
        t = _ln(t, blocks["encoder_norm"], eps)
    if pool == "pooler":
        # Hugging Face ViTPooler: tanh(Dense(class token after the final LayerNorm)).
        pooled = np.tanh(t[:, 0] @ p["pooler"]["kernel"] + p["pooler"]["bias"])
    else:
        pooled = {"cls": t[:, 0], "mean": t.mean(1), "gap": t[:, int(class_token):].mean(1)}[pool]
    if fc_norm:
        pooled = _ln(pooled, p["fc_norm"], eps)
    return pooled, t


def _random_params(module, images, seed=1):
    """Non-trivial values everywhere (LayerNorm scales and biases included), without compiling init."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), images)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda a: (0.5 * rng.standard_normal(a.shape) + (len(a.shape) == 1)).astype(np.float32), shapes)


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, dims", [
    ("Ti/16", (192, 12, 3, 768, 16)),
    ("S/16", (384, 12, 6, 1536, 16)),
    ("B/16", (768, 12, 12, 3072, 16)),
    ("L/16", (1024, 24, 16, 4096, 16)),
    ("B/8", (768, 12, 12, 3072, 8)),
    ("L/14", (1024, 24, 16, 4096, 14)),
    ("S/32", (384, 12, 6, 1536, 32)),
])
def test_decode_variant_matches_the_vit_papers(name, dims):
    got = vit.decode_variant(name)
    assert tuple(got[k] for k in vit.DIM_FIELDS) == dims
    assert vit.variant_name(*dims) == name


@pytest.mark.parametrize("bad", ["B16", "X/16", "B/", "B/0", "B/x", ""])
def test_decode_variant_rejects_bad_names(bad):
    with pytest.raises(ValueError, match="unknown ViT variant"):
        vit.decode_variant(bad)


def test_configs_build_modules():
    m = vit.vit_from_config(vit.default_config())
    # System A's paper: average of the patch tokens after the final LayerNorm, CLS excluded.
    assert (m.width, m.depth, m.num_heads, m.mlp_dim, m.patch_size, m.pool) == (768, 12, 12, 3072, 16, "gap")
    assert (m.final_norm, m.fc_norm, m.class_token) == (True, False, True)
    assert m.num_tokens == 197
    tiny = vit.vit_from_config(vit.tiny_config())
    assert (tiny.width, tiny.depth, tiny.patch_size, tiny.grid_size) == (32, 2, 8, (4, 4))
    # Explicit dims override the variant's; other fields pass through.
    m = vit.vit_from_config(vit.default_config(), patch_size=32, image_size=64, dtype="bfloat16")
    assert (m.width, m.patch_size, m.grid_size, m.dtype) == (768, 32, (2, 2), jnp.bfloat16)


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown ViT config keys \\['colour'\\]"):
        vit.vit_from_config(vit.tiny_config(), colour=1)
    with pytest.raises(ValueError, match="no value for \\['mlp_dim'\\]"):
        vit.vit_from_config(dict(width=32, depth=1, num_heads=2, patch_size=8))
    with pytest.raises(ValueError, match="pool='cls' needs class_token"):
        vit.vit_from_config(vit.tiny_config(), pool="cls", class_token=False)
    with pytest.raises(ValueError, match="pool must be one of"):
        vit.vit_from_config(vit.tiny_config(), pool="max")
    with pytest.raises(ValueError, match="pool='pooler' needs class_token"):
        vit.vit_from_config(vit.tiny_config(), pool="pooler", class_token=False)
    with pytest.raises(ValueError, match="pool='pooler' needs final_norm"):
        vit.vit_from_config(vit.tiny_config(), pool="pooler", final_norm=False, fc_norm=True)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        vit.vit_from_config(vit.tiny_config(), image_size=36)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        vit.vit_from_config(vit.tiny_config(), num_heads=3)
    m = vit.vit_from_config(vit.tiny_config())
    with pytest.raises(ValueError, match=r"expects images \[B, 32, 32, C\], got shape \(1, 48, 48, 3\)"):
        m.init(jax.random.key(0), jnp.zeros((1, 48, 48, 3)))


def test_parameter_layout_is_big_vision_unscanned():
    m = vit.vit_from_config(vit.tiny_config())
    params = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    flat = {"/".join(k.key for k in path): tuple(v.shape)
            for path, v in jax.tree_util.tree_leaves_with_path(params)}
    assert flat["embedding/kernel"] == (8, 8, 3, 32)
    assert flat["cls"] == (1, 1, 32)
    assert flat["pos_embedding"] == (1, 17, 32)
    blk = "Transformer/encoderblock_1/"
    assert flat[blk + "MultiHeadDotProductAttention_0/query/kernel"] == (32, 2, 16)
    assert flat[blk + "MultiHeadDotProductAttention_0/query/bias"] == (2, 16)
    assert flat[blk + "MultiHeadDotProductAttention_0/out/kernel"] == (2, 16, 32)
    assert flat[blk + "MlpBlock_0/Dense_0/kernel"] == (32, 64)
    assert flat[blk + "LayerNorm_1/scale"] == (32,)
    assert flat["Transformer/encoder_norm/scale"] == (32,)
    assert len(flat) == 4 + 2 * 16 + 2


@pytest.mark.parametrize("fields", [
    dict(pool="cls"),
    dict(pool="mean"),
    dict(pool="gap"),
    dict(pool="gap", class_token=False, qkv_bias=False, layer_norm_eps=1e-12),
    dict(pool="gap", final_norm=False, fc_norm=True, image_size=(32, 48)),
    dict(pool="pooler"),
])
def test_forward_matches_float64_reference(fields):
    m = vit.vit_from_config(vit.tiny_config(), **fields)
    h, w = vit.image_hw(m.image_size)
    images = np.random.default_rng(2).standard_normal((2, h, w, 3)).astype(np.float32)
    params = _random_params(m, images)
    pooled, tokens = m.apply({"params": params}, images)
    ref_pooled, ref_tokens = _reference(
        params, images, eps=m.layer_norm_eps, pool=m.pool, class_token=m.class_token,
        final_norm=m.final_norm, fc_norm=m.fc_norm)
    assert pooled.shape == (2, 32) and pooled.dtype == jnp.float32
    assert tokens.shape == (2, m.num_tokens, 32)
    assert _rel(tokens, ref_tokens) < 1e-4
    assert _rel(pooled, ref_pooled) < 1e-4
    if m.pool == "gap" and m.class_token:
        # The class token is left out of the average.
        assert _rel(pooled, ref_tokens.mean(1)) > 1e-3


def test_bfloat16_compute_keeps_float32_params_and_stays_close():
    m32 = vit.vit_from_config(vit.tiny_config())
    m16 = vit.vit_from_config(vit.tiny_config(), dtype="bfloat16")
    images = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
    params = jax.jit(m16.init)(jax.random.key(0), images)["params"]
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(params))
    p32, _ = m32.apply({"params": params}, images)
    p16, t16 = jax.jit(m16.apply)({"params": params}, images)
    assert t16.dtype == jnp.bfloat16 and p16.dtype == jnp.float32
    assert _rel(p16, np.asarray(p32, np.float64)) < 5e-2


def test_dropout_and_drop_path_only_in_training():
    m = vit.vit_from_config(vit.tiny_config(), dropout_rate=0.3, drop_path_rate=0.5)
    images = jax.random.normal(jax.random.key(4), (4, 32, 32, 3))
    variables = {"params": _random_params(m, images)}
    a, _ = m.apply(variables, images)
    b, _ = m.apply(variables, images)
    np.testing.assert_array_equal(a, b)
    c, _ = m.apply(variables, images, train=True, rngs={"dropout": jax.random.key(1)})
    d, _ = m.apply(variables, images, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, c) and not np.allclose(c, d)
    with pytest.raises(Exception, match="dropout"):
        m.apply(variables, images, train=True)
