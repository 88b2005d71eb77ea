"""A temporal run's services, shared by training, evaluation, ensembles and predict.

- Data: the annotations and feature stores a config names (the built-in demo dataset when it
  names none), with folds applied.
- Model setup: the temporal model and optimizer of a config and the shapes of its train state,
  the target that checkpoints restore onto.
- Restoring a workdir (checking that it holds the task and model the config asks for) and
  predicting every frame of a split with sliding windows.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from abaw_jax import checkpoints, optim, sharding, workdirs
from abaw_jax import config as config_lib
from abaw_jax.data import affwild2, features as features_lib, pipeline
from abaw_jax.rngs import make_rngs
from abaw_jax import models
from abaw_jax.models import build_model


class RunError(ValueError):
    """A workdir does not hold what the command needs (the message names it)."""


# ---------------------------------------------------------------------------------------------
# Data.


@dataclasses.dataclass
class Data:
    """The datasets of a run, resolved from the config."""
    root: pathlib.Path
    train: list[affwild2.Video]
    val: list[affwild2.Video]
    features: Any  # FeatureStore, or FeatureSets for the fusion model

    @property
    def feature_dims(self) -> int | dict[str, int]:
        """The input width, or {set: width} for several feature sets."""
        if isinstance(self.features, features_lib.FeatureSets):
            return dict(self.features.dims)
        return self.features.dim


def demo_root(config: ml_collections.ConfigDict, *, build: bool = True) -> pathlib.Path:
    """The demo dataset of `config.data.demo` (built and cached on first use when `build`)."""
    from abaw_jax.data import demo
    d = config.data.demo
    kwargs = dict(num_videos=d.num_videos, seed=d.seed, length_scale=d.length_scale,
                  feature_sets=demo_sets(config))
    return demo.ensure_demo(**kwargs) if build else demo.demo_dir(**kwargs)


# How each named feature set of the systems is produced, for the error of a missing store.
FEATURE_HINTS = {
    "vit": "python -m abaw_jax.extract --config configs/extract_vit.py --workdir <root>/features/vit "
           "--config.frames=<root> --config.encoder=<ViT-B/16 in21k weights>",
    "mae_ft": "python -m abaw_jax.pretrain --config configs/mae_face.py --workdir runs/mae; "
              "python -m abaw_jax.pretrain --config configs/finetune_expr.py --workdir runs/ft "
              "--config.init_from=runs/mae; python -m abaw_jax.extract --config "
              "configs/extract_vit.py:mae --workdir <root>/features/mae_ft --config.frames=<root> "
              "--config.encoder=runs/ft/encoder",
    "resnet18": "python -m abaw_jax.extract --config configs/extract_vit.py:resnet18 --workdir "
                "<root>/features/resnet18 --config.frames=<root> --config.encoder=<ResNet-18 "
                "weights (.safetensors, MS-Celeb-1M)>",
    "poster2": "per-video .npy files of POSTER++ (POSTER V2) 768-d features: python -m "
               "abaw_jax.data.features import-npy <npy folder> <root>/features/poster2",
    "fau": "OpenFace 2.0 FeatureExtraction CSVs (AU01_r..AU45_r): python -m "
           "abaw_jax.data.features import-openface <csv folder> <root>/features/fau",
    "openface": "OpenFace 2.0 CSVs: python -m abaw_jax.data.features import-openface "
                "<csv folder> <root>/features/openface",
}


def _store(path: pathlib.Path, name: str):
    """The feature store at `path`; a missing one names the command that writes it."""
    if not (path / "meta.json").exists() and name in FEATURE_HINTS:
        raise features_lib.StoreError(
            f"{path}: no feature store ({name!r} features); write it with: {FEATURE_HINTS[name]}")
    return features_lib.FeatureStore(path)


def demo_sets(config: ml_collections.ConfigDict) -> dict[str, int]:
    """The demo's feature sets: {"vit": data.demo.dim, "openface": 17}, or `data.demo.sets`
    ("name:dim,name:dim", e.g. system C's table-1 sets "resnet18:512,poster2:768,fau:17")."""
    spec = config.data.demo.get("sets", "")
    if not spec:
        return {"vit": config.data.demo.dim, "openface": 17}
    out = {}
    for item in spec.split(","):
        name, _, dim = item.partition(":")
        if not name.strip() or not dim.strip().isdigit():
            raise config_lib.ConfigError(f"config.data.demo.sets = {spec!r}: items are name:dim")
        out[name.strip()] = int(dim)
    return out


def demo_feature_set(config: ml_collections.ConfigDict) -> str:
    """The set a single-store run reads from the built-in demo dataset: `data.feature_set` when
    the demo has it, else the demo's synthetic frame features (system B's "mae_ft" comes from
    its encoder, which the demo does not have). A dataset root never gets this substitute."""
    sets = demo_sets(config)
    if config.data.feature_set in sets:
        return config.data.feature_set
    return next(n for n in sets if n != "openface") if len(sets) > 1 else next(iter(sets))


def describe_features(features) -> list[str]:
    """One line per feature store a run reads: its path, extractor and width."""
    stores = (features.stores if isinstance(features, features_lib.FeatureSets)
              else {"": features})
    lines = []
    for name, store in stores.items():
        store = getattr(store, "store", store)
        label = f" {name!r}" if name else ""
        extractor = store.extractor or "extractor not recorded"
        lines.append(f"Feature store{label}: {store.path} ({extractor}, {store.dim}-d)")
    return lines


def open_features(config: ml_collections.ConfigDict, root: pathlib.Path):
    """The feature store of the run, or the aligned feature sets a fusion model reads."""
    if config.model.name != "fusion":
        if config.data.features:
            return features_lib.FeatureStore(config.data.features)
        name = config.data.feature_set if config.data.root else demo_feature_set(config)
        return _store(root / "features" / name, name)
    given = dict(item.split("=", 1) for item in config.data.features.split(",") if "=" in item)
    if config.data.features and not given:
        raise config_lib.ConfigError(
            f"config.data.features = {config.data.features!r}: a fusion model needs "
            f"'name=path,name=path' (or empty for <root>/features/<name>)")
    for name in config.model.feature_sets:
        if name not in given:
            _store(root / "features" / name, name)   # a clear error when one is missing
    return features_lib.FeatureSets(
        {name: given.get(name, root / "features" / name) for name in config.model.feature_sets})


def data_root(config: ml_collections.ConfigDict, *, build: bool = True) -> pathlib.Path:
    """The dataset root of `config`: data.root, else the demo dataset's folder (built when
    `build`)."""
    if config.data.root:
        return pathlib.Path(config.data.root).expanduser()
    return demo_root(config, build=build)


def resolve_data(config: ml_collections.ConfigDict) -> Data:
    """Loads annotations and opens the features; builds the demo dataset when none is set."""
    root = data_root(config)
    if not config.data.root:
        if jax.process_index() == 0:
            print(f"No dataset configured (config.data.root): using the built-in demo dataset at "
                  f"{root}", file=sys.stderr, flush=True)
    store = open_features(config, root)
    if jax.process_index() == 0:
        if not config.data.root and config.model.name != "fusion" and not config.data.features \
                and demo_feature_set(config) != config.data.feature_set:
            print(f"The demo dataset has no {config.data.feature_set!r} features: reading its "
                  f"synthetic {demo_feature_set(config)!r} set instead", file=sys.stderr)
        print("\n".join(describe_features(store)), file=sys.stderr, flush=True)
    if config.task == "MTL":
        # s-Aff-Wild2: each video is the sequence of its annotated frames (data/mtl.py).
        from abaw_jax.data import mtl
        train_rows, val_rows = mtl.load_mtl_split(root, "train"), mtl.load_mtl_split(root, "val")
        store = mtl.annotated_rows(store, train_rows + val_rows)
        train = [mtl.as_video(v) for v in train_rows]
        val = [mtl.as_video(v) for v in val_rows]
    else:
        train = affwild2.load_split(root, config.task, "train")
        val = affwild2.load_split(root, config.task, "val")
    if config.data.fold > 0:
        from abaw_jax.data.folds import fold_split
        train, val = fold_split(train, val, config.data.fold, config.data.num_folds,
                                config.data.fold_scheme)
    for split, videos in (("train", train), ("val", val)):
        missing = [v.name for v in videos if v.name not in store]
        if missing:
            raise features_lib.StoreError(
                f"features at {config.data.features or root / 'features'} lack {len(missing)} "
                f"{split} videos of {config.task}, e.g. {missing[:3]}"
                f"{workdirs.index_note(store)}")
    return Data(root=root, train=train, val=val, features=store)


def steps_per_epoch(config: ml_collections.ConfigDict, videos: list[affwild2.Video]) -> int:
    """Global batches in one pass over the training windows of `videos`."""
    windows = pipeline.num_windows([v.num_frames for v in videos], config.data.seq_len,
                                   config.data.train_stride or config.data.seq_len)
    return max(1, windows // config.batch_size)


# ---------------------------------------------------------------------------------------------
# Model setup.


def model_inputs(batch: dict) -> tuple:
    """(features, present, frame_mask); features is {set: array} when several sets are read."""
    sets = {k.split("/", 1)[1]: v for k, v in batch.items() if k.startswith("features/")}
    return (sets or batch["features"]), batch["present"], batch["frame_mask"]


def model_keys(batch: dict) -> dict:
    """The arrays the model reads (features, or features/<set>, and the two frame masks)."""
    return {k: v for k, v in batch.items()
            if k in ("features", "present", "frame_mask") or k.startswith("features/")}


def init_state(model, tx, feature_dims: int | dict[str, int], seq_len: int, rng) -> dict:
    """Params, optimizer state and (for models with BatchNorm) the model state of a fresh run
    (traceable: jitted with output shardings)."""
    x = jax.tree.map(lambda d: jnp.zeros((1, seq_len, d), jnp.float32), feature_dims)
    m = jnp.ones((1, seq_len), bool)
    params, model_state = models.split_variables(model.init({"params": rng}, x, m, m, train=False))
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    if model_state:
        # Only models with running statistics carry this key, so other checkpoints keep theirs.
        state["model_state"] = model_state
    return state


@dataclasses.dataclass
class TemporalSetup:
    """The model, optimizer and the (abstract) train state of a config."""
    model: Any
    tx: Any
    schedule: Any
    init_fn: Any          # jitted rng -> state, replicated over the mesh
    init_rng: Any
    train_rng: Any
    abstract_state: Any   # shapes, dtypes and shardings: the orbax restore target


def setup_model(config: ml_collections.ConfigDict, feature_dims, mesh,
                plan: optim.Plan | None = None) -> TemporalSetup:
    """Builds the model and optimizer of `config` and the shape of their state on `mesh`.

    `plan` (the run's length) shapes the schedule only; restoring needs no plan.
    """
    repl = sharding.replicated(mesh)
    dtype = sharding.compute_dtype(config.compute_dtype, mesh)
    model = build_model(config.model, affwild2.NUM_OUTPUTS[config.task], dtype)
    plan = plan or optim.Plan(max(1, config.total_steps), 0, 1)
    tx, schedule = optim.make_optimizer(config.optimizer, plan,
                                        skip_nonfinite=config.skip_nonfinite)
    init_rng, train_rng = make_rngs(config.seed, config.rng_impl)
    init_fn = sharding.jit(
        lambda r: init_state(model, tx, feature_dims, config.data.seq_len, r), mesh,
        out_shardings=repl)
    abstract_state = checkpoints.abstract_like(jax.eval_shape(init_fn, init_rng), repl)
    return TemporalSetup(model, tx, schedule, init_fn, init_rng, train_rng, abstract_state)


def make_predict(model):
    """Per-frame outputs of a batch at evaluation (no masking, no dropout); the first argument
    is `models.model_variables(state)`: the parameters and any model state (BatchNorm)."""

    def predict(variables, batch):
        return model.apply(variables, *model_inputs(batch), train=False)

    return predict


def jit_predict(model, mesh):
    """`make_predict` jitted over `mesh`: parameters replicated, batches split on 'data'."""
    rows = sharding.batch_sharding(mesh)
    return sharding.jit(make_predict(model), mesh, in_shardings=(sharding.replicated(mesh), rows),
                        out_shardings=rows)


# ---------------------------------------------------------------------------------------------
# Restoring a workdir.


def load_run_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (its config.json)."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a training workdir (no config.json)")
    try:
        config = ml_collections.ConfigDict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise RunError(f"{path}: not valid JSON ({e})") from None
    # JSON turns tuples into lists; model fields such as TCN channels expect tuples.
    for key, value in config.model.items():
        if isinstance(value, list):
            config.model[key] = tuple(value)
    return config


def check_workdir_matches(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    """The workdir must hold a model of the config's task and architecture."""
    path = workdir / "config.json"
    if not path.is_file():
        return   # older or foreign workdirs: the restore itself reports mismatches
    saved = load_run_config(workdir)
    if saved.get("task") != config.task:
        raise RunError(
            f"{workdir} holds a {saved.get('task')} model; the config is for {config.task} "
            f"(use --config configs/{str(saved.get('task')).lower()}.py)")
    got, want = saved.get("model", {}).get("name"), config.model.name
    if got != want:
        raise RunError(f"{workdir} holds a model={got} run; the config builds model={want} "
                       f"(add :model={got} to --config)")


def restore(workdir: pathlib.Path, abstract_state, which: str = "best") -> tuple[int, Any]:
    """(step, state) of checkpoint `which` of `workdir`; a state that does not fit
    `abstract_state` is a RunError naming the workdir's config. Check the workdir against the
    config first (:func:`check_workdir_matches`) for the clearer task / model message."""
    try:
        return checkpoints.restore_params(workdir, abstract_state, which)
    except (ValueError, TypeError) as e:
        if isinstance(e, checkpoints.CheckpointError):
            raise
        raise RunError(f"{workdir}: its {which} checkpoint does not fit the model of this config "
                       f"({str(e).splitlines()[0][:300]}); evaluate with the config it was "
                       f"trained with ({workdir / 'config.json'})") from None


# ---------------------------------------------------------------------------------------------
# Predicting and scoring a split.


def predict_split(predict_fn, params, videos, store, config, mesh) -> list[np.ndarray]:
    """Per-frame outputs [T, C] for every frame of every video (sliding windows, overlaps
    averaged in probability space, as ensembles average runs; `data.eval_readout="last"`: causal windows, see `predict_split_causal`)."""
    seq_len = config.data.seq_len
    bs = config.eval_batch_size or config.batch_size
    sharding.check_batch_size(bs, mesh, "eval_batch_size")
    if config.data.get("eval_readout", "average") == "last":
        return predict_split_causal(predict_fn, params, videos, store, config, mesh)
    assembler = pipeline.Assembler(videos, affwild2.NUM_OUTPUTS[config.task],
                                   task=config.task)
    batches = pipeline.eval_batches(
        videos, store, seq_len=seq_len, stride=config.data.eval_stride or seq_len, batch_size=bs,
        truncate_last=config.data.get("eval_last", "aligned") == "truncated",
        process_index=jax.process_index(), process_count=jax.process_count())
    for batch in batches:
        out = predict_fn(params, sharding.to_global(model_keys(batch), mesh))
        rows = {"out": out}
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            rows = multihost_utils.process_allgather(
                {"out": out, "video": batch["video"], "start": batch["start"],
                 "frame_mask": batch["frame_mask"], "batch_mask": batch["batch_mask"]}, tiled=True)
            local = rows
        else:
            local = batch
        keep = np.asarray(local["batch_mask"])
        assembler.add(np.asarray(rows["out"], np.float32)[keep], np.asarray(local["video"])[keep],
                      np.asarray(local["start"])[keep], np.asarray(local["frame_mask"])[keep])
    return assembler.result()


def predict_split_causal(predict_fn, params, videos, store, config, mesh) -> list[np.ndarray]:
    """Per-frame outputs where frame t is predicted from the window of the `seq_len` frames that
    end at t, read at its last position: nothing after t is seen (system A's code's protocol).

    One window per frame, so `seq_len` times the windows of non-overlapping evaluation. Frames
    before `seq_len - 1` use the window starting at 0 with the frames after t masked out (the
    authors' code repeats the first frame instead; here the missing past is simply absent).
    Global batch g holds the windows of frames [g * b, (g + 1) * b) of the split; with several
    processes each loads its rows of it and the outputs are gathered, as in `predict_split`.
    """
    seq_len = config.data.seq_len
    bs = config.eval_batch_size or config.batch_size
    count, index = jax.process_count(), jax.process_index()
    local = bs // count
    reader = pipeline.WindowReader(videos, store, seq_len)
    parts = [pipeline.causal_windows(int(n), seq_len) for n in reader.lengths]
    video_index = np.concatenate([np.full(n, i, np.int64) for i, n in enumerate(reader.lengths)])
    start = np.concatenate([p[0] for p in parts])
    read = np.concatenate([p[1] for p in parts])
    assembler = pipeline.Assembler(videos, affwild2.NUM_OUTPUTS[config.task],
                                   task=config.task)
    positions = np.arange(seq_len)
    total = len(start)
    for k in range(0, total, bs):
        lo = min(k + index * local, total)
        ids = np.arange(lo, min(lo + local, k + bs, total))
        n = len(ids)
        batch = reader.load(np.stack([video_index[ids], start[ids]], axis=1), rows=local)
        seen = np.zeros((local, seq_len), bool)
        seen[:n] = positions[None, :] <= read[ids, None]
        batch["frame_mask"] &= seen
        batch["present"] &= seen
        for key in batch:
            if key == "features" or key.startswith("features/"):
                batch[key][~seen] = 0.0
        out = predict_fn(params, sharding.to_global(model_keys(batch), mesh))
        rows = np.full(local, -1, np.int64)
        rows[:n] = ids
        if count > 1:
            from jax.experimental import multihost_utils
            gathered = multihost_utils.process_allgather({"out": out, "rows": rows}, tiled=True)
            out, rows = gathered["out"], gathered["rows"]
        out, rows = np.asarray(out, np.float32), np.asarray(rows)
        keep = rows >= 0
        rows = rows[keep]
        readout = np.zeros((len(rows), seq_len), bool)
        readout[np.arange(len(rows)), read[rows]] = True
        assembler.add(out[keep], video_index[rows], start[rows], readout)
    return assembler.result()
