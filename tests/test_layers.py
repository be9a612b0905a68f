"""The package's shape: who may import whom, and no import cycles.

Every ``import`` statement counts, the ones inside functions too: a lazy import still ties two modules
together, it only hides the tie until the function runs. Importing ``a.b.c`` also runs ``a.b``'s
``__init__``, so it is an edge to the package as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "finetune"

# Layers, top to bottom. A module may import its own layer's modules and any layer below, never above.
#   ui/        the only place that imports gradio; one create_*_tab per tab
#   commands/  the CLI's argument parsing (cli.py and __main__ dispatch to it)
#   service    every action the app and the CLI expose
#   library    everything else
TOP_LAYERS = {"ui": 3, "commands": 3, "cli": 3, "__main__": 4, "service": 2}
LIBRARY = 1


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def layer_of(module: str) -> int:
    parts = module.split(".")
    return TOP_LAYERS.get(parts[1], LIBRARY) if len(parts) > 1 else 0


def imports_of(module: str, source: str, is_pkg: bool, known: set[str]) -> set[str]:
    """The project modules ``module`` imports anywhere in its source (and the packages those run)."""
    here = module.split(".") if is_pkg else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base_parts = here[: len(here) - node.level + 1] if node.level else []
            base = ".".join(base_parts + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                targets.append(sub if sub in known else base)
        for t in targets:
            if not t.startswith("finetune"):
                continue
            parts = t.split(".")
            if t in known and t != module:
                found.add(t)
            for i in range(2, len(parts)):  # the packages it runs on the way, except its own (already running)
                name = ".".join(parts[:i])
                if name in known and name != module and not module.startswith(name + "."):
                    found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = all_modules()
    known = set(mods)
    return {m: imports_of(m, p.read_text(encoding="utf-8"), p.name == "__init__.py", known) for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_layers_point_down_only():
    wrong = [f"{m} imports {t}" for m, ts in graph().items() for t in sorted(ts)
             if layer_of(t) > layer_of(m) or (layer_of(m) == 3 and layer_of(t) == 3 and m.split(".")[1] != t.split(".")[1]
                                                and m.split(".")[1] != "cli" and t.split(".")[1] != "cli")]
    assert wrong == []


def test_gradio_only_in_ui():
    offenders = []
    for m, p in all_modules().items():
        if m.startswith("finetune.ui"):
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [m for n in names if n.split(".")[0] == "gradio"]
    assert offenders == []


def test_the_checker_finds_a_cycle_and_an_upward_import():
    """The checks above can fail: a made-up graph with a cycle through a lazy import and a library
    module importing the service."""
    g = {"finetune.hub": {"finetune.export"}, "finetune.export": {"finetune.inference"},
         "finetune.inference": {"finetune.hub"}, "finetune.runs": set()}
    assert cycles(g) == [["finetune.export", "finetune.hub", "finetune.inference"]]
    assert layer_of("finetune.service") > layer_of("finetune.train")
    known = set(all_modules())
    src = "def f():\n    from . import service\n    from .backends import local\n"
    assert imports_of("finetune.probe", src, False, known) == {
        "finetune.service", "finetune.backends", "finetune.backends.local"}


MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 100


def sizes_over(modules: dict[str, Path], max_module: int, max_function: int) -> list[str]:
    """The modules over ``max_module`` lines and the functions or methods over ``max_function`` lines."""
    found = []
    for name, path in sorted(modules.items()):
        source = path.read_text(encoding="utf-8")
        lines = source.count("\n")
        if lines > max_module:
            found.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None:
                length = node.end_lineno - node.lineno + 1
                if length > max_function:
                    found.append(f"{name}.{node.name}: {length} lines")
    return found


def test_no_module_or_function_too_long_to_read():
    assert sizes_over(all_modules(), MAX_MODULE_LINES, MAX_FUNCTION_LINES) == []


def test_the_size_check_finds_a_long_module_and_a_long_function(tmp_path):
    long_function = "def f():\n" + "    x = 1\n" * 100
    (tmp_path / "a.py").write_text(long_function + "\n" * 600)
    (tmp_path / "b.py").write_text("def g():\n    return 1\n")
    found = sizes_over({"a": tmp_path / "a.py", "b": tmp_path / "b.py"}, 700, 100)
    assert found == ["a: 701 lines", "a.f: 101 lines"]
