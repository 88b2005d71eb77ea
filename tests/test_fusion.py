"""System C: per-set affine modules, concatenation and a Transformer encoder over time."""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from abaw_jax.models import fusion

B, L = 2, 12
DIMS = {"vit": 12, "openface": 5}   # two feature sets of different widths


def _features(seed: int, dims=DIMS) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=(B, L, d)).astype(np.float32) for k, d in dims.items()}


@functools.cache
def _tiny(**overrides):
    """The tiny fusion model with `overrides`, initialised once, and its jitted eval apply."""
    cfg = fusion.tiny_config()
    for k, v in overrides.items():
        cfg[k] = v
    model = fusion.from_config(cfg, num_outputs=3)
    ones = np.ones((B, L), bool)
    params = jax.jit(lambda r, f: model.init({"params": r}, f, ones, ones, train=False)["params"])(
        jax.random.key(0), _features(0))
    evaluate = jax.jit(lambda p, f, present, m: model.apply({"params": p}, f, present, m,
                                                            train=False))
    return model, params, evaluate


def test_two_sets_of_different_widths():
    model, params, evaluate = _tiny()
    assert params["affine_vit"]["kernel"].shape == (12, 8)
    assert params["affine_openface"]["kernel"].shape == (5, 8)
    # Encoder width d = 2 sets x 8; feed-forward 2d; head d -> d / 2 -> outputs.
    assert params["encoder"]["block_0"]["mlp_in"]["kernel"].shape == (16, 32)
    assert params["head"]["hidden"]["kernel"].shape == (16, 8)
    m = np.ones((B, L), bool)
    out = evaluate(params, _features(1), m, m)
    assert out.shape == (B, L, 3) and out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()


def test_encoder_input_matches_a_numpy_reference():
    """Affine modules + per-set positions + concatenation, recomputed in float64 numpy."""
    model, params, _ = _tiny()
    f = _features(2)
    m = np.ones((B, L), bool)
    seen = {}

    def grab_encoder_input(next_fun, args, kwargs, context):
        if context.module.name == "encoder" and context.method_name == "__call__":
            seen["x"] = np.asarray(args[0])
        return next_fun(*args, **kwargs)

    with flax.linen.intercept_methods(grab_encoder_input):
        model.apply({"params": params}, f, m, m, train=False)
    d = 8
    angles = np.arange(L)[:, None] / 10_000.0 ** (np.arange(0, d, 2) / d)
    pe = np.zeros((L, d))
    pe[:, 0::2], pe[:, 1::2] = np.sin(angles), np.cos(angles)
    expect = np.concatenate([
        f[k].astype(np.float64) @ np.asarray(params[f"affine_{k}"]["kernel"], np.float64)
        + np.asarray(params[f"affine_{k}"]["bias"]) + pe for k in ("vit", "openface")], axis=-1)
    np.testing.assert_allclose(seen["x"], expect, atol=1e-5)


def test_missing_set_is_named():
    model, params, evaluate = _tiny()
    m = np.ones((B, L), bool)
    f = _features(3)
    del f["openface"]
    with pytest.raises(ValueError, match="missing feature set 'openface'"):
        model.apply({"params": params}, f, m, m, train=False)
    with pytest.raises(ValueError, match="expected a dict"):
        model.apply({"params": params}, np.zeros((B, L, 12)), m, m, train=False)


def test_set_with_the_wrong_width_names_its_affine_module():
    model, params, _ = _tiny()
    m = np.ones((B, L), bool)
    f = _features(4, dims={"vit": 12, "openface": 7})
    with pytest.raises(flax.errors.ScopeParamShapeError, match="affine_openface"):
        model.apply({"params": params}, f, m, m, train=False)
    g = _features(4)
    g["vit"] = g["vit"][:, :-1]
    with pytest.raises(ValueError, match=r"features\['vit'\]"):
        model.apply({"params": params}, g, m, m, train=False)


def test_extra_sets_are_ignored_and_order_comes_from_the_config():
    model, params, evaluate = _tiny()
    m = np.ones((B, L), bool)
    f = _features(5)
    out = evaluate(params, f, m, m)
    more = dict(f, resnet=np.ones((B, L, 4), np.float32))
    np.testing.assert_array_equal(out, evaluate(params, more, m, m))
    # Swapping the config order swaps the halves of the encoder input, so outputs change.
    cfg = fusion.tiny_config()
    cfg.feature_sets = ("openface", "vit")
    swapped = fusion.from_config(cfg, 3)
    assert not np.allclose(out, swapped.apply({"params": params}, f, m, m, train=False), atol=1e-4)


def test_padding_and_absent_frames_do_not_reach_real_frames():
    model, params, evaluate = _tiny()
    rng = np.random.default_rng(6)
    m = np.ones((B, L), bool)
    m[:, 9:] = False
    present = m.copy()
    present[:, 2] = False
    f = _features(6)
    g = {k: v.copy() for k, v in f.items()}
    for v in g.values():
        v[:, [2, 9, 10, 11]] = 100.0 * rng.normal(size=(B, 4, v.shape[-1]))
    a = np.asarray(evaluate(params, f, present, m))
    b = np.asarray(evaluate(params, g, present, m))
    keep = [t for t in range(L) if t not in (2, 9, 10, 11)]
    np.testing.assert_allclose(a[:, keep], b[:, keep], atol=1e-5)


def test_a_gradient_step_changes_every_affine_module():
    model, params, _ = _tiny()
    f = _features(7)
    m = np.ones((B, L), bool)
    target = np.random.default_rng(7).normal(size=(B, L, 3)).astype(np.float32)

    @jax.jit
    def step(params):
        def loss_fn(p):
            out = model.apply({"params": p}, f, m, m, train=True,
                              rngs={"dropout": jax.random.key(1)})
            return jnp.mean((out - target) ** 2)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        tx = optax.sgd(0.1)
        updates, _ = tx.update(grads, tx.init(params), params)
        return optax.apply_updates(params, updates), grads

    new, grads = step(params)
    for name in ("affine_vit", "affine_openface"):
        for leaf in ("kernel", "bias"):
            assert np.abs(np.asarray(grads[name][leaf])).max() > 0, (name, leaf)
            assert not np.allclose(new[name][leaf], params[name][leaf]), (name, leaf)


def test_dropout_and_tanh_output():
    model, params, _ = _tiny(output_activation="tanh")
    f = _features(8)
    m = np.ones((B, L), bool)
    run = jax.jit(lambda r: model.apply({"params": params}, f, m, m, train=True,
                                        rngs={"dropout": r}))
    a, b = np.asarray(run(jax.random.key(1))), np.asarray(run(jax.random.key(2)))
    assert not np.allclose(a, b)
    assert np.abs(a).max() <= 1.0


def test_default_config_is_the_authors_model():
    cfg = fusion.default_config()
    assert cfg.name == "fusion"
    model = fusion.from_config(cfg, 12, jnp.bfloat16)
    f = {"vit": jax.ShapeDtypeStruct((1, 256, 768), jnp.float32),
         "openface": jax.ShapeDtypeStruct((1, 256, 17), jnp.float32)}
    m = jax.ShapeDtypeStruct((1, 256), bool)
    params = jax.eval_shape(lambda f, m: model.init(jax.random.key(0), f, m, m, train=False),
                            f, m)["params"]
    assert params["affine_vit"]["kernel"].shape == (768, 256)
    assert params["affine_openface"]["kernel"].shape == (17, 256)
    assert len(params["encoder"]) == 4
    assert params["encoder"]["block_0"]["mlp_in"]["kernel"].shape == (512, 1024)
    assert params["head"]["hidden"]["kernel"].shape == (512, 256)
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    out = jax.eval_shape(lambda p, f, m: model.apply({"params": p}, f, m, m, train=False),
                         params, f, m)
    assert out.shape == (1, 256, 12) and out.dtype == jnp.float32


def test_bad_config_names_the_key():
    cfg = fusion.tiny_config()
    cfg.d_afine = 4
    with pytest.raises(ValueError, match="model.d_afine"):
        fusion.from_config(cfg, 2)
    for key, value, why in [("num_heads", 3, "model.num_heads"),
                            ("feature_sets", (), "model.feature_sets"),
                            ("feature_sets", ("vit", "vit"), "twice"),
                            ("head_norm", "batch", "model.head_norm"),
                            ("output_activation", "relu", "model.output_activation"),
                            ("input_dropout", 1.0, "model.input_dropout")]:
        cfg = fusion.tiny_config()
        cfg[key] = value
        with pytest.raises(ValueError, match=why):
            fusion.from_config(cfg, 2)
