"""The package's import structure: entry points are leaves, nothing reaches into another module's
private names, and no import cycle exists (scripts and config files included)."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "abaw_jax"
ENTRY_POINTS = {"abaw_jax.train", "abaw_jax.evaluate", "abaw_jax.extract", "abaw_jax.pretrain",
                "abaw_jax.predict"}


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    found = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    found.update({f"scripts.{p.stem}": p for p in (ROOT / "scripts").glob("*.py")})
    found.update({f"configs.{p.stem}": p for p in (ROOT / "configs").glob("*.py")})
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


def test_no_entry_point_imports_another():
    modules = _modules()
    bad = []
    for name, path in modules.items():
        for target, _, line in _imports(path, set(modules)):
            if target in ENTRY_POINTS and target != name and (
                    name in ENTRY_POINTS or name.startswith(("abaw_jax.", "configs."))):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_private_names_across_modules():
    modules = _modules()
    bad = []
    for name, path in modules.items():
        if not name.startswith("abaw_jax"):
            continue
        tree = ast.parse(path.read_text())
        aliases = {}
        for target, names, line in _imports(path, set(modules)):
            bad += [f"{path.relative_to(ROOT)}:{line} imports {target}.{n}"
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
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} uses "
                           f"{aliases[node.value.id]}.{node.attr}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    modules = _modules()
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
    assert not cycles, "\n".join(cycles)


def test_walker_sees_a_violation(tmp_path):
    """The checks above can fail: an entry point importing another is found."""
    fake = tmp_path / "abaw_jax"
    fake.mkdir()
    (fake / "train.py").write_text("from abaw_jax import evaluate\n")
    (fake / "evaluate.py").write_text("import abaw_jax.train\n")
    modules = {"abaw_jax.train": fake / "train.py", "abaw_jax.evaluate": fake / "evaluate.py"}
    hits = [t for t, _, _ in _imports(fake / "train.py", set(modules))]
    assert hits == ["abaw_jax.evaluate"]
    hits = [t for t, _, _ in _imports(fake / "evaluate.py", set(modules))]
    assert hits == ["abaw_jax.train"]
