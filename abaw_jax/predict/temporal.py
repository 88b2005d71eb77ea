"""Trained temporal models for prediction: a workdir restored as `evaluate` restores it, and its
model run over one clip's features in sliding windows.

`load_run` restores through the functions `evaluate` uses: `checkpoints.find_step` /
`checkpoints.restore_params` pick and read the checkpoint (committed steps only), and
`runs.open_features` finds the training feature store, whose meta.json tells the features'
dtype and, when `abaw_jax.extract` wrote it, the encoder that made them. The input width is
read off the checkpoint's parameter shapes, so a workdir restores without its store.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from abaw_jax import checkpoints, models, runs, sharding
from abaw_jax.data import affwild2, pipeline
from abaw_jax.data import features as features_lib
from abaw_jax.predict.table import PredictError


@dataclasses.dataclass
class Run:
    """One training workdir, restored: its task, model, parameters and input description."""

    workdir: pathlib.Path
    config: Any
    task: str
    step: int
    model: Any
    params: Any
    feature_dim: int
    store: features_lib.FeatureStore | None   # the training features, when found and of this width
    store_error: str = ""                     # why no store, when none

    @property
    def store_dtype(self) -> np.dtype | None:
        """The training features' dtype on disk, when known."""
        return self.store.dtype if self.store is not None else None

    @property
    def extractor(self) -> str:
        """The training store's extractor, "" when unknown."""
        return self.store.extractor if self.store is not None else ""

    @property
    def store_path(self) -> pathlib.Path | None:
        return self.store.path if self.store is not None else None

    @property
    def seq_len(self) -> int:
        """Window length the model was trained with."""
        return int(self.config.data.seq_len)

    @property
    def stride(self) -> int:
        """Step between evaluation windows (the run's eval_stride, else seq_len)."""
        return int(self.config.data.eval_stride or self.config.data.seq_len)


def training_store(config) -> tuple[features_lib.FeatureStore | None, str]:
    """(the run's training feature store, "") as `runs.open_features` opens it for evaluation,
    or (None, why) when it is not there (prediction needs only its meta.json)."""
    try:
        store = runs.open_features(config, runs.data_root(config, build=False))
    except (ValueError, OSError) as e:   # StoreError, ConfigError: a missing or unreadable store
        return None, str(e).splitlines()[0] if str(e) else type(e).__name__
    return store, ""


def input_dim(model, seq_len: int, saved, candidates=()) -> int:
    """The model's input feature size, read off the saved parameter shapes.

    The parameters whose shapes change with the input size are found by building the model at
    two sizes; their saved shapes then give the size the run was trained with. A model with no
    such parameter in its checkpoint (a Transformer fed features of its own width has no input
    projection) took the one of `candidates` (e.g. its width) at which it builds exactly the
    saved parameters.
    """
    def shapes(dim):
        x = jnp.zeros((1, seq_len, dim), jnp.float32)
        m = jnp.ones((1, seq_len), bool)
        tree = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x, m, m,
                                                 train=False)["params"])
        return {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(tree)}

    a, b = shapes(3), shapes(5)
    flat = {jax.tree_util.keystr(p): tuple(v.shape)
            for p, v in jax.tree_util.tree_leaves_with_path(saved)}
    for key, shape in a.items():
        if shape != b[key] and key in flat:
            axis = next(i for i, (u, v) in enumerate(zip(shape, b[key])) if u != v)
            return int(flat[key][axis])
    for dim in candidates:
        if dim and shapes(int(dim)) == flat:
            return int(dim)
    raise PredictError("cannot tell the model's input size from its checkpoint")


def load_run(workdir: str | os.PathLike, checkpoint: str = "best") -> Run:
    """Restores a training workdir's temporal model (one device) for prediction."""
    workdir = pathlib.Path(workdir)
    config = runs.load_run_config(workdir)
    if config.model.name == "fusion":
        raise PredictError(
            f"{workdir}: model 'fusion' reads several feature sets "
            f"({', '.join(config.model.feature_sets)}); predict computes one set from the video, "
            f"so it runs single-set models (transformer, tcn)")
    mesh = sharding.make_mesh(1)
    model = models.build_model(config.model, affwild2.NUM_OUTPUTS[config.task],
                               sharding.compute_dtype(config.compute_dtype, mesh))
    _, saved = checkpoints.state_metadata(workdir, checkpoint)
    dim = input_dim(model, config.data.seq_len, saved["params"],
                    candidates=(config.model.get("d_model"),))
    setup = runs.setup_model(config, dim, mesh)
    step, state = runs.restore(workdir, setup.abstract_state, checkpoint)
    store, why = training_store(config)
    if store is not None and store.dim != dim:
        store, why = None, f"{store.path} holds {store.dim}-d features, the model takes {dim}-d"
    return Run(workdir=workdir, config=config, task=config.task, step=int(step),
               model=setup.model, params=models.model_variables(state), feature_dim=dim,
               store=store, store_error=why)


def round_to_store(features: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
    """Features as training read them: stored in the store's dtype, read back as float32."""
    if dtype is None or dtype == np.float32:
        return features
    with np.errstate(over="ignore"):
        return features.astype(dtype).astype(np.float32)


def bucket(n: int, cap: int) -> int:
    """Batch sizes are powers of two up to `cap`, so few shapes are compiled."""
    return min(cap, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


class Compiled:
    """A jitted function compiled ahead of time per input shape; compile seconds go to
    `compile_times[name]`, so that stage timings can leave them out."""

    def __init__(self, fn, name: str, compile_times: dict):
        self.fn = sharding.jit(fn, None)   # one device: the default backend's
        self.name = name
        self.cache: dict = {}
        self.compile_times = compile_times

    def __call__(self, params, *args):
        key = tuple((a.shape, a.dtype) for a in jax.tree.leaves(args))
        if key not in self.cache:
            t0 = time.perf_counter()
            self.cache[key] = self.fn.lower(params, *args).compile()
            self.compile_times[self.name] = (self.compile_times.get(self.name, 0.0)
                                             + time.perf_counter() - t0)
        return self.cache[key](params, *args)


def run_temporal(run: Run, features: np.ndarray, present: np.ndarray, *, batch_size: int = 32,
                 compiled: Compiled | None = None) -> np.ndarray:
    """Raw per-frame outputs ``[T, C]`` of one run, read as `evaluate` reads them: sliding
    windows with overlaps averaged (in probability space, as ensembles average), or, for a run
    with `data.eval_readout="last"`, each frame from the window that ends at it."""
    t = len(present)
    seq_len = run.seq_len
    if run.config.data.get("eval_readout", "average") == "last":
        starts, reads = pipeline.causal_windows(t, seq_len)
    else:
        starts = pipeline.window_starts(t, seq_len, run.stride,
                                        run.config.data.get("eval_last", "aligned") == "truncated")
        reads = None
    bs = bucket(len(starts), batch_size)
    compiled = compiled or Compiled(runs.make_predict(run.model), "temporal", {})
    assembler = pipeline.Assembler([t], affwild2.NUM_OUTPUTS[run.task], task=run.task)
    feats = round_to_store(features, run.store_dtype)
    for i in range(0, len(starts), bs):
        chunk = starts[i:i + bs]
        k = len(chunk)
        x = np.zeros((bs, seq_len, feats.shape[1]), np.float32)
        p = np.zeros((bs, seq_len), bool)
        m = np.zeros((bs, seq_len), bool)
        for row, s in enumerate(chunk):
            # A causal window shows the frames up to its read position only.
            n = min(seq_len, t - s) if reads is None else int(reads[i + row]) + 1
            x[row, :n], p[row, :n], m[row, :n] = feats[s:s + n], present[s:s + n], True
        batch = {"features": x, "present": p, "frame_mask": m}
        out = np.asarray(compiled(run.params, batch), np.float32)
        readout = m[:k]
        if reads is not None:
            readout = np.zeros((k, seq_len), bool)
            readout[np.arange(k), reads[i:i + k]] = True
        assembler.add(out[:k], np.zeros(k, np.int64), chunk, readout)
    return assembler.result()[0]
