"""A published system's whole recipe, from an Aff-Wild2 root to checked submission files.

  python -m abaw_jax.reproduce --system B --tasks expr --root /data/affwild2 --workdir runs/b
  python -m abaw_jax.reproduce --system A --tasks va,expr,au --root DATA --workdir RUNS \\
      --set encoder=/weights/vit_base_patch16_224.orig_in21k.safetensors
  python -m abaw_jax.reproduce --system C --tasks mtl --root DATA --workdir RUNS \\
      --set features.poster2=DIR --set features.fau=DIR --set encoder.resnet18=FILE

Each stage is one plain command of this package (`--dry-run` prints them, in order, exactly as
they run); the recipe runs those commands as subprocesses. Every stage after the first reads
what an earlier one wrote, by path, and checks it before going on:

- A: ViT-B/16 extraction (`--set encoder=<weights>`) -> one run per task -> evaluate ->
  submission.
- B: MAE pretraining on the root's face frames, plus the face-image folders, Aff-Wild2 roots
  or TFDS datasets of `--set mae.extra=folder:DIR,affwild2:ROOT,tfds:NAME@DATA_DIR` (the
  paper pretrains on AffectNet, RAF-DB, FER2013 and FER+) -> expression fine-tuning on its EXPR frames
  (the source's 8 classes) -> extraction of every frame with that encoder, at its own image
  size -> folds 0..4 per task -> fold ensemble (EXPR: the mode filter) -> submission.
- C: the ResNet-18 extraction (`--set encoder.resnet18=<weights>`) and the POSTER2 and FAU
  sets (`--set features.poster2=DIR --set features.fau=DIR`: a feature store is used as is; a
  folder of per-video POSTER2 `<video>.npy` files or OpenFace 2.0 `<video>.csv` files is
  imported into `<workdir>/features/<set>` by a stage of its own, `python -m
  abaw_jax.data.features import-npy | import-openface`; a missing one stops the recipe naming
  it and the command that writes it) -> the multi-task run (`--tasks mtl`) or one run
  per task -> evaluate -> submission.

Outputs: `<workdir>/report.json` (stages with their command, inputs, outputs, seconds and status;
validation scores per task and fold), `<workdir>/report.md` (the same for people, beside the
papers' validation figures) and `<workdir>/submission/<TASK>.txt`, each checked against the
dataset (`python -m abaw_jax.submission check`) before the command reports success.

Resuming: a rerun skips every stage whose outputs are complete (not merely present) and reruns
an interrupted one, which resumes from its own checkpoints (training) or committed videos
(extraction). SIGTERM is passed to the running stage, which stops at a safe point; the report
records the stage as interrupted and the command exits with status 143.

Scales: `paper` runs the published settings; `demo` the laptop variants (minutes per stage on a
2-core CPU, random small encoders in place of the pretrained ones); `tiny` seconds per stage,
for tests. `--only STAGE` runs one stage (its inputs must exist).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable

SYSTEMS = ("A", "B", "C")
SCALES = ("paper", "demo", "tiny")
VIDEO_TASKS = ("va", "expr", "au")
REPO_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"

# The settings `--set key=value` takes, with their defaults ("" : per system and scale).
SETTINGS = {
    "encoder": "",              # A: the ViT-B/16 weights (paper); a random tiny ViT at demo / tiny
    "encoder.resnet18": "",     # C: the ResNet-18 weights (paper); a random small one otherwise
    "features.poster2": "",     # C: the POSTER2 store, or a folder of per-video .npy files
    "features.fau": "",         # C: the OpenFace AU store, or a folder of OpenFace 2.0 CSVs
    "frame_counts": "",         # extraction: a name,frames CSV (default: the annotations')
    "folds": "",                # B: folds trained per task (paper 5; demo and tiny 2)
    "mae_every": "",            # B: one frame in N of each video for MAE / fine-tuning
    "mae.extra": "",            # B: more face images for MAE, "folder:DIR,tfds:NAME@DIR,..."
    "steps": "",                # every temporal run's length (0: the scale's)
}

# Validation figures the papers report (the whole recipe on real Aff-Wild2), with their source.
PAPER_SCORES = {
    "A": {"VA": (0.39, "seeds/imlab_random_masking, table 1 (CCC; V 0.33, A 0.44)"),
          "EXPR": (0.29, "seeds/imlab_random_masking, table 1 (F1)"),
          "AU": (0.40, "seeds/imlab_random_masking, table 1 (F1)")},
    # B: each fold's figure (table 1 lists folds 0-4; VA is the mean of the V and A rows).
    "B": {"VA": ({f"fold{k}": (v + a) / 2 for k, (v, a) in enumerate(zip(
                     (0.5385, 0.6404, 0.4926, 0.5863, 0.5403),
                     (0.6224, 0.5651, 0.6015, 0.6812, 0.6342)))},
                 "seeds/ctyunai_mae_tcn_v2, table 1 (mean of the valence and arousal CCC rows)"),
          "EXPR": (dict(zip(("fold0", "fold1", "fold2", "fold3", "fold4"),
                            (0.4561, 0.4478, 0.4463, 0.4583, 0.4506))),
                   "seeds/ctyunai_mae_tcn_v2, table 1 (F1)"),
          "AU": (dict(zip(("fold0", "fold1", "fold2", "fold3", "fold4"),
                          (0.5762, 0.5566, 0.5018, 0.5556, 0.5819))),
                 "seeds/ctyunai_mae_tcn_v2, table 1 (F1)")},
    "C": {"VA": ((0.503 + 0.432) / 2, "seeds/hfut_feature_fusion, table 1, ResNet18+POSTER2+FAU "
                 "(V 0.503, A 0.432; multi-task training)"),
          "EXPR": (0.319, "seeds/hfut_feature_fusion, table 1, ResNet18+POSTER2+FAU (multi-task "
                   "training)"),
          "AU": (0.493, "seeds/hfut_feature_fusion, table 1, ResNet18+POSTER2+FAU (multi-task "
                 "training)"),
          "MTL": (1.2795, "seeds/hfut_feature_fusion, table 1, ResNet18+POSTER2+FAU (P_MTL)")},
}

# Random encoders of the demo and tiny scales (no pretrained weights are downloaded).
TINY_VIT = "vit:Ti/8,width=32,depth=2,num_heads=2,mlp_dim=64"
TINY_RESNET = "resnet:resnet18,width=8"


class ReproduceError(ValueError):
    """A recipe that cannot go on: a missing input, an incomplete stage, a failed command."""


@dataclasses.dataclass
class Stage:
    """One plain command, what it reads and writes, and when its outputs are complete."""
    name: str
    argv: list[str]                        # "python", "-m", module, arguments
    inputs: list[str]
    outputs: list[str]
    complete: Callable[[], str]            # "" when the outputs are complete, else what lacks
    check_inputs: Callable[[], None] = lambda: None

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


# ---------------------------------------------------------------------------------------------
# Completeness of outputs.


def _missing(*paths: pathlib.Path) -> str:
    for p in paths:
        if not p.exists():
            return f"{p} does not exist"
    return ""


def store_complete(store: pathlib.Path, root: pathlib.Path) -> str:
    """"" when the store holds every video folder of `<root>/cropped_aligned`."""
    if not (store / "meta.json").is_file():
        return f"{store}: no feature store"
    from abaw_jax.data import features
    videos = set(features.FeatureStore(store).videos)
    frames = root / "cropped_aligned"
    wanted = {e.name for e in os.scandir(frames) if e.is_dir()} if frames.is_dir() else set()
    left = sorted(wanted - videos)
    return f"{store}: {len(left)} of {len(wanted)} videos not extracted yet" if left else ""


def run_complete(workdir: pathlib.Path) -> str:
    """"" when a training (or pretraining) run finished: its final_metrics.json is written."""
    return _missing(workdir / "config.json", workdir / "final_metrics.json")


def encoder_image_size(encoder_dir: pathlib.Path) -> int | None:
    spec = json.loads((encoder_dir / "encoder.json").read_text())
    size = spec.get("config", {}).get("image_size")
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size) if size else None


def check_store_matches_encoder(store: pathlib.Path, encoder_dir: pathlib.Path) -> None:
    """The store was extracted at the encoder's own image size, with that encoder."""
    meta = json.loads((store / "meta.json").read_text())
    params = meta.get("params", {})
    own = encoder_image_size(encoder_dir)
    got = params.get("image_size", [None])[0]
    if own is not None and got != own:
        raise ReproduceError(f"{store}/meta.json: extracted at {got} px, but the encoder "
                             f"{encoder_dir} takes {own} px; delete {store} and rerun")
    if pathlib.Path(str(params.get("encoder", ""))).resolve() != encoder_dir.resolve():
        raise ReproduceError(f"{store}/meta.json: written by encoder {params.get('encoder')!r}, "
                             f"not {encoder_dir}; delete {store} and rerun")


def check_run_reads(workdir: pathlib.Path, key: str, want: str) -> None:
    """A finished run's saved config read `want` at `data.<key>` (no fallback store)."""
    saved = json.loads((workdir / "config.json").read_text())
    got = saved.get("data", {}).get(key)
    if got != want:
        raise ReproduceError(f"{workdir}/config.json: data.{key} = {got!r}, expected {want!r}")


# ---------------------------------------------------------------------------------------------
# The recipes.


class Recipe:
    """The stages of one system, tasks and scale."""

    def __init__(self, system: str, tasks: list[str], root: pathlib.Path, workdir: pathlib.Path,
                 scale: str, settings: dict[str, str]):
        self.system, self.tasks, self.scale = system, tasks, scale
        self.root, self.workdir = root, workdir
        self.settings = settings
        self.stages: list[Stage] = []
        self.score_files: dict[str, Callable[[], dict[str, float]]] = {}
        {"A": self._system_a, "B": self._system_b, "C": self._system_c}[system]()

    # Paths as the user gave them (the commands are printed for people to retype).
    def path(self, *parts: str) -> pathlib.Path:
        return self.workdir.joinpath(*parts)

    def config(self, name: str, variants: str = "") -> str:
        path = REPO_CONFIGS / f"{name}.py"
        try:
            shown = path.relative_to(pathlib.Path.cwd())
        except ValueError:
            shown = path
        return f"{shown}:{variants}" if variants else str(shown)

    @staticmethod
    def py(module: str, *args: str) -> list[str]:
        return ["python", "-m", module, *args]

    # --- shared stages ----------------------------------------------------------------------

    def extract(self, name: str, store: pathlib.Path, variant: str, encoder: str,
                inputs: list[str], check: Callable[[], None] = lambda: None) -> None:
        args = ["--config", self.config("extract_vit", variant), "--workdir", str(store),
                f"--config.frames={self.root}", f"--config.encoder={encoder}"]
        if self.settings["frame_counts"]:
            args.append(f"--config.frame_counts={self.settings['frame_counts']}")
        if self.scale != "paper":
            args += ["--config.batch_size=64", "--config.num_threads=2"]
        if self.scale == "tiny":
            args.append("--config.progress=False")
        self.stages.append(Stage(name, self.py("abaw_jax.extract", *args), inputs, [str(store)],
                                 lambda: store_complete(store, self.root), check))

    def temporal_overrides(self, model: str) -> list[str]:
        out = []
        steps = self.settings["steps"]
        if self.scale == "tiny":
            out += ["--config.batch_size=8", "--config.log_every=3", "--config.eval_every=3",
                    "--config.checkpoint_every=3", "--config.optimizer.warmup_steps=2",
                    "--config.data.num_threads=1", "--config.progress=False"]
            if model == "tcn":
                out += ["--config.model.channels=(16, 16, 16)", "--config.model.d_model=16",
                        "--config.model.num_layers=1", "--config.model.num_heads=2",
                        "--config.model.mlp_dim=32", "--config.model.head_dim=16"]
            elif model == "fusion":
                out += ["--config.model.d_affine=8", "--config.model.num_layers=1",
                        "--config.model.num_heads=2"]
            else:
                out += ["--config.model.d_model=16", "--config.model.num_heads=2",
                        "--config.model.mlp_dim=32", "--config.model.num_layers=1"]
        if steps and int(steps) > 0:   # 0: the scale's own length
            out.append(f"--config.total_steps={int(steps)}")
        return out

    def variants(self, model: str, extra: str = "") -> str:
        parts = [] if model == "transformer" else [f"model={model}"]
        if self.scale != "paper":
            parts.insert(0, "demo")
        if self.scale == "tiny":
            parts += ["seq_len=16", "steps=6"]
        if extra:
            parts.append(extra)
        return ",".join(parts)

    def train(self, name: str, task: str, model: str, workdir: pathlib.Path, features: str,
              inputs: list[str], extra_variant: str = "", args: tuple[str, ...] = ()) -> None:
        argv = self.py("abaw_jax.train", "--config",
                       self.config(task, self.variants(model, extra_variant)),
                       "--workdir", str(workdir), f"--config.data.root={self.root}",
                       f"--config.data.features={features}", *args,
                       *self.temporal_overrides(model))

        def complete() -> str:
            lacking = run_complete(workdir)
            if not lacking:
                check_run_reads(workdir, "features", features)
            return lacking

        self.stages.append(Stage(name, argv, inputs, [str(workdir / "final_metrics.json")],
                                 complete))

    def evaluate(self, name: str, task: str, workdir: pathlib.Path, inputs: list[str]) -> None:
        upper = task.upper()
        val = workdir / "predictions" / "val" / "metrics.json"
        test = workdir / "predictions" / "test" / f"{upper}.txt"
        self.stages.append(Stage(name, self.py("abaw_jax.evaluate", "--workdir", str(workdir)),
                                 inputs, [str(val), str(test)], lambda: _missing(val, test)))

    def submit(self, task: str, source: pathlib.Path) -> None:
        upper = task.upper()
        dest = self.path("submission", f"{upper}.txt")
        argv = self.py("abaw_jax.submission", "check", str(source), "--root", str(self.root),
                       "--task", upper, "--split", "test", "--copy-to", str(dest))
        if self.settings["frame_counts"]:   # as extraction and so the test predictions had them
            argv += ["--frame-counts", self.settings["frame_counts"]]

        def complete() -> str:
            if not dest.is_file() or not source.is_file():
                return f"{dest} does not exist"
            if dest.read_bytes() != source.read_bytes():
                return f"{dest} differs from {source}"
            return ""

        self.stages.append(Stage(f"submission_{task}", argv, [str(source)], [str(dest)], complete))

    def import_features(self, name: str, src: pathlib.Path, store: pathlib.Path) -> None:
        """A folder of per-video files computed elsewhere -> a store (resumable)."""
        command = "import-npy" if RAW_FEATURES[name][0] == ".npy" else "import-openface"
        argv = self.py("abaw_jax.data.features", command, str(src), str(store))
        if command == "import-npy":
            argv += ["--extractor", name]

        def complete() -> str:
            if not (store / "meta.json").is_file():
                return f"{store}: no feature store"
            from abaw_jax.data import features
            left = sorted(set(_raw_files(src, name)) - set(features.FeatureStore(store).videos))
            return f"{store}: {len(left)} videos of {src} not imported yet" if left else ""

        self.stages.append(Stage(f"import_{name}", argv, [str(src)], [str(store)], complete))

    # --- A ----------------------------------------------------------------------------------

    def _system_a(self) -> None:
        store = self.path("features", "vit")
        encoder = self.settings["encoder"]
        if self.scale == "paper" and not encoder:
            raise ReproduceError("system A extracts ViT-B/16 features: give the weights with "
                                 "--set encoder=<vit_base_patch16_224 in21k .npz/.safetensors>")
        variant = "" if self.scale == "paper" else "demo"
        self.extract("extract_vit", store, variant, encoder or TINY_VIT,
                     [str(self.root / "cropped_aligned")])
        for task in self.tasks:
            run = self.path(f"a_{task}")
            self.train(f"train_{task}", task, "transformer", run, str(store), [str(store)])
            self.evaluate(f"evaluate_{task}", task, run, [str(run / "final_metrics.json")])
            self.submit(task, run / "predictions" / "test" / f"{task.upper()}.txt")
            self.score_files[task.upper()] = lambda run=run: {"fold0": _val_score(run / "predictions" / "val")}

    # --- B ----------------------------------------------------------------------------------

    def _system_b(self) -> None:
        mae, ft = self.path("mae"), self.path("ft_expr")
        image_args = [f"--config.data.source=affwild2", f"--config.data.root={self.root}"]
        every = self.settings["mae_every"] or {"paper": "", "demo": "5", "tiny": ""}[self.scale]
        if every:
            image_args.append(f"--config.data.every={int(every)}")
        variant = {"paper": "", "demo": "tiny,steps=150", "tiny": "tiny"}[self.scale]
        extra, extra_inputs = self.settings["mae.extra"], []
        if extra:
            from abaw_jax.data import image_sources
            try:
                parsed = image_sources.parse_extra(extra)
            except image_sources.ImageSourceError as e:
                raise ReproduceError(f"--set mae.extra: {e}") from None
            # Paths checked before the stage runs (a TFDS dataset without @DATA_DIR: tfds finds it).
            extra_inputs = [p for k, w, dd in parsed for p in [dd if k == "tfds" else w] if p]
        self.stages.append(Stage(
            "pretrain_mae", self.py("abaw_jax.pretrain", "--config",
                                    self.config("mae_face", variant), "--workdir", str(mae),
                                    *image_args,
                                    *([f"--config.data.extra={extra}"] if extra else [])),
            [str(self.root / "cropped_aligned"), *extra_inputs], [str(mae / "encoder")],
            lambda: run_complete(mae) or _missing(mae / "encoder" / "encoder.json")))
        self.stages.append(Stage(
            "finetune_expr", self.py("abaw_jax.pretrain", "--config",
                                     self.config("finetune_expr", variant), "--workdir", str(ft),
                                     f"--config.init_from={mae}", *image_args),
            [str(mae / "encoder")], [str(ft / "encoder")],
            lambda: run_complete(ft) or _missing(ft / "encoder" / "encoder.json")))
        store = self.path("features", "mae_ft")
        self.extract("extract_mae_ft", store, "mae", str(ft / "encoder"), [str(ft / "encoder")],
                     lambda: None)
        extract_stage = self.stages[-1]
        plain = extract_stage.complete

        def extracted() -> str:
            lacking = plain()
            if not lacking:
                check_store_matches_encoder(store, ft / "encoder")
            return lacking

        extract_stage.complete = extracted
        folds = int(self.settings["folds"] or {"paper": 5, "demo": 2, "tiny": 2}[self.scale])
        for task in self.tasks:
            members = [self.path(f"b_{task}", f"fold{k}") for k in range(folds)]
            for k, run in enumerate(members):
                self.train(f"train_{task}_fold{k}", task, "tcn", run, str(store), [str(store)],
                           args=(f"--config.data.fold={k}",))
            out = self.path(f"b_{task}", "ensemble")
            upper = task.upper()
            test, val = out / "test" / f"{upper}.txt", out / "val" / "metrics.json"
            argv = self.py("abaw_jax.evaluate", "--workdir", str(members[0]))
            if len(members) > 1:
                argv += ["--ensemble", ",".join(str(m) for m in members[1:])]
            argv += ["--out", str(out)]
            self.stages.append(Stage(f"ensemble_{task}", argv,
                                     [str(m / "final_metrics.json") for m in members],
                                     [str(val), str(test)], lambda v=val, t=test: _missing(v, t)))
            self.submit(task, test)
            self.score_files[upper] = lambda out=out, members=members: _ensemble_scores(out, members)

    # --- C ----------------------------------------------------------------------------------

    def _system_c(self) -> None:
        from abaw_jax import runs
        resnet = self.path("features", "resnet18")
        weights = self.settings["encoder.resnet18"]
        if self.scale == "paper" and not weights:
            raise ReproduceError(
                "system C extracts ResNet-18 features: give the weights with --set "
                "encoder.resnet18=<ResNet-18 MS-Celeb-1M .safetensors>")
        stores = {"resnet18": str(resnet)}
        imports = []
        for name in ("poster2", "fau"):
            given = self.settings[f"features.{name}"]
            if given and (pathlib.Path(given) / "meta.json").is_file():
                stores[name] = given                    # a store: used as is
            elif given and _raw_files(pathlib.Path(given), name):
                stores[name] = str(self.path("features", name))
                imports.append((name, pathlib.Path(given)))
            else:
                what = (f"{given}: neither a feature store nor a folder of "
                        f"{RAW_FEATURES[name][0]} files" if given else "not given")
                raise ReproduceError(
                    f"system C needs the {name!r} feature set ({what}): pass --set "
                    f"features.{name}=<store or {RAW_FEATURES[name][1]} folder>; a store is "
                    f"written by: {runs.FEATURE_HINTS[name]}")
        args = ["--config.image_size=32"] if self.scale != "paper" else []
        self.extract("extract_resnet18", resnet, "resnet18", weights or TINY_RESNET,
                     [str(self.root / "cropped_aligned")])
        self.stages[-1].argv += args
        for name, src in imports:
            self.import_features(name, src, pathlib.Path(stores[name]))
        features = ",".join(f"{n}={p}" for n, p in stores.items())
        sets = "sets=resnet18+poster2+fau" if self.scale != "paper" else ""
        for task in self.tasks:
            run = self.path(f"c_{task}")
            self.train(f"train_{task}", task, "fusion", run, features, list(stores.values()),
                       extra_variant=sets)
            self.evaluate(f"evaluate_{task}", task, run, [str(run / "final_metrics.json")])
            self.submit(task, run / "predictions" / "test" / f"{task.upper()}.txt")
            self.score_files[task.upper()] = lambda run=run: {
                "fold0": _val_score(run / "predictions" / "val")}


# System C's feature sets computed elsewhere: (file suffix, what the folder holds).
RAW_FEATURES = {"poster2": (".npy", "per-video POSTER2 <video>.npy"),
                "fau": (".csv", "OpenFace 2.0 <video>.csv")}


def _raw_files(folder: pathlib.Path, name: str) -> list[str]:
    """The videos of a folder of per-video feature files of set `name` ([] when none)."""
    suffix = RAW_FEATURES[name][0]
    if not folder.is_dir():
        return []
    return sorted(p.name[:-len(suffix)] for p in folder.iterdir()
                  if p.name.endswith(suffix) and not p.name.endswith(".present.npy"))


def _val_score(split_dir: pathlib.Path) -> float:
    return float(json.loads((split_dir / "metrics.json").read_text())["score"])


def _ensemble_scores(out: pathlib.Path, members: list[pathlib.Path]) -> dict[str, float]:
    result = json.loads((out / "val" / "metrics.json").read_text())
    scores = {}
    if "member_scores" in result:
        for k, m in enumerate(members):
            scores[f"fold{k}"] = float(result["member_scores"][str(m)])
    if "score" in result:
        scores["ensemble"] = float(result["score"])
    return scores


# ---------------------------------------------------------------------------------------------
# Running.


class _Interrupted(Exception):
    pass


def _write_report(workdir: pathlib.Path, report: dict) -> None:
    from abaw_jax import files
    files.write_json(workdir / "report.json", report)
    files.write_atomic(workdir / "report.md", render_markdown(report))


def render_markdown(report: dict) -> str:
    lines = [f"# System {report['system']}: {', '.join(report['tasks'])} at scale "
             f"{report['scale']}", "", "| stage | status | seconds | command |",
             "| --- | --- | --- | --- |"]
    for s in report["stages"]:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | `{s['command']}` |")
    lines += ["", "| task | run | validation score | paper (validation) | paper source |",
              "| --- | --- | --- | --- | --- |"]
    for task, scores in report.get("scores", {}).items():
        figure, source = PAPER_SCORES[report["system"]].get(task, (None, ""))
        for run, score in scores.items():
            paper = figure.get(run) if isinstance(figure, dict) else figure
            lines.append(f"| {task} | {run} | {score:.4f} | "
                         f"{'' if paper is None else f'{paper:.4f}'} | {source} |")
    lines += ["", "The paper figures are the full recipe on real Aff-Wild2; at the demo and "
              "tiny scales the data are synthetic and the models small, so only the paper scale "
              "is comparable.", ""]
    if report.get("submission"):
        lines.append("Submission files (checked against the dataset): "
                     + ", ".join(report["submission"]))
    return "\n".join(lines) + "\n"


def run_recipe(recipe: Recipe, only: str = "", log=print) -> dict:
    """Runs the stages not yet complete; returns the report (also written to the workdir)."""
    workdir = recipe.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    report = {"system": recipe.system, "tasks": [t.upper() for t in recipe.tasks],
              "scale": recipe.scale, "root": str(recipe.root), "stages": [], "scores": {}}
    stages = recipe.stages
    if only:
        names = [s.name for s in stages]
        if only not in names:
            raise ReproduceError(f"--only {only}: no such stage; the stages are {', '.join(names)}")
        stages = [s for s in stages if s.name == only]
    produced_by = {out: s.name for s in recipe.stages for out in s.outputs}
    child: list[subprocess.Popen] = []
    stop = {"requested": False}

    def on_sigterm(signum, frame):
        stop["requested"] = True
        if child and child[0].poll() is None:
            child[0].send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(pathlib.Path(__file__).resolve().parents[1])]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    try:
        for stage in stages:
            entry = {"name": stage.name, "command": stage.command, "inputs": stage.inputs,
                     "outputs": stage.outputs, "seconds": 0.0, "status": "skipped"}
            report["stages"].append(entry)
            if stage.complete():
                for path in stage.inputs:
                    if not pathlib.Path(path).exists():
                        by = produced_by.get(path)
                        raise ReproduceError(
                            f"stage {stage.name}: its input {path} does not exist"
                            + (f"; stage {by} writes it" if by else ""))
                stage.check_inputs()
                log(f"[{stage.name}] {stage.command}")
                start = time.perf_counter()
                proc = subprocess.Popen([sys.executable, *stage.argv[1:]], env=env)
                child[:] = [proc]
                rc = proc.wait()
                child.clear()
                entry["seconds"] = round(time.perf_counter() - start, 2)
                if stop["requested"]:
                    entry["status"] = "interrupted"
                    raise _Interrupted(stage.name)
                if rc != 0:
                    entry["status"] = "failed"
                    raise ReproduceError(f"stage {stage.name} failed (exit status {rc}): "
                                         f"{stage.command}")
                lacking = stage.complete()
                if lacking:
                    entry["status"] = "incomplete"
                    raise ReproduceError(f"stage {stage.name} ended but its outputs are "
                                         f"incomplete: {lacking}")
                entry["status"] = "done"
                log(f"[{stage.name}] done in {entry['seconds']:.1f}s")
            else:
                log(f"[{stage.name}] complete: skipped")
            _write_report(workdir, report)
            if stop["requested"]:
                raise _Interrupted(stage.name)
        if not only:
            report["scores"] = {task: fn() for task, fn in recipe.score_files.items()}
            report["submission"] = verify_submissions(recipe)
    finally:
        signal.signal(signal.SIGTERM, previous)
        _write_report(workdir, report)
    return report


def verify_submissions(recipe: Recipe) -> list[str]:
    """Checks every submission file against the dataset; returns their paths."""
    from abaw_jax import submission
    from abaw_jax.data import affwild2
    given = recipe.settings["frame_counts"]
    counts = affwild2.read_frame_counts(given) if given else None
    out = []
    for task in recipe.tasks:
        path = recipe.path("submission", f"{task.upper()}.txt")
        submission.check_file(path, recipe.root, task.upper(), "test", counts)
        out.append(str(path))
    return out


def parse_settings(items: list[str]) -> dict[str, str]:
    settings = dict(SETTINGS)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ReproduceError(f"--set {item!r}: expected KEY=VALUE")
        if key not in SETTINGS:
            import difflib
            close = difflib.get_close_matches(key, SETTINGS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ReproduceError(f"--set {key}: unknown setting{hint} (known: "
                                 f"{', '.join(SETTINGS)})")
        settings[key] = value
    for key in ("folds", "mae_every", "steps"):
        if settings[key] and not settings[key].isdigit():
            raise ReproduceError(f"--set {key}={settings[key]}: expected a whole number")
    if settings["folds"] and not 1 <= int(settings["folds"]) <= 5:
        raise ReproduceError(f"--set folds={settings['folds']}: 1 to 5 (fold 0 is the official "
                             f"split)")
    return settings


def build(args) -> Recipe:
    tasks = [t.strip().lower() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in VIDEO_TASKS + ("mtl",)]
    if bad or not tasks:
        raise ReproduceError(f"--tasks {args.tasks}: use va, expr, au (comma separated) or mtl")
    if "mtl" in tasks and len(tasks) > 1:
        raise ReproduceError("--tasks mtl is a recipe of its own: give it alone")
    if "mtl" in tasks and args.system != "C":
        raise ReproduceError(f"--tasks mtl: system {args.system} was built per task; system C "
                             f"is the multi-task system")
    root = pathlib.Path(args.root)
    if not root.is_dir():
        raise ReproduceError(f"--root {root}: no such folder")
    if not (root / "cropped_aligned").is_dir():
        raise ReproduceError(f"--root {root}: no cropped_aligned/ frame folder (the official "
                             f"layout's face images)")
    return Recipe(args.system, tasks, root, pathlib.Path(args.workdir), args.scale,
                  parse_settings(args.set))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m abaw_jax.reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--system", required=True, type=str.upper, choices=SYSTEMS)
    p.add_argument("--tasks", default="va,expr,au", help="va,expr,au (any of them) or mtl "
                   "(default: %(default)s)")
    p.add_argument("--root", required=True, help="the Aff-Wild2 root (official layout)")
    p.add_argument("--workdir", required=True, help="where every stage writes")
    p.add_argument("--scale", default="paper", choices=SCALES, help="default: %(default)s")
    p.add_argument("--dry-run", action="store_true", help="print the commands and stop")
    p.add_argument("--only", default="", metavar="STAGE", help="run this stage only")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"recipe settings: {', '.join(SETTINGS)}")
    args = p.parse_args(argv)
    try:
        recipe = build(args)
        if args.dry_run:
            for stage in recipe.stages:
                print(stage.command)
            return 0
        report = run_recipe(recipe, args.only,
                            log=lambda line: print(line, file=sys.stderr, flush=True))
    except _Interrupted as e:
        print(f"stopped by SIGTERM in stage {e}: rerun the same command to resume",
              file=sys.stderr)
        return 143
    except (ReproduceError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for task, scores in report.get("scores", {}).items():
        print(f"{task}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()), file=sys.stderr)
    for path in report.get("submission", []):
        print(f"submission: {path} (checked)", file=sys.stderr)
    print(f"report: {args.workdir}/report.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
