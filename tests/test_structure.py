"""The package's import structure: entry points are leaves, nothing reaches into another module's
private names, and no import cycle exists (scripts and config files included)."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"abaw_jax.train", "abaw_jax.evaluate", "abaw_jax.extract", "abaw_jax.pretrain",
                "abaw_jax.predict"}


def _module_name(root: pathlib.Path, path: pathlib.Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    found = {_module_name(root, p): p for p in (root / "abaw_jax").rglob("*.py")}
    found.update({f"scripts.{p.stem}": p for p in (root / "scripts").glob("*.py")})
    found.update({f"configs.{p.stem}": p for p in (root / "configs").glob("*.py")})
    return found


def _imports(path: pathlib.Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(module, names imported from it, line) for every abaw_jax / scripts import in `path`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in known:           # `from abaw_jax import train`: the module itself
                    out.append((sub, [], node.lineno))
                else:
                    out.append((node.module, [alias.name], node.lineno))
    return [(m, n, line) for m, n, line in out if m.split(".")[0] in ("abaw_jax", "scripts")]


# The rules: each returns its violations in the tree at `root` (an empty list when it holds).


def entry_point_imports(root: pathlib.Path) -> list[str]:
    """Library modules, config files and entry points that import an entry point."""
    modules = _modules(root)
    bad = []
    for name, path in modules.items():
        for target, _, line in _imports(path, set(modules)):
            if target in ENTRY_POINTS and target != name and (
                    name in ENTRY_POINTS or name.startswith(("abaw_jax.", "configs."))):
                bad.append(f"{path.relative_to(root)}:{line} imports {target}")
    return bad


def private_name_uses(root: pathlib.Path) -> list[str]:
    """Package modules that import or use another module's `_private` name."""
    modules = _modules(root)
    bad = []
    for name, path in modules.items():
        if not name.startswith("abaw_jax"):
            continue
        tree = ast.parse(path.read_text())
        aliases = {}
        for target, names, line in _imports(path, set(modules)):
            bad += [f"{path.relative_to(root)}:{line} imports {target}.{n}"
                    for n in names if n.startswith("_") and not n.startswith("__")]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in modules:
                        aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                bad.append(f"{path.relative_to(root)}:{node.lineno} uses "
                           f"{aliases[node.value.id]}.{node.attr}")
    return bad


def import_cycles(root: pathlib.Path) -> list[str]:
    """Import cycles among the package, scripts and config files, as "a -> b -> a"."""
    modules = _modules(root)
    graph = {name: sorted({t for t, _, _ in _imports(path, set(modules)) if t in modules and t != name
                           and not name.startswith(t + ".")})
             for name, path in modules.items()}
    # Package __init__ files are imported by their submodules' imports; leave those edges out.
    graph = {n: [t for t in ts if not n.startswith(t + ".")] for n, ts in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for t in graph.get(n, []):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [n])
    return cycles


def test_no_entry_point_imports_another():
    bad = entry_point_imports(ROOT)
    assert not bad, "\n".join(bad)


def test_no_private_names_across_modules():
    bad = private_name_uses(ROOT)
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    cycles = import_cycles(ROOT)
    assert not cycles, "\n".join(cycles)


def _tree(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    """A package tree at `root` holding `files` ({relative path: source})."""
    for rel, text in {"abaw_jax/__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_entry_point_rule_fails_on_a_library_module_importing_train(tmp_path):
    root = _tree(tmp_path, {"abaw_jax/train.py": "", "abaw_jax/helpers.py": "x = 1\n",
                            "abaw_jax/runs2.py": "from abaw_jax import train\n",
                            "configs/va.py": "import abaw_jax.evaluate\n",
                            "abaw_jax/evaluate.py": "from abaw_jax import helpers\n"})
    assert sorted(entry_point_imports(root)) == ["abaw_jax/runs2.py:1 imports abaw_jax.train",
                                                 "configs/va.py:1 imports abaw_jax.evaluate"]
    # A script may drive an entry point; a library module importing a library module is fine.
    (root / "scripts").mkdir()
    (root / "scripts" / "run.py").write_text("from abaw_jax import train\n")
    (root / "abaw_jax" / "runs2.py").write_text("from abaw_jax import helpers\n")
    (root / "configs" / "va.py").write_text("")
    assert entry_point_imports(root) == []


def test_private_name_rule_fails_on_an_import_and_on_an_attribute(tmp_path):
    root = _tree(tmp_path, {"abaw_jax/a.py": "def _hidden():\n    pass\n",
                            "abaw_jax/b.py": "from abaw_jax.a import _hidden\n",
                            "abaw_jax/c.py": "from abaw_jax import a\n\n\nx = a._hidden\n"})
    assert sorted(private_name_uses(root)) == ["abaw_jax/b.py:1 imports abaw_jax.a._hidden",
                                               "abaw_jax/c.py:4 uses abaw_jax.a._hidden"]
    (root / "abaw_jax" / "c.py").write_text("from abaw_jax import a\n\n\nx = a.__name__\n")
    (root / "abaw_jax" / "b.py").write_text("")
    assert private_name_uses(root) == []


def test_cycle_rule_fails_on_a_cycle_through_three_modules(tmp_path):
    root = _tree(tmp_path, {"abaw_jax/a.py": "from abaw_jax import b\n",
                            "abaw_jax/b.py": "import abaw_jax.c\n",
                            "abaw_jax/c.py": "from abaw_jax.a import f\n"})
    # One cycle, reported from whichever of its modules the walk met first.
    (cycle,) = import_cycles(root)
    names = cycle.split(" -> ")
    assert names[0] == names[-1] and sorted(names[:-1]) == ["abaw_jax.a", "abaw_jax.b", "abaw_jax.c"]
    (root / "abaw_jax" / "c.py").write_text("")
    assert import_cycles(root) == []


def test_kernels_follow_the_mesh_and_both_paths_support_jvp():
    """A function jitted for a CPU mesh traces the CPU-tuned dense layer; one traced with no
    platform (or for GPUs) the plain product. Both differentiate forward and backward."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from abaw_jax import sharding
    from abaw_jax.models import kernels, linear

    x = jax.random.normal(jax.random.key(0), (4, 6, 8))
    w = jax.random.normal(jax.random.key(1), (8, 5))
    f = lambda x, w: jnp.sum(jnp.tanh(linear.matmul(x, w)))  # noqa: E731
    cpu_jaxpr = str(jax.make_jaxpr(kernels.traced_on(f, "cpu"))(x, w))
    plain_jaxpr = str(jax.make_jaxpr(f)(x, w))
    assert "custom_jvp_call" in cpu_jaxpr and "custom_jvp_call" not in plain_jaxpr
    mesh = sharding.make_mesh(1)
    assert "custom_jvp_call" in str(sharding.jit(f, mesh).trace(x, w).jaxpr)
    # Reverse mode agrees between the paths, and forward mode works through both.
    g_cpu = jax.grad(kernels.traced_on(f, "cpu"), argnums=(0, 1))(x, w)
    g_plain = jax.grad(f, argnums=(0, 1))(x, w)
    for a, b in zip(g_cpu, g_plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for platform in ("cpu", None):
        _, t = jax.jvp(kernels.traced_on(f, platform), (x, w), (jnp.ones_like(x), jnp.zeros_like(w)))
        _, t_ref = jax.jvp(lambda x: jnp.sum(jnp.tanh(x @ w)), (x,), (jnp.ones_like(x),))
        np.testing.assert_allclose(t, t_ref, rtol=1e-5)


def test_accelerator_path_lowers_for_gpu():
    """The plain path (what a GPU mesh traces) lowers for CUDA on this CPU machine."""
    import jax
    import jax.numpy as jnp
    from abaw_jax.models import kernels, linear
    f = kernels.traced_on(lambda x, w: jnp.sum(linear.matmul(x, w)), "gpu")
    x, w = jnp.ones((4, 8)), jnp.ones((8, 3))
    lowered = jax.jit(jax.grad(f, argnums=1)).trace(x, w).lower(lowering_platforms=("cuda",))
    text = lowered.as_text()
    assert "dot_general" in text and "optimization_barrier" not in text
