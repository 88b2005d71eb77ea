"""What every checkpoint reader shares: format detection, key -> parameter-tree mapping, checks.

A reader describes each parameter leaf as an :class:`Entry` (source key, its shape, where it goes,
how to transform it); :func:`assemble` builds the variables from those entries and raises one
:class:`~abaw_jax.models.weights.files.WeightsError` naming every missing, unexpected and
mis-shaped key; :func:`check_tree` then compares the result with what the module initialises.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from abaw_jax.models.weights.files import WeightsError

# Input normalisations in [0, 1] pixel units: ImageNet statistics (torchvision, timm ResNets,
# MAE) and the [-1, 1] scaling of most ViT checkpoints.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One target leaf: read ``source`` (of ``shape``), transform it, store it at ``target``."""

    source: str
    shape: tuple[int, ...]
    target: tuple[str, ...]
    convert: Callable[[np.ndarray], np.ndarray] = lambda a: a
    collection: str = "params"


def listing(keys: list[str], limit: int = 12) -> str:
    """The first ``limit`` of ``keys`` joined for an error message, with a count of the rest."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def assemble(
    arrays: Mapping[str, np.ndarray], entries: list[Entry], ignore: Iterable[str],
    where: str,
) -> tuple[dict[str, Any], list[str]]:
    """Variables from ``entries``; raises naming every missing, unexpected and mis-shaped key.

    Keys matching one of the ``ignore`` regexes may be left unused; they are returned, sorted.
    """
    needed = list(dict.fromkeys(e.source for e in entries))
    missing = [k for k in needed if k not in arrays]
    shapes = {e.source: e.shape for e in entries}
    wrong = [
        f"{k} {list(arrays[k].shape)} (expected {list(s)})"
        for k, s in shapes.items() if k in arrays and tuple(arrays[k].shape) != tuple(s)]
    used = set(needed)
    patterns = [re.compile(p) for p in ignore]
    extra = [k for k in arrays if k not in used]
    ignored = [k for k in extra if any(p.search(k) for p in patterns)]
    unexpected = [k for k in extra if k not in set(ignored)]
    problems = []
    if missing:
        problems.append(f"missing keys: {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {listing(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {listing(wrong)}")
    if problems:
        raise WeightsError(f"{where}: " + "; ".join(problems))

    variables: dict[str, Any] = {}
    for e in entries:
        value = np.asarray(arrays[e.source]).astype(np.float32)
        node = variables.setdefault(e.collection, {})
        for part in e.target[:-1]:
            node = node.setdefault(part, {})
        node[e.target[-1]] = np.ascontiguousarray(e.convert(value), dtype=np.float32)
    return variables, sorted(ignored)


def tree_mismatches(module: nn.Module, variables: Any, sample: tuple[int, ...]) -> list[str]:
    """Leaves of ``variables`` absent from, extra to or shaped unlike ``module.init``'s, sorted.

    ``sample`` is the input shape to initialise with; nothing is computed (``jax.eval_shape``).
    """
    expected = jax.eval_shape(
        lambda: module.init(jax.random.key(0), jnp.zeros(sample, jnp.float32)))
    flat_expected = {
        jax.tree_util.keystr(p): tuple(v.shape)
        for p, v in jax.tree_util.tree_leaves_with_path(expected)}
    flat_got = {
        jax.tree_util.keystr(p): tuple(np.shape(v))
        for p, v in jax.tree_util.tree_leaves_with_path(variables)}
    return sorted(set(flat_expected) ^ set(flat_got)) + [
        f"{k} {list(flat_got[k])} (model {list(s)})"
        for k, s in flat_expected.items() if k in flat_got and flat_got[k] != s]


def check_tree(module: nn.Module, variables: dict[str, Any], sample: tuple[int, ...], where: str):
    """Compare converted variables with what ``module.init`` creates (a guard on the mappings)."""
    bad = tree_mismatches(module, variables, sample)
    if bad:
        raise WeightsError(f"{where}: converted parameters do not match the model: {listing(bad)}")


def strip_prefix(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """``arrays`` with ``prefix`` removed from the keys that start with it."""
    if not prefix:
        return arrays
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in arrays.items()}


def detect_format(arrays: Mapping[str, np.ndarray], where: str) -> tuple[str, str]:
    """``(format, key prefix)`` of a checkpoint from its keys.

    ``format`` is ``"timm"``, ``"hf"``, ``"torch_resnet"`` or ``"npz"``; the prefix is what a
    task model puts before the backbone's keys (``"vit."``, ``"opt/target/"``, ...).
    """
    markers = (
        ("timm", "patch_embed.proj.weight"),
        ("hf", "embeddings.patch_embeddings.projection.weight"),
        ("torch_resnet", "layer1.0.conv1.weight"),
    )
    for fmt, marker in markers:
        for key in arrays:
            if key == marker or key.endswith("." + marker):
                return fmt, key[: len(key) - len(marker)]
    for prefix in ("", "opt/target/", "params/img/", "params/"):
        if f"{prefix}embedding/kernel" in arrays:
            return "npz", prefix
    raise WeightsError(
        f"{where}: unrecognised checkpoint layout: no 'patch_embed.proj.weight' (timm ViT), "
        f"'embeddings.patch_embeddings.projection.weight' (Hugging Face ViT), "
        f"'embedding/kernel' (ViT .npz) or 'layer1.0.conv1.weight' (torchvision ResNet); "
        f"first keys: {listing(sorted(arrays), 8)}")


def key_shape(
    arrays: Mapping[str, np.ndarray], key: str, where: str, why: str, ndim: int | None = None,
) -> tuple[int, ...]:
    """Shape of ``arrays[key]``, which must exist (and have ``ndim`` axes) to infer ``why``."""
    if key not in arrays:
        raise WeightsError(f"{where}: missing key {key!r} (needed to infer {why})")
    shape = tuple(arrays[key].shape)
    if ndim is not None and len(shape) != ndim:
        raise WeightsError(f"{where}: {key} has shape {list(shape)}; expected {ndim} axes")
    return shape


def count_indices(arrays: Mapping[str, np.ndarray], pattern: str) -> int:
    """One more than the largest integer that ``pattern``'s first group matches in a key; 0 if none.

    For numbered blocks: ``count_indices(arrays, r"blocks\\.(\\d+)\\.")`` is the depth.
    """
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in arrays if (m := regex.match(k))}
    return max(found) + 1 if found else 0


def norm_pair(mean, std, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` as tuples of floats; raises unless they are equally long, with std > 0."""
    try:
        mean_t, std_t = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    except TypeError:
        raise WeightsError(
            f"{where}: mean/std must be sequences of numbers, got {mean!r}, {std!r}") from None
    if len(mean_t) != len(std_t) or not mean_t or any(s <= 0 for s in std_t):
        raise WeightsError(f"{where}: bad normalisation mean {mean_t} / std {std_t}")
    return mean_t, std_t


def module_config(module: nn.Module) -> dict[str, Any]:
    """The module's dataclass fields as a JSON-able dict (dtypes as names, tuples as lists)."""
    out = {}
    for field in dataclasses.fields(module):
        if field.name in ("parent", "name"):
            continue
        value = getattr(module, field.name)
        if isinstance(value, tuple):
            value = list(value)
        elif not isinstance(value, (int, float, str, bool, type(None))):
            value = jnp.dtype(value).name
        out[field.name] = value
    return out
