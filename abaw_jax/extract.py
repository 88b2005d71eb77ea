"""Extracts per-frame features from folders of face images into a feature store.

  python -m abaw_jax.extract --config configs/extract_vit.py --workdir feats/vit \
      --config.frames=/data/affwild2 --config.encoder=/weights/vit_base_patch16_224.safetensors

The workdir *is* the store (``meta.json``, ``index-p*.jsonl``, shards): training reads it with
``--config.data.features=feats/vit``. It also holds ``config.json`` and ``corrupt_frames.txt``.

Input layout. ``config.frames`` is an Aff-Wild2 root (its ``cropped_aligned/`` is used) or any
folder of per-video frame folders; every sub-folder is one video, processed in sorted order.
Inside a video folder the image files (``.jpg``, ``.png``, ...; other files are ignored) are
read in one of two modes:

* numbered: every image is named by a number (``00001.jpg``, 1-based as in Aff-Wild2). The
  video has as many frames as its highest number, or as ``config.frame_counts`` (a CSV of
  ``name,frames``, e.g. Aff-Wild2's ``counter_frame.csv``) says; numbers without an image are
  frames without a face: zero features, ``present`` False.
* generic: any other names. Frames are the images in natural name order (``img2`` before
  ``img10``), all present; for image collections such as CK+ (one folder per class).

A corrupt or unreadable image is logged by path, listed in ``corrupt_frames.txt`` (path, tab,
reason) and stored as a missing frame. A folder with no image is skipped and reported.

Execution. Decoding runs on host threads a few batches ahead of the device; the jitted encoder
runs data-parallel over this process's devices (batch on 'data', parameters replicated), and the
last batch is padded to the full batch size so that one compiled shape serves the whole run.
With several processes each takes every ``process_count``-th video (sorted by name) and writes
its own index and shards into the same store. Videos are committed one by one, so a killed run
loses at most the videos in flight, and re-running the same command skips what is committed.
SIGTERM stops after the batch in flight; the videos it completes are committed, the rest are
left for the next run.

Encoders (``config.encoder``): a weights file or folder that ``abaw_jax.models.weights`` reads
(ViT ``.npz``, timm / Hugging Face ``.safetensors``, torchvision ResNet); a random-init spec
``vit:<variant>[,field=value...]`` or ``resnet:<variant>[,...]`` (benchmarks and tests, e.g.
``vit:Ti/8,width=32,depth=2``); or an encoder directory holding ``encoder.json``:

  {"format": "abaw_jax.encoder/1", "model": "vit" | "resnet",
   "config": {module fields as weights.module_config writes them},
   "mean": [r, g, b], "std": [r, g, b],
   "params": "params.npz" | "<orbax checkpoint dir>"}

``params.npz`` holds the module's variables flattened to ``<collection>/<path>/<leaf>`` keys
(``params/Transformer/encoderblock_0/LayerNorm_0/scale``); an orbax directory holds the same
nested dict written by ``orbax.checkpoint.StandardCheckpointer``. :func:`save_encoder` writes
this format (for MAE pretraining and fine-tuning runs).
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import functools
import json
import logging
import os
import pathlib
import queue
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from abaw_jax import cli, sharding
from abaw_jax import config as config_lib
from abaw_jax import loop as loop_lib
from abaw_jax.data import affwild2, images as images_lib
from abaw_jax.data import features as features_lib
from abaw_jax.models import resnet as resnet_lib
from abaw_jax.models import vit as vit_lib
from abaw_jax.models import weights

log = logging.getLogger(__name__)

ENCODER_FORMAT = "abaw_jax.encoder/1"
ENCODER_FILE = "encoder.json"
CORRUPT_FILE = "corrupt_frames.txt"
_NUMBER_RE = re.compile(r"(\d+)\.[^.]+")
_PREFETCH = 2  # decoded batches waiting for the device: enough to hide decoding jitter


class ExtractError(ValueError):
    """Bad extraction input (encoder directory, frame-count CSV, video list); names the file."""


# ---------------------------------------------------------------------------------------------
# Config.


# The config of this command lives in abaw_jax.config; these names keep older callers working.
validate = config_lib.validate_extraction
default_config = config_lib.extraction_config


# ---------------------------------------------------------------------------------------------
# Encoders.


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        if "/" in key:
            raise ExtractError(f"parameter name {prefix + key!r} contains '/'")
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = np.asarray(value)
    return out


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def save_encoder(
    directory: str | os.PathLike, module: nn.Module, variables: Mapping[str, Any], *,
    mean: Sequence[float], std: Sequence[float], params_format: str = "npz",
) -> pathlib.Path:
    """Writes an encoder directory (``encoder.json`` + ``params.npz`` or an orbax ``params/``).

    ``variables`` is the full dict ``module.apply`` takes (``{"params": ...}``, plus
    ``batch_stats`` for a ResNet); ``mean`` / ``std`` are the input normalisation in [0, 1] units.
    """
    directory = pathlib.Path(directory)
    if isinstance(module, vit_lib.ViT):
        model = "vit"
    elif isinstance(module, resnet_lib.ResNet):
        model = "resnet"
    else:
        raise ExtractError(f"{directory}: save_encoder takes a ViT or ResNet, got {type(module).__name__}")
    if params_format not in ("npz", "orbax"):
        raise ExtractError(f"params_format must be 'npz' or 'orbax', got {params_format!r}")
    directory.mkdir(parents=True, exist_ok=True)
    host = jax.device_get(dict(variables))
    if params_format == "npz":
        name = "params.npz"
        np.savez(directory / name, **_flatten(host))
    else:
        import orbax.checkpoint as ocp
        name = "params"
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save((directory / name).absolute(), host, force=True)
    spec = {"format": ENCODER_FORMAT, "model": model, "config": weights.module_config(module),
            "mean": [float(m) for m in mean], "std": [float(s) for s in std], "params": name}
    (directory / ENCODER_FILE).write_text(json.dumps(spec, indent=1) + "\n")
    return directory


def _read_encoder_dir(
    directory: pathlib.Path, vit_overrides: Mapping[str, Any], resnet_overrides: Mapping[str, Any],
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """``(module, variables, info)`` of an encoder directory written by :func:`save_encoder`."""
    path = directory / ENCODER_FILE
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExtractError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(spec, dict) or spec.get("format") != ENCODER_FORMAT:
        raise ExtractError(f"{path}: key 'format' must be {ENCODER_FORMAT!r}")
    for key, kind in (("model", str), ("config", dict), ("mean", list), ("std", list), ("params", str)):
        if not isinstance(spec.get(key), kind):
            raise ExtractError(f"{path}: key {key!r} must be a {kind.__name__}, got {spec.get(key)!r}")
    if spec["model"] not in ("vit", "resnet"):
        raise ExtractError(f"{path}: key 'model' must be 'vit' or 'resnet', got {spec['model']!r}")

    saved = dict(spec["config"])
    fields = {**saved, **(vit_overrides if spec["model"] == "vit" else resnet_overrides)}
    try:
        if spec["model"] == "vit":
            module = vit_lib.vit_from_config(fields)
            sample = (1, *vit_lib.image_hw(module.image_size), 3)
        else:
            module = resnet_lib.resnet_from_config(fields)
            sample = (1, 64, 64, 3)
    except (TypeError, ValueError) as e:
        raise ExtractError(f"{path}: key 'config': {e}") from None

    params_path = directory / spec["params"]
    if params_path.is_dir():
        import orbax.checkpoint as ocp
        with ocp.StandardCheckpointer() as ckpt:
            variables = ckpt.restore(params_path.absolute())
    elif params_path.is_file():
        variables = _unflatten(weights.read_npz(params_path))
    else:
        raise ExtractError(f"{path}: key 'params' names {params_path}, which does not exist")
    variables = jax.tree.map(lambda a: np.asarray(a, np.float32), variables)

    # A new image size needs the position embeddings on the new patch grid.
    resized = None
    if spec["model"] == "vit" and "image_size" in saved:
        old_hw = vit_lib.image_hw(saved["image_size"])
        old = (old_hw[0] // module.patch_size, old_hw[1] // module.patch_size)
        if old != module.grid_size:
            pos = variables.get("params", {}).get("pos_embedding")
            if pos is not None:
                variables["params"]["pos_embedding"] = weights.resample_posemb(
                    pos, module.grid_size, num_prefix_tokens=module.num_prefix_tokens,
                    old_grid=old, method="bicubic", antialias=True)
                new = module.grid_size
                resized = f"{old[0]}x{old[1]} -> {new[0]}x{new[1]} bicubic antialias"

    expected = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(sample, jnp.float32)))
    want = {jax.tree_util.keystr(p): tuple(v.shape) for p, v in jax.tree_util.tree_leaves_with_path(expected)}
    got = {jax.tree_util.keystr(p): tuple(v.shape) for p, v in jax.tree_util.tree_leaves_with_path(variables)}
    bad = sorted(set(want) ^ set(got)) + [
        f"{k} {list(got[k])} (model {list(s)})" for k, s in want.items() if k in got and got[k] != s]
    if bad:
        shown = ", ".join(bad[:10]) + (f", ... ({len(bad) - 10} more)" if len(bad) > 10 else "")
        raise ExtractError(f"{params_path}: parameters do not match the model of {path}: {shown}")
    try:
        mean = tuple(float(m) for m in spec["mean"])
        std = tuple(float(s) for s in spec["std"])
    except (TypeError, ValueError):
        raise ExtractError(f"{path}: keys 'mean' and 'std' must be lists of numbers") from None
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ExtractError(f"{path}: bad normalisation mean {mean} / std {std}")
    dim = module.width if spec["model"] == "vit" else module.num_features
    info = dict(format="abaw_jax_encoder", path=str(directory), variant=_variant(module),
                config=weights.module_config(module), dim=dim, mean=mean, std=std,
                norm_source=ENCODER_FILE, posemb_resized=resized, ignored_keys=[])
    return module, jax.device_put(variables), info


def _parse_random_spec(spec: str) -> tuple[str, str, dict[str, Any]] | None:
    """``"vit:Ti/8,depth=2"`` -> ``("vit", "Ti/8", {"depth": 2})``; None for anything else."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in ("vit", "resnet"):
        return None
    variant, fields = "", {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            if variant:
                raise ExtractError(f"encoder spec {spec!r}: two variants ({variant!r}, {item!r})")
            variant = item
            continue
        try:
            fields[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            fields[key.strip()] = value.strip()
    if not variant:
        raise ExtractError(f"encoder spec {spec!r}: no variant (e.g. 'vit:B/16' or 'resnet:resnet18')")
    return kind, variant, fields


def _is_resnet_weights(path: pathlib.Path) -> bool:
    """Whether a weights file or folder holds a torchvision / timm ResNet state dict."""
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    for file in files:
        if file.suffix == ".safetensors":
            keys = weights.read_safetensors(file)[0]
            return any(k == "layer1.0.conv1.weight" or k.endswith(".layer1.0.conv1.weight") for k in keys)
    return False


def load_encoder(
    spec: str, *, pool: str = "", image_size: int = 0, dtype: Any = jnp.float32, seed: int = 0,
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """``(module, variables, info)`` for an extraction encoder spec (see the module docstring).

    ``pool`` and ``image_size`` (0 / "": the encoder's own) apply to ViTs; a ResNet takes any
    image size. ``dtype`` is the compute dtype.
    """
    vit_fields: dict[str, Any] = {"dtype": jnp.dtype(dtype)}
    if pool:
        vit_fields["pool"] = pool
    if image_size:
        vit_fields["image_size"] = int(image_size)
    resnet_fields = {"dtype": jnp.dtype(dtype)}

    path = pathlib.Path(spec).expanduser()
    if path.is_dir() and (path / ENCODER_FILE).is_file():
        return _read_encoder_dir(path, vit_fields, resnet_fields)
    random_spec = None if path.exists() else _parse_random_spec(spec)
    if random_spec is not None:
        kind, variant, fields = random_spec
        fields = {**fields, **(vit_fields if kind == "vit" else resnet_fields)}
        if (kind == "resnet") != (variant in resnet_lib.VARIANTS):
            raise ExtractError(f"encoder spec {spec!r}: {variant!r} is not a {kind} variant")
        return weights.load_encoder(variant, seed=seed, **fields)
    if path.exists() and _is_resnet_weights(path):
        return weights.load_encoder(path, **resnet_fields)
    return weights.load_encoder(path if path.exists() else spec, seed=seed, **vit_fields)


# ---------------------------------------------------------------------------------------------
# Frames.


@dataclasses.dataclass(frozen=True)
class FramePlan:
    """What to read of one video: ``paths[i]`` is the image of 0-based frame ``frames[i]``."""

    video: str
    num_frames: int
    frames: np.ndarray        # int64 [n], increasing
    paths: list[str]
    numbered: bool
    ignored: list[str]        # images not used (beyond the frame count, number 0, duplicates)


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def plan_video(folder: str | os.PathLike, num_frames: int | None = None) -> FramePlan | None:
    """The frames of one video folder (see the module docstring), or None when it has no image."""
    folder = pathlib.Path(folder)
    names = [e.name for e in os.scandir(folder) if images_lib.is_image_file(e.name) and e.is_file()]
    if not names:
        return None
    numbers = [_NUMBER_RE.fullmatch(n) for n in names]
    ignored: list[str] = []
    if all(numbers):
        by_number: dict[int, str] = {}
        for name, m in sorted(zip(names, numbers), key=lambda x: x[0]):
            k = int(m.group(1))
            if k == 0 or k in by_number:
                ignored.append(name)
            else:
                by_number[k] = name
        total = num_frames if num_frames is not None else max(by_number, default=0)
        kept = sorted(k for k in by_number if k <= total)
        ignored += [by_number[k] for k in sorted(by_number) if k > total]
        if ignored:
            log.warning("%s: %d image(s) not used (numbered 0, duplicate numbers, or beyond the "
                        "%d frames of the video), e.g. %s", folder, len(ignored), total, ignored[:3])
        return FramePlan(folder.name, total, np.asarray(kept, np.int64) - 1,
                         [str(folder / by_number[k]) for k in kept], True, ignored)
    names.sort(key=_natural_key)
    if num_frames is not None and num_frames != len(names):
        log.warning("%s: frame images are not numbered; using the %d images in name order, not "
                    "the frame count %d", folder, len(names), num_frames)
    return FramePlan(folder.name, len(names), np.arange(len(names), dtype=np.int64),
                     [str(folder / n) for n in names], False, [])


def read_frame_counts(path: str | os.PathLike) -> dict[str, int]:
    """``{video: frames}`` from a CSV of ``name,frames`` rows (a header line is optional).

    Names keep no video-file suffix (``1-30-1280x720.mp4`` -> ``1-30-1280x720``), as in
    Aff-Wild2's ``counter_frame.csv``.
    """
    path = pathlib.Path(path)
    counts: dict[str, int] = {}
    with open(path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise ExtractError(f"{path}: line {lineno}: expected 'name,frames', got {row!r}")
            name, value = row[0].strip(), row[1].strip()
            try:
                frames = int(value)
            except ValueError:
                if lineno == 1:
                    continue  # the header
                raise ExtractError(
                    f"{path}: line {lineno}: frame count {value!r} is not an integer") from None
            if frames < 1:
                raise ExtractError(f"{path}: line {lineno}: frame count {frames} must be >= 1")
            stem, dot, suffix = name.rpartition(".")
            if dot and suffix.lower() in ("mp4", "avi", "mkv", "mov", "webm"):
                name = stem
            if name in counts:
                raise ExtractError(f"{path}: line {lineno}: video {name!r} listed twice")
            counts[name] = frames
    return counts


def video_folders(frames: str | os.PathLike) -> pathlib.Path:
    """The folder whose sub-folders are the videos: ``<frames>/cropped_aligned`` or ``frames``."""
    root = pathlib.Path(frames).expanduser()
    if (root / affwild2.FRAMES_DIR).is_dir():
        return root / affwild2.FRAMES_DIR
    if not root.is_dir():
        raise config_lib.ConfigError(f"config.frames = {str(frames)!r}: no such folder")
    return root


# ---------------------------------------------------------------------------------------------
# The pipeline: host decoding ahead of the device.


@dataclasses.dataclass
class _Batch:
    """Frames decoded together; rows past ``len(paths)`` are padding."""

    slots: np.ndarray         # int64 [n]: index of the video in the run's plan list
    frames: np.ndarray        # int64 [n]: frame of that video
    paths: list[str]
    images: np.ndarray | None = None   # uint8 [batch, H, W, 3], zero padded past n
    ok: np.ndarray | None = None
    errors: tuple[str | None, ...] = ()


def _iter_rows(plans: Sequence[FramePlan]) -> Iterator[tuple[int, int, str]]:
    for slot, plan in enumerate(plans):
        for frame, path in zip(plan.frames.tolist(), plan.paths):
            yield slot, frame, path


def make_batches(plans: Sequence[FramePlan], size: int) -> Iterator[_Batch]:
    """Consecutive frames of consecutive videos, ``size`` at a time (the last one shorter)."""
    slots: list[int] = []
    frames: list[int] = []
    paths: list[str] = []
    for slot, frame, path in _iter_rows(plans):
        slots.append(slot)
        frames.append(frame)
        paths.append(path)
        if len(paths) == size:
            yield _Batch(np.asarray(slots, np.int64), np.asarray(frames, np.int64), paths)
            slots, frames, paths = [], [], []
    if paths:
        yield _Batch(np.asarray(slots, np.int64), np.asarray(frames, np.int64), paths)


class _Prefetcher:
    """Decodes batches in a background thread, ``_PREFETCH`` ahead of the consumer."""

    def __init__(self, batches: Iterator[_Batch], size: int, hw: tuple[int, int],
                 pool: concurrent.futures.Executor):
        self._queue: queue.Queue = queue.Queue(maxsize=_PREFETCH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(batches, size, hw, pool),
                                        name="extract-decode", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, batches, size, hw, pool) -> None:
        try:
            for batch in batches:
                if self._stop.is_set():
                    return
                decoded = images_lib.decode_images(batch.paths, hw, pool=pool)
                images = decoded.images
                if len(batch.paths) < size:
                    images = np.concatenate(
                        [images, np.zeros((size - len(batch.paths), *images.shape[1:]), np.uint8)])
                batch.images, batch.ok, batch.errors = images, decoded.ok, decoded.errors
                if not self._put(batch):
                    return
            self._put(None)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises
            self._put(e)

    def __iter__(self) -> Iterator[_Batch]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stops decoding ahead and waits for the thread (it is never blocked for long)."""
        self._stop.set()
        self._thread.join()


@dataclasses.dataclass
class _Open:
    """A video being extracted: its rows fill in as batches come back."""

    plan: FramePlan
    features: np.ndarray
    present: np.ndarray
    remaining: int
    corrupt: list[str] = dataclasses.field(default_factory=list)  # "path<TAB>reason"


class _Collector:
    """Puts batch rows into per-video arrays and commits each video once all its rows are in."""

    def __init__(self, plans: Sequence[FramePlan], dim: int, writer: features_lib.FeatureStoreWriter,
                 corrupt_path: pathlib.Path, summary: dict[str, Any]):
        self.plans, self.dim, self.writer = plans, dim, writer
        self.corrupt_path, self.summary = corrupt_path, summary
        self.open: dict[int, _Open] = {}
        self.next_slot = 0

    def add(self, batch: _Batch, rows: np.ndarray) -> None:
        """Takes the features ``rows [len(batch.paths), dim]`` of one batch."""
        for slot in np.unique(batch.slots).tolist():
            # Batches arrive in plan order, so videos open in order too.
            while self.next_slot <= slot:
                p = self.plans[self.next_slot]
                self.open[self.next_slot] = _Open(
                    p, np.zeros((p.num_frames, self.dim), np.float32), np.zeros(p.num_frames, bool),
                    len(p.paths))
                self.next_slot += 1
            v = self.open[slot]
            mine = batch.slots == slot
            good = mine & batch.ok
            v.features[batch.frames[good]] = rows[good]
            v.present[batch.frames[good]] = True
            for i in np.flatnonzero(mine & ~batch.ok).tolist():
                log.warning("corrupt frame, stored as missing: %s", batch.errors[i])
                reason = batch.errors[i][len(batch.paths[i]) + 2:]
                v.corrupt.append(f"{batch.paths[i]}\t{reason}")
            v.remaining -= int(mine.sum())
            if v.remaining == 0:
                self._commit(self.open.pop(slot))

    def _commit(self, v: _Open) -> None:
        self.writer.write(v.plan.video, v.features, v.present)
        if v.corrupt:
            with open(self.corrupt_path, "a") as f:
                f.writelines(line + "\n" for line in v.corrupt)
        s = self.summary
        s["videos"] += 1
        s["frames"] += v.plan.num_frames
        s["present"] += int(v.present.sum())
        s["missing"] += v.plan.num_frames - len(v.plan.paths)
        s["corrupt"] += len(v.corrupt)


def local_mesh(num_data: int = -1) -> Mesh:
    """A 1-D 'data' mesh over this process's devices: processes extract different videos."""
    devices = jax.local_devices()
    if num_data != -1:
        if num_data > len(devices):
            raise config_lib.ConfigError(
                f"config.mesh_data = {num_data}: only {len(devices)} local devices exist")
        devices = devices[:num_data]
    return Mesh(np.asarray(devices), ("data",))


def make_extract_fn(module: nn.Module, info: Mapping[str, Any], mesh: Mesh, *,
                    image_size: int | None = None):
    """The jitted ``fn(variables, uint8 images [B, H, W, 3]) -> float32 [B, dim]`` over ``mesh``."""
    return _jitted_feature_fn(module, tuple(info["mean"]), tuple(info["std"]), image_size, mesh)


@functools.lru_cache(maxsize=4)
def _jitted_feature_fn(module, mean, std, image_size, mesh):
    # Cached so that repeated runs in one process (tests, notebooks) compile the encoder once.
    fn = weights.feature_fn(module, {"mean": mean, "std": std}, image_size=image_size)
    batch = sharding.batch_sharding(mesh)
    return sharding.jit(fn, mesh, in_shardings=(sharding.replicated(mesh), batch),
                        out_shardings=batch)


def _variant(module: nn.Module) -> str | None:
    """The named variant the module's dims match (``"B/16"``, ``"resnet18"``), or None."""
    if isinstance(module, vit_lib.ViT):
        return vit_lib.variant_name(module.width, module.depth, module.num_heads, module.mlp_dim,
                                    module.patch_size)
    return resnet_lib.variant_name(module.block, module.stage_sizes, module.width)


def _describe(spec: str, info: Mapping[str, Any], hw: tuple[int, int]) -> str:
    """The extractor name in meta.json; a resumed run must produce the same one."""
    path = pathlib.Path(spec).expanduser()
    source = str(path.absolute()) if path.exists() else spec
    pool = info["config"].get("pool", "avg")
    seed = f" seed={info['seed']}" if info["format"] == "random" else ""
    return f"{source}{seed} pool={pool} image_size={hw[0]}x{hw[1]}"


def extract(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Extracts (or resumes extracting) the features of ``config.frames`` into ``workdir``.

    Returns a summary: videos written, skipped as already done, empty; frames, present, corrupt;
    ``interrupted`` when SIGTERM stopped the run.
    """
    validate(config)
    t_start = time.perf_counter()
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    pid, nproc = jax.process_index(), jax.process_count()
    is_main = pid == 0
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")

    # Videos of this process.
    folder_root = video_folders(config.frames)
    names = sorted(e.name for e in os.scandir(folder_root) if e.is_dir())
    if not names:
        raise config_lib.ConfigError(
            f"config.frames = {config.frames!r}: {folder_root} has no video folders")
    if config.videos:
        wanted = [v.strip() for v in config.videos.split(",") if v.strip()]
        unknown = [v for v in wanted if v not in set(names)]
        if unknown:
            raise config_lib.ConfigError(
                f"config.videos: no frame folder in {folder_root} for {unknown[:5]}")
        names = sorted(set(wanted))
    mine = names[pid::nproc]
    counts = read_frame_counts(config.frame_counts) if config.frame_counts else {}

    # Encoder and mesh.
    mesh = local_mesh(config.mesh_data)
    local_batch = config.batch_size // nproc
    if config.batch_size % nproc or local_batch % mesh.devices.size:
        raise config_lib.ConfigError(
            f"config.batch_size = {config.batch_size}: must split evenly over {nproc} processes "
            f"and the {mesh.devices.size} devices of each")
    compute = sharding.compute_dtype(config.compute_dtype, mesh)
    module, variables, info = load_encoder(
        config.encoder, pool=config.pool, image_size=config.image_size, dtype=compute,
        seed=config.seed)
    if info["format"] == "random":
        log.warning("encoder %r has RANDOM weights (seed %d): for tests and benchmarks only",
                    config.encoder, config.seed)
    if isinstance(module, vit_lib.ViT):
        model_hw, resize_to = vit_lib.image_hw(module.image_size), None
    else:
        model_hw = (config.image_size, config.image_size) if config.image_size else None
        resize_to = config.image_size or None
    decode_hw = ((config.decode_size, config.decode_size) if config.decode_size else model_hw)
    if decode_hw is None:
        raise config_lib.ConfigError(
            "config.image_size = 0 and config.decode_size = 0: a ResNet has no input size of its "
            "own; set one of them")
    fn = make_extract_fn(module, info, mesh, image_size=resize_to)
    variables = jax.device_put(variables, sharding.replicated(mesh))
    hw = model_hw or decode_hw
    params = dict(
        encoder=config.encoder, format=info["format"], variant=_variant(module),
        model_config=info["config"], pool=info["config"].get("pool"), image_size=list(hw),
        decode_size=list(decode_hw), resize="bilinear" if tuple(decode_hw) != tuple(hw) else None,
        mean=list(info["mean"]), std=list(info["std"]), norm_source=info.get("norm_source"),
        posemb_resized=info.get("posemb_resized"), compute_dtype=jnp.dtype(compute).name,
        frames=str(folder_root.absolute()), seed=config.seed if info["format"] == "random" else None)

    summary: dict[str, Any] = dict(videos=0, already_done=0, empty_videos=[], frames=0, present=0,
                                   missing=0, corrupt=0, interrupted=False)
    writer = features_lib.FeatureStoreWriter(
        workdir, dim=info["dim"], dtype=config.dtype, extractor=_describe(config.encoder, info, hw),
        process_index=pid, params=params)
    corrupt_path = workdir / (CORRUPT_FILE if nproc == 1 else f"corrupt_frames-p{pid}.txt")
    sigterm = loop_lib.Sigterm(multiprocess_aware=False).__enter__()
    pool = concurrent.futures.ThreadPoolExecutor(config.num_threads, thread_name_prefix="decode")
    prefetcher = None
    progress = None
    try:
        plans: list[FramePlan] = []
        for name in mine:
            if writer.has(name):
                summary["already_done"] += 1
                continue
            plan = plan_video(folder_root / name, counts.get(name))
            if plan is None or not plan.paths:
                log.warning("%s: no frame images%s; video %r skipped", folder_root / name,
                            "" if plan is None else " within its frame count", name)
                summary["empty_videos"].append(name)
                continue
            plans.append(plan)
        if summary["already_done"]:
            log.info("%d video(s) already in %s", summary["already_done"], workdir)
        total = sum(len(p.paths) for p in plans)
        if is_main:
            print(f"Extracting {len(plans)} video(s), {total} images, with {info['format']} "
                  f"{_variant(module) or type(module).__name__} ({info['dim']}-d) on {mesh.devices.size} "
                  f"{sharding.platform(mesh)} device(s) into {workdir}", file=sys.stderr, flush=True)
        if is_main and config.progress:
            from tqdm import tqdm
            progress = tqdm(total=total, unit="frame", unit_scale=True, dynamic_ncols=True,
                            smoothing=0.1, file=sys.stderr)

        collector = _Collector(plans, info["dim"], writer, corrupt_path, summary)
        prefetcher = _Prefetcher(make_batches(plans, local_batch), local_batch, tuple(decode_hw), pool)
        batch_in = sharding.batch_sharding(mesh)
        pending: tuple[_Batch, jax.Array] | None = None

        def finish(batch: _Batch, out: jax.Array) -> None:
            collector.add(batch, np.asarray(out)[: len(batch.paths)])
            if progress is not None:
                progress.update(len(batch.paths))
                progress.set_postfix(videos=f"{summary['videos']}/{len(plans)}", refresh=False)

        for batch in prefetcher:
            # Dispatch this batch, then read back the previous one while the device works.
            out = fn(variables, jax.device_put(batch.images, batch_in))
            if pending is not None:
                finish(*pending)
            pending = (batch, out)
            if sigterm.requested:
                summary["interrupted"] = True
                break
        if pending is not None:
            finish(*pending)
    finally:
        if prefetcher is not None:
            prefetcher.close()
        pool.shutdown(wait=True, cancel_futures=True)
        if progress is not None:
            progress.close()
        writer.close()
        sigterm.__exit__(None, None, None)

    seconds = time.perf_counter() - t_start
    summary["seconds"] = round(seconds, 3)
    left = len(plans) - summary["videos"]
    lines = [f"process {pid}: {summary['videos']} video(s) written ({summary['frames']} frames, "
             f"{summary['present']} present, {summary['missing']} without image, "
             f"{summary['corrupt']} corrupt) in {seconds:.1f}s; {summary['already_done']} already done"]
    if summary["empty_videos"]:
        lines.append(f"{len(summary['empty_videos'])} empty video folder(s) skipped: "
                     f"{', '.join(summary['empty_videos'][:10])}")
    if summary["corrupt"]:
        lines.append(f"corrupt images listed in {corrupt_path}")
    if summary["interrupted"]:
        lines.append(f"stopped by SIGTERM with {left} video(s) left: re-run the same command to resume")
    print("\n".join(lines), file=sys.stderr, flush=True)
    return summary


def main(argv) -> None:
    """absl entry: ``--config`` (an extraction config file) and ``--workdir`` (the store)."""
    del argv
    from absl import flags
    cli.initialize_distributed()
    extract(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main, validate)
