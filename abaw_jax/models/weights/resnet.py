"""ResNet weights from torchvision / timm ``.safetensors`` state dicts.

Module names of :class:`abaw_jax.models.resnet.ResNet` mirror torchvision's keys
(``layer2.0.downsample.0.weight`` -> ``layer2_0/downsample_0/kernel``), so the mapping is
per-layer transposes only; BatchNorm running statistics go to the ``batch_stats`` collection.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp

from abaw_jax.models import resnet as resnet_lib
from abaw_jax.models.weights.convert import (
    IMAGENET_MEAN, IMAGENET_STD, Entry, assemble, check_tree, count_indices, detect_format,
    key_shape, module_config, norm_pair, strip_prefix)
from abaw_jax.models.weights.files import WeightsError, read_arrays, read_json, resolve_files

# BatchNorm's step counter is training state, not a weight.
_IGNORED = (r"num_batches_tracked$",)


def _resnet_entries(m: resnet_lib.ResNet, in_ch: int) -> list[Entry]:
    def conv(src, dst, out, inp, k):
        return [Entry(f"{src}.weight", (out, inp, k, k), dst + ("kernel",),
                      lambda w: w.transpose(2, 3, 1, 0))]

    def bn(src, dst, c):
        return [Entry(f"{src}.weight", (c,), dst + ("scale",)),
                Entry(f"{src}.bias", (c,), dst + ("bias",)),
                Entry(f"{src}.running_mean", (c,), dst + ("mean",), collection="batch_stats"),
                Entry(f"{src}.running_var", (c,), dst + ("var",), collection="batch_stats")]

    expansion = resnet_lib.EXPANSION[m.block]
    entries = conv("conv1", ("conv1",), m.width, in_ch, 7) + bn("bn1", ("bn1",), m.width)
    channels = m.width
    for i, num_blocks in enumerate(m.stage_sizes):
        f = m.width * 2 ** i
        for j in range(num_blocks):
            src, dst = f"layer{i + 1}.{j}", (f"layer{i + 1}_{j}",)
            if m.block == "basic":
                shapes = [(f, channels, 3), (f, f, 3)]
            else:
                shapes = [(f, channels, 1), (f, f, 3), (f * expansion, f, 1)]
            for k, (out, inp, ksize) in enumerate(shapes, start=1):
                entries += conv(f"{src}.conv{k}", dst + (f"conv{k}",), out, inp, ksize)
                entries += bn(f"{src}.bn{k}", dst + (f"bn{k}",), out)
            if (i > 0 and j == 0) or channels != f * expansion:
                entries += conv(f"{src}.downsample.0", dst + ("downsample_0",), f * expansion, channels, 1)
                entries += bn(f"{src}.downsample.1", dst + ("downsample_1",), f * expansion)
            channels = f * expansion
    if m.num_classes:
        entries += [Entry("fc.weight", (m.num_classes, channels), ("fc", "kernel"), lambda w: w.T),
                    Entry("fc.bias", (m.num_classes,), ("fc", "bias"))]
    return entries


def load_resnet(
    path: str | os.PathLike, *, mean=None, std=None, **overrides,
) -> tuple[resnet_lib.ResNet, dict[str, Any], dict[str, Any]]:
    """``(module, variables, info)`` from a torchvision / timm ResNet ``.safetensors`` state dict.

    ``variables`` holds ``params`` and ``batch_stats``. ``overrides`` are
    :class:`~abaw_jax.models.resnet.ResNet` fields; ``num_classes=0`` drops the fc layer (its keys
    are then ignored). Normalisation defaults to ImageNet statistics unless a timm
    ``config.json`` beside the file says otherwise.
    """
    files, folder = resolve_files(path)
    where = str(path)
    arrays = read_arrays(files)
    fmt, prefix = detect_format(arrays, where)
    if fmt != "torch_resnet":
        raise WeightsError(f"{where}: not a ResNet checkpoint (looks like {fmt}); use load_vit")
    arrays = strip_prefix(arrays, prefix)
    width, in_ch, _, _ = key_shape(arrays, "conv1.weight", where, "the stem width", 4)
    block = "bottleneck" if "layer1.0.conv3.weight" in arrays else "basic"
    stages = tuple(count_indices(arrays, rf"layer{i}\.(\d+)\.") for i in range(1, 5))
    num_classes = (key_shape(arrays, "fc.weight", where, "num_classes")[0]
                   if "fc.weight" in arrays else 0)
    known = set(resnet_lib.ResNet.__dataclass_fields__) - {"parent", "name"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise WeightsError(f"{where}: unknown ResNet override(s) {unknown}; known: {sorted(known)}")
    fields = {**dict(block=block, stage_sizes=stages, width=width, num_classes=num_classes), **overrides}
    if "dtype" in fields:
        fields["dtype"] = jnp.dtype(fields["dtype"])
    try:
        m = resnet_lib.ResNet(**fields)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{where}: {e}") from None
    ignore = _IGNORED + ((r"^fc\.",) if not m.num_classes else ())
    variables, ignored = assemble(arrays, _resnet_entries(m, in_ch), ignore, where)
    check_tree(m, variables, (1, 64, 64, in_ch), where)
    config = read_json(folder / "config.json") or {}
    pretrained = config.get("pretrained_cfg", {}) if "architecture" in config else {}
    if "mean" in pretrained and "std" in pretrained:
        norm = (pretrained["mean"], pretrained["std"], "config.json pretrained_cfg")
    else:
        norm = (IMAGENET_MEAN, IMAGENET_STD, "default for torchvision / timm ResNet (ImageNet statistics)")
    mean_t, std_t = norm_pair(norm[0] if mean is None else mean, norm[1] if std is None else std,
                              where)
    info = dict(
        format="torch_resnet", path=where,
        variant=resnet_lib.variant_name(m.block, m.stage_sizes, m.width),
        config=module_config(m), dim=m.num_features, mean=mean_t, std=std_t,
        norm_source="argument" if mean is not None or std is not None else norm[2],
        ignored_keys=ignored)
    return m, jax.device_put(variables), info
