"""The package's layers stay layers: every module imports only from its own layer or the ones before it,
and nothing heavy is loaded to answer ``charlstm --help``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import charlstm

PACKAGE = Path(charlstm.__file__).parent
LAYERS = ("base", "data", "model", "training", "generation", "analysis", "export", "interface")
# Modules at the package root and the layer each belongs to.
ROOT_MODULES = {"__init__": "interface", "__main__": "interface", "cli": "interface"}


def layer_of(module: str) -> str:
    """``charlstm.training.trainer`` -> ``training``."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return parts[1]
    return ROOT_MODULES[parts[1] if len(parts) > 1 else "__init__"]


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__" and len(parts) > 2:
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every charlstm module ``path`` imports, anywhere in the file (lazy and TYPE_CHECKING imports too)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("charlstm")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("charlstm"):
                continue
            # `from . import x` names submodules: check each of them.
            if node.module is None or target.count(".") == 1 and target.split(".")[1] in LAYERS:
                found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, target))
    return found


def test_every_module_sits_in_a_layer():
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        assert layer_of(name) in LAYERS, name


def test_no_module_imports_a_later_layer():
    wrong_way = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = LAYERS.index(layer_of(module_name(path)))
        for line, target in imported_modules(path):
            if target.split(".")[1:2] == ["base"] or target == "charlstm.base.version":
                continue
            if target.count(".") == 0 or target.split(".")[1] not in (*LAYERS, *ROOT_MODULES):
                continue
            if LAYERS.index(layer_of(target)) > own:
                wrong_way.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not wrong_way, "imports against the layer order:\n" + "\n".join(wrong_way)


def test_no_import_cycle_between_modules():
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        graph[module_name(path)] = {target for _, target in imported_modules(path)}
    modules = set(graph)
    for name in graph:
        graph[name] = {t if t in modules else t.rsplit(".", 1)[0] for t in graph[name]} & modules - {name}
    # Package __init__ files that only re-export are not part of a cycle worth reporting.
    graph["charlstm"] = set()
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [node, nxt]) if nxt in trail else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_help_and_version_do_not_load_torch():
    probe = (
        "import sys\n"
        "from charlstm.cli import main\n"
        "for args in (['--help'], ['--version'], ['train', '--help'], ['sample', '--help'], ['corpus', 'synth', '--help']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('torch', 'safetensors') if m in sys.modules)\n"
        "print('LOADED', ','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "LOADED", done.stdout[-500:]
