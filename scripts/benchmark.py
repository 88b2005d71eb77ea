"""Training throughput of abaw_jax next to PyTorch references of the same models, in one run.

For each seed system (A: masked Transformer, B: TCN + Transformer, C: feature fusion) it trains
the abaw_jax model for a few steps with the features read by the host pipeline and with the
on-device feature bank, and, on the same batch shape, the same model written in PyTorch the way
the seeds' authors wrote theirs (torch.nn.TransformerEncoder with post-norm layers; Conv1d TCN
with weight_norm; per-set Linear + TransformerEncoder), in eager mode and under torch.compile.
It also times the input pipeline alone. Everything is EXPR (8 classes) on a random float16 store
with the real Aff-Wild2 video lengths scaled to --frames (built once, cached in --data).

    python scripts/benchmark.py --small                      # CPU: reduced sizes, a few minutes
    python scripts/benchmark.py --peak-tflops 989            # GPU: the papers' sizes, with MFU

Rows (frames/s counts every frame of every window, the unit of a training step):
  abaw_jax host      grain threads read windows from the memory-mapped store, step on device
  abaw_jax bank      features on the device (data/device_bank.py); grain sends indices only
  abaw_jax resident  a few batches already on the device, cycled (compute only)
  torch eager tN     the PyTorch model on the same batches held in memory (compute only), on
                     N CPU threads (--torch-threads; an oversubscribed CPU can favour fewer)
  torch compile tN   the same after torch.compile (default inductor backend)
"wait" is the share of loop time spent waiting for the next batch (host pipeline included);
GFLOP/s and MFU use XLA's FLOP count of the abaw_jax step for every row of a system.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
import sys
import time
from typing import Any

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from abaw_jax import config as config_lib, sharding, train  # noqa: E402
from abaw_jax.data import device_bank, pipeline  # noqa: E402
from abaw_jax.data.features import FeatureSets, FeatureStore  # noqa: E402
from abaw_jax.models.tcn import block_dilations  # noqa: E402
from scripts.bench_pipeline import build_store, make_videos, video_lengths  # noqa: E402

NUM_CLASSES = 8
SETS_C = {"vit": 768, "openface": 17}


@dataclasses.dataclass(frozen=True)
class System:
    """One benchmarked model: its abaw_jax config overrides and its batch shape."""
    key: str
    model: str
    seq_len: int
    batch_size: int
    overrides: dict


def systems(small: bool) -> list[System]:
    """The papers' sizes, or a reduced set that trains a few steps a second on a laptop CPU."""
    if small:
        return [
            System("A", "transformer", 100, 16, dict(d_model=128, num_layers=2, num_heads=4,
                                                     mlp_dim=256)),
            System("B", "tcn", 150, 8, dict(channels=(128, 64, 64), d_model=64, num_layers=2,
                                            num_heads=4, mlp_dim=128, head_dim=32)),
            System("C", "fusion", 128, 8, dict(d_affine=32, num_layers=2, num_heads=4)),
        ]
    return [
        System("A", "transformer", 100, 512, {}),
        System("B", "tcn", 300, 32, {}),
        System("C", "fusion", 256, 32, {}),
    ]


def make_config(system: System):
    """The system's config (paper hyperparameters, EXPR) with the benchmark's sizes."""
    config = config_lib.base_config("EXPR")
    config_lib.use_model(config, system.model)
    config.data.seq_len = system.seq_len
    config.batch_size = system.batch_size
    config.total_steps = 10_000
    config.data.train_stride = config.data.eval_stride = 0   # the benchmark's windows do not overlap
    for key, value in system.overrides.items():
        config.model[key] = value
    config_lib.validate(config)
    return config


# ---------------------------------------------------------------------------------------------
# abaw_jax


def sync(tree) -> None:
    jax.block_until_ready(tree)


def jax_loop(step, state, batches, args) -> tuple[float, float, Any]:
    """Warmup, then `args.repeats` timed runs of `args.steps` steps; the fastest run's
    (seconds, seconds waiting for batches) and the state.

    Step metrics stay on the device (no host round trip in the loop), as in train.py. The best of
    several runs filters out other processes on a shared machine.
    """
    for _ in range(args.warmup):
        state, stats = step(state, next(batches))
    sync(state)
    best = (math.inf, 0.0)
    for _ in range(args.repeats):
        waited = 0.0
        begin = time.perf_counter()
        for _ in range(args.steps):
            t = time.perf_counter()
            batch = next(batches)
            waited += time.perf_counter() - t
            state, stats = step(state, batch)
        sync((state, stats))
        best = min(best, (time.perf_counter() - begin, waited))
    return *best, state


def step_flops(jitted, state, batch) -> float:
    """XLA's FLOP count of one compiled train step (forward, backward, optimizer)."""
    cost = jitted.lower(state, batch).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", 0.0)) if cost else 0.0


def run_jax(system: System, videos, features, args, mesh) -> tuple[list[dict], float, list]:
    """abaw_jax rows (host, bank, resident); also the step FLOPs and batches for torch."""
    config = make_config(system)
    dims = dict(features.dims) if isinstance(features, FeatureSets) else features.dim
    setup = train.setup_model(config, dims, mesh)
    loss_fn = train.make_loss(config, videos)
    step_fn = train.make_train_step(setup.model, setup.tx, loss_fn, setup.schedule,
                                    setup.train_rng)
    repl, rows = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    host_step = jax.jit(step_fn, in_shardings=(repl, rows), out_shardings=(repl, repl),
                        donate_argnums=(0,))
    frames = system.batch_size * system.seq_len
    common = dict(seq_len=system.seq_len, batch_size=system.batch_size, seed=0,
                  num_threads=args.threads, process_index=0, process_count=1)
    results = []

    host_iter = pipeline.train_dataset(videos, features, **common)
    # A few host batches, kept for the resident and torch rows (identical inputs everywhere).
    kept = [next(host_iter) for _ in range(args.resident)]
    model_batch = lambda b: sharding.to_global(train._train_keys(b), mesh)  # noqa: E731
    flops = step_flops(host_step, setup.init_fn(setup.init_rng), model_batch(kept[0]))

    state = setup.init_fn(setup.init_rng)
    seconds, waited, state = jax_loop(host_step, state, map(model_batch, host_iter), args)
    params = sum(x.size for x in jax.tree.leaves(setup.abstract_state["params"]))
    results.append(dict(row="abaw_jax host", seconds=seconds, waited=waited,
                        note=f"params {params:,}"))
    host_iter.close()
    del state

    start = time.perf_counter()
    bank = device_bank.build(videos, features, system.seq_len, mesh)
    build_s = time.perf_counter() - start
    bank_step = bank.jit_step(step_fn, mesh)
    index_iter = pipeline.train_dataset(videos, features, read_features=False, **common)
    state = setup.init_fn(setup.init_rng)
    seconds, waited, state = jax_loop(
        bank_step, state, (sharding.to_global(bank.batch_keys(b), mesh) for b in index_iter), args)
    results.append(dict(row="abaw_jax bank", seconds=seconds, waited=waited,
                        note=f"bank {bank.nbytes / 2**20:.0f} MiB, built in {build_s:.1f} s"))
    index_iter.close()
    del state, bank

    resident = [model_batch(b) for b in kept]
    sync(resident)
    state = setup.init_fn(setup.init_rng)
    cycle = (resident[i % len(resident)] for i in range(10**9))
    seconds, waited, state = jax_loop(host_step, state, cycle, args)
    results.append(dict(row="abaw_jax resident", seconds=seconds, waited=waited,
                        note=f"compiled {host_step._cache_size()}x for all host/resident steps"))
    del state

    if args.ablations:
        # What the cheap measures buy, on resident batches: the state's buffers donated to the
        # step (off here), and no host round trip per step (here the loss is fetched each step).
        plain = jax.jit(step_fn, in_shardings=(repl, rows), out_shardings=(repl, repl))
        state = setup.init_fn(setup.init_rng)
        seconds, waited, state = jax_loop(plain, state, cycle, args)
        results.append(dict(row="  without donation", seconds=seconds, waited=waited))

        def fetching(state, batch):
            state, stats = host_step(state, batch)
            float(stats["loss"])
            return state, stats

        state = setup.init_fn(setup.init_rng)
        seconds, waited, state = jax_loop(fetching, state, cycle, args)
        results.append(dict(row="  loss fetched/step", seconds=seconds, waited=waited))
    for r in results:
        r["frames"] = frames * args.steps
    return results, flops, kept


# ---------------------------------------------------------------------------------------------
# PyTorch references, written as the seeds' public code writes them.


def torch_models():
    """Builds the three PyTorch reference model classes (torch imported only when needed)."""
    import torch
    from torch import nn
    from torch.nn.utils.parametrizations import weight_norm

    class Positions(nn.Module):
        """Sinusoidal positional encoding added to [B, L, d] (batch first)."""

        def __init__(self, d: int, max_len: int = 1024):
            super().__init__()
            pos = torch.arange(max_len, dtype=torch.float32)[:, None]
            div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(1e4) / d))
            pe = torch.zeros(max_len, d)
            pe[:, 0::2] = torch.sin(pos * div)
            pe[:, 1::2] = torch.cos(pos * div)
            self.register_buffer("pe", pe)

        def forward(self, x):
            return x + self.pe[: x.shape[1]]

    def encoder(d, heads, ff, layers, dropout):
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout, batch_first=True)  # post-norm
        return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def padding_mask(present, frame_mask):
        keys = present & frame_mask
        # A window with no allowed key attends to all (a softmax over nothing is NaN).
        return ~(keys | ~keys.any(dim=1, keepdim=True))

    class SystemA(nn.Module):
        """Frame masking -> Linear -> PE -> post-norm TransformerEncoder -> Linear."""

        def __init__(self, dim, m):
            super().__init__()
            self.mask_prob = m.mask_prob
            self.proj = nn.Linear(dim, m.d_model)
            self.pos = Positions(m.d_model)
            self.drop = nn.Dropout(m.dropout)
            self.encoder = encoder(m.d_model, m.num_heads, m.mlp_dim, m.num_layers, m.dropout)
            self.head = nn.Linear(m.d_model, NUM_CLASSES)

        def forward(self, x, present, frame_mask):
            if self.training and self.mask_prob:
                x = x * (torch.rand(x.shape[:2] + (1,), device=x.device) >= self.mask_prob)
            h = self.drop(self.pos(self.proj(x)))
            return self.head(self.encoder(h, src_key_padding_mask=padding_mask(present, frame_mask)))

    class TemporalBlock(nn.Module):
        """Bai et al.'s residual block with weight-normalised dilated Conv1d and PReLU."""

        def __init__(self, cin, cout, k, d, dropout):
            super().__init__()
            pad = d * (k - 1) // 2
            self.conv1 = weight_norm(nn.Conv1d(cin, cout, k, padding=pad, dilation=d))
            self.conv2 = weight_norm(nn.Conv1d(cout, cout, k, padding=pad, dilation=d))
            self.act1, self.act2, self.act = nn.PReLU(cout), nn.PReLU(cout), nn.PReLU(cout)
            self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)
            self.down = nn.Conv1d(cin, cout, 1) if cin != cout else None

        def forward(self, x, keep):
            h = self.drop1(self.act1(self.conv1(x * keep)))
            h = self.drop2(self.act2(self.conv2(h * keep)))
            return self.act(h + (x if self.down is None else self.down(x)))

    class SystemB(nn.Module):
        """TCN -> 1x1 Conv1d -> PE -> post-norm TransformerEncoder -> Linear, LayerNorm, Linear."""

        def __init__(self, dim, m):
            super().__init__()
            chans = [dim, *m.channels]
            dil = block_dilations(m.dilations, len(m.channels))
            self.tcn = nn.ModuleList(TemporalBlock(chans[i], chans[i + 1], m.kernel_size, dil[i],
                                                   m.dropout) for i in range(len(dil)))
            self.proj = nn.Conv1d(chans[-1], m.d_model, 1)
            self.pos = Positions(m.d_model)
            self.drop = nn.Dropout(m.dropout)
            self.encoder = encoder(m.d_model, m.num_heads, m.mlp_dim, m.num_layers, m.dropout)
            self.head = nn.Sequential(nn.Linear(m.d_model, m.head_dim), nn.LayerNorm(m.head_dim),
                                      nn.Linear(m.head_dim, NUM_CLASSES))

        def forward(self, x, present, frame_mask):
            keys = present & frame_mask
            x = (x * keys[..., None]).transpose(1, 2)              # [B, D, L] for Conv1d
            keep = frame_mask[:, None, :].to(x.dtype)
            for block in self.tcn:
                x = block(x, keep)
            h = self.drop(self.pos(self.proj(x).transpose(1, 2)))
            return self.head(self.encoder(h, src_key_padding_mask=padding_mask(present, frame_mask)))

    class SystemC(nn.Module):
        """Per-set Linear + PE -> concat -> dropout -> TransformerEncoder -> head."""

        def __init__(self, dims, m):
            super().__init__()
            self.sets = list(m.feature_sets)
            d = m.d_affine * len(self.sets)
            self.affine = nn.ModuleDict({s: nn.Linear(dims[s], m.d_affine) for s in self.sets})
            self.pos = Positions(m.d_affine)
            self.drop = nn.Dropout(m.input_dropout)
            self.encoder = encoder(d, m.num_heads, m.mlp_ratio * d, m.num_layers, m.dropout)
            self.head = nn.Sequential(nn.Linear(d, d // 2), nn.LayerNorm(d // 2),
                                      nn.Linear(d // 2, NUM_CLASSES))

        def forward(self, xs, present, frame_mask):
            h = torch.cat([self.pos(self.affine[s](xs[s])) for s in self.sets], dim=-1)
            h = self.encoder(self.drop(h), src_key_padding_mask=padding_mask(present, frame_mask))
            return self.head(h)

    return {"transformer": SystemA, "tcn": SystemB, "fusion": SystemC}


def torch_loss(logits, labels, valid, focal: tuple[float, float] | None):
    """Softmax focal loss (alpha, gamma) or cross-entropy, averaged over valid frames."""
    import torch
    import torch.nn.functional as F
    logp = F.log_softmax(logits.float(), dim=-1).gather(-1, labels[..., None].long())[..., 0]
    per = -logp
    if focal is not None:
        alpha, gamma = focal
        per = -alpha * (1 - logp.exp()) ** gamma * logp
    w = valid.float()
    return (per * w).sum() / torch.clamp(w.sum(), min=1.0)


def run_torch(system: System, batches: list[dict], dims, args, compiled: bool,
              threads: int) -> dict:
    """Trains the PyTorch reference on `batches` (cycled, in memory) with `threads` CPU threads."""
    import torch
    torch.set_num_threads(threads)
    config = make_config(system)
    m = config.model
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = torch_models()[system.model](dims, m).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.optimizer.lr,
                            weight_decay=config.optimizer.weight_decay)
    focal = (config.loss.alpha, config.loss.gamma) if config.loss.name == "focal" else None
    amp = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def to_torch(b):
        x = ({k.split("/", 1)[1]: torch.from_numpy(np.ascontiguousarray(v)).to(device)
              for k, v in b.items() if k.startswith("features/")}
             or torch.from_numpy(np.ascontiguousarray(b["features"])).to(device))
        return (x, *(torch.from_numpy(np.asarray(b[k])).to(device)
                     for k in ("present", "frame_mask", "labels", "valid")))

    data = [to_torch(b) for b in batches]
    forward = torch.compile(model) if compiled else model

    def step(i):
        x, present, frame_mask, labels, valid = data[i % len(data)]
        with amp:
            loss = torch_loss(forward(x, present, frame_mask), labels, valid, focal)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optimizer.grad_clip)
        opt.step()
        return loss

    sync_t = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    begin = time.perf_counter()
    for i in range(args.warmup):
        step(i)
    sync_t()
    warm_s = time.perf_counter() - begin
    seconds = math.inf
    for _ in range(args.repeats):
        begin = time.perf_counter()
        for i in range(args.steps):
            loss = step(i)
        loss.item()   # waits for the device; the loss also proves the step ran
        sync_t()
        seconds = min(seconds, time.perf_counter() - begin)
    row = dict(row=("torch compile" if compiled else "torch eager")
               + (f" t{threads}" if device == "cpu" else ""),
               seconds=seconds, waited=None,
               frames=system.batch_size * system.seq_len * args.steps,
               params=sum(p.numel() for p in model.parameters()))
    if compiled:
        row["note"] = f"compile + {args.warmup} warmup steps {warm_s:.0f} s"
    return row


# ---------------------------------------------------------------------------------------------


def open_store(args, sets: dict[str, int]):
    """The cached random stores (built on first use) and videos with EXPR labels."""
    lengths = video_lengths(args.frames, args.seed)
    stores = {}
    for name, dim in sets.items():
        path = pathlib.Path(args.data) / f"{name}-{dim}d-{args.frames}"
        build_store(path, lengths, dim, args.seed + len(stores))
        stores[name] = FeatureStore(path)
    return stores, make_videos(lengths, args.seed)


def pipeline_rows(videos, store, args) -> list[dict]:
    """The input pipeline alone: host windows with features, and index batches for the bank."""
    rows = []
    seq_len, batch = 100, args.pipeline_batch
    for read_features in (True, False):
        it = pipeline.train_dataset(videos, store, seq_len=seq_len, batch_size=batch, seed=0,
                                    num_threads=args.threads, process_index=0, process_count=1,
                                    read_features=read_features)
        for _ in range(args.warmup + 8):
            next(it)
        n, seconds = 4 * args.steps, math.inf
        for _ in range(args.repeats):
            begin = time.perf_counter()
            for _ in range(n):
                next(it)
            seconds = min(seconds, time.perf_counter() - begin)
        it.close()
        rows.append(dict(system="-", row=f"pipeline {'host windows' if read_features else 'index only'}",
                         seconds=seconds, waited=None, frames=n * batch * seq_len,
                         note=f"batch {batch} x {seq_len}, {store.dim}-d {store.dtype.name}, "
                              f"{args.threads} threads"))
    return rows


def print_table(rows: list[dict], flops: dict[str, float], peak: float | None) -> None:
    head = f"{'system':<7}{'row':<20}{'frames/s':>12}{'ms/step':>9}{'wait':>7}{'GFLOP/s':>9}"
    head += f"{'MFU':>7}" if peak else ""
    print(head + "  note")
    for r in rows:
        fps = r["frames"] / r["seconds"]
        steps = r.get("steps")
        ms = f"{1e3 * r['seconds'] / steps:9.1f}" if steps else f"{'':>9}"
        wait = f"{100 * r['waited'] / r['seconds']:6.1f}%" if r["waited"] is not None else f"{'':>7}"
        f = flops.get(r["system"], 0.0)
        rate = f * steps / r["seconds"] if steps and f else 0.0
        line = f"{r['system']:<7}{r['row']:<20}{fps:>12,.0f}{ms}{wait}"
        line += f"{rate / 1e9:9.1f}" if rate else f"{'':>9}"
        if peak:
            line += f"{100 * rate / (peak * 1e12):6.1f}%" if rate else f"{'':>7}"
        print(line + ("  " + r["note"] if r.get("note") else ""), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="reduced sizes for a CPU")
    parser.add_argument("--systems", default="A,B,C")
    parser.add_argument("--data", default="/tmp/abaw_benchmark", help="store cache directory")
    parser.add_argument("--frames", type=int, default=0,
                        help="frames in the store (default 60,000 with --small, else 2,610,374)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default 10 / 50)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs of --steps steps per row; the fastest is reported")
    parser.add_argument("--threads", type=int, default=2, help="grain threads")
    parser.add_argument("--resident", type=int, default=4, help="batches held for compute rows")
    parser.add_argument("--pipeline-batch", type=int, default=64)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--ablations", action="store_true",
                        help="also time abaw_jax without buffer donation and with a host round "
                             "trip per step")
    parser.add_argument("--torch-threads", default=str(os.cpu_count()),
                        help="CPU threads for torch rows, a list tries each (e.g. 1,2)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="device peak for MFU (989 for H100/H200 bf16); 0: no MFU column")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.frames = args.frames or (60_000 if args.small else 2_610_374)
    args.steps = args.steps or (10 if args.small else 50)

    mesh = sharding.make_mesh()
    device = jax.devices()[0]
    print(f"jax {jax.__version__} on {len(jax.devices())} x {device.device_kind}; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    chosen = [s for s in systems(args.small) if s.key in args.systems.split(",")]
    needs_c = any(s.model == "fusion" for s in chosen)
    stores, videos = open_store(args, SETS_C if needs_c else {"vit": 768})
    print(f"store: {args.frames:,} frames in {len(videos)} videos; best of {args.repeats} runs of "
          f"{args.steps} steps after {args.warmup} warmup\n", flush=True)

    rows, flops = pipeline_rows(videos, stores["vit"], args), {}
    print_table(rows, flops, args.peak_tflops)
    for system in chosen:
        features = FeatureSets(stores) if system.model == "fusion" else stores["vit"]
        dims = dict(features.dims) if system.model == "fusion" else features.dim
        print(f"\n{system.key} ({system.model}): batch {system.batch_size} x {system.seq_len} "
              f"frames, {system.overrides or 'paper sizes'}", flush=True)
        found, flops[system.key], kept = run_jax(system, videos, features, args, mesh)
        torch_threads = [] if args.no_torch else [int(t) for t in args.torch_threads.split(",")]
        for i, threads in enumerate(torch_threads):
            found.append(run_torch(system, kept, dims, args, False, threads))
            found[-1]["note"] = f"params {found[-1]['params']:,}"
            # Compiling takes minutes on a CPU: once, with the first thread count.
            if not args.no_compile and i == 0:
                try:
                    found.append(run_torch(system, kept, dims, args, True, threads))
                except Exception as e:  # Inductor needs a working C++ toolchain, and may fail.
                    print(f"torch.compile failed: {type(e).__name__}: {str(e)[:200]}")
        for r in found:
            r.update(system=system.key, steps=args.steps)
        print_table(found, flops, args.peak_tflops)
        rows += found


if __name__ == "__main__":
    main()
