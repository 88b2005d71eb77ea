"""The journey from a dataset root to checked submission files: `python -m abaw_jax.reproduce`
per system at the tiny scale on a demo written with face frames, and the command-line seams it
crosses (evaluate's own config, fold ensembles, the submission checker, stores named in logs,
extraction at the encoder's own size, the class count of fine-tuning, script overrides)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, SHARED_DATA, load_config, tiny_config

def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return dict(e, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))


def reproduce(*args, check=True, **kwargs) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "abaw_jax.reproduce", *map(str, args)], cwd=ROOT,
                       env=env(), capture_output=True, text=True, **kwargs)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def frames_demo(tmp_path_factory) -> pathlib.Path:
    """A demo written with its face frames (what `python -m abaw_jax.data.demo --out D --videos 8
    --length-scale 0.02 --jpeg --jpeg-size 32 --dim 16` writes)."""
    from abaw_jax.data import demo
    out = tmp_path_factory.mktemp("frames") / "affwild2"
    return demo.build_demo(out, num_videos=8, seed=0, length_scale=0.02, jpeg=True, jpeg_size=32,
                           feature_sets={"vit": 16, "openface": demo.OPENFACE_DIM})


def tiny_journey(system: str, task: str, root, tmp_path_factory) -> pathlib.Path:
    """`reproduce` of `system` on `task` at the tiny scale; its log in `<workdir>/log.txt`."""
    workdir = tmp_path_factory.mktemp(system.lower()) / "runs"
    r = reproduce("--system", system, "--tasks", task, "--root", root, "--workdir", workdir,
                  "--scale", "tiny")
    (workdir / "log.txt").write_text(r.stderr)
    return workdir


@pytest.fixture(scope="module")
def run_a(frames_demo, tmp_path_factory) -> pathlib.Path:
    """System A on VA at the tiny scale, run once for the module."""
    return tiny_journey("A", "va", frames_demo, tmp_path_factory)


def assert_chained(report: dict, sources: tuple[str, ...] = ()) -> None:
    """Every stage after the first reads a path an earlier stage wrote (or, an import stage,
    only files the user gave: `sources`)."""
    written: set[str] = set()
    for k, stage in enumerate(report["stages"]):
        if k and not (sources and set(stage["inputs"]) <= set(sources)):
            assert written & set(stage["inputs"]), (stage["name"], stage["inputs"], written)
        written |= set(stage["outputs"])


# ---------------------------------------------------------------------------------------------
# The recipes.


def test_system_a_tiny_chains_its_stages_and_a_rerun_skips_them(run_a, frames_demo):
    from abaw_jax import submission
    report = json.loads((run_a / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == [
        "extract_vit", "train_va", "evaluate_va", "submission_va"]
    assert {s["status"] for s in report["stages"]} == {"done"}
    assert_chained(report)
    # The run read the store the extract stage wrote, by path.
    saved = json.loads((run_a / "a_va" / "config.json").read_text())
    assert saved["data"]["features"] == str(run_a / "features" / "vit")
    assert np.isfinite(report["scores"]["VA"]["fold0"])
    # evaluate ran on the workdir's own config (no --config): the run's store, no demo, and no
    # read-only notes from orbax.
    evaluate = [s["command"] for s in report["stages"] if s["name"] == "evaluate_va"][0]
    assert "--config" not in evaluate
    log = (run_a / "log.txt").read_text().split("[evaluate_va]")[1]
    assert f"Feature store: {run_a / 'features' / 'vit'} (" in log
    assert "built-in demo" not in log and "read only" not in log.lower()
    assert "0.3900" in (run_a / "report.md").read_text()     # the paper's figure beside ours
    submission.check_file(run_a / "submission" / "VA.txt", frames_demo, "VA", "test")
    # The dry run prints exactly the commands that ran.
    dry = reproduce("--system", "A", "--tasks", "va", "--root", frames_demo, "--workdir", run_a,
                    "--scale", "tiny", "--dry-run")
    assert dry.stdout.splitlines() == [s["command"] for s in report["stages"]]

    def written() -> dict:
        return {p: p.stat().st_mtime_ns for p in run_a.rglob("*")
                if p.is_file() and not p.name.startswith("report.")}

    before = written()
    again = reproduce("--system", "A", "--tasks", "va", "--root", frames_demo, "--workdir", run_a,
                      "--scale", "tiny")
    rerun = json.loads((run_a / "report.json").read_text())
    assert {s["status"] for s in rerun["stages"]} == {"skipped"}, again.stderr
    assert rerun["scores"] == report["scores"]
    assert written() == before     # no stage ran: nothing but the report was written


def test_sigterm_mid_stage_then_rerun_gives_the_same_submission(run_a, frames_demo, tmp_path):
    import shutil
    workdir = tmp_path / "runs"
    shutil.copytree(run_a / "features", workdir / "features")     # extraction: complete
    args = [sys.executable, "-m", "abaw_jax.reproduce", "--system", "A", "--tasks", "va", "--root",
            str(frames_demo), "--workdir", str(workdir), "--scale", "tiny"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env(), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (workdir / "a_va" / "config.json").exists():   # the train stage has started
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=240)[1]
    assert proc.returncode == 143, err[-2000:]
    assert "rerun the same command to resume" in err
    stages = {s["name"]: s["status"] for s in json.loads((workdir / "report.json").read_text())["stages"]}
    assert stages["train_va"] == "interrupted" and "submission_va" not in stages
    r = subprocess.run(args, cwd=ROOT, env=env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    stages = {s["name"]: s["status"] for s in json.loads((workdir / "report.json").read_text())["stages"]}
    assert stages["extract_vit"] == "skipped" and stages["train_va"] == "done"
    assert (workdir / "submission" / "VA.txt").read_bytes() == \
        (run_a / "submission" / "VA.txt").read_bytes()


@pytest.fixture(scope="module")
def run_b(frames_demo, tmp_path_factory) -> pathlib.Path:
    """System B on EXPR at the tiny scale, run once for the module."""
    return tiny_journey("B", "expr", frames_demo, tmp_path_factory)


def test_system_b_tiny_from_mae_to_fold_ensemble(run_b, frames_demo):
    from abaw_jax import submission
    report = json.loads((run_b / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == [
        "pretrain_mae", "finetune_expr", "extract_mae_ft", "train_expr_fold0",
        "train_expr_fold1", "ensemble_expr", "submission_expr"]
    assert {s["status"] for s in report["stages"]} == {"done"}
    assert_chained(report)
    # Fine-tuning on Aff-Wild2 frames took the source's 8 classes.
    assert json.loads((run_b / "ft_expr" / "config.json").read_text())["num_classes"] == 8
    # The store was extracted at the fine-tuned encoder's own 32 px, with that encoder.
    meta = json.loads((run_b / "features" / "mae_ft" / "meta.json").read_text())
    assert meta["params"]["image_size"] == [32, 32]
    assert meta["params"]["encoder"] == str(run_b / "ft_expr" / "encoder")
    for k in (0, 1):
        saved = json.loads((run_b / "b_expr" / f"fold{k}" / "config.json").read_text())
        assert saved["data"]["features"] == str(run_b / "features" / "mae_ft")
        assert saved["data"]["fold"] == k and saved["eval_mode_filter"] == 40
    # The folds validate on different videos: one score each.
    assert set(report["scores"]["EXPR"]) == {"fold0", "fold1"}
    submission.check_file(run_b / "submission" / "EXPR.txt", frames_demo, "EXPR", "test")


def test_fold_ensemble_with_its_defaults_scores_members_and_prints_what_it_wrote(run_b):
    folds = run_b / "b_expr"
    report = json.loads((run_b / "report.json").read_text())
    command = [s["command"] for s in report["stages"] if s["name"] == "ensemble_expr"][0]
    assert command == (f"python -m abaw_jax.evaluate --workdir {folds / 'fold0'} --ensemble "
                       f"{folds / 'fold1'} --out {folds / 'ensemble'}")   # no --config, --splits
    log = (run_b / "log.txt").read_text().split("[ensemble_expr]")[1]
    assert "validate on different videos" in log
    assert f"wrote {folds / 'ensemble' / 'test' / 'EXPR.txt'}" in log
    result = json.loads((folds / "ensemble" / "val" / "metrics.json").read_text())
    own = [json.loads((folds / f"fold{k}" / "predictions" / "val" / "metrics.json").read_text())
           for k in (0, 1)]
    # Each member is scored on its own videos as its evaluate scored it (mode filter included).
    assert result["member_scores"] == pytest.approx(
        {str(folds / f"fold{k}"): own[k]["score"] for k in (0, 1)})


def test_system_c_stops_naming_the_missing_feature_set(frames_demo, tmp_path, capsys):
    from abaw_jax import reproduce as rep
    rc = rep.main(["--system", "C", "--tasks", "mtl", "--root", str(frames_demo), "--workdir",
                   str(tmp_path), "--scale", "tiny", "--set",
                   f"features.fau={frames_demo / 'features' / 'openface'}"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert "'poster2' feature set (not given)" in err and "--set features.poster2=" in err
    assert "python -m abaw_jax.data.features import-npy" in err   # what produces it
    assert not (tmp_path / "report.json").exists()


def _npy_folder(store: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """A store's videos as the per-video `<video>.npy` files another tool writes."""
    from abaw_jax.data import features
    out.mkdir()
    source = features.FeatureStore(store)
    for video in source.videos:
        np.save(out / f"{video}.npy", source.read(video).astype(np.float32))
        np.save(out / f"{video}.present.npy", source.present(video).astype(bool))
    return out


def test_system_c_runs_when_the_demo_sets_stand_in(frames_demo, tmp_path):
    """POSTER2 comes as a folder of .npy files (imported by a stage), FAU as a store (as is)."""
    from abaw_jax import submission
    from abaw_jax.data import features as F
    features = frames_demo / "features"
    npy = _npy_folder(features / "vit", tmp_path / "poster2_npy")
    workdir = tmp_path / "runs"
    reproduce("--system", "C", "--tasks", "mtl", "--root", frames_demo, "--workdir", workdir,
              "--scale", "tiny", "--set", f"features.poster2={npy}",
              "--set", f"features.fau={features / 'openface'}")
    tmp_path = workdir
    report = json.loads((tmp_path / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == [
        "extract_resnet18", "import_poster2", "train_mtl", "evaluate_mtl", "submission_mtl"]
    imported = report["stages"][1]
    assert imported["inputs"] == [str(npy)]
    assert imported["outputs"] == [str(tmp_path / "features" / "poster2")]
    assert str(tmp_path / "features" / "poster2") in report["stages"][2]["inputs"]
    assert str(features / "openface") in report["stages"][2]["inputs"]
    store = F.FeatureStore(tmp_path / "features" / "poster2")
    assert store.meta["extractor"] == "poster2"
    video = store.videos[0]
    np.testing.assert_allclose(store.read(video), np.load(npy / f"{video}.npy"), rtol=1e-3,
                               atol=1e-3)
    assert_chained(report, sources=(str(npy),))
    # The score is the evaluated checkpoint's (its metrics.json), not the training log's.
    evaluated = json.loads((tmp_path / "c_mtl" / "predictions" / "val" / "metrics.json").read_text())
    assert report["scores"]["MTL"]["fold0"] == pytest.approx(evaluated["score"])
    assert evaluated["score"] == pytest.approx(evaluated["p_mtl"])
    assert str(tmp_path / "c_mtl" / "predictions" / "val" / "metrics.json") in \
        report["stages"][3]["outputs"]
    submission.check_file(tmp_path / "submission" / "MTL.txt", frames_demo, "MTL", "test")


def test_system_c_imports_raw_folders_and_stops_on_other_folders(frames_demo, tmp_path,
                                                                 capsys):
    """Folders of .npy files and OpenFace CSVs get an import stage each; a store is used as
    is; a folder holding neither stops naming it."""
    from abaw_jax import reproduce as rep
    npy, csv = tmp_path / "npy", tmp_path / "csv"
    npy.mkdir(), csv.mkdir()
    np.save(npy / "v.npy", np.zeros((2, 4), np.float32))
    (csv / "v.csv").write_text("frame, face_id, timestamp, confidence, success\n")
    base = ["--system", "C", "--tasks", "va", "--root", str(frames_demo), "--workdir",
            str(tmp_path / "runs"), "--scale", "tiny", "--dry-run"]
    assert rep.main(base + ["--set", f"features.poster2={npy}", "--set",
                            f"features.fau={csv}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    poster2, fau = tmp_path / "runs" / "features" / "poster2", tmp_path / "runs" / "features" / "fau"
    assert lines[1] == f"python -m abaw_jax.data.features import-npy {npy} {poster2} --extractor poster2"
    assert lines[2] == f"python -m abaw_jax.data.features import-openface {csv} {fau}"
    assert f"--config.data.features=resnet18={tmp_path / 'runs' / 'features' / 'resnet18'}," \
           f"poster2={poster2},fau={fau}" in lines[3]
    rc = rep.main(base + ["--set", f"features.poster2={csv}", "--set",
                          f"features.fau={frames_demo / 'features' / 'openface'}"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert f"{csv}: neither a feature store nor a folder of .npy files" in err


def test_mtl_score_is_the_evaluated_checkpoints(frames_demo, tmp_path):
    """report.json's MTL score is predictions/val/metrics.json's (the checkpoint evaluate
    scored, "best" by default), not the last validation of the training log."""
    from abaw_jax import reproduce as rep
    features = frames_demo / "features"
    recipe = rep.Recipe("C", ["mtl"], frames_demo, tmp_path, "tiny", rep.parse_settings(
        [f"features.poster2={features / 'vit'}", f"features.fau={features / 'openface'}"]))
    run = tmp_path / "c_mtl"
    (run / "predictions" / "val").mkdir(parents=True)
    (run / "final_metrics.json").write_text(json.dumps({"step": 90, "val/p_mtl": 0.61}))
    (run / "predictions" / "val" / "metrics.json").write_text(json.dumps(
        {"step": 60, "checkpoint": "best", "score": 0.75, "p_mtl": 0.75}))
    assert recipe.score_files["MTL"]() == {"fold0": 0.75}
    evaluate = next(s for s in recipe.stages if s.name == "evaluate_mtl")
    assert str(run / "predictions" / "val" / "metrics.json") in evaluate.outputs


def test_paper_dry_run_of_b_lists_the_published_recipe(frames_demo, tmp_path, capsys):
    from abaw_jax import reproduce as rep
    assert rep.main(["--system", "B", "--tasks", "va,expr,au", "--root", str(frames_demo),
                     "--workdir", str(tmp_path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 + 3 * (5 + 2)         # MAE, fine-tune, extract; 5 folds, ensemble and
    assert "configs/mae_face.py --workdir" in lines[0]     # submission per task
    assert not any(word in line for line in lines for word in (
        "demo", "tiny", "steps=", "total_steps", "batch_size"))   # the published settings
    assert sum("--config configs/va.py:model=tcn --workdir" in line for line in lines) == 5
    assert sum("--config.data.fold=" in line for line in lines) == 15
    assert not tmp_path.joinpath("report.json").exists()


def test_b_pretrains_mae_on_the_extra_face_sources_it_is_given(frames_demo, tmp_path, capsys):
    """`--set mae.extra=...` reaches the MAE stage only (fine-tuning stays on the EXPR frames),
    as its inputs and in the printed command; the stage's run reads them all."""
    from abaw_jax import reproduce as rep
    faces = tmp_path / "rafdb"
    for label in ("happy", "sad"):
        (faces / label).mkdir(parents=True)
        for k in range(5):
            Image.fromarray(np.full((32, 32, 3), 40 * k, np.uint8)).save(faces / label / f"{k}.jpg")
    extra = f"folder:{faces},tfds:affectnet@{tmp_path / 'tfds'}"
    base = ["--system", "B", "--tasks", "expr", "--root", str(frames_demo), "--workdir",
            str(tmp_path / "runs"), "--scale", "tiny"]
    assert rep.main(base + ["--dry-run", "--set", f"mae.extra={extra}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"--config.data.extra={extra}")
    assert not any("data.extra" in line for line in lines[1:])
    recipe = rep.build(rep.argparse.Namespace(
        system="B", tasks="expr", root=str(frames_demo), workdir=str(tmp_path / "runs"),
        scale="tiny", set=[f"mae.extra={extra}"]))
    assert recipe.stages[0].inputs == [str(frames_demo / "cropped_aligned"), str(faces),
                                       str(tmp_path / "tfds")]
    assert rep.main(base + ["--dry-run", "--set", "mae.extra=faces:/x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--set mae.extra: config.data.extra: 'faces:/x'" in err
    # The stage's own command, run by hand, pretrains on the root's frames plus the folder.
    argv = [sys.executable, *recipe.stages[0].argv[1:]]
    argv[argv.index(f"--config.data.extra={extra}")] = f"--config.data.extra=folder:{faces}"
    r = subprocess.run(argv + ["--config.total_steps=1", "--config.eval_every=1",
                               "--config.log_every=1", "--config.checkpoint_every=1"],
                       cwd=ROOT, env=env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    from abaw_jax.data import image_sources
    frames = len(image_sources.AffWild2Frames(frames_demo, "train"))
    assert f"MAE pretraining on {frames + 10} images: affwild2:{frames_demo} ({frames}), " \
           f"folder:{faces} (10)" in r.stderr


def test_unknown_setting_is_one_line_with_a_suggestion(frames_demo, tmp_path, capsys):
    from abaw_jax import reproduce as rep
    assert rep.main(["--system", "A", "--root", str(frames_demo), "--workdir", str(tmp_path),
                     "--set", "encodr=x.npz"]) == 1
    assert "did you mean 'encoder'?" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The seams of the journey.


def test_evaluate_takes_a_saved_config_json_and_names_a_missing_one(run_a):
    run = run_a / "a_va"
    r = subprocess.run([sys.executable, "-m", "abaw_jax.evaluate", "--workdir", str(run),
                        "--splits", "val", "--out", str(run / "again"), "--config",
                        str(run / "config.json"), "--config.eval_batch_size=4"],
                       cwd=ROOT, env=env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"Feature store: {run_a / 'features' / 'vit'}" in r.stderr
    got = json.loads((run / "again" / "val" / "metrics.json").read_text())
    want = json.loads((run / "predictions" / "val" / "metrics.json").read_text())
    assert got["score"] == pytest.approx(want["score"])
    r = subprocess.run([sys.executable, "-m", "abaw_jax.evaluate", "--workdir", str(run_a / "nothing")],
                       cwd=ROOT, env=env(), capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert "nothing/config.json: no such file" in r.stderr


def test_train_and_evaluate_logs_name_the_store(tiny_demo, capsys):
    from abaw_jax import runs
    runs.resolve_data(tiny_config("VA", tiny_demo))
    err = capsys.readouterr().err
    assert f"Feature store: {tiny_demo / 'features' / 'vit'} (" in err and "32-d" in err


def test_a_dataset_root_never_gets_the_demo_features_in_place_of_the_systems(tiny_demo, capsys):
    from abaw_jax import runs
    from abaw_jax.data import features
    config = load_config("expr", "demo,model=tcn")      # system B reads "mae_ft"
    config.data.root = str(tiny_demo)
    with pytest.raises(features.StoreError, match=r"features/mae_ft: no feature store.*extract"):
        runs.resolve_data(config)
    # Without a root, the built-in demo's synthetic set stands in, and the log says so.
    config.data.root = ""
    assert runs.demo_feature_set(config) == "vit"


def test_extraction_runs_at_the_encoders_own_size(frames_demo, tmp_path):
    import jax.numpy as jnp
    from abaw_jax import extract
    from abaw_jax.models import encoders
    enc = encoders.load_encoder("vit:Ti/8,width=32,depth=2,num_heads=2,mlp_dim=64", image_size=32,
                                pool="gap", dtype=jnp.float32)
    encoders.save_encoder(tmp_path / "encoder", enc.module, enc.variables, mean=(0.5,) * 3,
                          std=(0.25,) * 3)
    config = load_config("extract_vit", "mae")
    config.frames, config.encoder = str(frames_demo), str(tmp_path / "encoder")
    video = sorted(p.name for p in (frames_demo / "cropped_aligned").iterdir())[0]
    config.videos, config.batch_size, config.progress = video, 16, False
    extract.extract(config, tmp_path / "store")
    meta = json.loads((tmp_path / "store" / "meta.json").read_text())
    assert meta["params"]["image_size"] == [32, 32]
    assert meta["params"]["variant"] == enc.info["variant"] or meta["params"]["model_config"]["width"] == 32
    assert meta["params"]["posemb_resized"] is None


def test_store_written_with_other_settings_says_how_to_proceed(tmp_path):
    from abaw_jax.data import features
    features.FeatureStoreWriter(tmp_path / "s", dim=4, extractor="a").close()
    with pytest.raises(features.StoreError, match=r"extractor 'a'.*'b'.*delete .*s or write to "
                                                  r"another folder"):
        features.FeatureStoreWriter(tmp_path / "s", dim=4, extractor="b")


def test_finetuning_on_affwild2_frames_takes_the_sources_class_count(frames_demo):
    from abaw_jax import pretrain
    from abaw_jax.data import image_sources
    config = load_config("finetune_expr", "tiny")
    config.data.update(source="affwild2", root=str(frames_demo))
    train, _ = pretrain.make_sources(config)
    assert pretrain.resolve_num_classes(config, train)
    assert config.num_classes == 8
    image_sources.class_counts(train, config.num_classes)        # labels 0..7 fit
    if (SHARED_DATA / "ckplus48").is_dir():
        ck = load_config("finetune_expr", "ckplus")
        ck.data.root = str(SHARED_DATA / "ckplus48")
        pretrain.resolve_num_classes(ck, pretrain.make_sources(ck)[0])
        assert ck.num_classes == 6                                   # its six class folders


def test_finetuning_workdir_records_the_resolved_class_count(frames_demo, tmp_path,
                                                             monkeypatch):
    """config.json holds the source's class count from the start, so the workdir guard lets
    the run (and its resume, asked again with num_classes = 0) go on."""
    from abaw_jax import pretrain

    class Built(Exception):
        pass

    def stop(config, workdir, sources=None):
        raise Built(config.num_classes)

    monkeypatch.setattr(pretrain, "build_run", stop)
    for _ in range(2):
        config = load_config("finetune_expr", "tiny")
        config.data.update(source="affwild2", root=str(frames_demo))
        assert config.num_classes == 0
        with pytest.raises(Built, match="8"):
            pretrain.train_and_evaluate(config, tmp_path / "ft")
        assert json.loads((tmp_path / "ft" / "config.json").read_text())["num_classes"] == 8


def test_frame_counts_reach_the_submission_check_and_steps_0_is_the_scales(frames_demo,
                                                                          tmp_path, capsys):
    """A `frame_counts` CSV given to the recipe reaches extraction and the submission check
    alike (the test predictions have its counts); `steps=0` leaves each run its scale's
    length."""
    from abaw_jax import reproduce as rep
    counts = tmp_path / "counts.csv"
    counts.write_text("name,frames\n")
    base = ["--system", "A", "--tasks", "va", "--root", str(frames_demo), "--workdir",
            str(tmp_path / "runs"), "--scale", "demo", "--dry-run"]
    assert rep.main(base + ["--set", f"frame_counts={counts}", "--set", "steps=0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"--config.frame_counts={counts}" in next(x for x in lines if "abaw_jax.extract" in x)
    check = next(x for x in lines if "abaw_jax.submission check" in x)
    assert check.endswith(f"--frame-counts {counts}")
    assert not any("total_steps" in x for x in lines)
    assert rep.main(base + ["--set", "steps=40"]) == 0
    assert "--config.total_steps=40" in capsys.readouterr().out


def test_submission_check_command_derives_frame_counts(frames_demo, tmp_path, capsys):
    from abaw_jax import submission
    from abaw_jax.data import affwild2, mtl
    videos = affwild2.test_videos(frames_demo, "AU")
    rng = np.random.default_rng(0)
    path = submission.write_submission(tmp_path / "AU.txt", "AU", [v.name for v in videos],
                                       [rng.normal(size=(v.num_frames, 12)) for v in videos])
    check = ["check", str(path), "--root", str(frames_demo), "--task", "AU", "--split", "test"]
    assert submission.main(check) == 0
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:5] + lines[6:]) + "\n")    # frame 5 of the first video gone
    assert submission.main(check) == 1
    err = capsys.readouterr().err
    assert f"{path}:" in err and "frame 5" in err and err.count("error:") == 1
    # Frame counts from a `name,frames` CSV (counter_frame.csv's form); a bad row is named.
    counts = tmp_path / "counts.csv"
    counts.write_text("name_video,total_frame\n" + "".join(
        f"{v.name}.mp4,{v.num_frames}\n" for v in videos))
    path.write_text("\n".join(lines) + "\n")
    assert submission.main(check + ["--frame-counts", str(counts)]) == 0
    # --copy-to writes the checked bytes, nothing beside them.
    copy = tmp_path / "out" / "AU.txt"
    assert submission.main(check + ["--frame-counts", str(counts), "--copy-to", str(copy)]) == 0
    assert copy.read_bytes() == path.read_bytes() and os.listdir(copy.parent) == ["AU.txt"]
    counts.write_text(counts.read_text() + "extra,many\n")
    assert submission.main(check + ["--frame-counts", str(counts)]) == 1
    assert f"{counts}: line {len(videos) + 2}: frame count 'many'" in capsys.readouterr().err
    assert submission.main(check + ["--frame-counts", str(tmp_path)]) == 1   # a folder
    assert capsys.readouterr().err.count("error:") == 1
    # The validation split and the multi-task challenge too.
    val = affwild2.load_split(frames_demo, "VA", "val")
    path = submission.write_submission(tmp_path / "VA.txt", "VA", [v.name for v in val],
                                       [np.zeros((v.num_frames, 2)) for v in val])
    assert submission.main(["check", str(path), "--root", str(frames_demo), "--task", "VA",
                            "--split", "val"]) == 0
    images = mtl.load_mtl_test(frames_demo)
    path = submission.write_mtl_submission(tmp_path / "MTL.txt", images, {
        "VA": np.zeros((len(images), 2)), "EXPR": np.zeros((len(images), 8)),
        "AU": np.zeros((len(images), 12))})
    check = ["check", str(path), "--root", str(frames_demo), "--task", "MTL"]
    assert submission.main(check) == 0
    text = path.read_text().splitlines()
    text[3] = text[3].replace(",", ",9,", 1)
    path.write_text("\n".join(text) + "\n")
    assert submission.main(check) == 1
    assert f"{path}:4:" in capsys.readouterr().err


def test_scripts_take_config_overrides_like_every_command(tmp_path):
    r = subprocess.run([sys.executable, "scripts/run_folds.py", "--config", "configs/va.py:demo",
                        "--workdir", str(tmp_path), "--config.no_such_key=1"], cwd=ROOT, env=env(),
                       capture_output=True, text=True)
    assert r.returncode != 0 and "config has no key 'no_such_key'" in r.stderr
    for script in ("run_folds.py", "ablations.py"):
        text = (ROOT / "scripts" / script).read_text()
        assert '"--override"' not in text and 'add_argument("--set", action' not in text


def test_demo_help_shows_defaults(capsys):
    from abaw_jax.data import demo
    with pytest.raises(SystemExit):
        demo.main(["--help"])
    out = capsys.readouterr().out
    assert "(default: 40)" in out and "(default: 0.1)" in out and "(default: 112)" in out


def test_demo_variants_name_their_timing_in_the_readme():
    """The README's demo timing is the measured one, per system and task (docs/performance.md)."""
    readme = (ROOT / "README.md").read_text()
    assert "two to four minutes" not in readme
    section = (ROOT / "docs" / "performance.md").read_text().split("## Demo runs")[1]
    section = section.split("\n## ")[0]
    measured: dict[tuple[str, str], int] = {}
    row = r"^\| ([ABC]) \| (VA|EXPR|AU|MTL) \| 600[^|]*\| (\d+) s \|"
    for system, task, wall in re.findall(row, section, re.M):
        measured.setdefault((system, task), int(wall))   # the newest table comes first
    assert {s for s, _ in measured} == {"A", "B", "C"}
    demo = readme.split("The `:demo` variants train 600 steps")[1].split("\n\n")[0]
    for (system, task), wall in measured.items():
        assert f"{wall / 60:.1f}" in demo, (system, task, wall)


def test_only_names_the_stages_it_knows(frames_demo, tmp_path, capsys):
    from abaw_jax import reproduce as rep
    assert rep.main(["--system", "A", "--tasks", "va", "--root", str(frames_demo), "--workdir",
                     str(tmp_path), "--scale", "tiny", "--only", "train"]) == 1
    err = capsys.readouterr().err
    assert "--only train: no such stage; the stages are extract_vit, train_va, evaluate_va, " \
           "submission_va" in err
