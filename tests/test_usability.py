"""What a new user meets first: short runs, named metrics, metrics without masks, a damaged
checkpoint, the wrong config for a workdir, a file as --workdir, and a checker that tolerates
the usual one-frame difference of video frame counts."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from abaw_jax import config as config_lib
from abaw_jax import evaluation, metrics, optim, runs, submission, train
from conftest import ROOT, load_config, tiny_config


def _env():
    import os
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return dict(env, JAX_PLATFORMS="cpu")


@pytest.mark.parametrize("steps", [1, 2, 20, 199])
def test_any_total_steps_is_a_valid_run(steps):
    for task in ("va", "expr", "au"):
        for variant in ("", "model=tcn", "model=fusion"):
            config = load_config(task, variant)
            config.total_steps = steps
            config_lib.validate(config)
            plan = optim.resolve_steps(config, steps_per_epoch=10)
            assert plan.total_steps == steps and 0 <= plan.warmup_steps < steps
            schedule = optim.make_schedule(config.optimizer, plan)
            lrs = np.array([schedule(s) for s in range(steps)])
            assert np.all(np.isfinite(lrs)) and lrs.max() <= config.optimizer.lr * (1 + 1e-6)


def test_shortened_warmup_is_reported(capsys):
    config = load_config("va")
    config.total_steps = 20
    config.optimizer.warmup_steps = 200
    plan = optim.resolve_steps(config, steps_per_epoch=5)
    optim.report(plan)
    assert plan.warmup_steps == 2
    assert "warmup 200 >= total_steps 20: warmup shortened to 2 steps" in capsys.readouterr().err


def test_epochs_turn_into_steps():
    config = load_config("va")
    config.total_steps = 0
    config.num_epochs = 3.0
    config.optimizer.warmup_epochs = 0.5
    plan = optim.resolve_steps(config, steps_per_epoch=40)
    assert (plan.total_steps, plan.warmup_steps) == (120, 20)
    config.total_steps = 7   # an explicit step count wins over epochs
    assert optim.resolve_steps(config, steps_per_epoch=40).total_steps == 7


def test_metrics_take_official_labels_without_a_mask():
    rng = np.random.default_rng(0)
    va = rng.uniform(-1, 1, (200, 2))
    va[rng.random((200, 2)) < 0.2] = -5
    pred = rng.uniform(-1, 1, (200, 2))
    assert metrics.va_score(pred, va) == metrics.va_score(pred, va, va != -5)
    expr = rng.integers(-1, 8, 300)
    logits = rng.normal(size=(300, 8))
    assert metrics.task_score("EXPR", logits, expr) == metrics.task_score("EXPR", logits, expr,
                                                                           expr >= 0)
    au = rng.integers(-1, 2, (300, 12))
    probs = rng.random((300, 12))
    assert metrics.au_f1(probs, au) == metrics.au_f1(probs, au, au >= 0)
    # Without the mask the -1 entries would count as labels and fail the 0/1 check.
    with pytest.raises(ValueError, match="0 or 1"):
        metrics.au_f1(probs, au, np.ones_like(au, bool))


def test_eval_lines_name_the_metric(tiny_demo, tmp_path, capsys):
    for task, name in (("VA", "VA CCC"), ("EXPR", "EXPR F1"), ("AU", "AU F1")):
        train.train_and_evaluate(tiny_config(task, tiny_demo, total_steps=3), tmp_path / task)
        err = capsys.readouterr().err
        line = next(l for l in err.splitlines() if l.startswith("eval at step 3"))
        assert name in line, line
        if task == "VA":
            assert "valence CCC" in line and "arousal CCC" in line


def _truncate_a_data_file(step_dir: pathlib.Path) -> pathlib.Path:
    candidates = [p for p in (step_dir / "state").rglob("*") if p.is_file()
                  and p.stat().st_size > 64 and p.suffix not in (".json",)
                  and "metadata" not in p.name]
    victim = max(candidates, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    return victim


def test_damaged_latest_checkpoint_resumes_from_previous(tiny_demo, tmp_path, capsys):
    config = tiny_config("VA", tiny_demo, total_steps=6, checkpoint_every=3, eval_every=3)
    train.train_and_evaluate(config, tmp_path)
    _truncate_a_data_file(tmp_path / "checkpoints" / "6")
    capsys.readouterr()
    train.train_and_evaluate(tiny_config("VA", tiny_demo, total_steps=9, checkpoint_every=3,
                                         eval_every=3), tmp_path)
    err = capsys.readouterr().err
    assert f"Checkpoint {tmp_path.absolute() / 'checkpoints' / '6'} is damaged" in err
    assert "Resuming from step 3" in err
    assert (tmp_path / "checkpoints" / "damaged-6").is_dir()
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 9
    # A further rerun no longer trips on the damaged one.
    train.train_and_evaluate(tiny_config("VA", tiny_demo, total_steps=9), tmp_path)
    assert "is damaged" not in capsys.readouterr().err


def test_evaluate_with_another_tasks_config_names_the_workdirs_task(tiny_demo, tmp_path):
    train.train_and_evaluate(tiny_config("VA", tiny_demo, total_steps=2, eval_every=2,
                                         checkpoint_every=2), tmp_path)
    with pytest.raises(runs.RunError, match=r"holds a VA model; the config is for EXPR "
                                            r"\(use --config configs/va.py\)"):
        evaluation.evaluate(tiny_config("EXPR", tiny_demo), tmp_path)
    fusion = tiny_config("VA", tiny_demo)
    fusion.model = config_lib.load_config_file(ROOT / "configs" / "va.py", "model=fusion").model
    with pytest.raises(runs.RunError, match="holds a model=transformer run"):
        evaluation.evaluate(fusion, tmp_path)


@pytest.mark.parametrize("module", ["abaw_jax.train", "abaw_jax.evaluate"])
def test_workdir_that_is_a_file_is_a_one_line_error(tmp_path, module):
    path = tmp_path / "run.txt"
    path.write_text("not a directory\n")
    r = subprocess.run([sys.executable, "-m", module, "--config", f"{ROOT / 'configs' / 'va.py'}:demo",
                        "--workdir", str(path)], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"error: --workdir {path}: exists and is not a directory"


def test_checker_warns_on_one_trailing_frame(tmp_path):
    path = tmp_path / "VA.txt"
    submission.write_submission(path, "VA", ["a", "b"], [np.zeros((6, 2)), np.zeros((4, 2))])
    # OpenCV counted 5 and 4 frames: video a has a row for frame 6, one past its count.
    warnings = submission.check_submission(path, "VA", {"a": 5, "b": 4})
    assert len(warnings) == 1 and "video a: one row past its 5 frames (frame 6)" in warnings[0]
    assert submission.check_submission(path, "VA", {"a": 6, "b": 4}) == []
    with pytest.raises(submission.SubmissionError, match=r"video a: frames beyond its 4 frames"):
        submission.check_submission(path, "VA", {"a": 4, "b": 4})


def test_missing_system_features_name_the_commands_that_write_them(tiny_demo):
    """System B reads the fine-tuned MAE features and C the paper's sets; when they are absent
    the error says which commands produce them."""
    config = load_config("va", "model=tcn")
    config.data.root = str(tiny_demo)
    with pytest.raises(Exception, match=r"features/mae_ft: no feature store \('mae_ft' features\); "
                                        r"write it with: python -m abaw_jax.pretrain --config "
                                        r"configs/mae_face.py"):
        runs.resolve_data(config)
    config = load_config("va", "model=fusion")
    config.data.root = str(tiny_demo)
    with pytest.raises(Exception, match=r"features/resnet18: no feature store .*configs/extract_vit.py:resnet18"):
        runs.resolve_data(config)


def test_early_stopping_stops_after_patience_evaluations(tiny_demo, tmp_path, capsys):
    """No learning (lr ~ 0): the score never improves, so the run stops `patience` evaluations
    after the first and saves a checkpoint there."""
    config = tiny_config("VA", tiny_demo, total_steps=30, eval_every=2, checkpoint_every=2,
                         early_stopping_patience=2)
    config.optimizer.lr = 1e-12
    config.model.dropout = 0.0
    config.model.mask_prob = 0.0
    train.train_and_evaluate(config, tmp_path)
    err = capsys.readouterr().err
    assert "Early stopping at step 6: no better validation score in 2 evaluations" in err
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 6


def test_exponential_schedule_decays_once_per_epoch():
    config = load_config("va", "model=fusion")
    plan = optim.resolve_steps(config, steps_per_epoch=10)
    schedule = optim.make_schedule(config.optimizer, plan)
    lrs = [float(schedule(s)) for s in (0, 9, 10, 19, 20, 35)]
    assert lrs == pytest.approx([1e-4, 1e-4, 9e-5, 9e-5, 8.1e-5, 1e-4 * 0.9 ** 3], rel=1e-6)
    assert plan.total_steps == 999 * 10


def test_system_b_warms_up_one_epoch_then_decays_by_cosine():
    config = load_config("expr", "model=tcn")
    plan = optim.resolve_steps(config, steps_per_epoch=50)
    assert (plan.total_steps, plan.warmup_steps) == (500, 50)   # 10 epochs for EXPR
    schedule = optim.make_schedule(config.optimizer, plan)
    assert float(schedule(0)) == 0.0 and float(schedule(50)) == pytest.approx(3e-5)
    assert float(schedule(275)) == pytest.approx(3e-5 * 0.5, rel=1e-4)
    assert float(schedule(499)) < 1e-8


def test_evaluations_per_epoch_set_the_cadence():
    from abaw_jax import loop
    config = load_config("va", "model=tcn")           # system B: four evaluations an epoch
    assert loop.cadence(config, steps_per_epoch=41) == (11, 11)
    config.evals_per_epoch = 0.0                      # then eval_every / checkpoint_every
    config.eval_every, config.checkpoint_every = 7, 9
    assert loop.cadence(config, steps_per_epoch=41) == (7, 9)
