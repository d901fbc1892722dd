"""Unit (no root): the package's import graph by layer has no arrow up.

Every import of every module is read from its source (module level and inside functions: a
lazy import up is still an arrow up). Layers, lowest first: the base (errors, safefile, the
extension API's declarations), kernel, symbols, trace, render, shell, cli.
``python tests/test_layers.py`` prints the graph."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bpflbr_shell"
LAYERS = ["base", "kernel", "symbols", "trace", "render", "shell", "cli"]
BASE = {"bpflbr_shell", "bpflbr_shell.errors", "bpflbr_shell.safefile", "bpflbr_shell.extensions"}


def module_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    if module in BASE:
        return "base"
    parts = module.split(".")
    if parts[1] in ("cli", "__main__"):
        return "cli"
    if parts[1] in LAYERS:
        return parts[1]
    raise AssertionError(f"{module}: in no layer (add it to LAYERS or BASE)")


def imports_of(path: Path) -> set[str]:
    module = module_of(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("bpflbr_shell")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            if src.startswith("bpflbr_shell"):
                for a in node.names:  # `from pkg import module` imports the module
                    sub = f"{src}.{a.name}"
                    cand = PACKAGE.parent / Path(*sub.split("."))
                    out.add(sub if cand.with_suffix(".py").exists() or cand.is_dir() else src)
    return out


def graph() -> dict[str, set[str]]:
    return {module_of(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_import_goes_up_a_layer() -> None:
    up = []
    for module, deps in graph().items():
        mine = LAYERS.index(layer_of(module))
        for dep in deps:
            if LAYERS.index(layer_of(dep)) > mine:
                up.append(f"{module} ({layer_of(module)}) imports {dep} ({layer_of(dep)})")
    assert not up, "\n".join(up)


def test_every_module_is_in_a_layer_and_the_graph_is_read() -> None:
    g = graph()
    assert len(g) > 40
    assert "bpflbr_shell.kernel.values" in g["bpflbr_shell.kernel.btf"]  # a known arrow
    for module in g:
        layer_of(module)


if __name__ == "__main__":  # the graph by layer, for the docs
    g = graph()
    for layer in LAYERS:
        print(f"{layer}:")
        for module in sorted(m for m in g if layer_of(m) == layer):
            deps = sorted({layer_of(d) for d in g[module]} - {layer})
            print(f"  {module.removeprefix('bpflbr_shell.')}" + (f" -> {', '.join(deps)}"
                                                                 if deps else ""))
    sys.exit(0)
