"""scripts/benchmark.py end to end at its --tiny sizes: one table, every section's rows with a rate.

The numbers mean nothing at these sizes; the test checks that every row kind (pipeline, the
training rows of A, B and C and of their multi-task models, extract, MAE, and their torch
twins) still runs and reports, and that each twin has its abaw_jax model's parameter count.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT


HAS_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "timm", "transformers"))
JAX_ROWS = ([("-", "pipeline host windows"), ("-", "pipeline index only")]
            + [(s, r) for s in ("A", "B", "C", "A-MTL", "B-MTL", "C-MTL")
               for r in ("abaw_jax host", "abaw_jax bank", "abaw_jax resident")]
            + [("extract", "abaw_jax resident"), ("MAE", "abaw_jax resident")])
TORCH_ROWS = [(s, "torch eager t1")
              for s in ("A", "B", "C", "A-MTL", "B-MTL", "C-MTL", "extract", "MAE")]
# "<system> <row words>  <frames/s>": the leading columns of a measured row of the table.
ROW = re.compile(r"^(\S+) +(\S+(?: \S+)*) {2,}([\d,.]+) ")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[str, dict[tuple[str, str], float]]:
    """The benchmark's stdout and its rows' frames/s, keyed by (system, row)."""
    cmd = [sys.executable, "scripts/benchmark.py", "--tiny", "--no-compile", "--torch-threads",
           "1", "--data", str(tmp_path_factory.mktemp("benchmark"))]
    if not HAS_TORCH:
        cmd.append("--no-torch")
    # Unoptimised XLA code compiles about twice as fast; nothing here is timed for real.
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0")
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    rows = {}
    for line in result.stdout.splitlines():
        if m := ROW.match(line):
            rows[(m[1], m[2])] = float(m[3].replace(",", ""))
    return result.stdout, rows


def _check(rows: dict[tuple[str, str], float], expected: list[tuple[str, str]]) -> None:
    missing = [key for key in expected if key not in rows]
    assert not missing, f"rows missing from the table: {missing}; found {sorted(rows)}"
    bad = {key: rows[key] for key in expected if not (math.isfinite(rows[key]) and rows[key] > 0)}
    assert not bad, f"rows without a positive rate: {bad}"


def test_one_table_with_every_abaw_jax_row(run):
    out, rows = run
    assert out.count("frames/s") == 1, "the rows must form one table under one header"
    _check(rows, JAX_ROWS)
    # Host and bank rows carry the input path's share of the step ("wait"), resident rows none.
    for line in out.splitlines():
        if m := ROW.match(line):
            if m[2] in ("abaw_jax host", "abaw_jax bank"):
                assert re.search(r" \d+\.\d% ", line), line
            elif m[2] == "abaw_jax resident":
                assert not re.search(r" \d+\.\d% ", line.split("  params")[0]), line


def test_torch_rows_next_to_them(run):
    for module in ("torch", "timm", "transformers"):
        pytest.importorskip(module)
    out, rows = run
    _check(rows, TORCH_ROWS)
    # The twins are the published defaults' architectures: the same parameters, one by one.
    params = {}
    for line in out.splitlines():
        if (m := ROW.match(line)) and (p := re.search(r"params (\d[\d,]*\d)", line)):
            params[(m[1], m[2])] = p[1]
    for system in ("A", "B", "C", "A-MTL", "B-MTL", "C-MTL"):
        assert params[(system, "torch eager t1")] == params[(system, "abaw_jax host")], system
    # Extract and MAE rows note their speed relative to torch eager.
    for system in ("extract", "MAE"):
        line = next(x for x in out.splitlines()
                    if x.startswith(f"{system} ") and "abaw_jax resident" in x)
        assert re.search(r"\d+\.\d\dx torch eager t1", line), line
