"""Scoring a trained run and writing its submission files: the `evaluate` command's logic.

`evaluate(config, workdir)` restores a workdir's checkpoint, predicts every frame of each split
(`split_inputs` says what a split holds for the task, the multi-task challenge's image lists
included), scores the validation split with the official metric and writes, per split,
`<TASK>.txt` (the submission format), `<TASK>_outputs.npz` (raw per-frame outputs by video, for
ensembles) and, for labelled splits, `metrics.json`. The ensemble (`abaw_jax.ensemble`) writes
its averaged outputs with the same functions.
"""

from __future__ import annotations

import dataclasses
import io
import pathlib
import sys
from typing import Any

import jax
import ml_collections
import numpy as np

from abaw_jax import best_parts, files, metrics, models, runs, sharding, submission, workdirs
from abaw_jax import config as config_lib
from abaw_jax.data import affwild2, features as features_lib, mtl


@dataclasses.dataclass
class SplitInputs:
    """What one split of a run predicts: its videos, the features they are read from and, for
    the multi-task challenge, the listed (video, frame) images in submission order."""
    videos: list[affwild2.Video]
    features: Any
    images: list[tuple[str, int]] | None = None


def split_inputs(config: ml_collections.ConfigDict, data: runs.Data, split: str,
                 is_main: bool = True, allow_incomplete: bool = False) -> SplitInputs | None:
    """The inputs of `split` ("val" or "test"); None (with a note) when the dataset lists no
    test videos or images. A listed test video without features is an error unless
    `allow_incomplete` (`workdirs.test_split`)."""
    if split not in ("val", "test"):
        raise config_lib.ConfigError(f"unknown split {split!r}; use 'val' and/or 'test'")
    if config.task == "MTL":
        return _mtl_inputs(data, split, is_main)
    if split == "val":
        return SplitInputs(data.val, data.features)
    videos = workdirs.test_split(data, config.task, allow_incomplete=allow_incomplete,
                                 is_main=is_main)
    return None if videos is None else SplitInputs(videos, data.features)


def _mtl_inputs(data: runs.Data, split: str, is_main: bool) -> SplitInputs | None:
    """The annotated rows of the validation videos, or the test image list grouped into
    videos."""
    if split == "val":
        # The validation videos (a fold's come from both split files) and their listed frames.
        names = {v.name for v in data.val}
        rows = [v for s in ("train", "val") for v in mtl.load_mtl_split(data.root, s)
                if v.name in names]
        images = [(v.name, int(f)) for v in sorted(rows, key=lambda r: r.name) for f in v.frames]
        return SplitInputs(data.val, data.features, images)
    try:
        images = mtl.load_mtl_test(data.root)
    except (FileNotFoundError, affwild2.LayoutError) as e:
        if is_main:
            print(f"No MTL test image list: skipping the test split ({e})", file=sys.stderr)
        return None
    test_rows = mtl.mtl_test_videos(images)
    store = data.features.store if isinstance(data.features, mtl.AnnotatedRows) else None
    base = store if store is not None else features_lib.FeatureSets(
        {n: s.store for n, s in data.features.stores.items()})
    missing = [v.name for v in test_rows if v.name not in base]
    if missing:
        raise features_lib.StoreError(f"features lack {len(missing)} MTL test videos, e.g. "
                                      f"{missing[:3]}")
    return SplitInputs([mtl.as_video(v) for v in test_rows], mtl.annotated_rows(base, test_rows),
                       images)


def smoothed(config: ml_collections.ConfigDict, outputs: list[np.ndarray]) -> list[np.ndarray]:
    """EXPR outputs whose decisions follow `config.eval_mode_filter` (0: unchanged): per video,
    one-hot scores of the mode-filtered argmax classes (`metrics.mode_filter`)."""
    window = config.get("eval_mode_filter", 0)
    if config.task != "EXPR" or not window:
        return outputs
    return [np.where(np.eye(o.shape[1], dtype=bool)[metrics.mode_filter(o.argmax(-1), window,
                                                                       o.shape[1])], 0.0, -1e4)
            .astype(np.float32) for o in outputs]


def score_split(task: str, outputs: list[np.ndarray], videos: list[affwild2.Video]) -> tuple[float, dict]:
    """The official metric over all valid frames of a split (P_MTL and its parts for "MTL")."""
    out = np.concatenate(outputs)
    labels = np.concatenate([v.labels for v in videos])
    valid = np.concatenate([v.valid for v in videos])
    if task == "MTL":
        return metrics.mtl_score(mtl.unpack_outputs(out), *mtl.unpack_labels(labels, valid))
    return metrics.task_score(task, out, labels, valid)


def filter_scores(config, filtered: float, outputs: list[np.ndarray], videos) -> dict:
    """Both EXPR scores of a mode-filtered evaluation, named: the filtered one (the headline,
    system B's test-time protocol) and the unfiltered one (the protocol of the papers'
    validation scores)."""
    return {"mode_filter": int(config.eval_mode_filter), "filtered_score": float(filtered),
            "unfiltered_score": float(score_split(config.task, outputs, videos)[0])}


def split_metrics(task: str, decided: list[np.ndarray], videos: list[affwild2.Video]) -> dict:
    """The `metrics.json` entries of a scored split: the details, the score under its metric's
    name (`metrics.score_name`) and as "score"."""
    score, details = score_split(task, decided, videos)
    return {**details, metrics.score_name(task): score, "score": score}


def save_outputs(path: pathlib.Path, names: list[str], outputs: list[np.ndarray]) -> None:
    """Raw per-frame outputs keyed by video name, written atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **{n: o for n, o in zip(names, outputs)})
    files.write_atomic(path, buffer.getvalue())


def write_mtl_outputs(path: pathlib.Path, images, names: list[str], outputs: list[np.ndarray]) -> None:
    """The MTL submission file: one row per listed image, in the list's order. Each video's
    outputs follow its listed frames in ascending order (as `mtl.as_video` built it)."""
    frames: dict[str, list[int]] = {}
    for video, frame in images:
        frames.setdefault(video, []).append(frame)
    row_of = {video: {f: i for i, f in enumerate(sorted(fs))} for video, fs in frames.items()}
    by_video = dict(zip(names, outputs))
    gathered = np.stack([by_video[video][row_of[video][frame]] for video, frame in images])
    submission.write_mtl_submission(path, images, mtl.unpack_outputs(gathered))


def write_split(split_dir: pathlib.Path, task: str, inputs: SplitInputs, names: list[str],
                outputs: list[np.ndarray], decided: list[np.ndarray]) -> None:
    """The submission file of a split (from the `decided` outputs) and its raw `outputs`."""
    if task == "MTL":
        write_mtl_outputs(split_dir / "MTL.txt", inputs.images, names, decided)
    else:
        submission.write_submission(split_dir / f"{task}.txt", task, names, decided)
    save_outputs(split_dir / f"{task}_outputs.npz", names, outputs)


def evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
             checkpoint: str = "best", splits: tuple[str, ...] = ("val", "test"),
             out_dir: str | pathlib.Path | None = None, allow_incomplete: bool = False) -> dict:
    """Scores `splits` with the checkpoint `checkpoint` of `workdir`; returns metrics by split
    and writes each split's files to `<out_dir>/<split>/` (default `<workdir>/predictions`).
    Nothing invalid is written: non-finite predictions stop the command naming the video, split
    and store (`workdirs.check_finite`), each submission file passes the checker before it
    takes its place (`submission.write_checked`), and a test-list video without features is an
    error unless `allow_incomplete`."""
    config_lib.validate(config)
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise FileNotFoundError(f"--workdir {workdir}: no such run directory")
    out_dir = pathlib.Path(out_dir) if out_dir else workdir / "predictions"
    workdirs.check_writable(out_dir, "--out" if out_dir != workdir / "predictions" else "--workdir")
    mesh = sharding.make_mesh(config.mesh_data)
    runs.check_workdir_matches(config, workdir)
    data = runs.resolve_data(config)
    setup = runs.setup_model(config, data.feature_dims, mesh)
    step, state = runs.restore(workdir, setup.abstract_state, checkpoint)
    predict = runs.jit_predict(setup.model, mesh)
    is_main = jax.process_index() == 0
    by_part = checkpoint == "best" and best_parts.available(workdir, config)
    part_states = best_parts.load(workdir, config.task, state) if by_part else None
    if is_main:
        print(f"Evaluating {workdir} ({checkpoint} checkpoint, step {step})", file=sys.stderr)
        if by_part:
            print(f"Each output from its own best parameters: {best_parts.describe(workdir)}",
                  file=sys.stderr)

    results = {}
    for split in splits:
        inputs = split_inputs(config, data, split, is_main, allow_incomplete)
        if inputs is None:
            continue

        def predict_with(variables):
            return runs.predict_split(predict, variables, inputs.videos, inputs.features,
                                      config, mesh)

        if by_part:
            outputs = best_parts.compose(config.task, part_states, predict=predict_with,
                                         variables=models.model_variables)
        else:
            outputs = predict_with(models.model_variables(state))
        workdirs.check_finite(outputs, [v.name for v in inputs.videos], split, inputs.features)
        decided = smoothed(config, outputs)   # raw outputs stay unsmoothed for ensembling
        split_dir = out_dir / split
        names = [v.name for v in inputs.videos]
        result: dict[str, Any] = {"step": step, "checkpoint": checkpoint}
        if split == "val":
            result.update(split_metrics(config.task, decided, inputs.videos))
            if decided is not outputs:
                result.update(filter_scores(config, result["score"], outputs, inputs.videos))
        if is_main:
            write_split(split_dir, config.task, inputs, names, outputs, decided)
            if split == "val":
                files.write_json(split_dir / "metrics.json", result)
                print(f"{split}: {metrics.describe(config.task, result['score'], result)}",
                      file=sys.stderr)
                if "unfiltered_score" in result:
                    print(f"{split}: EXPR F1 mode-filtered over {result['mode_filter']} frames "
                          f"{result['filtered_score']:.4f} (the score above), unfiltered "
                          f"{result['unfiltered_score']:.4f} (the papers' validation protocol)",
                          file=sys.stderr)
            videos = f"{len(names)} video{'s' if len(names) != 1 else ''}"
            print(f"wrote {split_dir / (config.task + '.txt')} ({sum(len(o) for o in outputs)} "
                  f"frames of {videos})", file=sys.stderr)
        results[split] = result
    return results
