"""A1: MedFusion needs Slicer >= 5.10 (Python 3.12) and says so on older Slicer instead of a
traceback; plus Reload forgetting MedFusion's own packages and the lazy imports at start-up."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE = REPO_ROOT / "MedFusion"
sys.path.insert(0, str(MODULE))

from MedFusionSlicer.compat import MINIMUM_SLICER, forget_modules, refusal_reason


def test_refusal_names_the_slicer_version_and_what_to_do():
    message = refusal_reason((3, 9, 10), (5, 8))
    assert "3D Slicer 5.10 or later" in message and "Slicer 5.8" in message and "download.slicer.org" in message
    assert "Slicer 5.6" in refusal_reason((3, 9, 10, "final", 0), (5, 6))
    assert refusal_reason((3, 12, 4), (5, 10)) is None
    assert refusal_reason((3, 12, 4), (6, 0)) is None
    assert refusal_reason((3, 12, 4), None) is None  # plain Python with slicer-core
    assert "Python 3.10 or later" in refusal_reason((3, 9), None)
    assert MINIMUM_SLICER == (5, 10)


@pytest.mark.parametrize("path", [MODULE / "MedFusion.py", MODULE / "MedFusionSlicer" / "compat.py"])
def test_files_read_before_the_guard_parse_with_python_3_9(path):
    """Slicer 5.6/5.8 must be able to compile these (their Python is 3.9)."""
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))


def test_module_file_imports_nothing_of_medfusion_before_the_guard():
    """Above ``if REFUSAL is None:`` MedFusion.py imports only Slicer, Qt, VTK, the standard library
    and compat; everything that needs Python >= 3.10 is imported inside that branch."""
    tree = ast.parse((MODULE / "MedFusion.py").read_text())
    allowed = {"__future__", "logging", "os", "sys", "qt", "slicer", "vtk", "slicer.ScriptedLoadableModule",
               "slicer.util", "slicer.i18n", "MedFusionSlicer.compat"}  # fmt: skip
    guard_seen = False
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "REFUSAL is None":
            guard_seen = True
            inside = {n.module if isinstance(n, ast.ImportFrom) else a.name for n in ast.walk(node)
                      if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}  # fmt: skip
            assert {"MedFusionSlicer.logic", "MedFusionSlicer.worker"} <= inside
            break
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import):
                assert {alias.name for alias in sub.names} <= allowed
            elif isinstance(sub, ast.ImportFrom):
                assert sub.module in allowed, sub.module
    assert guard_seen


def test_old_slicer_gets_one_message_and_no_traceback(tmp_path):
    """Execute MedFusion.py as Slicer 5.8 would (Slicer's GUI classes are stand-ins: Slicer cannot
    run here): it loads, defines the module classes, logs the refusal once, and has imported none
    of MedFusion's code that needs Python 3.10; its self-test is skipped with the reason (B3: as
    ctest runs it, through unittest)."""
    script = textwrap.dedent(
        f"""
        import importlib.util, logging, sys, types
        sys.path.insert(0, {str(MODULE)!r})
        import slicer
        slicer.app = types.SimpleNamespace(majorVersion=5, minorVersion=8)
        sys.modules["qt"] = types.ModuleType("qt")
        stand_in = types.ModuleType("slicer.ScriptedLoadableModule")
        import unittest
        for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleWidget"):
            setattr(stand_in, name, type(name, (), {{}}))
        stand_in.ScriptedLoadableModuleTest = unittest.TestCase
        sys.modules["slicer.ScriptedLoadableModule"] = stand_in
        sys.modules["slicer.i18n"] = None  # Slicer 4.x has none: the fallback must work
        messages = []
        class Collect(logging.Handler):
            def emit(self, record):
                messages.append(record.getMessage())
        logging.getLogger("MedFusion").addHandler(Collect())
        spec = importlib.util.spec_from_file_location("MedFusion", {str(MODULE / "MedFusion.py")!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name in ("MedFusion", "MedFusionWidget", "MedFusionLogic", "MedFusionTest", "MedFusionParameterNode"):
            assert hasattr(module, name), name
        prefixes = ("MedFusionLib", "MedFusionSlicer.logic", "MedFusionSlicer.results", "MedFusionSlicer.worker",
                    "torch")
        loaded = sorted(m for m in sys.modules if m.startswith(prefixes))
        at_load = list(messages)
        result = unittest.TextTestRunner(stream=open("/dev/null", "w")).run(
            unittest.defaultTestLoader.loadTestsFromTestCase(module.MedFusionTest))
        assert result.testsRun == 3 and len(result.skipped) == 3 and not result.errors and not result.failures, result
        assert "5.10" in result.skipped[0][1]
        print(repr(module.REFUSAL)); print(at_load); print(loaded)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    refusal, messages, loaded = result.stdout.strip().splitlines()
    assert "needs 3D Slicer 5.10 or later; this is Slicer 5.8" in refusal
    assert messages.count("MedFusion needs") == 1 and loaded == "[]"
    assert "Traceback" not in result.stderr


def test_supported_slicer_loads_the_module_without_torch_and_resolves_the_parameter_node(tmp_path):
    """Execute MedFusion.py as Slicer 5.10 would, Slicer's GUI classes stood in for (Slicer cannot run
    here): every name resolves, the parameter node's annotations resolve the way Slicer's
    parameterNodeWrapper resolves them (typing.get_type_hints on the module's globals) with
    FusionOptions' choices and defaults, torch and SimpleITK stay unloaded, and without MedFusion's
    packages the self-test is skipped with the reason (B3), as ctest runs it."""
    script = textwrap.dedent(
        f"""
        import importlib.util, sys, types, typing, unittest
        sys.path.insert(0, {str(MODULE)!r})
        import slicer
        slicer.app = types.SimpleNamespace(majorVersion=5, minorVersion=10)
        sys.modules["qt"] = types.ModuleType("qt")
        stand_in = types.ModuleType("slicer.ScriptedLoadableModule")
        for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleWidget"):
            setattr(stand_in, name, type(name, (), {{}}))
        stand_in.ScriptedLoadableModuleTest = unittest.TestCase
        sys.modules["slicer.ScriptedLoadableModule"] = stand_in
        wrapper = types.ModuleType("slicer.parameterNodeWrapper")
        wrapper.parameterNodeWrapper = lambda classtype: classtype
        wrapper.Choice = lambda choices: ("Choice", tuple(choices))
        wrapper.WithinRange = lambda low, high: ("WithinRange", low, high)
        sys.modules["slicer.parameterNodeWrapper"] = wrapper
        i18n = types.ModuleType("slicer.i18n")
        i18n.tr = lambda text: text
        i18n.translate = lambda context, text: text
        sys.modules["slicer.i18n"] = i18n
        spec = importlib.util.spec_from_file_location("MedFusion", {str(MODULE / "MedFusion.py")!r})
        module = importlib.util.module_from_spec(spec)
        sys.modules["MedFusion"] = module  # as Slicer registers a scripted module
        spec.loader.exec_module(module)
        assert module.REFUSAL is None
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "SimpleITK", "itk"))
        assert heavy == [], heavy
        hints = typing.get_type_hints(module.MedFusionParameterNode, include_extras=True)
        from MedFusionLib.fusion.options import FusionOptions
        for name in ("registration", "backend", "device", "axis"):
            assert hints[name].__metadata__[0] == ("Choice", FusionOptions.CHOICES[name]), name
            assert getattr(module.MedFusionParameterNode, name) == getattr(FusionOptions(), name), name
        assert hints["referenceVolume"] is slicer.vtkMRMLScalarVolumeNode
        assert hints["fade"].__metadata__[0] == ("WithinRange", 0.0, 1.0)
        # The colour map: off or one of FusionOptions' maps; the output selector also lists RGB volumes.
        assert hints["functional"].__metadata__[0] == ("Choice", ("off", *FusionOptions.CHOICES["functional"]))
        assert module.MedFusionParameterNode.functional == "off"
        assert typing.get_args(hints["outputVolume"]) == (
            slicer.vtkMRMLScalarVolumeNode, slicer.vtkMRMLVectorVolumeNode, type(None))
        assert typing.get_origin(hints["outputVolume"]) is typing.Union  # what the wrapper's node types accept
        from MedFusionSlicer import dependencies
        absent = dependencies.Requirement("medfusion-absent", "1", False, "")
        dependencies.REQUIREMENTS = (*dependencies.REQUIREMENTS, absent)
        result = unittest.TextTestRunner(stream=open("/dev/null", "w")).run(
            unittest.defaultTestLoader.loadTestsFromTestCase(module.MedFusionTest))
        assert result.testsRun == 3 and len(result.skipped) == 3 and not result.errors and not result.failures, result
        assert "medfusion-absent>=1" in result.skipped[0][1] and "not installed" in result.skipped[0][1]
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_compat_states_a_python_floor_its_own_first_line_can_be_compiled_on():
    """Review 23.9: compat.py said it loads on Python 3.6, but it (and MedFusion.py, read before it)
    starts with ``from __future__ import annotations``, which Python 3.7 introduced: the floor it
    states must be one where that line compiles."""
    import __future__

    import re

    for path in (MODULE / "MedFusion.py", MODULE / "MedFusionSlicer" / "compat.py"):
        assert "from __future__ import annotations" in path.read_text()
    docstring = ast.get_docstring(ast.parse((MODULE / "MedFusionSlicer" / "compat.py").read_text()))
    claimed = [tuple(map(int, found)) for found in re.findall(r"(?:on|and) Python (\d)\.(\d+)", docstring)]
    assert claimed, "compat.py says which Pythons it loads on"
    first = __future__.annotations.getOptionalRelease()[:2]
    assert min(claimed) >= first, f"compat.py claims Python {min(claimed)}; its future import needs {first}"


def test_reload_forgets_medfusions_packages_only():
    modules = {"MedFusionLib": 1, "MedFusionLib.io": 2, "MedFusionSlicer.logic": 3, "MedFusionLibrary": 4, "numpy": 5}
    forgotten = forget_modules(modules=modules)
    assert sorted(forgotten) == ["MedFusionLib", "MedFusionLib.io", "MedFusionSlicer.logic"]
    assert modules == {"MedFusionLibrary": 4, "numpy": 5}


def test_startup_imports_neither_torch_nor_simpleitk():
    """What MedFusion.py imports at Slicer start-up (choices, logic, worker, dependencies, compare's
    callers) loads no torch, SimpleITK, Qt or CTK: Slicer starts as fast with MedFusion as without."""
    pytest.importorskip("slicer_core", reason="the slicer-core wheel is not available for this Python")
    code = (
        f"import sys; sys.path.insert(0, {str(MODULE)!r}); "
        "import MedFusionSlicer.logic, MedFusionSlicer.worker, MedFusionSlicer.dependencies, MedFusionSlicer.choices, "
        "MedFusionSlicer.compat, MedFusionSlicer.compare; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('qt', 'ctk', 'torch', 'SimpleITK', 'itk') "
        "or m == 'slicer.ScriptedLoadableModule'); print(bad)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
