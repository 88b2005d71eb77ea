"""TFDS face datasets: scripts/make_tfds.py writes CK+ as ArrayRecord, abaw_jax reads it back
through tfds.data_source without TensorFlow, and MAE pretraining and fine-tuning on the TFDS copy
give the same losses as on the image folder."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from abaw_jax import pretrain
from abaw_jax.data import image_sources

ROOT = pathlib.Path(__file__).resolve().parents[1]
CKPLUS = ROOT.parent / "shared" / "data" / "ckplus48"
HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None
NEEDS_TENSORFLOW = pytest.mark.skipif(
    not HAS_TENSORFLOW, reason="writing a TFDS dataset imports TensorFlow, which is not "
    "installed: pip install -e '.[tfds-prepare]' (the [test] extra includes it)")
SUBJECT = r"^(S\d+)_"


def _script():
    spec = importlib.util.spec_from_file_location("make_tfds", ROOT / "scripts" / "make_tfds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_config(name: str, arg: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _tensorflow_loaded() -> bool:
    return any(m.split(".")[0] == "tensorflow" for m in sys.modules)


def _metrics(workdir: pathlib.Path, key: str) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows if key in r]


@pytest.fixture
def shared_compiles(tmp_path):
    """A persistent XLA cache for one test, so that a second run of the same program skips
    compiling it (compilation dominates a tiny run on a CPU); the old settings come back after."""
    from jax.experimental.compilation_cache import compilation_cache
    settings = {"jax_compilation_cache_dir": str(tmp_path / "xla_cache"),
                "jax_persistent_cache_min_compile_time_secs": 0.0,
                "jax_persistent_cache_min_entry_size_bytes": 0}
    saved = {key: getattr(jax.config, key) for key in settings}
    for key, value in settings.items():
        jax.config.update(key, value)
    compilation_cache.reset_cache()
    yield
    for key, value in saved.items():
        jax.config.update(key, value)
    compilation_cache.reset_cache()


@pytest.mark.skipif(not HAS_TENSORFLOW, reason="TensorFlow is not installed, so nothing can "
                    "import it; the check needs it present (the [test] extra installs it)")
def test_package_never_imports_tensorflow():
    # In a fresh interpreter: this process may hold modules that other tests imported.
    code = (
        "import importlib, pkgutil, sys\n"
        "import abaw_jax\n"
        "for m in pkgutil.walk_packages(abaw_jax.__path__, 'abaw_jax.'):\n"
        "    importlib.import_module(m.name)\n"
        "import tensorflow_datasets\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def _faces(root: pathlib.Path, classes=("anger", "happy"), per=2) -> pathlib.Path:
    """Noise images in class subfolders, named like CK+ files (for the input checks)."""
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for k in range(per):
            pixels = rng.integers(0, 256, (12, 10), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"S{k:03d}_001_00000001.png")
    return root


def test_make_tfds_rejects_bad_folders_naming_the_path(tmp_path, capsys):
    make_tfds = _script()
    out = str(tmp_path / "tfds")

    def error(*args) -> str:
        assert make_tfds.main(["--name", "faces", "--data_dir", out, *args]) == 2
        return capsys.readouterr().err

    assert f"{tmp_path / 'nowhere'}: no such image folder" in error("--root", str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    assert f"{tmp_path / 'empty'}: no class subfolders" in error("--root", str(tmp_path / "empty"))
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(loose / "S001_001_00000001.png")
    assert f"{loose}: no class subfolders" in error("--root", str(loose))
    hollow = tmp_path / "hollow"
    (hollow / "anger").mkdir(parents=True)
    assert f"{hollow}: the class folders hold no images" in error("--root", str(hollow))

    faces = _faces(tmp_path / "faces")
    bad = faces / "happy" / "S009_001_00000001.png"
    bad.write_bytes(b"not a png")
    assert f"{bad}: not a readable image" in error("--root", str(faces))
    # A valid header over truncated data passes the header check and fails while writing.
    bad.write_bytes((faces / "happy" / "S000_001_00000001.png").read_bytes()[:60])
    src = image_sources.ImageFolder(faces)
    assert make_tfds.channels_of(src.paths) == 1
    with pytest.raises(image_sources.ImageSourceError, match=f"{re.escape(str(bad))}: cannot decode"):
        list(make_tfds._examples(src, 1))
    bad.unlink()
    other = _faces(tmp_path / "other", classes=("anger", "sadness"))
    assert f"{other}: class folders ['anger', 'sadness'] differ from" in error(
        "--root", str(faces), "--val_root", str(other))
    assert "nor JSON" in error("--root", str(faces), "--mapping", "{anger")
    assert "finds 1 group(s)" in error("--root", str(faces), "--val_fraction", "0.5",
                                       "--group_pattern", r"^(S)")
    assert "dataset name 'ck+'" in error("--root", str(faces), "--name", "ck+")
    assert "version '1.0'" in error("--root", str(faces), "--version", "1.0")
    (tmp_path / "tfds" / "faces" / "1.0.0").mkdir(parents=True)
    assert "faces/1.0.0: dataset faces 1.0.0 already exists" in error("--root", str(faces))


def test_folder_splits_label_names():
    make_tfds = _script()
    if not CKPLUS.is_dir():
        pytest.skip(f"{CKPLUS} is absent (../shared/data holds the CK+ faces)")
    train, val, names = make_tfds.folder_splits(CKPLUS, val_fraction=0.2, group_pattern=SUBJECT)
    assert names == ("anger", "disgust", "fear", "happy", "sadness", "surprise")
    assert len(train) + len(val) == 594
    _, _, expr = make_tfds.folder_splits(CKPLUS, mapping="names")
    assert expr[1] == "Anger" and expr[4] == "Happiness" and len(expr) == 8
    _, _, custom = make_tfds.folder_splits(CKPLUS, mapping='{"happy": 2, "surprise": 0}')
    assert custom == ("surprise", "class_1", "happy")


@NEEDS_TENSORFLOW
def test_ckplus_as_tfds_reads_back_and_trains_like_the_folder(tmp_path, shared_compiles):
    if not CKPLUS.is_dir():
        pytest.skip(f"{CKPLUS} is absent (../shared/data holds the CK+ faces)")
    import tensorflow_datasets as tfds
    # Only checkable when no earlier test in this process imported TensorFlow (none does).
    tf_loaded_before = _tensorflow_loaded()

    # The documented command, in its own process (it imports TensorFlow; this one need not).
    data_dir = tmp_path / "tfds"
    proc = subprocess.run(
        [sys.executable, "scripts/make_tfds.py", "--root", str(CKPLUS), "--name", "ckplus48",
         "--data_dir", str(data_dir), "--val_fraction", "0.2", "--group_pattern", SUBJECT],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train 471 images, val 123 images" in proc.stdout

    # Every example against the PNG on disk and the class folder it lies in.
    classes = sorted(p.name for p in CKPLUS.iterdir() if p.is_dir())
    on_disk = {f"{p.parent.name}/{p.name}" for p in CKPLUS.glob("*/*.png")}
    subjects, seen = {}, []
    for split in ("train", "val"):
        source = tfds.data_source("ckplus48", split=split, data_dir=str(data_dir))
        assert source.dataset_info.features["label"].names == classes
        subjects[split] = set()
        for i in range(len(source)):
            record = source[i]
            name = record["file_name"].decode()
            pixels = np.asarray(Image.open(CKPLUS / name))
            assert record["image"].shape == (*pixels.shape, 1), name
            np.testing.assert_array_equal(record["image"][:, :, 0], pixels, err_msg=name)
            assert record["label"] == classes.index(name.split("/")[0]), name
            subjects[split].add(re.match(SUBJECT, name.split("/")[1]).group(1))
            seen.append(name)
    assert len(seen) == len(on_disk) == 594 and set(seen) == on_disk
    assert not subjects["train"] & subjects["val"]
    assert len(subjects["val"]) == round(0.2 * len(subjects["train"] | subjects["val"]))

    # Reading through abaw_jax (tfds.data_source) imports no TensorFlow.
    code = ("import sys\nfrom abaw_jax.data import image_sources\n"
            f"s = image_sources.TfdsImages('ckplus48', 'val', {str(data_dir)!r})\n"
            "image, label = s[0]\n"
            "print(image.shape, len(s.labels), any(m.split('.')[0] == 'tensorflow' for m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "(48, 48, 3) 123 False"

    # Record i of each split is image i of the folder source's split: same pixels, same labels.
    train, val, _ = image_sources.split_by_group(image_sources.ImageFolder(CKPLUS), 0.2,
                                                 pattern=SUBJECT)
    for a, split in ((train, "train"), (val, "val")):
        b = image_sources.TfdsImages("ckplus48", split, str(data_dir))
        assert len(a) == len(b)
        np.testing.assert_array_equal(b.labels, a.labels)
        for i in range(len(a)):
            np.testing.assert_array_equal(b[i][0], a[i][0], err_msg=str(a.paths[i]))

    folder_cfg = _load_config("mae_face", "tiny")
    folder_cfg.data.root = str(CKPLUS)
    assert (folder_cfg.data.val_fraction, folder_cfg.data.group_pattern) == (0.2, SUBJECT)
    tfds_cfg = _load_config("mae_face", "tiny")
    tfds_cfg.data.update(source="tfds", tfds_name="ckplus48", root=str(data_dir))

    # MAE pretraining, then fine-tuning from it (balanced class weights from the labels), on
    # each copy with the same seed: the same losses at every step. The TFDS runs compile the same
    # programs as the folder runs (the cache serves them) and feed them the TFDS records.
    for cfg in (folder_cfg, tfds_cfg):
        cfg.update(total_steps=4, log_every=1, eval_every=4, checkpoint_every=4)
    runs = {}
    for kind, mae_cfg in (("folder", folder_cfg), ("tfds", tfds_cfg)):
        runs[kind] = {"mae": tmp_path / f"mae_{kind}", "ft": tmp_path / f"ft_{kind}"}
        pretrain.train_and_evaluate(mae_cfg, runs[kind]["mae"])
        ft = _load_config("finetune_expr", "tiny")
        ft.data.update({k: mae_cfg.data[k] for k in ("source", "root", "tfds_name")})
        ft.update(init_from=str(runs[kind]["mae"]), total_steps=4, log_every=1, eval_every=4,
                  checkpoint_every=4)
        # num_classes 0: the source's own count, resolved by the run and recorded in its config.
        assert ft.loss.class_weights == "balanced" and ft.num_classes == 0
        pretrain.train_and_evaluate(ft, runs[kind]["ft"])
        assert json.loads((runs[kind]["ft"] / "config.json").read_text())["num_classes"] == 6
    compared = {"mae": ("train/loss", "val/loss"),
                "ft": ("train/loss", "train/accuracy", "val/accuracy", "val/macro_f1")}
    for stage, keys in compared.items():
        for key in keys:
            expected = _metrics(runs["folder"][stage], key)
            assert expected and all(np.isfinite(v) for _, v in expected), (stage, key, expected)
            assert _metrics(runs["tfds"][stage], key) == expected, (stage, key)
    # The MAE trained: a different loss at each of its 4 steps.
    assert len({v for _, v in _metrics(runs["folder"]["mae"], "train/loss")}) == 4
    # Reading, training, checkpointing and writing metrics on the TFDS copy pulled in no TensorFlow.
    assert tf_loaded_before or not _tensorflow_loaded()
