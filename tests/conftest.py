"""Shared fixtures: a tiny demo dataset in the official layout and tiny training configs; a timm
ViT state dict for the weight-reading tests."""

from __future__ import annotations

import os
import pathlib

# Tests check behaviour, not speed: XLA's cheaper compile path (no LLVM and backend optimisation
# passes) cuts their compile time by about a third. Set before JAX is imported, so that the
# subprocesses the tests start (command lines, multi-process runs) inherit it; a test that
# measures speed runs with it off (JAX_DISABLE_MOST_OPTIMIZATIONS=0 in its environment).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

TINY_DIM = 32


def load_config(name: str, arg: str | None = None):
    """Loads `configs/<name>.py` the way the command line does."""
    from abaw_jax import config as config_lib
    return config_lib.load_config_file(ROOT / "configs" / f"{name}.py", arg)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> pathlib.Path:
    """A small demo dataset (a dozen short videos, 32-d features) built once per test session."""
    from abaw_jax.data import demo
    out = tmp_path_factory.mktemp("demo")
    return demo.build_demo(out / "affwild2", num_videos=12, seed=0, length_scale=0.03,
                           feature_sets={"vit": TINY_DIM, "openface": 17})


def tiny_config(task: str, root: pathlib.Path, **overrides):
    """A config of `task` with a tiny model and a short run on `root`."""
    c = load_config(task.lower(), "demo")
    c.data.root = str(root)
    c.data.seq_len = 16
    c.data.num_threads = 1
    c.model.d_model = 16
    c.model.num_heads = 2
    c.model.mlp_dim = 32
    c.model.num_layers = 1
    c.batch_size = 8
    c.total_steps = 6
    c.optimizer.warmup_steps = 2
    c.log_every = 2
    c.eval_every = 3
    c.checkpoint_every = 3
    c.progress = False
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def timm_state(width=32, depth=2, mlp=64, patch=8, grid=4, seed=0):
    """A random timm ViT state dict (numpy): ``depth`` blocks, a class token, a 10-class head."""
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    state = {"patch_embed.proj.weight": r(width, 3, patch, patch), "patch_embed.proj.bias": r(width),
             "cls_token": r(1, 1, width), "pos_embed": r(1, 1 + grid * grid, width),
             "norm.weight": r(width), "norm.bias": r(width), "head.weight": r(10, width), "head.bias": r(10)}
    for i in range(depth):
        b = f"blocks.{i}."
        state.update({
            b + "norm1.weight": r(width), b + "norm1.bias": r(width),
            b + "attn.qkv.weight": r(3 * width, width), b + "attn.qkv.bias": r(3 * width),
            b + "attn.proj.weight": r(width, width), b + "attn.proj.bias": r(width),
            b + "norm2.weight": r(width), b + "norm2.bias": r(width),
            b + "mlp.fc1.weight": r(mlp, width), b + "mlp.fc1.bias": r(mlp),
            b + "mlp.fc2.weight": r(width, mlp), b + "mlp.fc2.bias": r(width)})
    return state
