"""The package's import rule, checked statically (ast over every module of MedFusionLib).

Dependencies point down only: cli → devtools, training → evaluation → datasets, fusion →
registration, models, io → imaging → core (README, "Architecture"). Imports inside functions count
as much as those at the top of a module.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "MedFusionLib"

# What each part may import from the rest of MedFusionLib (besides itself).
ALLOWED = {
    "core": set(),
    "io": {"core", "imaging"},  # the input gate (io/gate.py) recognises a CT and makes its body mask
    "imaging": {"core"},
    "models": {"core"},
    "runtimes": {"core", "models"},  # models only for the torch runtime, imported when it is chosen
    "registration": {"core", "io", "imaging"},
    "fusion": {"core", "io", "imaging", "models", "registration", "runtimes"},
    "datasets": {"core", "io", "imaging"},
    "evaluation": {"core", "io", "imaging", "models", "datasets"},
    "training": {"core", "io", "imaging", "models", "datasets", "evaluation"},
    "devtools": {"core", "io", "imaging", "models", "runtimes", "registration", "fusion", "datasets", "evaluation"},
    "cli": {"core", "io", "imaging", "models", "runtimes", "registration", "fusion", "datasets", "evaluation",
            "training", "devtools"},
    "__main__": {"cli"},
    "__init__": set(),
}
GUI_PACKAGES = {"slicer", "vtk", "qt", "ctk", "PythonQt", "MedFusion", "MedFusionSlicer", "mrml"}
# Torch-free descriptions of a run: what the Slicer panel imports before any heavy package is installed.
LIGHT_MODULES = ("core/choices.py", "fusion/options.py")


def _modules() -> list[Path]:
    return sorted(LIBRARY.rglob("*.py"))


def _part(path: Path) -> str:
    relative = path.relative_to(LIBRARY).parts
    return relative[0] if len(relative) > 1 else Path(relative[0]).stem


def _imports(path: Path) -> list[tuple[int, str, int]]:
    """``(line, imported module, relative level)`` of every import statement in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module or "", node.level))
    return sorted(found)


def test_every_module_belongs_to_a_known_part():
    unknown = sorted({_part(path) for path in _modules()} - set(ALLOWED))
    assert not unknown, f"parts without an import rule in ALLOWED: {unknown}"


def _violations(path: Path, part: str) -> list[str]:
    """The imports of ``path`` (a module of ``part``) that break the rule."""
    wrong = []
    for line, module, level in _imports(path):
        if level:
            wrong.append(f"line {line}: relative import (MedFusionLib imports are absolute)")
            continue
        top = module.split(".")[0]
        if top in GUI_PACKAGES:
            wrong.append(f"line {line}: {module} (MedFusionLib imports no Slicer, VTK or Qt)")
        if top != "MedFusionLib" or module == "MedFusionLib":
            continue
        target = module.split(".")[1]
        if target != part and target not in ALLOWED[part]:
            wrong.append(f"line {line}: {part} imports {module}")
    return wrong


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(LIBRARY)))
def test_dependencies_point_down_only(path):
    wrong = _violations(path, _part(path))
    assert not wrong, f"{path.relative_to(LIBRARY)}: " + "; ".join(wrong)


@pytest.mark.parametrize("relative", LIGHT_MODULES)
def test_options_and_choices_import_only_the_standard_library_and_core(relative):
    path = LIBRARY / relative
    wrong = [
        f"line {line}: {module}"
        for line, module, _ in _imports(path)
        if module.split(".")[0] not in sys.stdlib_module_names and not module.startswith("MedFusionLib.core")
    ]
    assert not wrong, f"{relative} must stay torch-free: " + "; ".join(wrong)


def test_the_checker_reports_upward_gui_and_relative_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import slicer\n"
        "from MedFusionLib.core.errors import InputError\n"
        "def f():\n"
        "    from MedFusionLib.fusion.pipeline import fuse_volumes\n"
        "from . import sibling\n"
    )
    assert _violations(bad, "core") == [
        "line 1: slicer (MedFusionLib imports no Slicer, VTK or Qt)",
        "line 4: core imports MedFusionLib.fusion.pipeline",
        "line 5: relative import (MedFusionLib imports are absolute)",
    ]
    assert _violations(bad, "cli") == [_violations(bad, "core")[0], _violations(bad, "core")[2]]
