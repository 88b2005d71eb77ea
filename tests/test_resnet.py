"""ResNet module: variants, config, and parity with torchvision through .safetensors weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from abaw_jax.models import resnet, weights


def _rel(a, b):
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("name, block, stages, dim", [
    ("resnet18", "basic", (2, 2, 2, 2), 512),
    ("resnet34", "basic", (3, 4, 6, 3), 512),
    ("resnet50", "bottleneck", (3, 4, 6, 3), 2048),
    ("resnet101", "bottleneck", (3, 4, 23, 3), 2048),
])
def test_variants(name, block, stages, dim):
    m = resnet.resnet_from_config(resnet.default_config(), variant=name)
    assert (m.block, tuple(m.stage_sizes), m.num_features) == (block, stages, dim)
    assert resnet.variant_name(block, stages) == name


def test_resnet50_shapes_without_running_it():
    m = resnet.resnet_from_config({"variant": "resnet50", "num_classes": 7})
    out = jax.eval_shape(lambda: m.init_with_output(jax.random.key(0), jnp.zeros((2, 64, 64, 3))))
    (pooled, logits), variables = out
    assert pooled.shape == (2, 2048) and logits.shape == (2, 7)
    n_params = sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(variables["params"]))
    assert n_params == 2048 * 7 + 7 + 23_508_032  # torchvision resnet50 without its fc: 23,508,032


def test_config_errors():
    with pytest.raises(ValueError, match="unknown ResNet variant 'resnet19'"):
        resnet.decode_variant("resnet19")
    with pytest.raises(ValueError, match="unknown ResNet config keys \\['depth'\\]"):
        resnet.resnet_from_config(resnet.tiny_config(), depth=3)
    with pytest.raises(ValueError, match="block must be one of"):
        resnet.resnet_from_config(resnet.tiny_config(), block="wide")
    with pytest.raises(ValueError, match="no value for \\['stage_sizes'\\]"):
        resnet.resnet_from_config({"block": "basic"})


def test_tiny_config_trains_batch_stats():
    m = resnet.resnet_from_config(resnet.tiny_config())
    images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    # Shapes from eval_shape: compiling init's random draws costs far more than the model.
    shapes = jax.eval_shape(m.init, jax.random.key(1), images)
    variables = jax.tree_util.tree_map(lambda a: np.full(a.shape, 0.1, np.float32), shapes)
    (pooled, logits), updates = m.apply(variables, images, train=True, mutable=["batch_stats"])
    assert pooled.shape == (4, 64) and logits is None
    before = variables["batch_stats"]["bn1"]["mean"]
    after = updates["batch_stats"]["bn1"]["mean"]
    assert not np.allclose(before, after)


# ---------------------------------------------------------------------------------------------
# torchvision parity (random weights, eval mode, randomised BatchNorm statistics).


@pytest.fixture(scope="module")
def torch_modules():
    torch = pytest.importorskip("torch", reason="torch is the reference for ResNet parity")
    torchvision = pytest.importorskip("torchvision", reason="torchvision is the reference ResNet")
    return torch, torchvision


def _save_randomised(torch, model, path, seed=0):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                c = mod.num_features
                mod.weight.copy_(torch.rand(c, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(c, generator=g) * 0.2)
                mod.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                mod.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def _torch_features(torch, model, x):
    with torch.no_grad():
        logits = model(x)
        fc, model.fc = model.fc, torch.nn.Identity()
        pooled = model(x)
        model.fc = fc
    return pooled.numpy(), logits.numpy()


def test_resnet18_matches_torchvision(torch_modules, tmp_path):
    torch, torchvision = torch_modules
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "resnet18.safetensors"
    _save_randomised(torch, model, path)
    x = torch.randn(2, 3, 64, 64)
    ref_pooled, ref_logits = _torch_features(torch, model, x)

    m, variables, info = weights.load_resnet(path)
    assert (info["variant"], info["dim"], m.num_classes) == ("resnet18", 512, 10)
    assert info["mean"] == weights.IMAGENET_MEAN and info["std"] == weights.IMAGENET_STD
    assert set(variables) == {"params", "batch_stats"}
    assert all(k.endswith("num_batches_tracked") for k in info["ignored_keys"])
    pooled, logits = m.apply(variables, jnp.asarray(x.permute(0, 2, 3, 1).numpy()))
    assert pooled.shape == (2, 512)
    assert _rel(pooled, ref_pooled) < 1e-4
    assert _rel(logits, ref_logits) < 1e-4

    # Dropping the classifier: the fc keys become ignored, the feature stays the same.
    m0, variables0, info0 = weights.load_resnet(path, num_classes=0)
    pooled0, logits0 = m0.apply(variables0, jnp.asarray(x.permute(0, 2, 3, 1).numpy()))
    assert logits0 is None and {"fc.weight", "fc.bias"} <= set(info0["ignored_keys"])
    np.testing.assert_allclose(pooled0, pooled, rtol=1e-6, atol=1e-6)


def test_bottleneck_resnet_matches_torchvision(torch_modules, tmp_path):
    # The ResNet-50 block layout with one block per stage keeps the test fast on CPU.
    torch, torchvision = torch_modules
    from torchvision.models.resnet import Bottleneck, ResNet

    torch.manual_seed(1)
    model = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=5)
    path = tmp_path / "bottleneck.safetensors"
    _save_randomised(torch, model, path, seed=1)
    x = torch.randn(2, 3, 48, 48)
    ref_pooled, _ = _torch_features(torch, model, x)
    m, variables, info = weights.load_resnet(path, num_classes=0)
    assert (m.block, tuple(m.stage_sizes), info["dim"]) == ("bottleneck", (1, 1, 1, 1), 2048)
    pooled, _ = m.apply(variables, jnp.asarray(x.permute(0, 2, 3, 1).numpy()))
    assert _rel(pooled, ref_pooled) < 1e-4

    # Training mode normalises with batch statistics, as torch's train() does.
    model.train()
    with torch.no_grad():
        model.fc = torch.nn.Identity()
        ref_train = model(x).numpy()
    (train_pooled, _), _ = m.apply(
        variables, jnp.asarray(x.permute(0, 2, 3, 1).numpy()), train=True, mutable=["batch_stats"])
    assert _rel(train_pooled, ref_train) < 1e-4


def _tiny_resnet_state(seed=0):
    """A torchvision-layout state dict for the tiny config, made without torch."""
    m = resnet.resnet_from_config(resnet.tiny_config())
    shapes = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(seed)
    state = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
        names = [p.key for p in path]
        module, leaf_name = names[1:-1], names[-1]
        key = ".".join(n.replace("_", ".") for n in module)
        suffix = {"kernel": "weight", "scale": "weight", "bias": "bias",
                  "mean": "running_mean", "var": "running_var"}[leaf_name]
        shape = leaf.shape
        if leaf_name == "kernel":
            shape = (shape[3], shape[2], shape[0], shape[1])
        value = rng.standard_normal(shape).astype(np.float32)
        if leaf_name == "var":
            value = np.abs(value) + 0.5
        state[f"{key}.{suffix}"] = value
    return state


def test_errors_name_keys_and_file(tmp_path):
    from safetensors.numpy import save_file

    state = _tiny_resnet_state()
    assert "layer2.0.downsample.1.running_var" in state
    good = tmp_path / "good.safetensors"
    save_file(state, str(good))
    m, variables, _ = weights.load_resnet(good)
    assert (m.width, tuple(m.stage_sizes)) == (8, (1, 1, 1, 1))

    cases = {
        "missing": ({k: v for k, v in state.items() if k != "layer3.0.bn2.running_mean"},
                    "missing keys: layer3.0.bn2.running_mean"),
        "unexpected": ({**state, "layer1.0.se.fc.weight": np.zeros((2, 2), np.float32)},
                       "unexpected keys: layer1.0.se.fc.weight"),
        "shape": ({**state, "layer2.0.conv2.weight": np.zeros((16, 16, 5, 5), np.float32)},
                  r"wrong shapes: layer2.0.conv2.weight \[16, 16, 5, 5\] \(expected \[16, 16, 3, 3\]\)"),
    }
    for name, (bad, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(bad, str(path))
        with pytest.raises(weights.WeightsError, match=message) as err:
            weights.load_resnet(path)
        assert str(path) in str(err.value)
    with pytest.raises(weights.WeightsError, match="unknown ResNet override"):
        weights.load_resnet(good, depth=3)
