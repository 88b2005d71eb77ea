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

Encoders (``config.encoder``): any spec ``abaw_jax.models.encoders.load_encoder`` takes: a
weights file or folder (ViT ``.npz``, timm / Hugging Face ``.safetensors``, torchvision ResNet); a
random-init spec ``vit:<variant>[,field=value...]`` or ``resnet:<variant>[,...]`` (benchmarks and
tests, e.g. ``vit:Ti/8,width=32,depth=2``); or an encoder directory holding ``encoder.json`` (the
format is described in ``abaw_jax.models.encoders``; MAE pretraining and fine-tuning write it).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
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
from abaw_jax.models import encoders
from abaw_jax.models import vit as vit_lib

log = logging.getLogger(__name__)

CORRUPT_FILE = "corrupt_frames.txt"
NUMBER_RE = re.compile(r"(\d+)\.[^.]+")
_PREFETCH = 2  # decoded batches waiting for the device: enough to hide decoding jitter


class ExtractError(ValueError):
    """Bad extraction input (frame-count CSV, video list); names the file."""


# ---------------------------------------------------------------------------------------------
# Config.


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
    numbers = [NUMBER_RE.fullmatch(n) for n in names]
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


def annotated_frame_counts(frames: str | os.PathLike, report: bool = False) -> dict[str, int]:
    """The frame counts of an Aff-Wild2 root's videos from its annotation files and test lists
    (`affwild2.frame_counts`): frames after a video's last face image have no file, so its
    highest image number can be short of the annotated length. {} for other folders."""
    root = pathlib.Path(frames).expanduser()
    if not (root / affwild2.FRAMES_DIR).is_dir():
        return {}
    counts = affwild2.frame_counts(root)
    if counts and report:
        print(f"Frame counts of {len(counts)} videos from the annotations of {root} "
              f"(--config.frame_counts=CSV gives them instead)", file=sys.stderr, flush=True)
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
    fn = encoders.feature_fn(module, {"mean": mean, "std": std}, image_size=image_size)
    batch = sharding.batch_sharding(mesh)
    return sharding.jit(fn, mesh, in_shardings=(sharding.replicated(mesh), batch),
                        out_shardings=batch)


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
    config_lib.validate_extraction(config)
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
    counts = (affwild2.read_frame_counts(config.frame_counts) if config.frame_counts
              else annotated_frame_counts(config.frames, is_main))

    # Encoder and mesh.
    mesh = local_mesh(config.mesh_data)
    local_batch = config.batch_size // nproc
    if config.batch_size % nproc or local_batch % mesh.devices.size:
        raise config_lib.ConfigError(
            f"config.batch_size = {config.batch_size}: must split evenly over {nproc} processes "
            f"and the {mesh.devices.size} devices of each")
    compute = sharding.compute_dtype(config.compute_dtype, mesh)
    encoder = encoders.load_encoder(
        config.encoder, pool=config.pool, image_size=config.image_size, dtype=compute,
        seed=config.seed)
    module, variables, info = encoder.module, encoder.variables, encoder.info
    if info["format"] == "random":
        log.warning("encoder %r has RANDOM weights (seed %d): for tests and benchmarks only",
                    config.encoder, config.seed)
    if info.get("posemb_resized") and jax.process_index() == 0:
        print(f"warning: config.image_size = {config.image_size} is not the encoder's own input "
              f"size: its position embeddings were resized ({info['posemb_resized']}); "
              f"--config.image_size=0 uses its own", file=sys.stderr, flush=True)
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
        encoder=config.encoder, format=info["format"], variant=encoders.variant_name(module),
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
                  f"{encoders.variant_name(module) or type(module).__name__} ({info['dim']}-d) "
                  f"on {mesh.devices.size} {sharding.platform(mesh)} device(s) into {workdir}",
                  file=sys.stderr, flush=True)
            print(f"Feature store: {workdir} (extractor {writer.meta.get('extractor')!r})",
                  file=sys.stderr, flush=True)
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
    cli.run(main, config_lib.validate_extraction)
