"""Throughput of abaw_jax next to PyTorch references of the same models, in one run, one table.

For each seed system (A: masked Transformer, B: TCN + Transformer, C: feature fusion) it trains
the abaw_jax model with its published defaults (configs/system_*.py, only the sizes reduced by
--small / --tiny) for a few steps with the features read by the host pipeline and with the
on-device feature bank, and, on the same batch shape, its PyTorch twin written the way the
seeds' authors wrote theirs, in eager mode and under torch.compile: A without an input
projection (its width is the features') and with attention dropout (torch's encoder layer), no
dropout after the positions; B's causal weight-normalised TCN with one PReLU slope, no
positions, the Linear -> masked BatchNorm -> Linear head; C's per-set affine maps with per-set
positions after the dropout and one masked-BatchNorm head per output group. The section MTL
does the same for each system's multi-task model (A and B with 22 outputs, B one head per task;
C's ABAW7 setting: four static set-token models trained together). These train EXPR (8
classes) or the multi-task loss on a random float16 store with the real Aff-Wild2 video lengths
scaled to --frames; C reads its two sets ("vit" and "openface") in place of ResNet-18, POSTER2
and FAU. A "paper-size step" row per system states the XLA FLOPs and the parameters of its
train step at the papers' sizes (and C's own feature sets), compiled from shapes, not run. It also times the input pipeline alone on a store of Aff-Wild2's full size
(--pipeline-frames), the frame encoder's feature extraction (abaw_jax's extraction function
against timm's ViT) and MAE pretraining steps (abaw_jax's MAE against Hugging Face's
ViTMAEForPreTraining). Stores are built once and cached in --data.

    python scripts/benchmark.py --small                      # CPU: reduced sizes
    python scripts/benchmark.py --peak-tflops 989            # GPU: the papers' sizes, with MFU
    python scripts/benchmark.py --small --systems A,extract  # some sections only
    python scripts/benchmark.py --systems detect             # face detection (bench_detect.py)

Sections (--systems): pipeline; A, B, C, MTL (training steps); extract: ViT-B/16 at 224 px (batch
256; --small: batch 8); MAE: ViT-B/16 at 224 px with the 8 x 512 decoder (batch 256; --small:
48 px, patch 6, 4 x 192 encoder, 2 x 128 decoder, batch 64). --tiny shrinks every section to a
few seconds for the tests (its numbers mean nothing).

Rows:
  abaw_jax host      grain threads read windows from the memory-mapped store, step on device
  abaw_jax bank      features on the device (data/device_bank.py); grain sends indices only
  abaw_jax resident  the inputs already on the device (A, B, C: a few batches, cycled; extract,
                     MAE: one batch of random images): compute only
  torch eager tN     the PyTorch model on the same inputs held in memory (compute only), on
                     N CPU threads (--torch-threads; an oversubscribed CPU can favour fewer)
  torch compile tN   the same after torch.compile (default inductor backend)
  pipeline ...       the input pipeline alone: windows with features, or indices for the bank
frames/s counts every frame of every window for the training and pipeline rows, and images (one
face image is one video frame) for the extract and MAE rows. Training rows report the fastest of
--repeats runs of --steps steps; extract and MAE rows the median step of --image-steps steps
that alternate between the implementations, so that a change in the load of a shared machine
hits all alike, and note each row's speed relative to torch eager. "wait" is the share of a
step's time that the input path costs: 1 - (resident step time) / (step time with the batch
coming through the pipeline), host or bank; the note adds the share of the loop spent inside
next(), which on an accelerator overlaps the asynchronously dispatched step. GFLOP/s and MFU use XLA's FLOP
count of the abaw_jax step (extract: of the extraction function) for every row of a section;
the extract and MAE notes print that count per image. On CUDA the torch rows run under bf16
autocast and abaw_jax in its compute dtype ("auto": bfloat16 on GPU, float32 on CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import math
import os
import pathlib
import statistics
import sys
import time
from typing import Any, Callable

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from abaw_jax import config as config_lib, runs, sharding, training  # noqa: E402
from abaw_jax.data import pipeline  # noqa: E402
from abaw_jax.data.features import FeatureSets, FeatureStore  # noqa: E402
from abaw_jax.models import attention as attention_lib  # noqa: E402
from abaw_jax.models.tcn import block_dilations  # noqa: E402
from scripts import bench_detect, bench_extract, bench_mae  # noqa: E402
from scripts.bench_pipeline import (  # noqa: E402
    AFFWILD2_FRAMES, build_store, make_videos, video_lengths)
from scripts.common import xla_flops  # noqa: E402

NUM_CLASSES = 8
NUM_OUTPUTS = {"EXPR": NUM_CLASSES, "MTL": 22}
SETS_C = {"vit": 768, "openface": 17}


@dataclasses.dataclass(frozen=True)
class System:
    """One benchmarked model: its abaw_jax config overrides and its batch shape."""
    key: str
    model: str
    seq_len: int
    batch_size: int
    overrides: dict
    task: str = "EXPR"


def systems(size: str) -> list[System]:
    """The papers' sizes ("full"), a reduced set that trains a few steps a second on a laptop CPU
    ("small"), or the smallest models that still run every code path ("tiny", for tests)."""
    if size == "tiny":
        a = dict(d_model=16, num_layers=1, num_heads=2, mlp_dim=32)
        b = dict(channels=(16, 16), dilations=(1, 2), d_model=16, num_layers=1, num_heads=2,
                 mlp_dim=32, head_dim=8)
        c = dict(d_affine=8, num_layers=1, num_heads=2)
        return [System("A", "transformer", 16, 4, a), System("B", "tcn", 16, 4, b),
                System("C", "fusion", 16, 4, c),
                System("A-MTL", "transformer", 16, 4, a, "MTL"),
                System("B-MTL", "tcn", 16, 4, b, "MTL"),
                System("C-MTL", "fusion", 1, 32, c, "MTL")]
    if size == "small":
        # A at its own width (768 = the features, no input projection), fewer layers.
        a = dict(num_layers=2, mlp_dim=1024)
        b = dict(channels=(128, 64, 64), d_model=64, num_layers=2, num_heads=4, mlp_dim=128,
                 head_dim=32)
        return [System("A", "transformer", 100, 8, a),
                System("B", "tcn", 150, 8, b),
                System("C", "fusion", 128, 8, dict(d_affine=32, num_layers=2, num_heads=4)),
                System("A-MTL", "transformer", 100, 8, a, "MTL"),
                System("B-MTL", "tcn", 150, 8, b, "MTL"),
                System("C-MTL", "fusion", 1, 512, dict(d_affine=64, num_layers=2), "MTL")]
    return [
        System("A", "transformer", 100, 512, {}),
        System("B", "tcn", 300, 32, {}),
        System("C", "fusion", 256, 32, {}),
        System("A-MTL", "transformer", 100, 512, {}, "MTL"),
        System("B-MTL", "tcn", 300, 32, {}, "MTL"),
        System("C-MTL", "fusion", 1, 512, {}, "MTL"),
    ]


@dataclasses.dataclass(frozen=True)
class Images:
    """An image workload of the extract or MAE rows and its batch shape."""
    key: str            # "extract" or "MAE"
    model: str          # extract: an encoders.load_encoder spec; MAE: a dims name of bench_mae
    image_size: int
    batch_size: int
    steps: int          # timed steps per implementation

    @property
    def mae_dims(self) -> dict:
        return getattr(bench_mae, self.model)


def image_workloads(size: str) -> list[Images]:
    """ViT-B/16 extraction and MAE at the papers' sizes (GPU batches of 256); on a CPU ("small")
    the same ViT-B/16 at batch 8 (about 3 s a batch on 2 cores) and bench_mae's 48 px MAE at
    batch 64; "tiny": a 2-layer ViT-Ti/16 at 32 px and the tests' 32 px MAE."""
    mae = {"tiny": "TINY", "small": "SMALL", "full": "BASE"}[size]
    mae_image = getattr(bench_mae, mae)["image_size"]
    if size == "tiny":
        return [Images("extract", "vit:Ti/16,depth=2", 32, 2, 2),
                Images("MAE", mae, mae_image, 4, 2)]
    if size == "small":
        return [Images("extract", "vit:B/16", 224, 8, 3), Images("MAE", mae, mae_image, 64, 5)]
    return [Images("extract", "vit:B/16", 224, 256, 20), Images("MAE", mae, mae_image, 256, 20)]


def make_config(system: System, attention_impl: str = "default", rng_impl: str = "rbg"):
    """The system's published defaults (its config file, for EXPR or the multi-task challenge)
    with the benchmark's sizes. Only the feature sets differ for C: the benchmark store's two
    ("vit" 768-d and "openface" 17-d) stand in for ResNet-18, POSTER2 and FAU."""
    system_file = ROOT / "configs" / config_lib.SYSTEM_FILES[system.model]
    config = config_lib.load_module(system_file).get_config(system.task)
    config.model.attention_impl = attention_impl
    config.rng_impl = rng_impl
    config.data.seq_len = system.seq_len
    config.batch_size = system.batch_size
    config.total_steps = 10_000
    config.data.train_stride = config.data.eval_stride = 0   # the benchmark's windows do not overlap
    if system.model == "fusion":
        config.model.feature_sets = tuple(SETS_C)
    for key, value in system.overrides.items():
        config.model[key] = value
    config_lib.validate(config)
    return config


def mtl_videos(videos, seed: int) -> list:
    """The benchmark's videos with multi-task labels (data/mtl.LABEL_COLUMNS: VA, the class,
    12 AUs), some of each missing."""
    from scripts.bench_pipeline import BenchVideo
    rng = np.random.default_rng(seed)
    out = []
    for v in videos:
        t = v.num_frames
        labels = np.concatenate([rng.uniform(-1, 1, (t, 2)), v.labels[:, None],
                                 (rng.random((t, 12)) < 0.3)], axis=1).astype(np.float32)
        valid = np.repeat(rng.random((t, 3)) > 0.2, [2, 1, 12], axis=1)
        out.append(BenchVideo(v.name, t, np.where(valid, labels, 0.0), valid, v.present))
    return out


# ---------------------------------------------------------------------------------------------
# abaw_jax


def sync(tree) -> None:
    jax.block_until_ready(tree)


def jax_loop(step, state, batches, args) -> tuple[float, float, Any]:
    """Warmup, then `args.repeats` timed runs of `args.steps` steps; the fastest run's
    (seconds, seconds waiting for batches) and the state.

    Step metrics stay on the device (no host round trip in the loop), as in loop.py. The best of
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
    return xla_flops(jitted.lower(state, batch).compile())


# Feature widths of the systems' own inputs, for the paper-size steps: A's ViT-B/16 and B's
# fine-tuned MAE ViT-B/16 (768); C's ResNet-18, POSTER2 and FAU.
PAPER_DIMS = {"vit": 768, "mae_ft": 768, "resnet18": 512, "poster2": 768, "fau": 17}


def paper_size_row(system: System, videos, mesh) -> dict:
    """The system's train step at the papers' sizes, compiled (not run) from shapes alone:
    XLA's FLOP count and the parameter count, so that the table states them on any machine."""
    config = make_config(system)
    if system.model == "fusion":
        config.model.feature_sets = ("resnet18", "poster2", "fau")
        dims = {name: PAPER_DIMS[name] for name in config.model.feature_sets}
    else:
        dims = PAPER_DIMS[config.data.feature_set]
    setup = runs.setup_model(config, dims, mesh)
    step_fn = training.make_temporal_step(setup.model, setup.tx,
                                          training.make_loss(config, videos), setup.schedule,
                                          setup.train_rng)
    repl, rows = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    jitted = sharding.jit(step_fn, mesh, in_shardings=(repl, rows), out_shardings=(repl, repl))
    b, l = system.batch_size, system.seq_len
    shape = lambda *s, dtype=np.float32: jax.ShapeDtypeStruct(s, dtype)  # noqa: E731
    batch = {"present": shape(b, l, dtype=bool), "frame_mask": shape(b, l, dtype=bool)}
    if isinstance(dims, dict):
        batch.update({f"features/{k}": shape(b, l, d) for k, d in dims.items()})
    else:
        batch["features"] = shape(b, l, dims)
    if config.task == "MTL":
        batch.update(labels=shape(b, l, 15), valid=shape(b, l, 15, dtype=bool))
    else:
        batch.update(labels=shape(b, l, dtype=np.int32), valid=shape(b, l, dtype=bool))
    start = time.perf_counter()
    flops = step_flops(jitted, setup.abstract_state, batch)
    params = sum(x.size for x in jax.tree.leaves(setup.abstract_state["params"]))
    return dict(row="paper-size step", seconds=None,
                note=f"params {params:,}, {flops / 1e9:,.1f} GFLOP/step (XLA), "
                     f"{flops / (b * l) / 1e6:,.1f} MFLOP/frame; batch {b} x {l} frames; "
                     f"compiled in {time.perf_counter() - start:.0f} s")


def run_jax(system: System, videos, features, args, mesh) -> tuple[list[dict], float, list]:
    """abaw_jax rows (host, bank, resident); also the step FLOPs and batches for torch."""
    config = make_config(system, args.attention_impl, args.rng_impl)
    config.data.num_threads = args.threads
    data = runs.Data(root=ROOT, train=videos, val=[], features=features)
    # The run train builds, with the features read by the host pipeline.
    config.data.device_bank = "off"
    host = training.build_run(config, data)
    setup, step_fn, host_step = host.setup, host.update, host.run.train_step
    repl, rows = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    frames = system.batch_size * system.seq_len
    results = []

    host_iter = host.run.train_iter
    # A few host batches, kept for the resident and torch rows (identical inputs everywhere).
    kept = [next(host_iter) for _ in range(args.resident)]
    model_batch = host.run.to_batch
    flops = step_flops(host_step, setup.init_fn(setup.init_rng), model_batch(kept[0]))

    state = setup.init_fn(setup.init_rng)
    seconds, waited, state = jax_loop(host_step, state, map(model_batch, host_iter), args)
    params = sum(x.size for x in jax.tree.leaves(setup.abstract_state["params"]))
    results.append(dict(row="abaw_jax host", seconds=seconds, waited=waited,
                        note=f"params {params:,}"))
    host_iter.close()
    del state

    # The same run with the features on the device.
    config.data.device_bank = "on"
    start = time.perf_counter()
    banked = training.build_run(config, data)
    build_s = time.perf_counter() - start
    index_iter = banked.run.train_iter
    state = setup.init_fn(setup.init_rng)
    seconds, waited, state = jax_loop(banked.run.train_step, state,
                                      map(banked.run.to_batch, index_iter), args)
    results.append(dict(row="abaw_jax bank", seconds=seconds, waited=waited,
                        note=f"bank {banked.bank.nbytes / 2**20:.0f} MiB, run with its bank "
                             f"built in {build_s:.1f} s"))
    index_iter.close()
    del state, banked

    resident = [model_batch(b) for b in kept]
    sync(resident)
    state = setup.init_fn(setup.init_rng)
    cycle = (resident[i % len(resident)] for i in range(10**9))
    seconds, waited, state = jax_loop(host_step, state, cycle, args)
    results.append(dict(row="abaw_jax resident", seconds=seconds, waited=None,
                        note=f"compiled {host_step._cache_size()}x for all host/resident steps"))
    del state
    # The input path's cost: how much longer a step takes when its batch comes through the
    # pipeline than when it is already on the device. Time spent inside next() overlaps the
    # (asynchronously dispatched) step on an accelerator, so it is noted, not counted.
    for r in results[:2]:
        r["wait"] = max(0.0, 1.0 - seconds / r["seconds"])
        r["note"] += f", {100 * r.pop('waited') / r['seconds']:.1f}% of the loop in next()"

    if args.ablations:
        # What the cheap measures buy, on resident batches: the state's buffers donated to the
        # step (off here), and no host round trip per step (here the loss is fetched each step).
        plain = sharding.jit(step_fn, mesh, in_shardings=(repl, rows), out_shardings=(repl, repl))
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
    """The PyTorch twins of the systems' published defaults (torch imported only when needed),
    written the way the authors' public code writes them; each takes the abaw_jax model config
    and the number of outputs (8 EXPR logits, or the multi-task model's 22 columns)."""
    import torch
    from torch import nn
    from torch.nn.utils.parametrizations import weight_norm

    def positions(length: int, d: int) -> torch.Tensor:
        pos = torch.arange(length, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(1e4) / d))
        pe = torch.zeros(length, d)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)
        return pe

    class Positions(nn.Module):
        """Sinusoidal positional encoding added to [B, L, d] (batch first)."""

        def __init__(self, d: int, max_len: int = 1024):
            super().__init__()
            self.register_buffer("pe", positions(max_len, d))

        def forward(self, x):
            return x + self.pe[: x.shape[1]]

    def encoder(d, heads, ff, layers, dropout):
        # Post-norm; torch drops the attention weights at the same rate (attention dropout).
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout, batch_first=True)
        return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def padding_mask(present, frame_mask):
        keys = present & frame_mask
        # A window with no allowed key attends to all (a softmax over nothing is NaN).
        return ~(keys | ~keys.any(dim=1, keepdim=True))

    class MaskedBatchNorm(nn.Module):
        """BatchNorm1d over the real frames of a batch only (padding does not move it)."""

        def __init__(self, c, momentum=0.1, eps=1e-5):
            super().__init__()
            self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
            self.register_buffer("mean", torch.zeros(c))
            self.register_buffer("var", torch.ones(c))
            self.momentum, self.eps = momentum, eps

        def forward(self, x, mask):
            if self.training:
                w = mask[..., None].to(x.dtype)
                n = w.sum().clamp(min=1.0)
                mean = (x * w).sum((0, 1)) / n
                var = ((x - mean) ** 2 * w).sum((0, 1)) / n
                with torch.no_grad():
                    self.mean.lerp_(mean, self.momentum)
                    self.var.lerp_(var * n / (n - 1).clamp(min=1.0), self.momentum)
            else:
                mean, var = self.mean, self.var
            return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias

    class Head(nn.Module):
        """Linear -> masked BatchNorm -> Linear (systems B and C), or one Linear."""

        def __init__(self, d, hidden, out, layers=2):
            super().__init__()
            self.layers = layers
            if layers == 1:
                self.out = nn.Linear(d, out)
            else:
                self.hidden, self.norm = nn.Linear(d, hidden), MaskedBatchNorm(hidden)
                self.out = nn.Linear(hidden, out)

        def forward(self, x, mask):
            if self.layers == 1:
                return self.out(x)
            return self.out(self.norm(self.hidden(x), mask))

    def activate(out, how):
        if how == "tanh":
            return torch.tanh(out)
        if how == "tanh_va":
            return torch.cat([torch.tanh(out[..., :2]), out[..., 2:]], dim=-1)
        return out

    class SystemA(nn.Module):
        """Frame masking -> (Linear only if the widths differ) -> PE -> post-norm
        TransformerEncoder with attention dropout -> Linear."""

        def __init__(self, dim, m, num_outputs):
            super().__init__()
            self.mask_prob, self.activation = m.mask_prob, m.output_activation
            self.proj = (nn.Linear(dim, m.d_model)
                         if m.input_proj == "always" or dim != m.d_model else nn.Identity())
            self.pos = Positions(m.d_model)
            self.encoder = encoder(m.d_model, m.num_heads, m.mlp_dim, m.num_layers, m.dropout)
            self.head = nn.Linear(m.d_model, num_outputs)

        def forward(self, x, present, frame_mask):
            if self.training and self.mask_prob:
                x = x * (torch.rand(x.shape[:2] + (1,), device=x.device) >= self.mask_prob)
            h = self.pos(self.proj(x))   # no dropout after the positions (A's code)
            h = self.encoder(h, src_key_padding_mask=padding_mask(present, frame_mask))
            return activate(self.head(h), self.activation)

    class TemporalBlock(nn.Module):
        """Bai et al.'s residual block: weight-normalised causal dilated Conv1d (left padding,
        the code's Chomp1d), one shared PReLU slope, dropout; N(0, .01) residual projection."""

        def __init__(self, cin, cout, k, d, dropout):
            super().__init__()
            self.pad = d * (k - 1)
            self.conv1 = weight_norm(nn.Conv1d(cin, cout, k, dilation=d))
            self.conv2 = weight_norm(nn.Conv1d(cout, cout, k, dilation=d))
            self.act1, self.act2, self.act = nn.PReLU(), nn.PReLU(), nn.PReLU()
            self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)
            self.down = nn.Conv1d(cin, cout, 1) if cin != cout else None
            if self.down is not None:
                nn.init.normal_(self.down.weight, 0.0, 0.01)

        def forward(self, x, keep):
            pad = lambda t: nn.functional.pad(t * keep, (self.pad, 0))  # noqa: E731
            h = self.drop1(self.act1(self.conv1(pad(x))))
            h = self.drop2(self.act2(self.conv2(pad(h))))
            return self.act(h + (x if self.down is None else self.down(x)))

    class SystemB(nn.Module):
        """Causal TCN -> 1x1 Conv1d -> post-norm TransformerEncoder (no positions) -> Linear,
        masked BatchNorm, Linear (one such head per task for the multi-task model)."""

        def __init__(self, dim, m, num_outputs):
            super().__init__()
            chans = [dim, *m.channels]
            dil = block_dilations(m.dilations, len(m.channels))
            self.tcn = nn.ModuleList(TemporalBlock(chans[i], chans[i + 1], m.kernel_size, dil[i],
                                                   m.dropout) for i in range(len(dil)))
            self.proj = nn.Conv1d(chans[-1], m.d_model, 1)
            self.encoder = encoder(m.d_model, m.num_heads, m.mlp_dim, m.num_layers, m.dropout)
            sizes = tuple(m.head_sizes) or (num_outputs,)
            self.heads = nn.ModuleList(Head(m.d_model, m.head_dim, k) for k in sizes)
            self.activation = m.output_activation

        def forward(self, x, present, frame_mask):
            keys = present & frame_mask
            x = (x * keys[..., None]).transpose(1, 2)              # [B, D, L] for Conv1d
            keep = frame_mask[:, None, :].to(x.dtype)
            for block in self.tcn:
                x = block(x, keep)
            h = self.proj(x).transpose(1, 2)
            h = self.encoder(h, src_key_padding_mask=padding_mask(present, frame_mask))
            out = torch.cat([head(h, frame_mask) for head in self.heads], dim=-1)
            return activate(out, self.activation)

    def head_groups(m, num_outputs):
        return tuple(m.head_sizes) or (1,) * num_outputs

    class SystemC(nn.Module):
        """Per-set Linear -> concat -> dropout -> + per-set PE -> TransformerEncoder -> one head
        per output group, Linear, masked BatchNorm, Linear."""

        def __init__(self, dims, m, num_outputs):
            super().__init__()
            self.sets = list(m.feature_sets)
            d = m.d_affine * len(self.sets)
            self.affine = nn.ModuleDict({s: nn.Linear(dims[s], m.d_affine) for s in self.sets})
            self.register_buffer("pe", positions(1024, m.d_affine).repeat(1, len(self.sets)))
            self.drop = nn.Dropout(m.input_dropout)
            self.encoder = encoder(d, m.num_heads, m.mlp_ratio * d, m.num_layers, m.dropout)
            self.heads = nn.ModuleList(Head(d, d // 2, k) for k in head_groups(m, num_outputs))
            self.activation = m.output_activation

        def forward(self, xs, present, frame_mask):
            h = torch.cat([self.affine[s](xs[s]) for s in self.sets], dim=-1)
            h = self.drop(h) + self.pe[: h.shape[1]]
            h = self.encoder(h, src_key_padding_mask=padding_mask(present, frame_mask))
            out = torch.cat([head(h, frame_mask) for head in self.heads], dim=-1)
            return activate(out, self.activation)

    class StaticSetModel(nn.Module):
        """One of C's multi-task models (ABAW7): per frame a token per feature set (perturbed in
        training) and a class token, PE over the tokens, dropout, encoder, linear heads."""

        def __init__(self, dims, m, num_outputs):
            super().__init__()
            self.sets, d = list(m.feature_sets), m.d_affine
            self.noise = m.feature_noise
            self.affine = nn.ModuleDict({s: nn.Linear(dims[s], d) for s in self.sets})
            self.cls = nn.Parameter(torch.randn(d) * 0.02)
            self.register_buffer("pe", positions(len(self.sets) + 1, d))
            self.drop = nn.Dropout(m.input_dropout)
            self.encoder = encoder(d, m.num_heads, m.mlp_ratio * d, m.num_layers, m.dropout)
            self.heads = nn.ModuleList(nn.Linear(d, k) for k in head_groups(m, num_outputs))
            self.activation = m.output_activation

        def perturb(self, x):
            k = max(1, x.shape[-1] // 2)
            u = torch.rand_like(x)
            chosen = u <= u.sort(dim=-1).values[..., k - 1:k]
            return x + chosen * torch.randn_like(x) * self.noise

        def forward(self, xs, present, frame_mask):
            b, l = present.shape
            tokens = [self.affine[s](self.perturb(xs[s]) if self.training and self.noise else xs[s])
                      for s in self.sets]
            h = torch.stack([self.cls.expand_as(tokens[0]), *tokens], dim=2)
            h = (self.drop(h) + self.pe).reshape(b * l, len(self.sets) + 1, -1)
            h = self.encoder(h)[:, 0].reshape(b, l, -1)
            return activate(torch.cat([head(h) for head in self.heads], dim=-1), self.activation)

    class PerTaskModels(nn.Module):
        """C's multi-task setting: one whole model per output group, each group's outputs read
        from its own model."""

        def __init__(self, dims, m, num_outputs):
            super().__init__()
            self.models = nn.ModuleList(StaticSetModel(dims, m, num_outputs)
                                        for _ in m.task_models)
            self.sizes = list(m.task_models)

        def forward(self, xs, present, frame_mask):
            outs, start = [], 0
            for model, size in zip(self.models, self.sizes):
                outs.append(model(xs, present, frame_mask)[..., start:start + size])
                start += size
            return torch.cat(outs, dim=-1)

    def fusion(dims, m, num_outputs):
        if m.get("task_models"):
            return PerTaskModels(dims, m, num_outputs)
        return SystemC(dims, m, num_outputs)

    return {"transformer": SystemA, "tcn": SystemB, "fusion": fusion}


def torch_row(compiled: bool, threads: int) -> str:
    """"torch eager t2", "torch compile t1"; no thread count on CUDA, where it does not apply."""
    import torch
    name = "torch compile" if compiled else "torch eager"
    return name if torch.cuda.is_available() else f"{name} t{threads}"


def torch_loss(config, out, labels, valid):
    """The system's loss in PyTorch: EXPR's (focal or cross-entropy), or the multi-task sum of
    each task's loss over its own valid labels (data/mtl.py's column layout)."""
    import torch
    import torch.nn.functional as F

    def mean(per, w):
        w = w.float()
        return (per * w).sum() / torch.clamp(w.sum(), min=1.0)

    def expr(name, logits, y, w):
        logp = F.log_softmax(logits.float(), dim=-1).gather(-1, y[..., None].long())[..., 0]
        if name == "focal":
            return mean(-config.loss.alpha * (1 - logp.exp()) ** config.loss.gamma * logp, w)
        return mean(-logp, w)

    def ccc(x, y, w):
        w = w.float()
        n = w.sum(0).clamp(min=1.0)
        mx, my = (x * w).sum(0) / n, (y * w).sum(0) / n
        vx, vy = (((x - mx) ** 2) * w).sum(0) / n, (((y - my) ** 2) * w).sum(0) / n
        cov = ((x - mx) * (y - my) * w).sum(0) / n
        return 2 * cov / (vx + vy + (mx - my) ** 2 + 1e-8)

    def va(name, x, y, w):
        x, y, w = x.reshape(-1, 2).float(), y.reshape(-1, 2), w.reshape(-1, 2)
        if name == "ccc":
            return 1 - ccc(x, y, w).mean()
        mse = (((x - y) ** 2) * w).sum(0) / w.float().sum(0).clamp(min=1.0)
        a, b = torch.tensor([0.6, 0.5]), torch.tensor([0.4, 0.5])
        return (a * mse + b * (1 - ccc(x, y, w))).mean()

    def au(name, logits, y, w):
        x = logits.float()
        if name == "bce":
            return mean(F.binary_cross_entropy_with_logits(x, y, reduction="none"), w)
        p = torch.sigmoid(x)
        if name == "focal":
            pt = torch.where(y > 0, p, 1 - p)
            bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
            return mean(config.loss.alpha * (1 - pt) ** config.loss.gamma * bce, w)
        # The weighted asymmetric loss (weights 1 here), the negative term's p detached.
        logp, log1mp = F.logsigmoid(x), F.logsigmoid(-x)
        return mean(-(y * logp + (1 - y) * p.detach() * log1mp), w)

    if config.task != "MTL":
        return expr(config.loss.name, out, labels, valid)
    t, weights = config.loss.tasks, config.loss.task_weights
    return (weights.VA * va(t.VA, out[..., 0:2], labels[..., 0:2], valid[..., 0:2])
            + weights.EXPR * expr(t.EXPR, out[..., 2:10], labels[..., 2].long(), valid[..., 2])
            + weights.AU * au(t.AU, out[..., 10:22], labels[..., 3:15], valid[..., 3:15]))


def run_torch(system: System, batches: list[dict], dims, args, compiled: bool,
              threads: int) -> dict:
    """Trains the PyTorch reference on `batches` (cycled, in memory) with `threads` CPU threads."""
    import torch
    torch.set_num_threads(threads)
    config = make_config(system)
    m = config.model
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    num_outputs = NUM_OUTPUTS[config.task]
    model = torch_models()[system.model](dims, m, num_outputs).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.optimizer.lr,
                            weight_decay=config.optimizer.weight_decay)
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
            loss = torch_loss(config, forward(x, present, frame_mask), labels, valid)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.optimizer.grad_clip:
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
    row = dict(row=torch_row(compiled, threads), seconds=seconds, waited=None,
               frames=system.batch_size * system.seq_len * args.steps,
               params=sum(p.numel() for p in model.parameters()))
    if compiled:
        row["note"] = compile_note(args.warmup, warm_s)
    return row


def compile_note(warmup: int, seconds: float) -> str:
    return f"compile + {warmup} warmup steps {seconds:.0f} s"


# ---------------------------------------------------------------------------------------------


def open_store(args, sets: dict[str, int], frames: int):
    """The cached random stores of `frames` frames (built on first use) and videos with EXPR
    labels."""
    lengths = video_lengths(frames, args.seed)
    stores = {}
    for name, dim in sets.items():
        path = pathlib.Path(args.data) / f"{name}-{dim}d-{frames}"
        build_store(path, lengths, dim, args.seed + len(stores))
        stores[name] = FeatureStore(path)
    return stores, make_videos(lengths, args.seed)


def pipeline_rows(videos, store, args) -> list[dict]:
    """The input pipeline alone: host windows with features, and index batches for the bank."""
    rows = []
    seq_len, batch = 100, args.pipeline_batch
    frames = sum(v.num_frames for v in videos)
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
                              f"{args.threads} threads, store {frames:,} frames"))
    return rows


# ---------------------------------------------------------------------------------------------
# Extraction and MAE: abaw_jax and the torch rows timed step by step, in alternation.


@dataclasses.dataclass
class Contender:
    """One implementation of an image workload: its row, and how to build its step.

    `build` returns ``(step, params)``: a blocking step, and the parameter count printed in the
    note (equal counts check that both sides run the same model), followed by `note`. An optional
    contender (a torch row) that fails is reported in the table instead of ending the run.
    """
    row: str
    build: Callable[[], tuple[Callable[[], None], int]]
    compiled: bool = False
    optional: bool = False
    note: str = ""


def failure_note(e: Exception) -> str:
    """The note of a row that failed: the error on one line, so that the table stays whole."""
    return f"failed: {type(e).__name__}: {' '.join(str(e).split())[:160]}"


def alternate(key: str, batch: int, contenders: list[Contender], args, steps: int) -> list[dict]:
    """Warms up each contender, then times `steps` steps of each, alternating between them.

    An optional row that fails to build or to run its warmup (torch.compile needs a C++
    toolchain; a package may be missing) becomes a row without a rate whose note says why. Rows
    report the median step; notes give the speed relative to the first torch eager row.
    """
    live, rows = [], []
    for c in contenders:
        row = dict(system=key, row=c.row, waited=None, steps=1, frames=batch)
        rows.append(row)
        try:
            step, params = c.build()
            begin = time.perf_counter()
            for _ in range(args.warmup):
                step()
            warm_s = time.perf_counter() - begin
        except Exception as e:
            if not c.optional:
                raise
            row.update(seconds=None, note=failure_note(e))
            continue
        row["note"] = f"params {params:,}" + (f", {c.note}" if c.note else "")
        if c.compiled:
            row["note"] += f", {compile_note(args.warmup, warm_s)}"
        live.append((row, step, []))
    for _ in range(steps):
        for _, step, times in live:
            begin = time.perf_counter()
            step()
            times.append(time.perf_counter() - begin)
    for row, _, times in live:
        row["seconds"] = statistics.median(times)
    eager = next((r for r in rows if r["row"].startswith("torch eager") and r["seconds"]), None)
    for row in rows:
        if eager is not None and row is not eager and row["seconds"]:
            row["note"] += f"; {eager['seconds'] / row['seconds']:.2f}x {eager['row']}"
    return rows


def image_rows(work: Images, args, flops: dict[str, float]) -> list[dict]:
    """extract: abaw_jax's extraction function against timm's ViT; MAE: abaw_jax's MAE train
    step against Hugging Face's ViTMAEForPreTraining. torch eager runs at each --torch-threads
    count, torch.compile at the first."""
    dtype = sharding.compute_dtype("auto")
    batch = work.batch_size
    if work.key == "extract":
        step, flop, params, vit = bench_extract.make_jax(work.model, work.image_size, batch, dtype,
                                                          args.attention_impl)

        def twin(threads: int, compiled: bool):
            return bench_extract.make_timm(vit, batch, threads, compiled)
    else:
        step, flop, params = bench_mae.make_jax(work.mae_dims, batch, dtype, args.attention_impl)

        def twin(threads: int, compiled: bool):
            return bench_mae.make_torch(work.mae_dims, batch, threads, compiled)
    flops[work.key] = flop
    note = f"{flop / batch / 1e9:.3g} GFLOP/image (XLA), {np.dtype(dtype).name}"
    contenders = [Contender("abaw_jax resident", lambda: (step, params), note=note)]
    if not args.no_torch:
        threads = [int(t) for t in args.torch_threads.split(",")]
        contenders += [Contender(torch_row(False, t), functools.partial(twin, t, False),
                                 optional=True) for t in threads]
        if not args.no_compile:
            contenders.append(Contender(torch_row(True, threads[0]),
                                        functools.partial(twin, threads[0], True), True, True))
    return alternate(work.key, batch, contenders, args, work.steps)


# ---------------------------------------------------------------------------------------------
# The table.


def cpu_model() -> str:
    """The processor's name (ratios against PyTorch differ between processors)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown CPU"


def print_header(peak: float | None) -> None:
    head = f"{'system':<8}{'row':<20}{'frames/s':>12}{'ms/step':>9}{'wait':>7}{'GFLOP/s':>9}"
    head += f"{'MFU':>7}" if peak else ""
    print(head + "  note", flush=True)


def print_row(r: dict, flops: dict[str, float], peak: float | None) -> None:
    """One row; one without seconds (a torch row that failed) prints only its note."""
    note = "  " + r["note"] if r.get("note") else ""
    if r.get("seconds") is None:
        print(f"{r['system']:<8}{r['row']:<20}{'-':>12}" + note, flush=True)
        return
    fps = r["frames"] / r["seconds"]
    steps = r.get("steps")
    ms = f"{1e3 * r['seconds'] / steps:9.1f}" if steps else f"{'':>9}"
    wait = f"{100 * r['wait']:6.1f}%" if r.get("wait") is not None else f"{'':>7}"
    f = flops.get(r["system"], 0.0)
    rate = f * steps / r["seconds"] if steps and f else 0.0
    # A ViT-B/16 on a CPU extracts a few images a second: a decimal keeps its rate readable.
    fps_text = f"{fps:>12,.0f}" if fps >= 100 else f"{fps:>12.2f}"
    line = f"{r['system']:<8}{r['row']:<20}{fps_text}{ms}{wait}"
    line += f"{rate / 1e9:9.1f}" if rate else f"{'':>9}"
    if peak:
        line += f"{100 * rate / (peak * 1e12):6.1f}%" if rate else f"{'':>7}"
    print(line + note, flush=True)


SECTIONS = {"a": "A", "b": "B", "c": "C", "mtl": "MTL", "extract": "extract", "mae": "MAE",
            "pipeline": "pipeline", "detect": "detect"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--small", action="store_true", help="reduced sizes for a CPU")
    sizes.add_argument("--tiny", action="store_true",
                       help="the smallest sizes, seconds per section (tests; numbers mean nothing)")
    parser.add_argument("--systems", default="A,B,C,MTL,extract,mae,pipeline",
                        help="sections to run, any of A,B,C,MTL,extract,mae,pipeline,detect "
                        "(MTL: the three systems' multi-task models; detect: Haar vs "
                        "BlazeFace on --video, not run by default)")
    parser.add_argument("--paper-size", default="auto", choices=("auto", "on", "off"),
                        help="a row per system with its paper-size step's XLA FLOPs and "
                        "parameters, compiled from shapes (auto: on except with --tiny)")
    parser.add_argument("--video", help="detect: clip (default ../shared/data/videos/fer_woman2.mp4)")
    parser.add_argument("--face-models", help="detect: folder of the BlazeFace .tflite files "
                        "for the LiteRT rows (default ../shared/data/models/mediapipe)")
    parser.add_argument("--data", default="/tmp/abaw_benchmark", help="store cache directory")
    parser.add_argument("--frames", type=int, default=0,
                        help="frames in the training rows' store (default 60,000 with --small, "
                             "20,000 with --tiny, else 2,610,374)")
    parser.add_argument("--pipeline-frames", type=int, default=0,
                        help="frames in the pipeline rows' store (default Aff-Wild2's 2,610,374, "
                             "also with --small; --tiny: --frames)")
    parser.add_argument("--steps", type=int, default=0,
                        help="timed steps of the training rows (default 10 / 50; --tiny 2)")
    parser.add_argument("--image-steps", type=int, default=0,
                        help="timed steps per implementation of the extract and MAE rows "
                             "(default 20; --small: 3 extract, 5 MAE; --tiny 2)")
    parser.add_argument("--image-batch", type=int, default=0,
                        help="batch of the extract and MAE rows (default 256; --small: 8 "
                             "extract, 64 MAE; --tiny: 2, 4)")
    parser.add_argument("--warmup", type=int, default=0,
                        help="untimed steps (compilation) of every row (default 3; --tiny 1)")
    parser.add_argument("--repeats", type=int, default=0,
                        help="timed runs of --steps steps per training row; the fastest is "
                             "reported (default 3; --tiny 1)")
    parser.add_argument("--threads", type=int, default=2, help="grain threads")
    parser.add_argument("--resident", type=int, default=4, help="batches held for compute rows")
    parser.add_argument("--pipeline-batch", type=int, default=0,
                        help="windows per batch of the pipeline rows (default 64; --tiny 8)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--attention-impl", default="default",
                        choices=attention_lib.IMPLEMENTATIONS,
                        help="attention kernel of every abaw_jax model (abaw_jax.models.attention)")
    parser.add_argument("--rng-impl", default="rbg", choices=config_lib.RNG_IMPLS,
                        help="PRNG of dropout and masking in the A, B, C steps (config.rng_impl)")
    parser.add_argument("--ablations", action="store_true",
                        help="also time abaw_jax without buffer donation and with a host round "
                             "trip per step")
    parser.add_argument("--torch-threads", default=str(os.cpu_count()),
                        help="CPU threads for torch rows, a list tries each (e.g. 1,2)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="device peak for MFU (989 for H100/H200 bf16); 0: no MFU column")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    args.size = "tiny" if args.tiny else "small" if args.small else "full"
    chosen = [x.strip().lower() for x in args.systems.split(",") if x.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"--systems: unknown {', '.join(unknown)}; known: "
                     f"A,B,C,MTL,extract,mae,pipeline,detect")
    args.sections = {SECTIONS[x] for x in chosen}
    tiny = args.tiny
    args.frames = args.frames or (20_000 if tiny else 60_000 if args.small else AFFWILD2_FRAMES)
    args.pipeline_frames = args.pipeline_frames or (args.frames if tiny else AFFWILD2_FRAMES)
    args.steps = args.steps or (2 if tiny else 10 if args.small else 50)
    args.warmup = args.warmup or (1 if tiny else 3)
    args.repeats = args.repeats or (1 if tiny else 3)
    args.pipeline_batch = args.pipeline_batch or (8 if tiny else 64)
    args.paper_size = args.paper_size == "on" or (args.paper_size == "auto" and not tiny)
    if not args.no_torch and importlib.util.find_spec("torch") is None:
        print("torch is not installed: no torch rows")
        args.no_torch = True
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.no_torch:
        # PyTorch's rows share the GPU with JAX in this process: JAX's default preallocation (75%
        # of the memory) would leave too little to the full-size torch MAE and compiled models.
        # Read when JAX starts its backend, which nothing has done yet.
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    mesh = sharding.make_mesh()
    device = jax.devices()[0]
    torch_version, torch_dtype = "", ""
    if not args.no_torch:
        import torch
        cuda = torch.cuda.is_available()
        torch_version = (f"; torch {torch.__version__} on "
                         f"{torch.cuda.get_device_name() if cuda else 'cpu'}")
        torch_dtype = ", torch " + ("bf16 autocast" if cuda else "float32")
    print(f"jax {jax.__version__} on {len(jax.devices())} x {device.device_kind}{torch_version}; "
          f"{os.cpu_count()} CPUs ({cpu_model()}), load {os.getloadavg()[0]:.1f}")

    # Stores first (their builds print), so that the table below is printed in one piece.
    chosen = [s for s in systems(args.size)
              if s.key in args.sections or (s.task == "MTL" and "MTL" in args.sections)]
    if chosen:
        needs_c = any(s.model == "fusion" for s in chosen)
        stores, videos = open_store(args, SETS_C if needs_c else {"vit": 768}, args.frames)
        print(f"training rows: store {args.frames:,} frames in {len(videos)} videos; best of "
              f"{args.repeats} runs of {args.steps} steps after {args.warmup} warmup")
        for system in chosen:
            print(f"  {system.key}  {system.model} {system.task}: batch {system.batch_size} x "
                  f"{system.seq_len} frames, {system.overrides or 'paper sizes'}")
    if "pipeline" in args.sections:
        pipe_stores, pipe_videos = open_store(args, {"vit": 768}, args.pipeline_frames)
        print(f"pipeline rows: store {args.pipeline_frames:,} frames in {len(pipe_videos)} "
              f"videos; best of {args.repeats} runs of {4 * args.steps} batches")
    works = [w for w in image_workloads(args.size) if w.key in args.sections]
    works = [dataclasses.replace(w, batch_size=args.image_batch or w.batch_size,
                                 steps=args.image_steps or w.steps) for w in works]
    dtype = np.dtype(sharding.compute_dtype("auto")).name
    for w in works:
        what = (f"{w.model} at {w.image_size} px, mean pooling" if w.key == "extract" else
                f"bench_mae.{w.model} dims, {w.image_size} px, 75% masking, norm-pix loss, "
                f"AdamW")
        print(f"{w.key} rows: {what}; batch {w.batch_size}, abaw_jax {dtype}{torch_dtype}; median "
              f"of {w.steps} steps alternating between the rows, after {args.warmup} warmup")
    print(flush=True)

    flops: dict[str, float] = {}
    print_header(args.peak_tflops)

    def emit(found: list[dict]) -> None:
        for r in found:
            print_row(r, flops, args.peak_tflops)
        print(flush=True)

    if "pipeline" in args.sections:
        emit(pipeline_rows(pipe_videos, pipe_stores["vit"], args))
    full = {s.key: s for s in systems("full")}
    for system in chosen:
        features = FeatureSets(stores) if system.model == "fusion" else stores["vit"]
        dims = dict(features.dims) if system.model == "fusion" else features.dim
        task_videos = mtl_videos(videos, args.seed) if system.task == "MTL" else videos
        found, flops[system.key], kept = run_jax(system, task_videos, features, args, mesh)
        torch_threads = [] if args.no_torch else [int(t) for t in args.torch_threads.split(",")]
        for i, threads in enumerate(torch_threads):
            found.append(run_torch(system, kept, dims, args, False, threads))
            found[-1]["note"] = f"params {found[-1]['params']:,}"
            # Compiling takes minutes on a CPU: once, with the first thread count.
            if not args.no_compile and i == 0:
                try:
                    found.append(run_torch(system, kept, dims, args, True, threads))
                except Exception as e:  # Inductor needs a working C++ toolchain, and may fail.
                    found.append(dict(row=torch_row(True, threads), seconds=None,
                                      note=failure_note(e)))
        if args.paper_size:
            found.append(paper_size_row(full[system.key], task_videos, mesh))
        for r in found:
            r.update(system=system.key, steps=args.steps)
        emit(found)
    for work in works:
        emit(image_rows(work, args, flops))
    if "detect" in args.sections:
        bench_detect.print_rows(bench_detect.rows(args.video, args.face_models))
        bench_detect.print_ckplus(bench_detect.ckplus_rows())


if __name__ == "__main__":
    main()
