"""The packages of dstcore follow the data flow: no module imports from a later stage."""

from __future__ import annotations

import ast
from pathlib import Path

import dstcore

PACKAGE = Path(dstcore.__file__).parent


def stage_of(module: str) -> int | None:
    """Position in dstcore.STAGES of a dotted module name inside dstcore (None: the top)."""
    parts = module.split(".")
    if parts[0] != "dstcore" or len(parts) < 2 or parts[1] == "__init__":
        return None
    return dstcore.STAGES.index(parts[1])


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every dstcore import in a file, at any depth (functions too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("dstcore")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "dstcore":
                out += [(node.lineno, f"dstcore.{a.name}") for a in node.names
                        if f"dstcore.{a.name}" in SUBPACKAGES]
            elif node.module.startswith("dstcore"):
                out.append((node.lineno, node.module))
    return out


SUBPACKAGES = {f"dstcore.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}


def test_every_subpackage_is_a_stage():
    assert {name.split(".")[1] for name in SUBPACKAGES} == set(dstcore.STAGES)
    stray = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert stray == [], "modules belong in a stage's package"


def test_no_module_imports_from_a_later_stage():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        mine = stage_of(module)
        for line, target in imports(path):
            theirs = stage_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} {module} "
                             f"({dstcore.STAGES[mine]}) imports {target} "
                             f"({dstcore.STAGES[theirs]})")
    assert wrong == []


def test_the_check_finds_a_backward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from dstcore.analysis.frontier import frontier_table\n")
    assert imports(bad) == [(2, "dstcore.analysis.frontier")]
    assert stage_of("dstcore.analysis.frontier") > stage_of("dstcore.training.loop")
