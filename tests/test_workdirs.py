"""A workdir is never lost, damaged or silently wrong: one test per reported failure.

Another config in a finished workdir, altered checkpoint bytes, NaN predictions, a full disk, a
damaged best checkpoint, a read-only workdir, unknown keys and variants, a batch that does not
split over the devices, metrics after a kill, a test video without features, a truncated store
index, a video file cut short, and the permissions of written files.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

from abaw_jax import checkpoints, digests, evaluation, files, runs, sharding, submission, train, workdirs
from abaw_jax.data import affwild2, features as features_lib, video as video_lib
from conftest import ROOT, SHARED_DATA, tiny_config

TINY_FLAGS = {
    "data.seq_len": 16, "data.num_threads": 1, "model.d_model": 16, "model.num_heads": 2,
    "model.mlp_dim": 32, "model.num_layers": 1, "batch_size": 8, "total_steps": 6,
    "optimizer.warmup_steps": 2, "log_every": 2, "eval_every": 3, "checkpoint_every": 3,
    "progress": False,
}


def cli(module: str, root, workdir, config: str = "va.py:demo", **overrides) -> list[str]:
    flags = dict(TINY_FLAGS, **{"data.root": str(root)}, **overrides)
    return [sys.executable, "-m", module, "--config", f"{ROOT / 'configs' / config}",
            "--workdir", str(workdir), *(f"--config.{k}={v}" for k, v in flags.items())]


def run_cli(args, devices: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    """The last stderr line of a command that failed on bad input, checked to be one line."""
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), r.stderr[-3000:]
    return last


def snapshot(workdir: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*"))
            if p.is_file()}


def read_rows(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def alter_values(step_dir: pathlib.Path, abstract_state) -> tuple[pathlib.Path, int]:
    """Flips one bit of a data file of the checkpoint in `step_dir` such that orbax still
    restores it, with other values: the damage of a bad disk block or a stray write that no
    checksum of the format covers. Returns (file, offset)."""
    import orbax.checkpoint as ocp

    def read():
        with ocp.CheckpointManager(step_dir.parent, item_names=("state",), options=
                                   ocp.CheckpointManagerOptions(read_only=True)) as m:
            restored = m.restore(int(step_dir.name), args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state)))
        return [np.asarray(x) for x in jax.tree.leaves(restored.state)]

    original = read()
    data_files = sorted((p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"),
                        key=lambda p: -p.stat().st_size)
    for path in data_files:
        data = path.read_bytes()
        for offset in range(0, len(data), max(1, len(data) // 64)):
            flipped = bytearray(data)
            flipped[offset] ^= 0x10
            path.write_bytes(bytes(flipped))
            try:
                values = read()
            except Exception:  # noqa: BLE001 - a flip the format itself detects: try another
                values = original
            if any(not np.array_equal(a, b, equal_nan=True) for a, b in zip(original, values)):
                return path, offset
            path.write_bytes(data)
    raise AssertionError(f"no bit of {step_dir} changes a value without a read error")


def abstract_state(config):
    data = runs.resolve_data(config)
    return runs.setup_model(config, data.feature_dims, sharding.make_mesh(-1)).abstract_state


@contextlib.contextmanager
def small_disk(path: pathlib.Path, size: str, read_only: bool = False):
    """A tmpfs of `size` mounted at `path` (read-only once the body has filled it, with
    `read_only`); skips where mounting is not allowed (not root, no CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: pathlib.Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


# --- another config in a finished workdir -----------------------------------------------------

def test_another_config_changes_nothing_and_the_right_one_resumes(tiny_demo, tmp_path, capsys):
    config = tiny_config("VA", tiny_demo)
    train.train_and_evaluate(config, tmp_path)
    before = snapshot(tmp_path)
    for other, keys in ((tiny_config("EXPR", tiny_demo), "task"),
                        (tiny_config("VA", tiny_demo, **{"model.num_layers": 2}),
                         "model.num_layers (1 there, 2 here)")):
        with pytest.raises(workdirs.WorkdirError, match=rf"--workdir {tmp_path} holds another "
                                                        rf"run: .*{re.escape(keys)}"):
            train.train_and_evaluate(other, tmp_path)
    assert snapshot(tmp_path) == before   # nothing renamed damaged-*, config.json kept
    capsys.readouterr()
    train.train_and_evaluate(tiny_config("VA", tiny_demo, total_steps=9), tmp_path)
    assert "Resuming from step 6" in capsys.readouterr().err


def test_resumable_settings_may_change_and_others_may_not():
    import ml_collections
    saved = {"task": "VA", "total_steps": 6, "data": {"root": "/a", "seq_len": 16},
             "model": {"num_layers": 1}, "log_every": 2}
    same = ml_collections.ConfigDict(saved)
    assert workdirs.config_differences(saved, same) == []
    longer = ml_collections.ConfigDict(dict(saved, total_steps=60, log_every=5,
                                            data={"root": "/b", "seq_len": 16}))
    assert workdirs.config_differences(saved, longer) == []
    other = ml_collections.ConfigDict(dict(saved, data={"root": "/a", "seq_len": 32},
                                           model={"num_layers": 2}))
    assert workdirs.config_differences(saved, other) == ["data.seq_len", "model.num_layers"]


# --- checkpoint bytes altered after the save ------------------------------------------------

def test_altered_checkpoint_bytes_are_caught_and_set_aside(tiny_demo, tmp_path, capsys):
    config = tiny_config("VA", tiny_demo)
    train.train_and_evaluate(config, tmp_path)
    alter_values(tmp_path / "checkpoints" / "6", abstract_state(config))
    capsys.readouterr()
    train.train_and_evaluate(tiny_config("VA", tiny_demo, total_steps=9), tmp_path)
    err = capsys.readouterr().err
    assert (f"Checkpoint {tmp_path.absolute() / 'checkpoints' / '6'} is damaged "
            f"(DigestMismatch: content digest mismatch in 1 of") in err
    assert "Resuming from step 3" in err
    assert (tmp_path / "checkpoints" / "damaged-6").is_dir()


def test_nonfinite_message_names_the_checkpoint_verified_intact(tiny_demo, tmp_path):
    config = tiny_config("VA", tiny_demo)
    train.train_and_evaluate(config, tmp_path)
    ckpt = checkpoints.RunCheckpoints(tmp_path)
    ckpt.abstract_state = abstract_state(config)
    assert checkpoints.intact_note(ckpt).startswith("the last intact checkpoint is step 6 ")
    alter_values(tmp_path / "checkpoints" / "6", ckpt.abstract_state)
    note = checkpoints.intact_note(ckpt)
    ckpt.close()
    assert note.startswith(f"the last intact checkpoint is step 3 in {ckpt.directory}"), note
    assert (tmp_path / "checkpoints" / "damaged-6").is_dir()


def _digest_reference(x: np.ndarray) -> str:
    """The digest digests.py documents, in NumPy uint64 arithmetic reduced modulo 2^32 by hand."""
    if x.dtype == bool:
        x = x.astype(np.uint8)
    words = np.ascontiguousarray(x).reshape(x.shape or (1,)).view(
        {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}[x.dtype.itemsize])
    w = words.astype(np.uint64).reshape(-1, words.shape[-1]) if words.ndim > 1 else \
        words.astype(np.uint64).reshape(1, -1)
    mod = np.uint64(2**32)
    col, row = w.sum(axis=0) % mod, w.sum(axis=1) % mod
    m1 = ((np.arange(len(col), dtype=np.uint64) * np.uint64(0x9E3779B1)) % mod) | np.uint64(1)
    m2 = (((np.arange(len(row), dtype=np.uint64) + np.uint64(1)) * np.uint64(0x85EBCA6B)) % mod
          | np.uint64(1))
    a = int(sum(int(c) * int(m) for c, m in zip(col, m1)) % 2**32)
    b = int(sum(int(r) * int(m) for r, m in zip(row, m2)) % 2**32)
    return f"{a:08x}{b:08x}"


def test_digest_matches_a_numpy_reference_and_sees_every_single_change():
    import ml_dtypes
    rng = np.random.default_rng(0)
    tree = {"f32": rng.standard_normal((7, 5)).astype(np.float32),
            "bf16": rng.standard_normal((3, 11)).astype(ml_dtypes.bfloat16),
            "i32": rng.integers(-9, 9, 12).astype(np.int32), "b": rng.random(9) > 0.5,
            "f64": rng.standard_normal((3, 4)), "step": np.int32(7)}
    host = digests.digest(tree)["arrays"]
    for k, x in tree.items():
        assert host[k] == _digest_reference(np.asarray(x)), k
    # The jitted reduction (used on accelerators) gives the same digest as NumPy on the host.
    on_device = {k: jax.device_put(v) for k, v in tree.items() if k != "f64"}   # x64 is off
    assert digests.digest(on_device, host=False)["arrays"] == {
        k: v for k, v in host.items() if k != "f64"}
    digests.verify(tree, digests.digest(tree))
    for i in range(tree["f32"].size):   # any one value changed (here its lowest bit) is seen
        changed = dict(tree, f32=tree["f32"].copy())
        changed["f32"].reshape(-1).view(np.uint32)[i] ^= 1
        with pytest.raises(digests.DigestMismatch, match=r"\bf32\b"):
            digests.verify(changed, digests.digest(tree))
    swapped = dict(tree, f32=tree["f32"][::-1].copy())   # same values, other places
    with pytest.raises(digests.DigestMismatch):
        digests.verify(swapped, digests.digest(tree))


# --- NaN predictions and the test list --------------------------------------------------------

def _nan_video(root: pathlib.Path, video: str) -> None:
    store = features_lib.FeatureStore(root / "features" / "vit")
    entry = [json.loads(line) for line in (store.path / "index-p0.jsonl").read_text().splitlines()
             if json.loads(line)["video"] == video][0]
    rows = np.memmap(store.path / entry["shard"], dtype=store.dtype, mode="r+").reshape(-1, store.dim)
    rows[entry["offset"]: entry["offset"] + entry["length"]] = np.nan
    rows.flush()


@pytest.fixture(scope="module")
def trained(tiny_demo, tmp_path_factory):
    """A tiny VA run on a copy of the demo (the tests below change its features)."""
    base = tmp_path_factory.mktemp("trained")
    root = base / "affwild2"
    shutil.copytree(tiny_demo, root)
    config = tiny_config("VA", root, total_steps=3, eval_every=3, checkpoint_every=3)
    train.train_and_evaluate(config, base / "run")
    return config, root, base / "run"


def _fresh_copy(trained, tmp_path):
    config, root, run = trained
    new_root, new_run = tmp_path / "affwild2", tmp_path / "run"
    shutil.copytree(root, new_root)
    shutil.copytree(run, new_run)
    config = tiny_config("VA", new_root, total_steps=3, eval_every=3, checkpoint_every=3)
    return config, new_root, new_run


@pytest.mark.parametrize("split", ["test", "val"])
def test_nan_predictions_stop_evaluate_naming_video_split_and_store(trained, tmp_path, split):
    config, root, run = _fresh_copy(trained, tmp_path)
    if split == "test":
        video = affwild2.read_test_list(affwild2.test_list_path(root, "VA"))[0]
    else:
        video = affwild2.load_split(root, "VA", "val")[0].name
    _nan_video(root, video)
    with pytest.raises(workdirs.PredictionError,
                       match=rf"video {video!r} of the {split} split .* in "
                             rf"{root / 'features' / 'vit'} hold NaN/inf; nothing was written"):
        evaluation.evaluate(config, run, splits=(split,))
    assert not (run / "predictions" / split / "VA.txt").exists()


def test_test_video_without_features_is_an_error_unless_allowed(trained, tmp_path, capsys):
    config, root, run = _fresh_copy(trained, tmp_path)
    listed = affwild2.test_list_path(root, "VA")
    names = affwild2.read_test_list(listed)
    listed.write_text("\n".join([*names, "no_such_video"]) + "\n")
    with pytest.raises(workdirs.PredictionError, match=rf"1 videos of the test list {listed} have "
                                                       rf"no features .*'no_such_video'.*"
                                                       rf"--allow_incomplete"):
        evaluation.evaluate(config, run, splits=("test",))
    assert not (run / "predictions" / "test").exists()
    evaluation.evaluate(config, run, splits=("test",), allow_incomplete=True)
    assert "writing an incomplete test submission" in capsys.readouterr().err
    counts = {n: features_lib.FeatureStore(root / "features" / "vit").num_frames(n) for n in names}
    assert submission.check_submission(run / "predictions" / "test" / "VA.txt", "VA", counts) == []


def test_invalid_submission_never_takes_the_place_of_the_last_one(tmp_path):
    path = tmp_path / "VA.txt"
    submission.write_submission(path, "VA", ["a"], [np.zeros((3, 2))])
    before = path.read_bytes()
    with pytest.raises(submission.SubmissionError, match=r"video 'a' hold NaN/inf \(frame index 1\)"):
        submission.write_submission(path, "VA", ["a"], [np.array([[0, 0], [np.nan, 0], [0, 0]])])
    # A file the checker rejects (two videos of one name: rows twice) is not written either.
    with pytest.raises(submission.SubmissionError,
                       match=rf"{path}:5: frame a/00001.jpg appears twice \(the file was not written\)"):
        submission.write_submission(path, "VA", ["a", "a"], [np.zeros((3, 2)), np.zeros((4, 2))])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VA.txt"]


# --- a damaged best checkpoint in evaluate ----------------------------------------------------

def test_damaged_best_checkpoint_falls_back_naming_the_step(trained, tmp_path, capsys):
    config, root, run = _fresh_copy(trained, tmp_path)
    alter_values(run / "best" / "3", abstract_state(config))
    capsys.readouterr()
    results = evaluation.evaluate(config, run, splits=("val",))
    err = capsys.readouterr().err
    assert (f"The best checkpoint {run.absolute() / 'best' / '3'} is damaged (DigestMismatch: "
            f"content digest mismatch") in err
    assert f"using the latest intact checkpoint instead: step 3 of" in err
    assert results["val"]["step"] == 3 and np.isfinite(results["val"]["score"])


# --- disk full and read-only ------------------------------------------------------------------

def test_full_disk_stops_at_the_failing_save_with_one_line(tiny_demo, tmp_path):
    # d_model 64: a train state (parameters and two Adam moments) of about 1.2 MB; 3 MB hold the
    # first one and the best one, not the second.
    big = {"model.d_model": 64, "model.mlp_dim": 256, "model.num_layers": 2,
           "total_steps": 9, "eval_every": 3, "checkpoint_every": 3}
    with small_disk(tmp_path / "disk", "3m") as disk:
        r = run_cli(cli("abaw_jax.train", tiny_demo, disk / "run", **big))
        last = one_error_line(r)
        assert last.startswith(f"error: cannot save the checkpoint in {disk / 'run'}"), last
        assert re.search(r"no space left on the device \([\d.]+ [kM]B free\)", last), last
        assert "the last intact checkpoint is step 3" in last, last
        assert len(r.stderr.strip().splitlines()) < 30, r.stderr[-3000:]
        remount(disk, "size=64m")
        r = run_cli(cli("abaw_jax.train", tiny_demo, disk / "run", **big))
        assert r.returncode == 0, r.stderr[-3000:]
        assert "Resuming from step 3" in r.stderr


def test_read_only_workdir_is_refused_before_any_device_work(tiny_demo, tmp_path):
    with small_disk(tmp_path / "disk", "16m") as disk:
        train.train_and_evaluate(tiny_config("VA", tiny_demo, total_steps=3), disk / "run")
        remount(disk, "ro")
        for module in ("abaw_jax.train", "abaw_jax.evaluate"):
            r = run_cli(cli(module, tiny_demo, disk / "run", total_steps=3))
            assert one_error_line(r) == (f"error: --workdir {disk / 'run'}: cannot write in "
                                         f"{disk / 'run'} (read-only file system); choose a "
                                         f"writable directory")
            assert "Evaluating" not in r.stderr and "No dataset" not in r.stderr


def test_unwritable_directory_is_reported(tmp_path, monkeypatch):
    import errno
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(workdirs.WorkdirError, match=rf"--workdir {tmp_path / 'new'}: cannot write "
                                                    rf"in {tmp_path} \(read-only file system\)"):
        workdirs.check_writable(tmp_path / "new")


# --- one line for every bad input -------------------------------------------------------------

@pytest.mark.parametrize("args, devices, expected", [
    ({"foo": 1}, 1, "error: --config.foo=1: unknown config key config.foo; config.* has "),
    ({"data.bogus": 1}, 1, "error: --config.data.bogus=1: unknown config key config.data.bogus; "
                           "did you mean config.data.root"),
    ({"optimizer.lrr": 1}, 1, "error: --config.optimizer.lrr=1: unknown config key "
                              "config.optimizer.lrr; did you mean config.optimizer.lr"),
    ({"batch_size": 3}, 2, "error: config.batch_size=3 must be divisible by the 2 devices"),
], ids=["top_key", "data_key", "did_you_mean", "batch_vs_devices"])
def test_bad_command_line_is_one_error_line(tiny_demo, tmp_path, args, devices, expected):
    r = run_cli(cli("abaw_jax.train", tiny_demo, tmp_path / "run", **args), devices=devices)
    assert one_error_line(r).startswith(expected), r.stderr[-2000:]


def test_unknown_variant_lists_the_known_ones_and_debug_shows_the_traceback(tiny_demo, tmp_path):
    args = cli("abaw_jax.train", tiny_demo, tmp_path / "run", config="va.py:nosuch")
    line = one_error_line(run_cli(args))
    assert line.startswith(f"error: --config={ROOT / 'configs' / 'va.py'}:nosuch: unknown config "
                           f"variant 'nosuch' in 'nosuch'; known: demo, "), line
    assert " mask, " in line and " windows" in line   # the list of the system file's variants
    r = run_cli([*args, "--debug"])
    assert r.returncode != 0 and "Traceback" in r.stderr


# --- metrics after a kill between two checkpoints ---------------------------------------------

def test_metrics_hold_each_step_once_after_a_resume(tiny_demo, tmp_path):
    config = tiny_config("VA", tiny_demo, log_every=1)
    train.train_and_evaluate(config, tmp_path / "killed")
    before = read_rows(tmp_path / "killed")
    # The state a kill -9 after step 6's metrics and before its checkpoint leaves behind.
    shutil.rmtree(tmp_path / "killed" / "checkpoints" / "6")
    (tmp_path / "killed" / "final_metrics.json").unlink()
    train.train_and_evaluate(config, tmp_path / "killed")
    rows = read_rows(tmp_path / "killed")
    keys = [(r["step"], tuple(sorted(k for k in r if k != "step" and not k.startswith("perf/"))))
            for r in rows]
    assert len(keys) == len(set(keys)), keys
    losses = {r["step"]: r["train/loss"] for r in before if "train/loss" in r}
    assert {r["step"]: r["train/loss"] for r in rows if "train/loss" in r} == losses
    # A finished run run again logs nothing twice either.
    train.train_and_evaluate(config, tmp_path / "killed")
    assert len(read_rows(tmp_path / "killed")) == len(rows)


def test_drop_metrics_after_keeps_rows_up_to_the_step(tmp_path):
    lines = [json.dumps({"step": s, "train/loss": float(s)}) for s in (1, 2, 3, 4)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 5, "tr')
    assert workdirs.drop_metrics_after(tmp_path, 2) == 3
    assert [r["step"] for r in read_rows(tmp_path)] == [1, 2]


# --- a truncated store index ------------------------------------------------------------------

def test_truncated_index_is_named(tiny_demo, tmp_path):
    root = tmp_path / "affwild2"
    shutil.copytree(tiny_demo, root)
    index = root / "features" / "vit" / "index-p0.jsonl"
    data = index.read_bytes()
    index.write_bytes(data[: len(data) * 2 // 3])
    listed = index.read_bytes().count(b"\n")
    with pytest.raises(features_lib.StoreError,
                       match=rf"lack \d+ \w+ videos of VA, .*; the store's index: {index} lists "
                             rf"{listed} videos, then \d+ bytes of a cut line: the file is "
                             rf"truncated"):
        runs.resolve_data(tiny_config("VA", root))


# --- a video file cut short -------------------------------------------------------------------

def faststart(data: bytes) -> bytes:
    """An MP4 with its index (moov) moved before the media data, chunk offsets shifted: the
    layout of streamed files, which still open when cut."""
    atoms, i = [], 0
    while i < len(data):
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        atoms.append((kind, data[i:i + size]))
        i += size
    moov = bytearray(next(a for k, a in atoms if k == b"moov"))

    def shift(start: int, end: int) -> None:
        j = start
        while j < end:
            size, kind = struct.unpack(">I4s", moov[j:j + 8])
            if kind in (b"trak", b"mdia", b"minf", b"stbl", b"edts"):
                shift(j + 8, j + size)
            elif kind in (b"stco", b"co64"):
                width, fmt = (4, ">I") if kind == b"stco" else (8, ">Q")
                for k in range(struct.unpack(">I", moov[j + 12:j + 16])[0]):
                    o = j + 16 + width * k
                    moov[o:o + width] = struct.pack(fmt, struct.unpack(fmt, moov[o:o + width])[0]
                                                    + len(moov))
            j += size

    shift(8, len(moov))
    return (b"".join(a for k, a in atoms if k == b"ftyp") + bytes(moov)
            + b"".join(a for k, a in atoms if k not in (b"ftyp", b"moov")))


def test_video_cut_short_is_reported(tmp_path, capsys):
    source_path = SHARED_DATA / "videos" / "fer_woman2.mp4"
    if not source_path.is_file():
        pytest.skip(f"{source_path} absent (the shared real-data folder)")
    whole = faststart(source_path.read_bytes())
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[: int(len(whole) * 0.3)])
    source = video_lib.VideoFileSource(cut)
    decoded = sum(len(c) for c in source.chunks(64))
    assert source.info.num_frames == 464 and 0 < decoded < 200
    capsys.readouterr()
    line = video_lib.warn_if_short(source.info, decoded)
    assert line == (f"Warning: {cut}: decoded {decoded} of the 464 frames its container "
                    f"declares; the file may be cut short (the rows stop at frame {decoded})")
    assert line in capsys.readouterr().err
    full = tmp_path / "full.mp4"
    full.write_bytes(whole)
    source = video_lib.VideoFileSource(full)
    assert video_lib.warn_if_short(source.info, sum(len(c) for c in source.chunks(64))) == ""


# --- written files follow the umask -----------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        written = [files.write_json(tmp_path / "config.json", {"a": 1}),
                   submission.write_submission(tmp_path / "VA.txt", "VA", ["v"], [np.zeros((2, 2))])]
        evaluation.save_outputs(tmp_path / "VA_outputs.npz", ["v"], [np.zeros((2, 2))])
        written.append(tmp_path / "VA_outputs.npz")
        with features_lib.FeatureStoreWriter(tmp_path / "store", dim=4) as w:
            w.write("v", np.zeros((3, 4), np.float32))
        written.append(tmp_path / "store" / "meta.json")
        for path in written:
            assert path.stat().st_mode & 0o777 == mode, path
    finally:
        os.umask(old)
