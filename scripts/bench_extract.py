"""Images/s of ViT-B/16 feature extraction: abaw_jax (jitted) against timm (PyTorch eager).

Both run random weights at 224 px on the same batch of images, in the same process and with the
same number of CPU threads. The abaw_jax side is the function `abaw_jax.extract` runs
(`make_extract_fn`: uint8 images in, resize-free normalisation, ViT-B/16, mean pooling), with the
batch already on the device; the timm side is `vit_base_patch16_224` under
`torch.inference_mode()` on normalised float images. With --peak-tflops the table adds the model
FLOPs utilisation (35.2 GFLOP per image forward).

    python scripts/bench_extract.py                       # CPU: batch 32
    python scripts/bench_extract.py --batch 256 --steps 20 --peak-tflops 989   # H100, bf16
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

GFLOP_PER_IMAGE = 35.2  # ViT-B/16 at 224 px: 17.6 GMACs


def make_jax(batch: int, compute_dtype: str):
    """``(step, device)``: one blocking batch of abaw_jax's extraction function."""
    import jax

    from abaw_jax import extract, sharding

    dtype = sharding.compute_dtype(compute_dtype)
    module, variables, info = extract.load_encoder("vit:B/16", pool="mean", image_size=224,
                                                   dtype=dtype)
    mesh = extract.local_mesh()
    fn = extract.make_extract_fn(module, info, mesh)
    variables = jax.device_put(variables, sharding.replicated(mesh))
    images = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    x = jax.device_put(images, sharding.batch_sharding(mesh))

    def step() -> None:
        fn(variables, x).block_until_ready()

    device = f"{jax.device_count()}x {jax.devices()[0].device_kind} ({jax.numpy.dtype(dtype).name})"
    return step, device


def make_timm(batch: int, threads: int):
    """``(step, device)``: one blocking batch of timm's vit_base_patch16_224 (features, no head)."""
    import timm
    import torch

    torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).eval().to(device)
    x = torch.randn(batch, 3, 224, 224, device=device)

    def step() -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            model(x)
        if cuda:
            torch.cuda.synchronize()

    name = f"{torch.cuda.get_device_name()} (bf16 autocast)" if cuda else f"cpu, {threads} threads (float32)"
    return step, name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="timed batches per implementation")
    p.add_argument("--warmup", type=int, default=1, help="untimed batches first (compilation)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch CPU threads (XLA's CPU backend uses all cores)")
    p.add_argument("--compute-dtype", default="auto", help="abaw_jax compute dtype (auto: bf16 on GPU/TPU)")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="device peak (e.g. 989 for H100 bf16) to report model FLOPs utilisation")
    p.add_argument("--skip-timm", action="store_true")
    args = p.parse_args()

    impls = [("abaw_jax (jit)", *make_jax(args.batch, args.compute_dtype))]
    if not args.skip_timm:
        impls.append(("timm (eager)", *make_timm(args.batch, args.threads)))
    for _, step, _ in impls:
        for _ in range(args.warmup):
            step()
    # Timed steps alternate between the implementations, so that a change in the load of a
    # shared machine hits both alike; the median step is reported.
    times: list[list[float]] = [[] for _ in impls]
    for _ in range(args.steps):
        for i, (_, step, _) in enumerate(impls):
            t = time.perf_counter()
            step()
            times[i].append(time.perf_counter() - t)
    rows = [(name, device, float(np.median(ts))) for (name, _, device), ts in zip(impls, times)]

    timm_rate = args.batch / rows[1][2] if len(rows) > 1 else None
    print(f"ViT-B/16, 224 px, batch {args.batch}, median of {args.steps} timed batches each")
    header = f"{'implementation':<16} {'device':<40} {'ms/batch':>10} {'images/s':>10} {'vs timm':>8}"
    if args.peak_tflops:
        header += f" {'MFU':>7}"
    print(header)
    for name, device, sec in rows:
        rate = args.batch / sec
        line = f"{name:<16} {device:<40} {sec * 1e3:>10.1f} {rate:>10.1f}"
        line += f" {rate / timm_rate:>7.2f}x" if timm_rate else f" {'-':>8}"
        if args.peak_tflops:
            line += f" {rate * GFLOP_PER_IMAGE / (args.peak_tflops * 1e3):>7.1%}"
        print(line)


if __name__ == "__main__":
    main()
