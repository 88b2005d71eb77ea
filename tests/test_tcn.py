"""System B: the temporal convolutional network and the TCN + Transformer model."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from abaw_jax.models import tcn


def _random_variables(module, *args, seed=0):
    """Variables of `module` drawn in numpy: the behaviour under test must hold for any weights.

    (Compiling Flax's random initialisers costs seconds per model on a small CPU; the shapes
    come from an abstract init, the values from numpy.) BatchNorm running statistics are drawn
    too (means around 0, variances in [0.5, 1.5]).
    """
    shapes = jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a, train=False), *args)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "var":
            return rng.uniform(0.5, 1.5, size=leaf.shape).astype(np.float32)
        if name in ("kernel", "v"):
            scale = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
            return (scale * rng.normal(size=leaf.shape)).astype(np.float32)
        if name in ("g", "scale"):
            return rng.uniform(0.5, 1.5, size=leaf.shape).astype(np.float32)
        if name == "slope":
            return rng.uniform(-0.25, 0.5, size=leaf.shape).astype(np.float32)
        return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, dict(shapes))


def _random_params(module, *args, seed=0):
    """The "params" collection of `_random_variables`."""
    return _random_variables(module, *args, seed=seed)["params"]


def _init_apply(module, *args, seed=0):
    """Random params of `module` on `args` and its jitted eval apply over the same args."""
    apply = jax.jit(lambda p, *a: module.apply({"params": p}, *a, train=False))
    return _random_params(module, *args, seed=seed), apply


def _tcn(kernel_size, dilations, causal, channels=None, **kw):
    channels = channels or (4,) * len(dilations)
    return tcn.TemporalConvNet(channels, kernel_size, dilations, causal=causal, **kw)


# --- shapes, causality, receptive field -------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_output_length_equals_input_length(causal):
    # Shapes only (abstract evaluation): the padding alone decides the output length.
    for kernel_size in range(2, 8):
        for length in (5, 23):   # shorter and longer than the receptive field
            x = jax.ShapeDtypeStruct((2, length, 3), jnp.float32)
            m = jax.ShapeDtypeStruct((2, length), bool)
            module = _tcn(kernel_size, (1, 2, 4), causal, channels=(5, 4, 2))
            params = jax.eval_shape(
                lambda x, m: module.init(jax.random.key(0), x, m, train=False), x, m)
            y = jax.eval_shape(lambda p, x, m: module.apply(p, x, m, train=False), params, x, m)
            assert y.shape == (2, length, 2), (kernel_size, length, causal)


def test_default_dilations_double_per_block():
    assert tcn.block_dilations((), 3) == (1, 2, 4)
    assert tcn.block_dilations((1, 3), 2) == (1, 3)
    # With no dilations given, the blocks must behave exactly as with explicit 1, 2, 4.
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(1, 40, 3)), jnp.float32)
    m = jnp.ones((1, 40), bool)
    implicit, apply_i = _init_apply(_tcn(3, (), False, channels=(4, 4, 4)), x, m)
    explicit, apply_e = _init_apply(_tcn(3, (1, 2, 4), False, channels=(4, 4, 4)), x, m)
    np.testing.assert_array_equal(apply_i(implicit, x, m), apply_e(explicit, x, m))


def _prefix_variants(x: np.ndarray, rng) -> np.ndarray:
    """Row t: x with every frame after t replaced by fresh noise ([L, L, D] from [L, D])."""
    length = x.shape[0]
    rows = np.repeat(x[None], length, axis=0)
    for t in range(length):
        rows[t, t + 1:] = rng.normal(size=rows[t, t + 1:].shape)
    return rows


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_causal_output_ignores_the_future(kernel_size):
    rng = np.random.default_rng(2)
    length = 16
    x = rng.normal(size=(length, 3)).astype(np.float32)
    rows = jnp.asarray(_prefix_variants(x, rng))
    m = jnp.ones((length, length), bool)
    for causal in (True, False):
        module = _tcn(kernel_size, (1, 2), causal, activation="gelu")
        params, apply = _init_apply(module, rows, m)
        out = np.asarray(apply(params, rows, m))
        ref = out[-1]   # the last row has no frame after t changed: it is x itself
        if causal:
            for t in range(length):
                np.testing.assert_allclose(out[t, : t + 1], ref[: t + 1], rtol=0, atol=1e-6,
                                           err_msg=f"causal output at frame <= {t} moved")
        else:
            moved = [not np.allclose(out[t, t], ref[t], rtol=0, atol=1e-6)
                     for t in range(length - 1)]
            assert all(moved), "a non-causal TCN sees the next frames"


@pytest.mark.parametrize("kernel_size,dilations", [(2, (1, 2)), (3, (1, 2, 4)), (4, (3,))])
@pytest.mark.parametrize("causal", [False, True])
def test_receptive_field_matches_measurement(kernel_size, dilations, causal):
    length, frame = 96, 48
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, length, 3)).astype(np.float32)
    bumped = x.copy()
    bumped[0, frame] += 1.0
    m = jnp.ones((1, length), bool)
    module = _tcn(kernel_size, dilations, causal, activation="gelu")
    params, apply = _init_apply(module, jnp.asarray(x), m)
    delta = np.abs(np.asarray(apply(params, jnp.asarray(bumped), m))
                   - np.asarray(apply(params, jnp.asarray(x), m))).max(axis=-1)[0]
    moved = np.flatnonzero(delta > 1e-6)
    # Each of the two convolutions per block looks d * (k - 1) frames away in total: all to the
    # past when causal, else half each way with the odd frame to the future.
    reach = [d * (kernel_size - 1) for d in dilations]
    past = 2 * sum(r if causal else r // 2 for r in reach)
    future = 2 * sum(0 if causal else r - r // 2 for r in reach)
    # Input frame s reaches outputs t with t - past <= s <= t + future.
    span = np.arange(frame - future, frame + past + 1)
    assert len(span) == tcn.receptive_field(kernel_size, dilations)
    if 1 in dilations:
        np.testing.assert_array_equal(moved, span)
    else:
        # Only dilated convolutions: the field has holes between its taps, same ends.
        assert set(moved) < set(span) and (moved[0], moved[-1]) == (span[0], span[-1])


def test_receptive_field_formula():
    assert tcn.receptive_field(5, (1, 2, 4)) == 57          # the authors' TCN
    assert tcn.receptive_field(3, (1, 2, 4), convs_per_block=1) == 15
    assert tcn.receptive_field(1, (1, 2)) == 1
    with pytest.raises(ValueError, match="kernel_size"):
        tcn.receptive_field(0, (1,))


# --- weight norm and the blocks against PyTorch / numpy references ----------------------------

def _numpy_conv(x, w, bias, dilation, padding):
    """Plain float64 dilated 1-D convolution: x [L, Cin], w [K, Cin, Cout] -> [L', Cout]."""
    x = np.pad(x.astype(np.float64), (padding, (0, 0)))
    k = w.shape[0]
    out_len = x.shape[0] - dilation * (k - 1)
    out = np.zeros((out_len, w.shape[2]))
    for t in range(out_len):
        for j in range(k):
            out[t] += x[t + j * dilation] @ w[j].astype(np.float64)
    return out + bias


@pytest.mark.parametrize("kernel_size,dilation,padding", [(3, 1, (1, 1)), (5, 2, (8, 0)),
                                                          (4, 3, (4, 5))])
def test_weight_norm_conv_matches_numpy(kernel_size, dilation, padding):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1, 20, 6)).astype(np.float32)
    module = tcn.WeightNormConv(5, kernel_size, dilation, padding)
    params = module.init(jax.random.key(0), jnp.asarray(x))["params"]
    # At initialisation g = ||v|| so the kernel is v itself.
    norms = np.sqrt((np.asarray(params["v"], np.float64) ** 2).sum(axis=(0, 1)))
    np.testing.assert_allclose(params["g"], norms, rtol=1e-6)
    v = rng.normal(size=(kernel_size, 6, 5)).astype(np.float32)
    g = rng.uniform(0.5, 2.0, size=5).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    y = module.apply({"params": {"v": v, "g": g, "bias": b}}, jnp.asarray(x))
    w = g * v / np.sqrt((v.astype(np.float64) ** 2).sum(axis=(0, 1)))
    np.testing.assert_allclose(y[0], _numpy_conv(x[0], w, b, dilation, padding), atol=1e-5)


def _torch_tcn(torch, params, channels, kernel_size, dilations, causal, in_dim):
    """The TCN of Bai et al. in PyTorch (Conv1d, weight_norm when params hold v and g)."""
    nn = torch.nn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch's weight_norm is deprecated, still correct
        blocks = []
        prev = in_dim
        for i, (c, d) in enumerate(zip(channels, dilations)):
            p = params[f"block_{i}"]
            # Chomp-style causality: pad (k - 1) d on both sides and cut the right end off.
            pad = d * (kernel_size - 1) if causal else d * (kernel_size - 1) // 2
            convs = []
            for j, c_in in enumerate((prev, c)):
                conv = nn.Conv1d(c_in, c, kernel_size, padding=pad, dilation=d).double()
                q = p[f"conv_{j}"]
                # Flax [K, Cin, Cout] -> torch [Cout, Cin, K]; torch g has shape [Cout, 1, 1].
                if "v" in q:
                    conv = nn.utils.weight_norm(conv)
                    conv.weight_v.data = torch.tensor(
                        np.transpose(np.asarray(q["v"]), (2, 1, 0)), dtype=torch.float64)
                    conv.weight_g.data = torch.tensor(np.asarray(q["g"])[:, None, None],
                                                      dtype=torch.float64)
                else:
                    conv.weight.data = torch.tensor(
                        np.transpose(np.asarray(q["kernel"]), (2, 1, 0)), dtype=torch.float64)
                conv.bias.data = torch.tensor(np.asarray(q["bias"]), dtype=torch.float64)
                slope = np.asarray(p[f"act_{j}"]["slope"])
                # nn.PReLU() holds one shared slope, nn.PReLU(c) one per channel.
                act = nn.PReLU(slope.size).double()
                act.weight.data = torch.tensor(slope, dtype=torch.float64)
                convs.append((conv, act))
            down = None
            if prev != c:
                down = nn.Conv1d(prev, c, 1).double()
                r = p["residual"]
                down.weight.data = torch.tensor(np.transpose(np.asarray(r["kernel"]), (2, 1, 0)),
                                                dtype=torch.float64)
                down.bias.data = torch.tensor(np.asarray(r["bias"]), dtype=torch.float64)
            slope = np.asarray(p["act_out"]["slope"])
            out_act = nn.PReLU(slope.size).double()
            out_act.weight.data = torch.tensor(slope, dtype=torch.float64)
            blocks.append((convs, down, out_act, d * (kernel_size - 1) if causal else 0))
            prev = c

    def forward(x):   # x [B, C, L]
        for convs, down, out_act, chomp in blocks:
            h = x
            for conv, act in convs:
                h = conv(h)
                if chomp:
                    h = h[:, :, :-chomp]
                h = act(h)
            x = out_act(h + (x if down is None else down(x)))
        return x

    return forward


@pytest.mark.parametrize("causal,weight_norm,prelu_slopes", [
    (True, True, "shared"), (True, True, "channel"), (False, True, "shared"),
    (False, False, "channel")])
def test_tcn_matches_pytorch_reference(causal, weight_norm, prelu_slopes):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    channels, kernel_size, dilations = (6, 6, 4), 3, (1, 2, 4)
    x = rng.normal(size=(2, 30, 5)).astype(np.float32)
    m = jnp.ones((2, 30), bool)
    module = tcn.TemporalConvNet(channels, kernel_size, dilations, causal=causal,
                                 weight_norm=weight_norm, prelu_slopes=prelu_slopes)
    params, apply = _init_apply(module, jnp.asarray(x), m)
    slope_shape = (1,) if prelu_slopes == "shared" else (6,)
    assert params["block_0"]["act_0"]["slope"].shape == slope_shape
    ours = np.asarray(apply(params, jnp.asarray(x), m))
    ref = _torch_tcn(torch, params, channels, kernel_size, dilations, causal, 5)(
        torch.tensor(x, dtype=torch.float64).transpose(1, 2))
    np.testing.assert_allclose(ours, ref.detach().numpy().transpose(0, 2, 1), atol=2e-5)


def test_plain_conv_variant_has_no_weight_norm_params():
    x = jnp.zeros((1, 8, 3))
    m = jnp.ones((1, 8), bool)
    module = tcn.TemporalConvNet((4,), 3, weight_norm=False, activation="relu")
    params = _random_params(module, x, m)
    assert set(params["block_0"]["conv_0"]) == {"kernel", "bias"}
    assert params["block_0"]["conv_0"]["kernel"].shape == (3, 3, 4)


# --- padding and frames without a face --------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_tcn_padding_acts_like_the_sequence_end(causal):
    rng = np.random.default_rng(6)
    real, length = 11, 16
    x = rng.normal(size=(1, length, 3)).astype(np.float32)
    x[0, real:] = 1e3 * rng.normal(size=(length - real, 3))   # garbage in the padding
    m = np.zeros((1, length), bool)
    m[0, :real] = True
    module = _tcn(4, (1, 2), causal, channels=(5, 4))
    params, apply = _init_apply(module, jnp.asarray(x), jnp.asarray(m))
    padded = np.asarray(apply(params, jnp.asarray(x), jnp.asarray(m)))[0, :real]
    alone = np.asarray(apply(params, jnp.asarray(x[:, :real]), jnp.ones((1, real), bool)))[0]
    np.testing.assert_allclose(padded, alone, atol=1e-5)


B, L, D = 2, 16, 6   # batch, window and feature size of the full-model tests


@functools.cache
def _tiny(**overrides):
    """The tiny TCNTransformer with `overrides`, its params and jitted eval / train applies."""
    cfg = tcn.tiny_config()
    cfg.dropout = 0.1
    for k, v in overrides.items():
        cfg[k] = v
    model = tcn.from_config(cfg, num_outputs=3)
    ones = jnp.ones((B, L), bool)
    variables = _random_variables(model, jnp.zeros((B, L, D)), ones, ones)
    evaluate = jax.jit(lambda v, x, present, m: model.apply(v, x, present, m, train=False))
    # Training updates the BatchNorm statistics (when the head has them); outputs only here.
    train = jax.jit(lambda v, x, present, m, r: model.apply(
        v, x, present, m, train=True, rngs={"dropout": r}, mutable=["batch_stats"])[0])
    return model, variables, evaluate, train


def _features(seed):
    return np.random.default_rng(seed).normal(size=(B, L, D)).astype(np.float32)


def test_model_padding_frames_do_not_reach_real_frames():
    rng = np.random.default_rng(7)
    real = 11
    x = _features(7)
    m = np.zeros((B, L), bool)
    m[:, :real] = True
    _, params, evaluate, _ = _tiny()
    out = np.asarray(evaluate(params, x, m, m))
    # The same video alone, without padding, gives the same outputs on its frames.
    alone = np.asarray(evaluate(params, x[:, :real], np.ones((B, real), bool),
                                np.ones((B, real), bool)))
    np.testing.assert_allclose(out[:, :real], alone, atol=1e-5)
    # And changing the padding changes nothing on real frames.
    y = x.copy()
    y[:, real:] = 100.0 * rng.normal(size=y[:, real:].shape)
    out2 = np.asarray(evaluate(params, y, m, m))
    np.testing.assert_allclose(out2[:, :real], out[:, :real], atol=1e-5)


@pytest.mark.parametrize("attend_absent", [False, True])
def test_absent_frames_features_are_ignored_unless_attend_absent(attend_absent):
    rng = np.random.default_rng(8)
    absent = [3, 4, 9]
    x = _features(8)
    m = np.ones((B, L), bool)
    present = m.copy()
    present[:, absent] = False
    y = x.copy()
    y[:, absent] = 50.0 * rng.normal(size=(B, len(absent), D))
    _, params, evaluate, _ = _tiny(attend_absent=attend_absent)
    a = np.asarray(evaluate(params, x, present, m))
    b = np.asarray(evaluate(params, y, present, m))
    if attend_absent:
        assert not np.allclose(a, b, atol=1e-3)
    else:
        # Every frame, absent ones included, gets the same output whatever was filled in.
        np.testing.assert_allclose(a, b, atol=1e-5)
        assert not np.allclose(a[:, 3], a[:, 9], atol=1e-4), "absent frames use their context"


@pytest.mark.parametrize("use_tcn,use_transformer", [(False, True), (True, False), (False, False)])
def test_ablation_flags(use_tcn, use_transformer):
    model, params, evaluate, train = _tiny(use_tcn=use_tcn, use_transformer=use_transformer,
                                           output_activation="tanh")
    assert ("tcn" in params["params"]) == use_tcn
    assert ("encoder" in params["params"]) == use_transformer
    x = _features(9)
    m = np.ones((B, L), bool)
    out = np.asarray(train(params, x, m, m, jax.random.key(1)))
    assert out.shape == (B, L, 3) and out.dtype == np.float32
    assert np.isfinite(out).all() and np.abs(out).max() <= 1.0
    if not use_tcn and not use_transformer:
        # A per-frame model: reversing time reverses the outputs.
        fwd = np.asarray(evaluate(params, x, m, m))
        rev = np.asarray(evaluate(params, x[:, ::-1], m, m))
        np.testing.assert_allclose(rev, fwd[:, ::-1], atol=1e-6)


def test_dropout_uses_the_dropout_rng():
    _, params, evaluate, train = _tiny()
    x = _features(10)
    m = np.ones((B, L), bool)
    run = lambda seed: np.asarray(train(params, x, m, m, jax.random.key(seed)))
    np.testing.assert_array_equal(run(1), run(1))
    assert not np.allclose(run(1), run(2))
    assert not np.allclose(run(1), evaluate(params, x, m, m))
    np.testing.assert_array_equal(evaluate(params, x, m, m), evaluate(params, x, m, m))


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    _, params, evaluate, _ = _tiny()
    model = tcn.from_config(tcn.tiny_config(), 3, jnp.bfloat16)
    x = _features(11)
    m = np.ones((B, L), bool)
    init = jax.eval_shape(lambda x, m: model.init(jax.random.key(0), x, m, m, train=False),
                          x, m)
    assert {p.dtype for p in jax.tree.leaves(init)} == {jnp.dtype(jnp.float32)}
    assert jax.tree.structure(dict(init)) == jax.tree.structure(params)
    out = jax.jit(lambda v: model.apply(v, x, m, m, train=False))(params)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, evaluate(params, x, m, m), atol=0.1)


def test_default_config_is_the_authors_model():
    cfg = tcn.default_config()
    assert cfg.name == "tcn"
    model = tcn.from_config(cfg, 8)
    x = jax.ShapeDtypeStruct((1, 300, 768), jnp.float32)
    m = jax.ShapeDtypeStruct((1, 300), bool)
    variables = jax.eval_shape(
        lambda x, m: model.init(jax.random.key(0), x, m, m, train=False), x, m)
    shapes = variables["params"]
    assert (model.causal, model.pos_encoding, model.head_norm, model.prelu_slopes) == (
        True, "none", "batch", "shared")
    assert (model.dropout, model.attention_dropout, model.pos_dropout) == (0.3, None, 0.0)
    assert "positions" not in shapes
    t = shapes["tcn"]
    assert t["block_0"]["act_0"]["slope"].shape == (1,)
    assert [t[f"block_{i}"]["conv_1"]["v"].shape for i in range(3)] == [
        (5, 768, 768), (5, 256, 256), (5, 128, 128)]
    assert "residual" not in t["block_0"] and "residual" in t["block_1"]
    assert shapes["proj"]["kernel"].shape == (128, 512)
    assert len(shapes["encoder"]) == 8
    assert shapes["encoder"]["block_0"]["mlp_in"]["kernel"].shape == (512, 512)
    assert shapes["head"]["hidden"]["kernel"].shape == (512, 256)
    assert shapes["head"]["out"]["kernel"].shape == (256, 8)
    assert shapes["head"]["norm"]["scale"].shape == (256,)
    assert {k: v.shape for k, v in variables["batch_stats"]["head"]["norm"].items()} == {
        "mean": (256,), "var": (256,)}
    out = jax.eval_shape(lambda v, x, m: model.apply(v, x, m, m, train=False),
                         variables, x, m)
    assert out.shape == (1, 300, 8) and out.dtype == jnp.float32


def test_bad_config_and_inputs_name_the_key():
    cfg = tcn.tiny_config()
    cfg.kernal_size = 3
    with pytest.raises(ValueError, match="model.kernal_size"):
        tcn.from_config(cfg, 2)
    for key, value, why in [("dilations", (1, 2, 4), "one entry per block"),
                            ("tcn_activation", "swish", "tcn_activation"),
                            ("head_norm", "group", "head_norm"),
                            ("prelu_slopes", "layer", "prelu_slopes"),
                            ("pos_encoding", "rope", "pos_encoding"),
                            ("output_activation", "sigmoid", "output_activation"),
                            ("num_heads", 3, "model.d_model"),
                            ("kernel_size", 0, "model.kernel_size"),
                            ("channels", (), "model.channels")]:
        cfg = tcn.tiny_config()
        cfg[key] = value
        with pytest.raises(ValueError, match=why):
            tcn.from_config(cfg, 2)
    model = _tiny()[0]
    x = jnp.zeros((1, 8, D))
    with pytest.raises(ValueError, match="present"):
        model.init(jax.random.key(0), x, jnp.ones((1, 7), bool), jnp.ones((1, 8), bool),
                   train=False)
    with pytest.raises(ValueError, match="frame_mask"):
        model.init(jax.random.key(0), x, jnp.ones((1, 8), bool), jnp.ones((8,), bool),
                   train=False)
    with pytest.raises(ValueError, match="max_len"):
        long = jnp.zeros((1, 65, D))
        model.init(jax.random.key(0), long, jnp.ones((1, 65), bool), jnp.ones((1, 65), bool),
                   train=False)


# --- BatchNorm head, position encoding and the earlier defaults as named options --------------

def test_masked_batch_norm_matches_torch_batchnorm1d_on_the_valid_rows():
    torch = pytest.importorskip("torch", reason="torch.nn.BatchNorm1d is the reference")
    from abaw_jax.models import layers
    rng = np.random.default_rng(20)
    bn = layers.MaskedBatchNorm()
    ref = torch.nn.BatchNorm1d(5).double()
    scale, bias = rng.uniform(0.5, 1.5, 5), rng.normal(size=5)
    ref.weight.data, ref.bias.data = torch.tensor(scale), torch.tensor(bias)
    variables = bn.init(jax.random.key(0), jnp.zeros((2, 3, 5)), use_running_average=True)
    variables = {"params": {"scale": jnp.asarray(scale, jnp.float32),
                            "bias": jnp.asarray(bias, jnp.float32)},
                 "batch_stats": variables["batch_stats"]}
    for step in range(3):
        x = (2.0 + 3.0 * rng.normal(size=(4, 9, 5))).astype(np.float32)
        mask = rng.random((4, 9)) < 0.6
        x[~mask] = 1e4 * rng.normal(size=(int((~mask).sum()), 5))   # padding: huge garbage
        ref.train()
        expected = ref(torch.tensor(x[mask], dtype=torch.float64)).detach().numpy()
        y, updates = bn.apply(variables, jnp.asarray(x), jnp.asarray(mask),
                              use_running_average=False, mutable=["batch_stats"])
        np.testing.assert_allclose(np.asarray(y)[mask], expected, atol=1e-4, rtol=1e-5)
        variables = {"params": variables["params"], **updates}
        np.testing.assert_allclose(variables["batch_stats"]["mean"], ref.running_mean.numpy(),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(variables["batch_stats"]["var"], ref.running_var.numpy(),
                                   rtol=1e-5)
    ref.eval()
    x = rng.normal(size=(3, 5)).astype(np.float32)
    expected = ref(torch.tensor(x, dtype=torch.float64)).detach().numpy()
    got = bn.apply(variables, jnp.asarray(x), use_running_average=True)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)
    # A batch with no valid row leaves the running statistics alone and stays finite.
    y, same = bn.apply(variables, jnp.asarray(x), jnp.zeros((3,), bool),
                       use_running_average=False, mutable=["batch_stats"])
    assert np.isfinite(np.asarray(y)).all()
    for key in ("mean", "var"):
        np.testing.assert_array_equal(same["batch_stats"][key], variables["batch_stats"][key])


def test_batch_norm_head_needs_its_statistics_and_names_what_to_pass():
    model, variables, _, _ = _tiny()
    x, m = _features(21), np.ones((B, L), bool)
    with pytest.raises(ValueError, match=r"mutable=\['batch_stats'\]"):
        model.apply(variables, x, m, m, train=True, rngs={"dropout": jax.random.key(0)})
    with pytest.raises(ValueError, match="'batch_stats' variables"):
        model.apply({"params": variables["params"]}, x, m, m, train=False)


def test_padding_does_not_reach_the_batch_statistics_or_real_frames_in_training():
    model, variables, _, _ = _tiny(dropout=0.0)
    x = _features(22)
    m = np.ones((B, L), bool)
    m[1, 10:] = False
    step = jax.jit(lambda v, x: model.apply(v, x, m, m, train=True,
                                            rngs={"dropout": jax.random.key(0)},
                                            mutable=["batch_stats"]))
    out, stats = step(variables, x)
    garbage = x.copy()
    garbage[~m] = 1e3 * np.random.default_rng(23).normal(size=(int((~m).sum()), D))
    out2, stats2 = step(variables, garbage)
    np.testing.assert_allclose(np.asarray(out2)[m], np.asarray(out)[m], atol=1e-4)
    for key in ("mean", "var"):
        np.testing.assert_allclose(stats2["batch_stats"]["head"]["norm"][key],
                                   stats["batch_stats"]["head"]["norm"][key], rtol=1e-5)
        assert not np.allclose(stats["batch_stats"]["head"]["norm"][key],
                               variables["batch_stats"]["head"]["norm"][key])


def test_no_position_encoding_by_default():
    """Without positions (and without the TCN) the encoder cannot tell frames apart by place:
    permuting the frames permutes the outputs; a sinusoidal encoding breaks that."""
    x, m = _features(24), np.ones((B, L), bool)
    perm = np.random.default_rng(25).permutation(L)
    for pos_encoding, equivariant in (("none", True), ("sinusoidal", False)):
        _, variables, evaluate, _ = _tiny(use_tcn=False, pos_encoding=pos_encoding)
        out = np.asarray(evaluate(variables, x, m, m))
        permuted = np.asarray(evaluate(variables, x[:, perm], m, m))
        assert np.allclose(permuted, out[:, perm], atol=1e-5) == equivariant


def test_earlier_defaults_remain_as_named_options():
    """Non-causal TCN, per-channel PReLU, sinusoidal positions with dropout, LayerNorm head:
    a params-only model, as this module built before."""
    model, variables, evaluate, _ = _tiny(causal=False, prelu_slopes="channel",
                                          pos_encoding="sinusoidal", pos_dropout=0.1,
                                          head_norm="layer")
    assert set(variables) == {"params"}
    params = variables["params"]
    assert params["tcn"]["block_0"]["act_0"]["slope"].shape == (16,)
    assert set(params["head"]["norm"]) == {"scale", "bias"}
    x, m = _features(26), np.ones((B, L), bool)
    train = lambda seed: np.asarray(model.apply(  # noqa: E731
        variables, x, m, m, train=True, rngs={"dropout": jax.random.key(seed)}))
    assert np.isfinite(train(0)).all() and not np.allclose(train(0), train(1))
    assert np.isfinite(np.asarray(evaluate(variables, x, m, m))).all()


def test_train_state_helpers_update_and_use_the_batch_statistics():
    """What a train step does with a BatchNorm model: init -> split -> apply_train (grads on
    params, new statistics) -> predict with model_variables. A params-only model keeps {}."""
    import optax

    from abaw_jax import models
    x = _features(27)
    m = np.ones((B, L), bool)
    m[0, 12:] = False
    target = np.random.default_rng(28).normal(size=(B, L, 3)).astype(np.float32)
    for head_norm, collections in (("batch", {"batch_stats"}), ("layer", set())):
        cfg = tcn.tiny_config()
        cfg.head_norm = head_norm
        model = tcn.from_config(cfg, 3)
        params, model_state = models.split_variables(
            jax.jit(lambda: model.init({"params": jax.random.key(0)}, x, m, m, train=False))())
        assert set(model_state) == collections
        tx = optax.sgd(0.01)
        state = {"params": params, "opt_state": tx.init(params)}
        if model_state:
            state["model_state"] = model_state

        @jax.jit
        def step(state):
            def loss_fn(p, s):
                out, new_s = models.apply_train(model, p, s, x, m, m,
                                                rngs={"dropout": jax.random.key(1)})
                return jnp.mean(jnp.where(m[..., None], (out - target) ** 2, 0.0)), new_s
            (loss, new_s), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state["params"], state.get("model_state", {}))
            updates, opt = tx.update(grads, state["opt_state"], state["params"])
            new = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt}
            if "model_state" in state:
                new["model_state"] = new_s
            return new, loss

        new, loss = step(state)
        assert np.isfinite(float(loss))
        if head_norm == "batch":
            before = state["model_state"]["batch_stats"]["head"]["norm"]["mean"]
            after = new["model_state"]["batch_stats"]["head"]["norm"]["mean"]
            assert not np.allclose(before, after)
        out = model.apply(models.model_variables(new), x, m, m, train=False)
        assert out.shape == (B, L, 3) and np.isfinite(np.asarray(out)).all()


def test_window_without_any_face_keeps_finite_gradients():
    """System B's encoder has no positions, so a window with no face in any frame is a constant
    sequence; its gradients must stay finite through the 8 post-norm layers (a real case:
    Aff-Wild2 has faceless stretches longer than a window)."""
    import jax
    from abaw_jax import losses, models
    from abaw_jax.models import build_model
    cfg = tcn.default_config()
    cfg.update(channels=(16,), dilations=(1,), d_model=16, num_heads=2, mlp_dim=16, head_dim=8,
               num_layers=8, pos_encoding="none", dropout=0.0, head_norm="layer")
    model = build_model(cfg, 8, jnp.float32)
    present = jnp.ones((3, 12), bool).at[1].set(False)
    frame_mask = jnp.ones((3, 12), bool)
    x = jax.random.normal(jax.random.key(0), (3, 12, 5)) * present[..., None]
    params, state = models.split_variables(jax.jit(
        lambda: model.init({"params": jax.random.key(1)}, x, present, frame_mask, train=False))())
    labels = jnp.zeros((3, 12), jnp.int32)

    def loss(p):
        out, _ = models.apply_train(model, p, state, x, present, frame_mask,
                                    rngs={"dropout": jax.random.key(2)})
        return losses.get_loss("EXPR", "ce")(out, labels, frame_mask)

    grads = jax.jit(jax.grad(loss))(params)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
