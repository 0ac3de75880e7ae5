"""Static checks of the Slicer module (Qt and Slicer itself cannot run here): the .ui, the names the
widget code uses, the parameter node, the module CMake, the choices and the dependency list."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE = REPO_ROOT / "MedFusion"
UI_FILE = MODULE / "Resources" / "UI" / "MedFusion.ui"
MODULE_SCRIPT = MODULE / "MedFusion.py"
sys.path.insert(0, str(MODULE))

from MedFusionSlicer import choices, dependencies  # noqa: E402


@pytest.fixture(scope="module")
def ui() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


@pytest.fixture(scope="module")
def module_tree() -> ast.Module:
    return ast.parse(MODULE_SCRIPT.read_text(), filename=str(MODULE_SCRIPT))


def _widgets(ui: ET.Element) -> dict[str, str]:
    return {widget.get("name"): widget.get("class") for widget in ui.iter("widget")}


def test_ui_is_a_qt_designer_form_for_a_mrml_widget(ui):
    assert ui.tag == "ui" and ui.get("version") == "4.0"
    assert ui.findtext("class") == "MedFusion"
    top = ui.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "MedFusion"
    names = [widget.get("name") for widget in ui.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"
    declared = {custom.findtext("class") for custom in ui.iter("customwidget")}
    used = set(_widgets(ui).values())
    assert {name for name in used if not name.startswith("Q")} <= declared
    # Every MRML node selector gets the scene from the form.
    connected = {c.findtext("receiver") for c in ui.iter("connection") if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert connected == {name for name, cls in _widgets(ui).items() if cls == "qMRMLNodeComboBox"}
    assert {c.findtext("sender") for c in ui.iter("connection")} == {"MedFusion"}


def test_ui_has_the_sections_and_controls_of_the_panel(ui):
    widgets = _widgets(ui)
    for section in ("inputsCollapsibleButton", "registrationCollapsibleButton", "fusionCollapsibleButton", "outputsCollapsibleButton"):
        assert widgets[section] == "ctkCollapsibleButton"
    output = next(w for w in ui.iter("widget") if w.get("name") == "outputVolumeSelector")
    properties = {p.get("name"): p for p in output.iter("property")}
    assert properties["addEnabled"].findtext("bool") == "true" and properties["noneEnabled"].findtext("bool") == "true"
    apply = next(w for w in ui.iter("widget") if w.get("name") == "applyButton")
    assert {p.get("name"): p.findtext("bool") for p in apply.iter("property")}["enabled"] == "false"
    assert widgets["progressBar"] == "QProgressBar" and widgets["cancelButton"] == "QPushButton"


def test_every_widget_the_code_uses_exists_in_the_ui(ui):
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_SCRIPT.read_text()))
    assert used, "the widget code should use the .ui's widgets"
    missing = used - set(_widgets(ui))
    assert not missing, f"MedFusion.py uses widgets the .ui lacks: {sorted(missing)}"


def test_parameter_node_fields_and_ui_bindings_match(ui, module_tree):
    wrapper = next(node for node in module_tree.body if isinstance(node, ast.ClassDef) and node.name == "MedFusionParameterNode")
    fields = {statement.target.id for statement in wrapper.body if isinstance(statement, ast.AnnAssign)}
    bound = {}
    for widget in ui.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = widget.get("class")
    assert set(bound) <= fields, f".ui binds unknown parameters: {set(bound) - fields}"
    # "model" is set by code: its choices come from the model registry, known only after torch is installed.
    assert fields - set(bound) == {"model"}
    assert bound["referenceVolume"] == bound["movingVolume"] == bound["outputVolume"] == "qMRMLNodeComboBox"


def test_module_file_follows_the_scripted_module_layout(module_tree):
    classes = {node.name: [ast.unparse(base) for base in node.bases] for node in module_tree.body if isinstance(node, ast.ClassDef)}
    assert classes["MedFusion"] == ["ScriptedLoadableModule"]
    assert "ScriptedLoadableModuleWidget" in classes["MedFusionWidget"]
    assert classes["MedFusionLogic"] == ["ScriptedLoadableModuleLogic", "FusionLogic"]
    assert classes["MedFusionTest"] == ["ScriptedLoadableModuleTest"]
    top_imports = {alias.name for node in module_tree.body if isinstance(node, ast.Import) for alias in node.names}
    top_imports |= {node.module for node in module_tree.body if isinstance(node, ast.ImportFrom)}
    assert not any(name == "torch" or name.startswith("MedFusionLib") for name in top_imports), \
        "MedFusion.py must load in a Slicer without torch"


def test_choices_equal_the_librarys_and_the_commands():
    from MedFusionLib.cli import build_parser
    from MedFusionLib.devices import DEVICE_CHOICES
    from MedFusionLib.geometry import SLICING_AXES
    from MedFusionLib.pipeline import REGISTRATION_CHOICES
    from MedFusionLib.registration import BACKENDS

    assert choices.REGISTRATION_CHOICES == REGISTRATION_CHOICES
    assert choices.BACKEND_CHOICES == tuple(BACKENDS)
    assert choices.DEVICE_CHOICES == DEVICE_CHOICES
    assert choices.AXIS_CHOICES == SLICING_AXES
    fuse = build_parser()._subparsers._group_actions[0].choices["fuse"]
    options = {action.dest: tuple(action.choices) for action in fuse._actions if action.choices}
    assert options["registration"] == choices.REGISTRATION_CHOICES
    assert options["backend"] == choices.BACKEND_CHOICES
    assert options["device"] == choices.DEVICE_CHOICES
    assert options["axis"] == choices.AXIS_CHOICES
    assert "json" in options["progress"]


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    return [line.strip().replace("${MODULE_NAME}", "MedFusion") for line in match.group(1).splitlines() if line.strip()]


def test_module_cmake_lists_every_file_to_install():
    cmake = (MODULE / "CMakeLists.txt").read_text()
    scripts, resources = _cmake_list(cmake, "MODULE_PYTHON_SCRIPTS"), _cmake_list(cmake, "MODULE_PYTHON_RESOURCES")
    for listed in scripts + resources:
        assert (MODULE / listed).is_file(), f"CMake lists {listed}, which does not exist"
    module_code = {path.relative_to(MODULE).as_posix() for path in MODULE.rglob("*.py") if "Resources" not in path.parts}
    assert module_code == set(scripts)
    assert {p.relative_to(MODULE).as_posix() for p in (MODULE / "Resources").rglob("*") if p.is_file()} == set(resources)
    assert "slicerMacroBuildScriptedModule(" in cmake and "WITH_GENERIC_TESTS" in cmake
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake
    top = (REPO_ROOT / "CMakeLists.txt").read_text()
    assert "add_subdirectory(MedFusion)" in top and "MedFusion.png" in top


def test_module_cmake_packages_every_file_of_medfusionlib():
    """The glob patterns of the CMake file, evaluated here, cover every file of the library that
    the pip package ships (code, configs, weights and their model cards)."""
    cmake = (MODULE / "CMakeLists.txt").read_text()
    root = REPO_ROOT
    recursive = re.findall(r"\$\{MEDFUSION_SOURCE_ROOT\}/(MedFusionLib/\*\.py)", cmake)
    flat = re.findall(r"\$\{MEDFUSION_SOURCE_ROOT\}/(MedFusionLib/(?:configs|weights)/\*\.\w+)", cmake)
    assert recursive == ["MedFusionLib/*.py"] and len(flat) == 3
    packaged = {p.relative_to(root).as_posix() for p in (root / "MedFusionLib").rglob("*.py")}
    for pattern in flat:
        packaged |= {p.relative_to(root).as_posix() for p in root.glob(pattern)}
    library = {
        p.relative_to(root).as_posix()
        for p in (root / "MedFusionLib").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")
    }
    assert library - packaged == set(), "files of MedFusionLib the Slicer package would miss"
    assert "MedFusionLib/pipeline.py" in packaged and "MedFusionLib/cli/fuse.py" in packaged


def test_icon_is_a_128_pixel_png():
    from PIL import Image

    for path in (REPO_ROOT / "MedFusion.png", MODULE / "Resources" / "Icons" / "MedFusion.png"):
        with Image.open(path) as icon:
            assert icon.format == "PNG" and icon.size == (128, 128)


def test_logic_imports_without_qt_ctk_or_torch():
    """The logic, worker and volumes load with slicer-core alone: no Qt, CTK, ScriptedLoadableModule,
    and no torch until a fusion runs (torch may not be installed yet when Slicer loads the module)."""
    pytest.importorskip("slicer_core", reason="the slicer-core wheel is not available for this Python")
    code = (
        f"import sys; sys.path.insert(0, {str(MODULE)!r}); "
        "import MedFusionSlicer.logic, MedFusionSlicer.worker, MedFusionSlicer.volumes, MedFusionSlicer.dependencies; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('qt', 'ctk', 'torch') "
        "or m == 'slicer.ScriptedLoadableModule'); print(bad)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_requirements_cover_the_packages_dependencies():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = {}
    for line in project["dependencies"] + project["optional-dependencies"]["elastix"]:
        name, minimum = re.match(r"([A-Za-z0-9_.-]+)\s*(?:>=\s*([\w.]+))?", line).groups()
        declared[name.lower()] = minimum or ""
    ours = {r.distribution.lower(): r.minimum for r in dependencies.REQUIREMENTS}
    shipped = {name.lower() for name in dependencies.SHIPPED_WITH_SLICER}
    for name, minimum in declared.items():
        assert name in ours or name in shipped, f"{name} is neither installed by the module nor shipped with Slicer"
        if name in ours:
            assert ours[name] == minimum, f"{name}: module asks >= {ours[name]}, pyproject >= {minimum}"
    assert not shipped & set(ours), "never install what Slicer ships"


def test_missing_requirements_compare_installed_versions():
    installed_numpy = dependencies.installed_version("numpy")
    assert installed_numpy is not None
    old_enough = dependencies.Requirement("numpy", "1.0", False, "")
    too_new = dependencies.Requirement("numpy", "999.0", False, "")
    absent = dependencies.Requirement("medfusion-no-such-package", "", True, "")
    assert dependencies.missing_requirements(requirements=(old_enough, too_new, absent)) == [too_new, absent]
    assert dependencies.missing_requirements(False, requirements=(old_enough, too_new, absent)) == [too_new]
    assert dependencies.needs_restart([too_new]) and not dependencies.needs_restart([absent])  # numpy is imported here
    assert dependencies._release("2.13.0+cpu") == (2, 13, 0)
    assert dependencies._release("1.26.0rc1") == (1, 26, 0)


def test_install_pins_what_slicer_ships_and_routes_torch_to_slicer_pytorch():
    """The install plan: torch through the driver-aware installer, the rest through pip with a
    constraints file that pins the shipped packages at their installed versions."""
    calls = []

    def pip_install(arguments):
        constraints = Path(arguments[arguments.index("-c") + 1]).read_text().split()
        calls.append(("pip", arguments[: arguments.index("-c")], constraints))

    torch_calls = []
    missing = [r for r in dependencies.REQUIREMENTS if r.distribution in ("torch", "nibabel", "itk-elastix")]
    done = dependencies.install(missing, pip_install, torch_calls.append)
    assert torch_calls == ["torch>=2.2"]
    assert calls == [("pip", ["nibabel>=5.0", "itk-elastix>=0.20"], calls[0][2])]
    assert f"numpy=={dependencies.installed_version('numpy')}" in calls[0][2]
    assert f"SimpleITK=={dependencies.installed_version('SimpleITK')}" in calls[0][2]
    assert len(done) == 2 and "SlicerPyTorch" in done[0]
    without_slicer_pytorch = []
    dependencies.install(missing[:1], lambda arguments: without_slicer_pytorch.append(arguments[0]), None)
    assert without_slicer_pytorch == ["torch>=2.2"]
    text = dependencies.offline_instructions(missing)
    assert "pip download --dest medfusion-wheels torch>=2.2 nibabel>=5.0" in text.replace("'", "")
    assert "--no-index --find-links medfusion-wheels" in text


def test_module_and_batch_script_compile():
    for path in (MODULE_SCRIPT, MODULE / "Resources" / "Scripts" / "MedFusionBatch.py"):
        compile(path.read_text(), str(path), "exec")
