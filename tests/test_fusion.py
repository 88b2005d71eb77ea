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
    variables = jax.jit(lambda r, f: model.init({"params": r}, f, ones, ones, train=False))(
        jax.random.key(0), _features(0))
    params = variables["params"]
    stats = {k: v for k, v in variables.items() if k != "params"}
    evaluate = jax.jit(lambda p, f, present, m: model.apply({"params": p, **stats}, f, present,
                                                            m, train=False))
    return model, params, evaluate


def _stats(model, params):
    """The model's initial non-param collections ("batch_stats" of BatchNorm heads)."""
    ones = np.ones((B, L), bool)
    variables = model.init({"params": jax.random.key(0)}, _features(0), ones, ones, train=False)
    return {k: v for k, v in variables.items() if k != "params"}


def test_two_sets_of_different_widths():
    model, params, evaluate = _tiny()
    assert params["affine_vit"]["kernel"].shape == (12, 8)
    assert params["affine_openface"]["kernel"].shape == (5, 8)
    # Encoder width d = 2 sets x 8; feed-forward 2d; head d -> d / 2 -> outputs.
    assert params["encoder"]["block_0"]["mlp_in"]["kernel"].shape == (16, 32)
    # One head per output, each d -> d / 2 -> 1.
    for i in range(3):
        assert params[f"head_{i}"]["hidden"]["kernel"].shape == (16, 8)
        assert params[f"head_{i}"]["out"]["kernel"].shape == (8, 1)
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
        model.apply({"params": params, **_stats(model, params)}, f, m, m, train=False)
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
    # The BatchNorm heads need their statistics at inference, and to update them in training.
    with pytest.raises(ValueError, match="'batch_stats' variables"):
        model.apply({"params": params}, _features(3), m, m, train=False)
    with pytest.raises(ValueError, match=r"mutable=\['batch_stats'\]"):
        model.apply({"params": params, **_stats(model, params)}, _features(3), m, m,
                    train=True, rngs={"dropout": jax.random.key(0)})


def test_set_with_the_wrong_width_names_its_affine_module():
    model, params, _ = _tiny()
    m = np.ones((B, L), bool)
    f = _features(4, dims={"vit": 12, "openface": 7})
    variables = {"params": params, **_stats(model, params)}
    with pytest.raises(flax.errors.ScopeParamShapeError, match="affine_openface"):
        model.apply(variables, f, m, m, train=False)
    g = _features(4)
    g["vit"] = g["vit"][:, :-1]
    with pytest.raises(ValueError, match=r"features\['vit'\]"):
        model.apply(variables, g, m, m, train=False)


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
    swapped_out = swapped.apply({"params": params, **_stats(model, params)}, f, m, m, train=False)
    assert not np.allclose(out, swapped_out, atol=1e-4)


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
            out, _ = model.apply({"params": p, **_stats(model, params)}, f, m, m, train=True,
                                 rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])
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
    stats = _stats(model, params)
    run = jax.jit(lambda r: model.apply({"params": params, **stats}, f, m, m, train=True,
                                        rngs={"dropout": r}, mutable=["batch_stats"])[0])
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
    variables = jax.eval_shape(
        lambda f, m: model.init(jax.random.key(0), f, m, m, train=False), f, m)
    params = variables["params"]
    assert (model.heads, model.head_norm, model.pe_after_concat, model.pe_dropped) == (
        "per_output", "batch", False, False)
    assert model.attention_dropout is None
    assert params["affine_vit"]["kernel"].shape == (768, 256)
    assert params["affine_openface"]["kernel"].shape == (17, 256)
    assert len(params["encoder"]) == 4
    assert params["encoder"]["block_0"]["mlp_in"]["kernel"].shape == (512, 1024)
    # AU: 12 heads, each Linear(512, 256) -> BatchNorm -> Linear(256, 1).
    assert sorted(k for k in params if k.startswith("head")) == sorted(
        f"head_{i}" for i in range(12))
    assert params["head_11"]["hidden"]["kernel"].shape == (512, 256)
    assert params["head_11"]["out"]["kernel"].shape == (256, 1)
    assert variables["batch_stats"]["head_11"]["norm"]["var"].shape == (256,)
    assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    out = jax.eval_shape(lambda v, f, m: model.apply(v, f, m, m, train=False),
                         variables, f, m)
    assert out.shape == (1, 256, 12) and out.dtype == jnp.float32


def test_bad_config_names_the_key():
    cfg = fusion.tiny_config()
    cfg.d_afine = 4
    with pytest.raises(ValueError, match="model.d_afine"):
        fusion.from_config(cfg, 2)
    for key, value, why in [("num_heads", 3, "model.num_heads"),
                            ("feature_sets", (), "model.feature_sets"),
                            ("feature_sets", ("vit", "vit"), "twice"),
                            ("head_norm", "group", "model.head_norm"),
                            ("heads", "per_task", "model.heads"),
                            ("head_sizes", (2, 2), "add up to the 2 outputs"),
                            ("output_activation", "relu", "model.output_activation"),
                            ("input_dropout", 1.0, "model.input_dropout")]:
        cfg = fusion.tiny_config()
        cfg[key] = value
        with pytest.raises(ValueError, match=why):
            fusion.from_config(cfg, 2)


# ----------------------------------------------------------------------------------------------
# Heads, position encoding variants, BatchNorm statistics


def _encoder_output(model, variables, f, m):
    seen = {}

    def grab(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.module.name == "encoder" and context.method_name == "__call__":
            seen["y"] = np.asarray(out, np.float64)
        return out

    with flax.linen.intercept_methods(grab):
        out = model.apply(variables, f, m, m, train=False)
    return seen["y"], np.asarray(out)


def _numpy_head(p, stats, y):
    """float64 Linear -> BatchNorm (running statistics, eps 1e-5) -> Linear."""
    h = y @ as64(p["hidden"]["kernel"]) + as64(p["hidden"]["bias"])
    if stats is not None:
        h = (h - as64(stats["mean"])) / np.sqrt(as64(stats["var"]) + 1e-5)
        h = h * as64(p["norm"]["scale"]) + as64(p["norm"]["bias"])
    return h @ as64(p["out"]["kernel"]) + as64(p["out"]["bias"])


def as64(a):
    return np.asarray(a, np.float64)


@pytest.mark.parametrize("head_sizes", [(), (2, 1)])
def test_per_output_heads_are_independent_linear_batchnorm_linear(head_sizes):
    model, params, _ = _tiny(head_sizes=head_sizes)
    rng = np.random.default_rng(30)
    stats = jax.tree.map(lambda a: rng.uniform(0.5, 1.5, a.shape).astype(np.float32),
                         _stats(model, params))
    f, m = _features(31), np.ones((B, L), bool)
    y, out = _encoder_output(model, {"params": params, **stats}, f, m)
    sizes = head_sizes or (1, 1, 1)
    expected = np.concatenate([
        _numpy_head(params[f"head_{i}"], stats["batch_stats"][f"head_{i}"]["norm"], y)
        for i in range(len(sizes))], axis=-1)
    assert [params[f"head_{i}"]["out"]["kernel"].shape[1] for i in range(len(sizes))] == list(sizes)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_shared_layer_norm_head_remains_a_named_option():
    model, params, evaluate = _tiny(heads="shared", head_norm="layer")
    assert "head" in params and not any(k.startswith("head_") for k in params)
    assert params["head"]["out"]["kernel"].shape == (8, 3)
    assert set(_stats(model, params)) == set()
    m = np.ones((B, L), bool)
    out = model.apply({"params": params}, _features(32), m, m, train=True,
                      rngs={"dropout": jax.random.key(0)})
    assert out.shape == (B, L, 3) and np.isfinite(np.asarray(out)).all()


def _encoder_input(model, variables, f, m, train):
    seen = {}

    def grab(next_fun, args, kwargs, context):
        if context.module.name == "encoder" and context.method_name == "__call__":
            seen["x"] = np.asarray(args[0], np.float64)
        return next_fun(*args, **kwargs)

    with flax.linen.intercept_methods(grab):
        model.apply(variables, f, m, m, train=train, rngs={"dropout": jax.random.key(3)},
                    mutable=["batch_stats"])
    return seen["x"]


def _sinusoid(length, dim):
    angles = np.arange(length)[:, None] / 10_000.0 ** (np.arange(0, dim, 2) / dim)
    pe = np.zeros((length, dim))
    pe[:, 0::2], pe[:, 1::2] = np.sin(angles), np.cos(angles)
    return pe


def test_position_encoding_variants():
    f, m = _features(33), np.ones((B, L), bool)
    affine = None
    for pe_after_concat, table in ((False, np.tile(_sinusoid(L, 8), (1, 2))),
                                   (True, _sinusoid(L, 16))):
        model, params, _ = _tiny(pe_after_concat=pe_after_concat)
        variables = {"params": params, **_stats(model, params)}
        affine = np.concatenate([
            f[k].astype(np.float64) @ as64(params[f"affine_{k}"]["kernel"])
            + as64(params[f"affine_{k}"]["bias"]) for k in ("vit", "openface")], axis=-1)
        x = _encoder_input(model, variables, f, m, train=False)
        np.testing.assert_allclose(x, affine + table, atol=1e-5)
        # Training: the input dropout hits the affine outputs, never the positions.
        x = _encoder_input(model, variables, f, m, train=True)
        kept = x - table
        dropped = np.isclose(kept, 0.0, atol=1e-6)
        assert 0.35 < dropped.mean() < 0.65
        np.testing.assert_allclose(kept[~dropped], 2.0 * affine[~dropped], rtol=1e-4, atol=1e-5)
    # pe_dropped: positions added before the dropout (this module's earlier order).
    model, params, _ = _tiny(pe_dropped=True)
    x = _encoder_input(model, {"params": params, **_stats(model, params)}, f, m, train=True)
    assert 0.35 < np.isclose(x, 0.0, atol=1e-6).mean() < 0.65


def test_padding_does_not_reach_the_head_statistics_in_training():
    model, params, _ = _tiny(input_dropout=0.0, dropout=0.0)
    variables = {"params": params, **_stats(model, params)}
    f = _features(34)
    m = np.ones((B, L), bool)
    m[0, 8:] = False
    step = jax.jit(lambda f: model.apply(variables, f, m, m, train=True, mutable=["batch_stats"]))
    out, stats = step(f)
    g = {k: v.copy() for k, v in f.items()}
    for v in g.values():
        v[~m] = 1e3
    out2, stats2 = step(g)
    np.testing.assert_allclose(np.asarray(out2)[m], np.asarray(out)[m], atol=1e-4)
    for i in range(3):
        new, again = stats["batch_stats"][f"head_{i}"]["norm"], stats2["batch_stats"][f"head_{i}"]["norm"]
        np.testing.assert_allclose(again["mean"], new["mean"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(again["var"], new["var"], rtol=1e-5)
