"""Throughput of the host input pipeline on an Aff-Wild2-sized feature store.

Builds (once; reruns reuse it, an interrupted build resumes) a store of random float16
features with the real Aff-Wild2 video lengths scaled to --frames, then prints frames/s
delivered by `train_dataset` for several thread counts and by one pass of `eval_batches`.

    python scripts/bench_pipeline.py                      # full size: 2.6M frames x 768, ~4 GB
    python scripts/bench_pipeline.py --frames 200000 --data /tmp/abaw_bench_small
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import resource
import time

import numpy as np

from abaw_jax.data.features import FeatureStore, FeatureStoreWriter
from abaw_jax.data.pipeline import eval_batches, train_dataset

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
COUNTER_FRAME = SHARED_DATA / "affwild2_meta" / "counter_frame.csv"
AFFWILD2_FRAMES = 2_610_374


@dataclasses.dataclass(frozen=True)
class BenchVideo:
    """The fields of affwild2.Video the pipeline reads."""

    name: str
    num_frames: int
    labels: np.ndarray
    valid: np.ndarray
    present: np.ndarray


def video_lengths(total: int, seed: int) -> dict[str, int]:
    """Aff-Wild2 video names and lengths, scaled to `total` frames (log-normal without the list)."""
    if COUNTER_FRAME.is_file():
        rows = [line.split(",") for line in COUNTER_FRAME.read_text().splitlines()[1:] if line]
        names = [r[0].rsplit(".", 1)[0] for r in rows]
        lengths = np.array([int(r[1]) for r in rows], np.float64)
    else:
        rng = np.random.default_rng(seed)
        lengths = np.clip(rng.lognormal(np.log(3937), 0.9, 548), 73, 47434)
        names = [f"video{i}" for i in range(len(lengths))]
    scaled = np.maximum(1, np.round(lengths * total / lengths.sum())).astype(int)
    return dict(zip(names, scaled.tolist()))


def random_float16(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """float16 values in +-[1/8, 1/2) straight from random bits (no float maths: fast)."""
    bits = np.frombuffer(rng.bytes(int(np.prod(shape)) * 2), np.uint16)
    # Random sign, mantissa and lowest exponent bit; exponent 12 or 13. Subnormals are avoided
    # on purpose: real features have almost none, and numpy converts them far more slowly.
    return ((bits & np.uint16(0x87FF)) | np.uint16(0x3000)).view(np.float16).reshape(shape)


def build_store(path: pathlib.Path, lengths: dict[str, int], dim: int, seed: int) -> None:
    """Writes every video not yet in the store at `path`.

    Each video is a run of rows, from a random place, of one pool of random rows: generating
    2.6M x 768 values one by one would take longer than writing them.
    """
    start = time.perf_counter()
    written = 0
    pool = random_float16(np.random.default_rng(seed), (1 << 16, dim))
    with FeatureStoreWriter(path, dim=dim, dtype="float16", extractor="random-bench",
                            params={"seed": seed, "frames": sum(lengths.values())}) as writer:
        for i, (name, t) in enumerate(lengths.items()):
            if writer.has(name):
                continue
            rng = np.random.default_rng([seed, i])
            rows = np.take(pool, np.arange(t) + rng.integers(len(pool)), axis=0, mode="wrap")
            writer.write(name, rows, rng.random(t) > 0.05)
            written += t
    if written:
        seconds = time.perf_counter() - start
        gbs = written * dim * 2 / seconds / 1e9
        print(f"built {written:,} frames in {seconds:.1f} s ({gbs:.2f} GB/s)")


def make_videos(lengths: dict[str, int], seed: int) -> list[BenchVideo]:
    """EXPR-shaped labels with some invalid frames, and a few frames without a face."""
    rng = np.random.default_rng(seed)
    videos = []
    for name, t in lengths.items():
        labels = rng.integers(0, 8, t, dtype=np.int32)
        valid = rng.random(t) > 0.1
        videos.append(BenchVideo(name, t, np.where(valid, labels, 0), valid, rng.random(t) > 0.02))
    return videos


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(iterator, warmup: int, batches: int | None) -> tuple[float, float, int, int]:
    """Wall seconds, CPU seconds, real frames and batches after `warmup` batches.

    `batches=None` runs the iterator to its end.
    """
    for _ in range(warmup):
        next(iterator)
    frames = count = 0
    wall, cpu = time.perf_counter(), cpu_seconds()
    for batch in iterator:
        frames += int(batch["frame_mask"].sum())
        count += 1
        if count == batches:
            break
    return time.perf_counter() - wall, cpu_seconds() - cpu, frames, count


def report(name: str, threads: int, wall: float, cpu: float, frames: int, batches: int,
           batch_bytes: int) -> None:
    print(f"{name:<24}{threads:>8}{frames / wall:>14,.0f}{batches / wall:>11.2f}"
          f"{batches * batch_bytes / wall / 1e9:>10.2f}{1e3 * cpu / batches:>14.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/abaw_bench_store", help="store directory (cached)")
    parser.add_argument("--frames", type=int, default=AFFWILD2_FRAMES)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--threads", default="1,2,4", help="train_dataset num_threads to try")
    parser.add_argument("--eval-threads", type=int, default=2)
    parser.add_argument("--batches", type=int, default=30, help="measured batches per setting")
    parser.add_argument("--warmup", type=int, default=12,
                        help="batches not timed (more than the prefetch buffer holds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--build-only", action="store_true", help="build the store and exit")
    args = parser.parse_args()

    path = pathlib.Path(args.data)
    lengths = video_lengths(args.frames, args.seed)
    if (path / "meta.json").exists():
        meta = FeatureStore(path).meta
        if meta["dim"] != args.dim or meta.get("params", {}).get("frames") != sum(lengths.values()):
            raise SystemExit(f"{path} holds a different store (dim {meta['dim']}, "
                             f"{meta.get('params')}); pick another --data")
    build_store(path, lengths, args.dim, args.seed)
    if args.build_only:
        return
    store = FeatureStore(path)
    videos = make_videos(lengths, args.seed)
    total = sum(lengths.values())
    print(f"store {path}: {len(store)} videos, {total:,} frames x {store.dim} {store.dtype.name} "
          f"({total * store.dim * store.dtype.itemsize / 2**30:.2f} GiB)")
    print(f"batch {args.batch_size} x {args.seq_len} frames, {args.batches} batches after "
          f"{args.warmup} warmup\n")

    # frames/s counts real frames only (not the padding of windows of short videos); CPU time is
    # that of all threads per batch, which a busy machine does not inflate as much as wall time.
    batch_bytes = args.batch_size * args.seq_len * store.dim * 4
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'pipeline':<24}{'threads':>8}{'frames/s':>14}{'batches/s':>11}{'GB/s out':>10}"
          f"{'CPU ms/batch':>14}")
    for threads in [int(t) for t in args.threads.split(",")]:
        it = train_dataset(videos, store, seq_len=args.seq_len, batch_size=args.batch_size,
                           seed=args.seed, num_threads=threads, process_index=0, process_count=1)
        report("train_dataset", threads, *measure(it, args.warmup, args.batches), batch_bytes)
        it.close()
    it = eval_batches(videos, store, seq_len=args.seq_len, batch_size=args.batch_size,
                      num_threads=args.eval_threads, process_index=0, process_count=1)
    report("eval_batches (1 pass)", args.eval_threads, *measure(it, 1, None), batch_bytes)


if __name__ == "__main__":
    main()
