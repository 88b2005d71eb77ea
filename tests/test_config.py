"""Config files, variants, overrides and validation (all before JAX touches a device)."""

import subprocess
import sys

import pytest

from abaw_jax import config as config_lib
from conftest import ROOT, load_config as load


@pytest.mark.parametrize("name", ["va", "expr", "au"])
def test_paper_defaults(name):
    c = load(name)
    config_lib.validate(c)
    # System A's published hyperparameters (its paper, §4.1; docs/systems.md lists the sources).
    assert (c.model.num_layers, c.model.num_heads, c.model.d_model) == (6, 8, 768)
    assert c.model.dropout == 0.2 and c.model.mask_prob == 0.2 and c.model.mask_mode == "frame"
    assert c.data.seq_len == 100 and c.batch_size == 512
    assert c.optimizer.lr == 1e-4 and c.optimizer.weight_decay == 1e-3
    assert c.loss.name == {"va": "ccc", "expr": "focal", "au": "focal"}[name]
    if name != "va":
        assert (c.loss.alpha, c.loss.gamma) == (0.25, 2.0)


def test_variants():
    c = load("va", "demo,seq_len=10,mask=0")
    assert c.data.seq_len == 10 and c.model.mask_prob == 0.0 and c.model.d_model == 64
    with pytest.raises(config_lib.ConfigError, match="unknown config variant 'sqe_len'"):
        load("va", "sqe_len=10")
    with pytest.raises(config_lib.ConfigError, match="'seq_len' expects int"):
        load("va", "seq_len=ten")


@pytest.mark.parametrize("key,value,msg", [
    ("optimizer.lr", -1e-3, "optimizer.lr"),
    ("model.mask_prob", 1.5, "model.mask_prob"),
    ("batch_size", 0, "batch_size"),
    ("model.norm", "middle", "model.norm"),
    ("model.num_heads", 5, "model.d_model"),
])
def test_validate_rejects(key, value, msg):
    c = load("va")
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(config_lib.ConfigError, match=msg.replace(".", r"\.")):
        config_lib.validate(c)


def _run_train(*args):
    return subprocess.run([sys.executable, "-m", "abaw_jax.train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_rejects_unknown_key(tmp_path):
    r = _run_train("--config", "configs/va.py", "--workdir", str(tmp_path),
                   "--config.optimizer.lrr=1")
    assert r.returncode != 0
    assert "lrr" in r.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_cli_rejects_bad_value_and_type(tmp_path):
    r = _run_train("--config", "configs/va.py", "--workdir", str(tmp_path),
                   "--config.model.mask_prob=1.5")
    assert r.returncode != 0 and "model.mask_prob" in r.stderr
    r = _run_train("--config", "configs/va.py", "--workdir", str(tmp_path),
                   "--config.batch_size=big")
    assert r.returncode != 0 and "batch_size" in r.stderr
