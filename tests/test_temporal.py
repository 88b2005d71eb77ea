"""Transformer blocks against plain numpy and PyTorch, and the masked temporal Transformer."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from abaw_jax.models import layers, temporal

B, L, D_IN = 2, 12, 16


def rngs(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"masking": k1, "dropout": k2}


def batch(seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(B, L, D_IN)).astype(np.float32)
    present = np.ones((B, L), bool)
    present[0, [2, 5, 6]] = False
    frame_mask = np.ones((B, L), bool)
    frame_mask[1, 9:] = False
    present[1, 9:] = False
    return features, present, frame_mask


def tiny(**overrides):
    config = temporal.tiny_config()
    config.update(overrides)
    return temporal.from_config(config, num_outputs=3)


def init(model, features, present, frame_mask):
    # Jitted: one compile instead of an eager dispatch per operation.
    return jax.jit(lambda f, p, m: model.init({"params": jax.random.key(1)}, f, p, m, train=False))(
        features, present, frame_mask)


# ----------------------------------------------------------------------------------------------
# Building blocks


@pytest.mark.parametrize("length,dim", [(50, 16), (7, 9)])
def test_sinusoidal_positions_match_the_formula(length, dim):
    table = layers.sinusoidal_positions(length, dim)
    assert table.shape == (length, dim) and table.dtype == np.float32
    for pos in range(length):
        for j in range(dim):
            angle = pos / 10000 ** (2 * (j // 2) / dim)
            expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert table[pos, j] == pytest.approx(expected, abs=1e-6)


def numpy_attention(x, params, num_heads, key_mask):
    """Multi-head self-attention in float64, one head and one query at a time."""
    x = np.asarray(x, np.float64)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    batch_size, length, dim = x.shape
    head_dim = dim // num_heads
    out = np.zeros_like(x)
    for b in range(batch_size):
        allowed = key_mask[b] if key_mask[b].any() else np.ones(length, bool)
        heads = []
        for h in range(num_heads):
            q = x[b] @ p["query"]["kernel"][:, h] + p["query"]["bias"][h]
            k = x[b] @ p["key"]["kernel"][:, h] + p["key"]["bias"][h]
            v = x[b] @ p["value"]["kernel"][:, h] + p["value"]["bias"][h]
            o = np.zeros((length, head_dim))
            for t in range(length):
                scores = np.array([q[t] @ k[s] / math.sqrt(head_dim) if allowed[s] else -np.inf
                                   for s in range(length)])
                w = np.exp(scores - scores.max())
                o[t] = (w / w.sum()) @ v
            heads.append(o)
        concat = np.stack(heads, axis=1)                     # [L, H, head_dim]
        out[b] = np.einsum("thd,hdo->to", concat, p["out"]["kernel"]) + p["out"]["bias"]
    return out


def attention_inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3, 6, 8)).astype(np.float32)
    key_mask = np.array([[1, 1, 0, 1, 0, 1], [1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]], bool)
    return x, key_mask


def test_attention_matches_numpy_including_rows_without_keys():
    x, key_mask = attention_inputs()
    attn = layers.MultiHeadSelfAttention(num_heads=2)
    params = attn.init(jax.random.key(0), x, key_mask)["params"]
    # Non-zero biases so that they are checked too.
    params = jax.tree.map(lambda a: a + 0.1 * jnp.arange(a.size).reshape(a.shape) / a.size,
                          params)
    got = attn.apply({"params": params}, x, key_mask)
    expected = numpy_attention(x, params, 2, key_mask)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)
    assert np.all(np.isfinite(np.asarray(got)))
    # The default is "einsum" on CPU; JAX's own XLA kernel gives the same outputs.
    forced = layers.MultiHeadSelfAttention(num_heads=2, attention_impl="xla")
    np.testing.assert_allclose(forced.apply({"params": params}, x, key_mask), got, atol=1e-6)


def torch_attention_weights(torch, params, dim):
    """Flax attention params -> torch.nn.MultiheadAttention state (weights are [out, in])."""
    w = lambda name: np.asarray(params[name]["kernel"]).reshape(dim, dim).T  # noqa: E731
    bias = lambda name: np.asarray(params[name]["bias"]).reshape(dim)  # noqa: E731
    return {
        "in_proj_weight": torch.tensor(np.concatenate([w("query"), w("key"), w("value")])),
        "in_proj_bias": torch.tensor(np.concatenate([bias("query"), bias("key"), bias("value")])),
        "out_proj.weight": torch.tensor(np.asarray(params["out"]["kernel"]).reshape(dim, dim).T),
        "out_proj.bias": torch.tensor(np.asarray(params["out"]["bias"])),
    }


def test_attention_matches_torch_multihead_attention():
    torch = pytest.importorskip("torch", reason="torch.nn.MultiheadAttention is the reference")
    torch.backends.mha.set_fastpath_enabled(False)
    x, key_mask = attention_inputs(1)
    attn = layers.MultiHeadSelfAttention(num_heads=4)
    params = attn.init(jax.random.key(3), x, key_mask)["params"]
    params = jax.tree.map(lambda a: a + 0.05 * jnp.cos(jnp.arange(a.size)).reshape(a.shape),
                          params)
    ref = torch.nn.MultiheadAttention(8, 4, batch_first=True)
    ref.load_state_dict(torch_attention_weights(torch, params, 8))
    tx = torch.tensor(x)
    with torch.no_grad():
        expected, _ = ref(tx, tx, tx, key_padding_mask=torch.tensor(~key_mask), need_weights=False)
    got = np.asarray(attn.apply({"params": params}, x, key_mask))
    # PyTorch returns NaN for a row with no key; rows that have keys must agree.
    rows = key_mask.any(axis=1)
    np.testing.assert_allclose(got[rows], expected.numpy()[rows], atol=1e-5)


@pytest.mark.parametrize("norm,activation", [("post", "relu"), ("pre", "gelu")])
def test_encoder_block_matches_torch_encoder_layer(norm, activation):
    torch = pytest.importorskip("torch", reason="torch.nn.TransformerEncoderLayer is the reference")
    torch.backends.mha.set_fastpath_enabled(False)
    x, key_mask = attention_inputs(2)
    x = x[:2]
    key_mask = key_mask[:2]
    block = layers.EncoderBlock(num_heads=2, mlp_dim=12, norm=norm, activation=activation)
    params = block.init(jax.random.key(4), x, key_mask)["params"]
    params = jax.tree.map(lambda a: a + 0.05 * jnp.sin(jnp.arange(a.size)).reshape(a.shape),
                          params)
    ref = torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.0,
                                           activation=activation, layer_norm_eps=1e-5,
                                           batch_first=True, norm_first=(norm == "pre"))
    state = {f"self_attn.{k}": v
             for k, v in torch_attention_weights(torch, params["attention"], 8).items()}
    t = lambda a: torch.tensor(np.asarray(a))  # noqa: E731
    state.update({
        "linear1.weight": t(params["mlp_in"]["kernel"].T),
        "linear1.bias": t(params["mlp_in"]["bias"]),
        "linear2.weight": t(params["mlp_out"]["kernel"].T),
        "linear2.bias": t(params["mlp_out"]["bias"]),
        "norm1.weight": t(params["norm_attention"]["scale"]),
        "norm1.bias": t(params["norm_attention"]["bias"]),
        "norm2.weight": t(params["norm_mlp"]["scale"]), "norm2.bias": t(params["norm_mlp"]["bias"]),
    })
    ref.load_state_dict(state)
    ref.eval()
    with torch.no_grad():
        expected = ref(torch.tensor(x), src_key_padding_mask=torch.tensor(~key_mask)).numpy()
    got = np.asarray(block.apply({"params": params}, x, key_mask, train=False))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_learned_positions_add_a_table_and_check_length():
    x = jnp.zeros((2, 5, 4))
    module = layers.LearnedPositions(max_len=8)
    params = module.init(jax.random.key(0), x)["params"]
    assert params["embedding"].shape == (8, 4) and params["embedding"].dtype == jnp.float32
    np.testing.assert_array_equal(module.apply({"params": params}, x)[1],
                                  params["embedding"][:5])
    with pytest.raises(ValueError, match="sequence length 9 exceeds max_len 8"):
        module.apply({"params": params}, jnp.zeros((1, 9, 4)))


def test_bad_block_options_name_the_field():
    x, key_mask = attention_inputs()
    with pytest.raises(ValueError, match="norm must be one of"):
        layers.EncoderBlock(2, 8, norm="sandwich").init(jax.random.key(0), x, key_mask)
    with pytest.raises(ValueError, match="activation must be one of"):
        layers.EncoderBlock(2, 8, activation="swish").init(jax.random.key(0), x, key_mask)
    with pytest.raises(ValueError, match="not divisible by num_heads 3"):
        layers.MultiHeadSelfAttention(3).init(jax.random.key(0), x, key_mask)
    with pytest.raises(ValueError, match="attention_impl must be one of"):
        layers.MultiHeadSelfAttention(2, attention_impl="flash").init(jax.random.key(0), x)


# ----------------------------------------------------------------------------------------------
# Random masking


@pytest.mark.parametrize("mode", ["frame", "element"])
def test_masking_draws_the_configured_fraction(mode):
    x = jnp.ones((16, 50, 8))
    module = temporal.FeatureMasking(prob=0.3, mode=mode)
    fractions, partial_frames = [], 0
    for seed in range(6):
        out, state = module.apply({}, x, train=True, rngs={"masking": jax.random.key(seed)},
                                  mutable=["intermediates"])
        out = np.asarray(out)
        masked = out == 0
        fractions.append(masked.mean())
        np.testing.assert_array_equal(np.broadcast_to(state["intermediates"]["mask"][0],
                                                      x.shape), masked)
        partial_frames += np.sum(masked.any(-1) & ~masked.all(-1))
        assert np.all(out[~masked] == 1)
    # 6 x 800 frames (or 6 x 6400 elements): the std of the mean is below 0.007.
    assert np.mean(fractions) == pytest.approx(0.3, abs=0.02)
    assert len(set(fractions)) > 1
    if mode == "frame":
        assert partial_frames == 0
    else:
        assert partial_frames > 0


def test_masking_with_a_learned_token_and_at_eval():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 30, 8)), jnp.float32)
    module = temporal.FeatureMasking(prob=0.5, value="token")
    variables = module.init({"params": jax.random.key(0)}, x, train=False)
    token = np.asarray(variables["params"]["mask_token"])
    out, state = module.apply(variables, x, train=True, rngs={"masking": jax.random.key(1)},
                              mutable=["intermediates"])
    frames = np.asarray(state["intermediates"]["mask"][0])[..., 0]
    assert 0 < frames.sum() < frames.size
    np.testing.assert_array_equal(np.asarray(out)[frames],
                                  np.broadcast_to(token, (frames.sum(), 8)))
    np.testing.assert_array_equal(np.asarray(out)[~frames], np.asarray(x)[~frames])
    # Eval: identity, and no "masking" rng needed.
    np.testing.assert_array_equal(module.apply(variables, x, train=False), x)
    with pytest.raises(ValueError, match="mask_prob must be in"):
        temporal.FeatureMasking(prob=1.0).apply({}, x, train=True)


def test_attention_dropout_defaults_to_dropout_and_leaves_inference_alone():
    x, key_mask = attention_inputs(5)
    block = lambda **kw: layers.EncoderBlock(num_heads=2, mlp_dim=12, **kw)  # noqa: E731
    params = block(dropout=0.3).init(jax.random.key(4), x, key_mask)["params"]
    run = lambda m, train: np.asarray(m.apply(  # noqa: E731
        {"params": params}, x, key_mask, train=train, rngs={"dropout": jax.random.key(9)}))
    # None (the default) drops the attention weights at `dropout`, torch's single rate.
    np.testing.assert_array_equal(run(block(dropout=0.3), True),
                                  run(block(dropout=0.3, attention_dropout=0.3), True))
    assert not np.allclose(run(block(dropout=0.3), True),
                           run(block(dropout=0.3, attention_dropout=0.0), True), atol=1e-3)
    # Attention dropout alone changes training outputs, never inference ones.
    only = block(dropout=0.0, attention_dropout=0.5)
    assert not np.allclose(run(only, True), run(only, False), atol=1e-3)
    np.testing.assert_array_equal(run(only, False), run(block(dropout=0.0), False))
    np.testing.assert_array_equal(run(block(dropout=0.0), True), run(block(dropout=0.0), False))
    with pytest.raises(ValueError, match="attention_dropout must be in"):
        block(attention_dropout=1.0).init(jax.random.key(0), x, key_mask)


# ----------------------------------------------------------------------------------------------
# TemporalTransformer


def test_default_adds_positions_to_the_features_without_a_projection():
    """The authors' code: PE added to the (masked) features, encoder, one Linear per frame."""
    features, present, frame_mask = batch(6)
    model = tiny(d_model=D_IN)
    variables = init(model, features, present, frame_mask)
    params = variables["params"]
    assert "input_proj" not in params and set(params) == {"encoder", "head"}
    encoder = layers.Encoder(num_layers=2, num_heads=2, mlp_dim=64, dropout=0.2)
    x = features + layers.sinusoidal_positions(L, D_IN)
    hidden = encoder.apply({"params": params["encoder"]}, x, present & frame_mask)
    expected = (np.asarray(hidden, np.float64) @ np.asarray(params["head"]["kernel"], np.float64)
                + np.asarray(params["head"]["bias"]))
    got = model.apply(variables, features, present, frame_mask, train=False)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)


def test_input_projection_is_an_option_and_automatic_when_widths_differ():
    features, present, frame_mask = batch(6)
    # tiny: d_model 32 != 16 feature channels, so a projection is needed.
    assert "input_proj" in init(tiny(), features, present, frame_mask)["params"]
    forced = init(tiny(d_model=D_IN, input_proj="always"), features, present, frame_mask)["params"]
    assert forced["input_proj"]["kernel"].shape == (D_IN, D_IN)


def test_dropout_after_the_positions_only_with_pos_dropout():
    features, present, frame_mask = batch(7)
    quiet = dict(mask_prob=0.0, dropout=0.0, attention_dropout=0.0)
    for pos_dropout, changes in ((0.0, False), (0.5, True)):
        model = tiny(pos_dropout=pos_dropout, **quiet)
        variables = init(model, features, present, frame_mask)
        train = model.apply(variables, features, present, frame_mask, train=True, rngs=rngs())
        infer = model.apply(variables, features, present, frame_mask, train=False)
        assert np.allclose(np.asarray(train), np.asarray(infer), atol=1e-6) != changes


def test_output_shape_dtype_and_tanh():
    features, present, frame_mask = batch()
    model = tiny(output_activation="tanh")
    variables = init(model, features, present, frame_mask)
    out = model.apply(variables, features * 50, present, frame_mask, train=True, rngs=rngs())
    assert out.shape == (B, L, 3) and out.dtype == jnp.float32
    assert np.all(np.abs(np.asarray(out)) <= 1.0)
    assert jax.tree.leaves(variables["params"])[0].dtype == jnp.float32


def test_eval_ignores_masking_and_equals_no_masking():
    features, present, frame_mask = batch(1)
    masked = tiny(mask_prob=0.5, dropout=0.0)
    plain = tiny(mask_prob=0.0, dropout=0.0)
    variables = init(masked, features, present, frame_mask)
    run = lambda m, train, seed: np.asarray(  # noqa: E731
        m.apply(variables, features, present, frame_mask, train=train, rngs=rngs(seed)))
    eval_a, eval_b = run(masked, False, 0), run(masked, False, 1)
    np.testing.assert_array_equal(eval_a, eval_b)
    np.testing.assert_allclose(eval_a, run(plain, False, 0), atol=1e-6)
    np.testing.assert_allclose(eval_a, run(plain, True, 0), atol=1e-6)
    assert not np.allclose(run(masked, True, 0), eval_a, atol=1e-3)
    assert not np.allclose(run(masked, True, 0), run(masked, True, 1), atol=1e-3)


@pytest.mark.parametrize("norm,pos_encoding", [("post", "sinusoidal"), ("pre", "learned")])
def test_absent_and_padded_frames_do_not_reach_other_frames(norm, pos_encoding):
    features, present, frame_mask = batch(2)
    model = tiny(norm=norm, pos_encoding=pos_encoding, dropout=0.0)
    variables = init(model, features, present, frame_mask)
    apply = jax.jit(lambda f, p: model.apply(variables, f, p, frame_mask, train=False))
    base = np.asarray(apply(features, present))
    hidden = ~(present & frame_mask)
    changed = features.copy()
    changed[hidden] = 100.0 * np.random.default_rng(3).normal(size=(hidden.sum(), D_IN))
    out = np.asarray(apply(changed, present))
    np.testing.assert_allclose(out[~hidden], base[~hidden], atol=1e-5)
    # The hidden frames themselves still get (different) outputs from their own query.
    assert not np.allclose(out[hidden], base[hidden], atol=1e-3)
    assert np.all(np.isfinite(out))


def test_attend_absent_lets_absent_frames_be_keys():
    features, present, frame_mask = batch(3)
    model = tiny(attend_absent=True, dropout=0.0)
    variables = init(model, features, present, frame_mask)
    base = model.apply(variables, features, present, frame_mask, train=False)
    changed = features.copy()
    changed[0, 2] += 10.0                       # an absent frame inside the video
    out = model.apply(variables, changed, present, frame_mask, train=False)
    assert not np.allclose(np.asarray(out)[0, 0], np.asarray(base)[0, 0], atol=1e-4)


def test_rows_without_any_present_frame_stay_finite_with_finite_gradients():
    features, present, frame_mask = batch(4)
    present[0] = False
    frame_mask[1] = False
    present[1] = False
    model = tiny()
    variables = init(model, features, present, frame_mask)

    def loss(params):
        out = model.apply({"params": params}, features, present, frame_mask, train=True,
                          rngs=rngs())
        return jnp.sum(out ** 2)

    value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    features, present, frame_mask = batch(5)
    config = temporal.tiny_config()
    config.dropout = 0.0
    model32 = temporal.from_config(config, 3)
    model16 = temporal.from_config(config, 3, dtype="bfloat16")
    variables = init(model16, features, present, frame_mask)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    out16 = model16.apply(variables, features, present, frame_mask, train=False)
    out32 = model32.apply(variables, features, present, frame_mask, train=False)
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, out32, atol=0.1)


def test_configs_and_from_config():
    config = temporal.default_config()
    model = temporal.from_config(config, num_outputs=12)
    assert (model.num_outputs, model.d_model, model.num_layers, model.num_heads) == (12, 768, 6, 8)
    assert (model.mlp_dim, model.dropout, model.mask_prob, model.norm) == (2048, 0.2, 0.2, "post")
    assert (model.mask_mode, model.pos_encoding) == ("frame", "sinusoidal")
    assert (model.activation, model.attend_absent, model.output_activation) == (
        "relu", False, "none")
    assert (model.input_proj, model.pos_dropout, model.attention_dropout) == ("auto", 0.0, None)
    tiny_model = temporal.from_config({"name": "transformer", **temporal.tiny_config()}, 2)
    assert (tiny_model.d_model, tiny_model.num_layers, tiny_model.mlp_dim) == (32, 2, 64)
    # Keys left out take the module defaults.
    assert temporal.from_config({"d_model": 64}, 8).num_layers == 6
    with pytest.raises(ValueError, match="model.depth: not a TemporalTransformer option"):
        temporal.from_config({"depth": 3}, 8)


def test_bad_inputs_and_options_name_the_key():
    features, present, frame_mask = batch()
    model = tiny()
    with pytest.raises(ValueError, match=r"present: expected shape \(2, 12\)"):
        init(model, features, present[:, :5], frame_mask)
    with pytest.raises(ValueError, match="frame_mask: expected shape"):
        init(model, features, present, frame_mask[:1])
    with pytest.raises(ValueError, match="features: expected"):
        init(model, features[0], present, frame_mask)
    long = np.zeros((1, 65, D_IN), np.float32)
    with pytest.raises(ValueError, match="sequence length 65 exceeds max_len 64"):
        init(model, long, np.ones((1, 65), bool), np.ones((1, 65), bool))
    for key, value in [("mask_mode", "patch"), ("mask_value", "noise"), ("pos_encoding", "rope"),
                       ("output_activation", "sigmoid")]:
        # Checked when the model is built (options the module's own checks know) or traced.
        with pytest.raises(ValueError, match=rf"{key}( must be| = {value!r}:) one of"):
            init(tiny(**{key: value}), features, present, frame_mask)
