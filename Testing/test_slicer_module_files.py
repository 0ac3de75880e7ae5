"""Static checks of the Slicer module (Qt and Slicer itself cannot run here): the .ui, the names the
widget code uses, the parameter node, the module CMake, the choices and the dependency list."""

from __future__ import annotations

import ast
import dataclasses
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

from MedFusionSlicer import choices, dependencies


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
    connected = {
        c.findtext("receiver")
        for c in ui.iter("connection")
        if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
    }
    assert connected == {name for name, cls in _widgets(ui).items() if cls == "qMRMLNodeComboBox"}
    assert {c.findtext("sender") for c in ui.iter("connection")} == {"MedFusion"}


def test_ui_has_the_sections_and_controls_of_the_panel(ui):
    widgets = _widgets(ui)
    for section in (
        "inputsCollapsibleButton",
        "registrationCollapsibleButton",
        "fusionCollapsibleButton",
        "outputsCollapsibleButton",
        "compareCollapsibleButton",
    ):
        assert widgets[section] == "ctkCollapsibleButton"
    output = next(w for w in ui.iter("widget") if w.get("name") == "outputVolumeSelector")
    properties = {p.get("name"): p for p in output.iter("property")}
    # B12: one "create new" entry (the none entry), not a second one from addEnabled.
    assert properties["addEnabled"].findtext("bool") == "false" and properties["noneEnabled"].findtext("bool") == "true"
    assert properties["noneDisplay"].findtext("string") == "Create new volume"
    apply = next(w for w in ui.iter("widget") if w.get("name") == "applyButton")
    assert {p.get("name"): p.findtext("bool") for p in apply.iter("property")}["enabled"] == "false"
    assert widgets["progressBar"] == "QProgressBar" and widgets["cancelButton"] == "QPushButton"
    assert widgets["loadDemoButton"] == "QPushButton"
    assert widgets["fadeSliderWidget"] == "ctkSliderWidget" and widgets["flickerCheckBox"] == "QCheckBox"
    assert widgets["checkerboardButton"] == "QPushButton" and widgets["registrationSummaryLabel"] == "QLabel"
    # Only MRML volume selectors list volumes, and label maps are not among them (B13).
    for name, cls in widgets.items():
        if cls == "qMRMLNodeComboBox":
            selector = next(w for w in ui.iter("widget") if w.get("name") == name)
            props = {p.get("name"): p for p in selector.findall("property")}
            assert props["showChildNodeTypes"].findtext("bool") == "false", name


def test_widget_signal_handlers_exist(module_tree):
    """Every slot the widget connects (``x.connect("signal", self.onY)``) is a method of the widget."""
    widget = next(
        node for node in module_tree.body if isinstance(node, ast.ClassDef) and node.name == "MedFusionWidget"
    )
    methods = {node.name for node in widget.body if isinstance(node, ast.FunctionDef)}
    slots = set()
    for node in ast.walk(widget):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect":
            target = node.args[-1]
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                slots.add(target.attr)
    assert slots and slots <= methods, slots - methods
    assert {
        "onApplyButton",
        "onCancelButton",
        "onLoadDemo",
        "onFadeChanged",
        "onFlickerToggled",
        "onShowCheckerboard",
    } <= slots


def test_every_widget_the_code_uses_exists_in_the_ui(ui):
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_SCRIPT.read_text()))
    assert used, "the widget code should use the .ui's widgets"
    missing = used - set(_widgets(ui))
    assert not missing, f"MedFusion.py uses widgets the .ui lacks: {sorted(missing)}"


def test_every_library_name_the_widget_uses_exists(module_tree):
    """``self.logic.X``, ``dependencies.X``, ``compare.X`` and ``job.X`` in MedFusion.py name real
    attributes (Slicer cannot run here, so a typo would only show in Slicer)."""
    from MedFusionSlicer import compare
    from MedFusionSlicer.logic import FusionLogic
    from MedFusionSlicer.results import FusionNodes, RegistrationSummary
    from MedFusionSlicer.worker import FusionJob, WorkerProcess

    module_methods = {
        node.name
        for cls in module_tree.body if isinstance(cls, ast.ClassDef) and cls.name == "MedFusionLogic"
        for node in cls.body if isinstance(node, ast.FunctionDef)
    }  # fmt: skip
    used: dict[str, set[str]] = {}
    for node in ast.walk(module_tree):
        if isinstance(node, ast.Attribute):
            owner = ast.unparse(node.value)
            used.setdefault(owner, set()).add(node.attr)
    logic = {name for name in used.get("self.logic", set()) if name not in module_methods}
    assert logic and all(hasattr(FusionLogic, name) for name in logic), logic
    assert all(hasattr(dependencies, name) for name in used["dependencies"]), used["dependencies"]
    assert all(hasattr(compare, name) for name in used["compare"]), used["compare"]
    job_names = used.get("job", set()) | used.get("self._job", set())
    job_instance = FusionJob("/nonexistent", {}, WorkerProcess(command=["true"]))
    assert all(hasattr(job_instance, name) for name in job_names), job_names
    nodes = FusionNodes(fusedNode=None)
    assert all(hasattr(nodes, name) for name in used.get("nodes", set()) | used.get("self._result", set()))
    assert all(hasattr(RegistrationSummary(), name) for name in used.get("nodes.registration", set()))


def test_module_texts_are_translatable(module_tree):
    """Slicer 5.10's template: title, help and acknowledgement through ``_()``, the category through
    ``translate("qSlicerAbstractCoreModule", ...)``."""
    module = next(node for node in module_tree.body if isinstance(node, ast.ClassDef) and node.name == "MedFusion")
    source = ast.unparse(module)
    assert "self.parent.title = _(" in source
    assert "self.parent.categories = [translate('qSlicerAbstractCoreModule', 'Registration')]" in source
    assert "self.parent.acknowledgementText = _(" in source and "+ _(" in source[source.find("helpText") :][:80]


def test_parameter_node_fields_and_ui_bindings_match(ui, module_tree):
    wrapper = next(
        node for node in module_tree.body if isinstance(node, ast.ClassDef) and node.name == "MedFusionParameterNode"
    )
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
    classes = {
        node.name: [ast.unparse(base) for base in node.bases]
        for node in module_tree.body
        if isinstance(node, ast.ClassDef)
    }
    assert classes["MedFusion"] == ["ScriptedLoadableModule"]
    assert "ScriptedLoadableModuleWidget" in classes["MedFusionWidget"]
    assert classes["MedFusionLogic"] == ["ScriptedLoadableModuleLogic", "FusionLogic"]
    assert classes["MedFusionTest"] == ["ScriptedLoadableModuleTest"]
    top_imports = {alias.name for node in module_tree.body if isinstance(node, ast.Import) for alias in node.names}
    top_imports |= {node.module for node in module_tree.body if isinstance(node, ast.ImportFrom)}
    assert not any(name == "torch" or name.startswith("MedFusionLib") for name in top_imports), (
        "MedFusion.py must load in a Slicer without torch"
    )


def test_choices_are_the_librarys_fusion_options():
    """The panel, the console and the headless script offer FusionOptions' choices and defaults:
    the same as `medfusion fuse`."""
    from MedFusionLib.cli import build_parser
    from MedFusionLib.fusion.options import FusionOptions

    assert choices.CHOICES is FusionOptions.CHOICES and choices.DEFAULTS == FusionOptions()
    assert choices.REGISTRATION_CHOICES == FusionOptions.CHOICES["registration"]
    assert choices.MODEL_CHOICES == FusionOptions.CHOICES["model"]
    fuse = build_parser()._subparsers._group_actions[0].choices["fuse"]
    defaults = {action.dest: action.default for action in fuse._actions}
    assert {"registration", "backend", "device", "axis", "model"} <= set(defaults)
    assert choices.make_options(registration="rigid", model=None) == FusionOptions(registration="rigid")
    with pytest.raises(choices.OptionsError, match="unknown fusion option"):
        choices.make_options(regstration="rigid")


def test_headless_script_defaults_are_the_librarys():
    """MedFusionBatch.py has every fusion option from FusionOptions.add_arguments (so --functional,
    --functional-range and any later option come by themselves), with its defaults, plus --source-map."""
    sys.path.insert(0, str(MODULE / "Resources" / "Scripts"))
    import MedFusionBatch

    from MedFusionLib.fusion.options import FusionOptions

    parser = MedFusionBatch.build_parser()
    args = parser.parse_args(["--reference", "a", "--moving", "b", "--output", "c"])
    assert FusionOptions.from_namespace(args) == FusionOptions() and args.source_map is None
    flags = {option for action in parser._actions for option in action.option_strings}
    assert {spec.metadata["flag"] for spec in dataclasses.fields(FusionOptions)} <= flags
    args = parser.parse_args(
        ["--reference", "mr", "--moving", "pet", "--output", "rgb.nrrd", "--functional", "--registration", "resample",
         "--functional-range", "0,10", "--source-map", "share.nrrd"]
    )  # fmt: skip
    assert FusionOptions.from_namespace(args) == FusionOptions(
        functional="harvard-pet", registration="resample", functional_range="0,10"
    )
    assert args.source_map == Path("share.nrrd")


# What Slicer's parameterNodeWrapper connects a .ui widget to, by the parameter's annotation
# (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py): a wrong pairing raises in connectGui.
_CONNECTABLE = {
    "str+Choice": {"QComboBox"},
    "str": {"QLineEdit", "QTextEdit"},
    "bool": {"QCheckBox", "QPushButton"},
    "float+WithinRange": {"ctkSliderWidget", "QDoubleSpinBox"},
    "node": {"qMRMLNodeComboBox"},
}


def _annotation_kind(annotation: str) -> str:
    if annotation.startswith("Annotated[str, Choice("):
        return "str+Choice"
    if annotation.startswith("Annotated[float, WithinRange("):
        return "float+WithinRange"
    if annotation in ("str", "bool"):
        return annotation
    if re.fullmatch(r"vtkMRML\w+|Union\[(vtkMRML\w+, )+None\]", annotation):
        return "node"
    raise AssertionError(f"no connector known for {annotation}")


def test_every_bound_widget_is_of_a_class_the_wrapper_connects_to_its_parameter(ui, module_tree):
    wrapper = next(
        node for node in module_tree.body if isinstance(node, ast.ClassDef) and node.name == "MedFusionParameterNode"
    )
    annotations = {
        statement.target.id: ast.unparse(statement.annotation)
        for statement in wrapper.body
        if isinstance(statement, ast.AnnAssign)
    }
    for widget in ui.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                name = prop.findtext("string")
                assert widget.get("class") in _CONNECTABLE[_annotation_kind(annotations[name])], name
    # Functional fusion and the source map (issue #14) are in the panel and bound.
    bound = {
        prop.findtext("string"): widget.get("name")
        for widget in ui.iter("widget")
        for prop in widget.findall("property")
        if prop.get("name") == "SlicerParameterName"
    }
    assert bound["functional"] == "functionalComboBox" and bound["functionalRange"] == "functionalRangeLineEdit"
    assert bound["sourceMap"] == "sourceMapCheckBox" and bound["sourceMapLegend"] == "sourceMapLegendCheckBox"
    # The wrapper sets a node selector's types from the annotation: the output's lists RGB volumes.
    assert annotations["outputVolume"] == "Union[vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode, None]"
    output = next(w for w in ui.iter("widget") if w.get("name") == "outputVolumeSelector")
    node_types = [s.text for p in output.findall("property") if p.get("name") == "nodeTypes" for s in p.iter("string")]
    assert node_types == ["vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"]


def test_widget_reads_the_functional_options_through_the_panel_helper(module_tree):
    """The panel builds its FusionOptions with choices.panel_options (a range only with a colour
    map), and Apply asks the worker for the source map the checkbox asks for."""
    source = MODULE_SCRIPT.read_text()
    widget = ast.unparse(
        next(node for node in module_tree.body if isinstance(node, ast.ClassDef) and node.name == "MedFusionWidget")
    )
    assert "panel_options(" in widget and "functional_range=parameters.functionalRange" in widget
    assert "sourceMap=parameters.sourceMap" in widget and "showSourceMapLegend" in widget
    assert "loadFunctionalDemoVolume" in widget and "make_options" not in source
    assert choices.panel_options(functional="off", functional_range="0,10") == choices.FusionOptions()
    assert choices.panel_options(functional="hot", functional_range=" ", model="") == choices.FusionOptions(
        functional="hot"
    )
    with pytest.raises(choices.OptionsError, match="LOW < HIGH"):
        choices.panel_options(functional="hot", functional_range="10,0")
    assert choices.FUNCTIONAL_CHOICES == ("off", *choices.FusionOptions.CHOICES["functional"])


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.DOTALL)
    return [line.strip().replace("${MODULE_NAME}", "MedFusion") for line in match.group(1).splitlines() if line.strip()]


def test_module_cmake_lists_every_file_to_install():
    cmake = (MODULE / "CMakeLists.txt").read_text()
    scripts, resources = _cmake_list(cmake, "MODULE_PYTHON_SCRIPTS"), _cmake_list(cmake, "MODULE_PYTHON_RESOURCES")
    for listed in scripts + resources:
        assert (MODULE / listed).is_file(), f"CMake lists {listed}, which does not exist"
    module_code = {
        path.relative_to(MODULE).as_posix() for path in MODULE.rglob("*.py") if "Resources" not in path.parts
    }
    assert module_code == set(scripts)
    assert {p.relative_to(MODULE).as_posix() for p in (MODULE / "Resources").rglob("*") if p.is_file()} == set(
        resources
    )
    assert "slicerMacroBuildScriptedModule(" in cmake and "WITH_GENERIC_TESTS" in cmake
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake
    top = (REPO_ROOT / "CMakeLists.txt").read_text()
    assert "add_subdirectory(MedFusion)" in top and "MedFusion.png" in top


def test_extension_metadata_follows_the_catalog_conventions():
    top = (REPO_ROOT / "CMakeLists.txt").read_text()
    values = dict(re.findall(r'set\((EXTENSION_\w+) "(.*?)"\)', top))
    assert "Slicer 5.10 or later" in values["EXTENSION_DESCRIPTION"]
    screenshots = values["EXTENSION_SCREENSHOTURLS"].split()
    assert screenshots and all(url.startswith("https://") for url in screenshots)
    assert (REPO_ROOT / screenshots[0].split("/main/", 1)[1]).is_file()
    assert re.fullmatch(r"[^()]+ \([^()]+\)", values["EXTENSION_CONTRIBUTORS"])  # "Name (Organisation)"
    assert '"MedFusion developers (MedFusion project)"' in MODULE_SCRIPT.read_text()
    license_text = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert 'license = { text = "Apache-2.0" }' in (REPO_ROOT / "pyproject.toml").read_text()


def test_module_cmake_packages_every_file_of_medfusionlib():
    """The glob patterns of the CMake file, evaluated here, cover every file of the library that
    the pip package ships (code, configs, weights, their ONNX exports and their model cards)."""
    cmake = (MODULE / "CMakeLists.txt").read_text()
    root = REPO_ROOT
    recursive = re.findall(r"\$\{MEDFUSION_SOURCE_ROOT\}/(MedFusionLib/\*\.py)", cmake)
    flat = re.findall(r"\$\{MEDFUSION_SOURCE_ROOT\}/(MedFusionLib/(?:configs|configs/finetune|weights)/\*\.\w+)", cmake)
    assert recursive == ["MedFusionLib/*.py"] and len(flat) == 5
    packaged = {p.relative_to(root).as_posix() for p in (root / "MedFusionLib").rglob("*.py")}
    for pattern in flat:
        packaged |= {p.relative_to(root).as_posix() for p in root.glob(pattern)}
    library = {
        p.relative_to(root).as_posix()
        for p in (root / "MedFusionLib").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")
    }
    assert library - packaged == set(), "files of MedFusionLib the Slicer package would miss"
    assert "MedFusionLib/fusion/pipeline.py" in packaged and "MedFusionLib/cli/fuse.py" in packaged


def test_icon_is_a_128_pixel_png():
    from PIL import Image

    for path in (REPO_ROOT / "MedFusion.png", MODULE / "Resources" / "Icons" / "MedFusion.png"):
        with Image.open(path) as icon:
            assert icon.format == "PNG" and icon.size == (128, 128)


def test_requirements_cover_the_packages_dependencies():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = {}
    extras = project["optional-dependencies"]
    for line in project["dependencies"] + extras["elastix"] + extras["torch"]:
        name, minimum = re.match(r"([A-Za-z0-9_.-]+)\s*(?:>=\s*([\w.]+))?", line).groups()
        declared[name.lower()] = minimum or ""
    ours = {r.distribution.lower(): r.minimum for r in dependencies.REQUIREMENTS}
    shipped = {name.lower() for name in dependencies.SHIPPED_WITH_SLICER}
    for name, minimum in declared.items():
        assert name in ours or name in shipped, f"{name} is neither installed by the module nor shipped with Slicer"
        if name in ours:
            assert ours[name] == minimum, f"{name}: module asks >= {ours[name]}, pyproject >= {minimum}"
    assert not shipped & set(ours), "never install what Slicer ships"


def test_a_computer_without_an_nvidia_driver_gets_openvino_and_no_torch(monkeypatch):
    """Issue 22: on the CPU the networks run on OpenVINO, so the install there brings no torch (the
    heaviest, most fragile package); with an NVIDIA driver torch (and safetensors) as before."""
    import MedFusionLib.core.devices as devices

    monkeypatch.setattr(dependencies, "installed_version", lambda distribution: None)  # a fresh Slicer
    monkeypatch.setattr(devices, "nvidia_driver_present", lambda: False)
    assert dependencies.this_computer() == "cpu"
    assert [r.distribution for r in dependencies.missing_requirements()] == [
        "openvino", "nibabel", "tqdm", "itk-elastix", "highdicom"]
    monkeypatch.setattr(devices, "nvidia_driver_present", lambda: True)
    assert [r.distribution for r in dependencies.missing_requirements(include_optional=False)] == [
        "torch", "safetensors", "nibabel", "tqdm"]


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


def _recording_pip(calls, fail_for=()):
    def pip_install(arguments):
        constraints = Path(arguments[arguments.index("-c") + 1]).read_text().split()
        packages = [a for a in arguments[: arguments.index("-c")]]
        calls.append((packages, constraints, arguments[arguments.index("-c") + 2 :]))
        if any(p.startswith(fail_for) for p in packages) if fail_for else False:
            raise subprocess.CalledProcessError(1, "pip install")

    return pip_install


def test_install_pins_what_slicer_ships_and_installs_only_torch_from_its_index():
    """B11: torch alone (no torchvision) from the PyTorch index of this computer's CUDA build, the
    others from PyPI; every call pins the packages Slicer ships at their installed versions."""
    calls = []
    missing = [r for r in dependencies.REQUIREMENTS if r.distribution in ("torch", "nibabel")]
    done = dependencies.install(missing, _recording_pip(calls), "https://download.pytorch.org/whl/cu126")
    assert [packages for packages, _, _ in calls] == [["torch>=2.2"], ["nibabel>=5.0"]]
    assert calls[0][2] == [
        "--index-url",
        "https://download.pytorch.org/whl/cu126",
        "--extra-index-url",
        "https://pypi.org/simple",
    ]
    assert calls[1][2] == []
    for _, constraints, _ in calls:
        assert f"numpy=={dependencies.installed_version('numpy')}" in constraints
        assert f"SimpleITK=={dependencies.installed_version('SimpleITK')}" in constraints
    assert not any("torchvision" in " ".join(packages) for packages, _, _ in calls)
    assert "cu126" in done[0]
    from_pypi = []
    dependencies.install(missing[:1], _recording_pip(from_pypi), None)
    assert from_pypi[0][0] == ["torch>=2.2"] and from_pypi[0][2] == []
    text = dependencies.offline_instructions(missing)
    assert "pip download --dest medfusion-wheels torch>=2.2 nibabel>=5.0" in text.replace("'", "")
    assert "--no-index --find-links medfusion-wheels" in text


def test_optional_package_is_installed_alone_and_its_failure_blocks_nothing():
    """B6: itk-elastix in its own pip call after the required ones; its failure is reported and
    the install succeeds (registration falls back to SimpleITK)."""
    calls = []
    missing = [r for r in dependencies.REQUIREMENTS if r.distribution in ("nibabel", "itk-elastix", "tqdm")]
    done = dependencies.install(missing, _recording_pip(calls, fail_for=("itk-elastix",)))
    assert [packages for packages, _, _ in calls] == [["nibabel>=5.0", "tqdm>=4.60"], ["itk-elastix>=0.20"]]
    assert "could not install the optional itk-elastix" in done[-1] and "SimpleITK" in done[-1]
    with pytest.raises(subprocess.CalledProcessError):
        dependencies.install(missing, _recording_pip([], fail_for=("nibabel",)))


def test_repair_reinstalls_torch_alone_without_its_dependencies():
    """B5: a torch the worker cannot import is reinstalled (forced), and nothing else is touched."""
    calls = []
    torch = [r for r in dependencies.REQUIREMENTS if r.distribution == "torch"]
    dependencies.install(torch, _recording_pip(calls), "https://download.pytorch.org/whl/cpu", repair=True)
    ((packages, _, rest),) = calls
    assert packages == ["torch>=2.2"] and rest[-2:] == ["--force-reinstall", "--no-deps"]


def test_torch_index_picks_the_newest_cuda_build():
    assert dependencies.torch_index_for(["cpu", "cu118", "cu126", "cu121"]) == "https://download.pytorch.org/whl/cu126"
    assert dependencies.torch_index_for(["cpu"]) == "https://download.pytorch.org/whl/cpu"
    assert dependencies.torch_index_for([]) is None


class _LightTheTorchBackend:
    """Shaped like light-the-torch's ComputationBackend (CPUBackend, CUDABackend): an object whose
    str() is the wheel tag, not a str, and which is not comparable to ints."""

    def __init__(self, tag: str):
        self._tag = tag

    def __str__(self) -> str:
        return self._tag

    def __hash__(self) -> int:
        return hash(self._tag)


def _install_fake_slicer_pytorch(monkeypatch, backends, light_the_torch_present=True):
    import importlib.machinery
    import types

    calls = []

    class PyTorchUtilsLogic:
        @staticmethod
        def getCompatibleComputationBackends(torchVersionRequirement=None):
            calls.append(torchVersionRequirement)
            if isinstance(backends, Exception):
                raise backends
            return set(backends)

    module = types.ModuleType("PyTorchUtils")
    module.PyTorchUtilsLogic = PyTorchUtilsLogic
    monkeypatch.setitem(sys.modules, "PyTorchUtils", module)
    if light_the_torch_present:
        ltt = types.ModuleType("light_the_torch")
        ltt.__spec__ = importlib.machinery.ModuleSpec("light_the_torch", None)
        monkeypatch.setitem(sys.modules, "light_the_torch", ltt)
    else:
        monkeypatch.setitem(sys.modules, "light_the_torch", None)
    return calls


def test_slicer_pytorch_backends_as_objects_give_the_newest_cuda_index(monkeypatch):
    """Review 23.1: SlicerPyTorch returns light-the-torch ComputationBackend objects, not strings;
    before the fix re.fullmatch raised TypeError outside the try and the install failed."""
    backends = [_LightTheTorchBackend(tag) for tag in ("cpu", "cu118", "cu126")]
    _install_fake_slicer_pytorch(monkeypatch, backends)
    assert dependencies.slicer_torch_index() == "https://download.pytorch.org/whl/cu126"
    _install_fake_slicer_pytorch(monkeypatch, [_LightTheTorchBackend("cpu")])
    assert dependencies.slicer_torch_index() == "https://download.pytorch.org/whl/cpu"


def test_slicer_pytorch_detection_failing_falls_back_to_pypi(monkeypatch):
    _install_fake_slicer_pytorch(monkeypatch, RuntimeError("no network"))
    assert dependencies.slicer_torch_index() is None


def test_slicer_pytorch_detection_is_not_used_without_light_the_torch(monkeypatch):
    """Review 23.5: without light-the-torch, SlicerPyTorch's detection pip-installs it unconstrained
    (it pins pip < 24.4, downgrading Slicer's pip); MedFusion must not call it then."""
    calls = _install_fake_slicer_pytorch(monkeypatch, [_LightTheTorchBackend("cu126")], light_the_torch_present=False)
    assert dependencies.slicer_torch_index() is None
    assert calls == []


def test_slicer_pip_install_on_slicer_5_10_uses_slicer_util_pip_install(monkeypatch):
    """A2: Slicer 5.10 has no slicer.packaging; its slicer.util.pip_install(list) shows no dialog and
    is what runs (as the slicer-core wheel here: its util has no packaging module beside it)."""
    pytest.importorskip("slicer_core", reason="the slicer-core wheel is not available for this Python")
    import slicer.util

    monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # import slicer.packaging -> ImportError
    received = []
    monkeypatch.setattr(
        slicer.util, "pip_install", lambda requirements, **keywords: received.append((requirements, keywords))
    )
    dependencies.slicer_pip_install(["nibabel>=5.0", "-c", "/tmp/c.txt"])
    assert received == [(["nibabel>=5.0", "-c", "/tmp/c.txt"], {})]


def test_slicer_pip_install_on_slicer_5_12_shows_no_dialog_of_slicers(monkeypatch):
    """Review 23.4: on Slicer 5.12 and later slicer.util.pip_install forwards to
    slicer.packaging.pip_install, whose default (show_progress=True) shows an error dialog of its
    own before raising: a second dialog beside MedFusion's, and one for the optional itk-elastix
    that MedFusion goes on without. MedFusion asks for show_progress=False (busy cursor, no
    dialog; signature read in Base/Python/slicer/packaging.py of 5.12 and main). Stand-in module:
    Slicer's packaging cannot be imported outside Slicer."""
    pytest.importorskip("slicer_core", reason="the slicer-core wheel is not available for this Python")
    import types

    import slicer
    import slicer.util

    received, through_util = [], []
    packaging = types.ModuleType("slicer.packaging")

    def pip_install(  # the parameters of Slicer's slicer.packaging.pip_install (5.12, main)
        requirements, constraints=None, no_deps_requirements=None, skip_packages=None, blocking=True,
        show_progress=True, requester=None, parent=None, logCallback=None, completedCallback=None,
    ):  # fmt: skip
        received.append((requirements, show_progress, blocking))
        if "itk-elastix>=0.20" in requirements:
            raise subprocess.CalledProcessError(1, "pip install")

    packaging.pip_install = pip_install
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(slicer, "packaging", packaging, raising=False)
    monkeypatch.setattr(slicer.util, "pip_install", lambda requirements, **keywords: through_util.append(requirements))
    missing = [r for r in dependencies.REQUIREMENTS if r.distribution in ("nibabel", "itk-elastix")]
    done = dependencies.install(missing, dependencies.slicer_pip_install)
    assert [(r[0][0], r[1], r[2]) for r in received] == [
        ("nibabel>=5.0", False, True),
        ("itk-elastix>=0.20", False, True),
    ]
    assert through_util == []
    assert "could not install the optional itk-elastix" in done[-1]


def test_console_and_headless_installs_run_pip_as_a_process_without_dialogs(tmp_path, capsys):
    """The console's installDependencies() and MedFusionBatch.py --install-dependencies run pip as a
    plain process (no Slicer dialog that would wait forever headless); a failure raises with pip's
    output and the install plan reports it. Real pip, offline: nothing is downloaded."""
    pip = dependencies.process_pip_install(sys.executable)
    absent = dependencies.Requirement("medfusion-no-such-package", "1.0", False, "testing")
    with pytest.raises(subprocess.CalledProcessError) as error:
        dependencies.install([absent], lambda arguments: pip([*arguments, "--no-index", "--find-links", str(tmp_path)]))
    assert "medfusion-no-such-package" in (error.value.stderr or "") + (error.value.stdout or "")
    pip(["--no-index", "--find-links", str(tmp_path), "pip"])  # already satisfied: succeeds, prints pip's lines
    assert "already satisfied" in capsys.readouterr().out.lower()
    source = (MODULE / "Resources" / "Scripts" / "MedFusionBatch.py").read_text()
    assert "process_pip_install(headless_python())" in source and "slicer_pip_install" not in source
    assert "process_pip_install(python_executable(" in MODULE_SCRIPT.read_text()


def test_require_says_how_to_install_from_the_console():
    absent = dependencies.Requirement("medfusion-no-such-package", "2.0", False, "")
    with pytest.raises(dependencies.DependenciesMissing) as error:
        dependencies.require((absent,))
    assert "medfusion-no-such-package>=2.0" in str(error.value)
    assert "MedFusion.MedFusionLogic().installDependencies()" in str(error.value) and "--install-dependencies" in str(
        error.value
    )
    dependencies.require(())  # nothing missing: no error


def test_module_and_batch_script_compile():
    for path in (MODULE_SCRIPT, MODULE / "Resources" / "Scripts" / "MedFusionBatch.py"):
        compile(path.read_text(), str(path), "exec")
