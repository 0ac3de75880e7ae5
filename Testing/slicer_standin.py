"""A small stand-in for the parts of Qt, CTK and Slicer's application that MedFusion's panel
touches, so that ``MedFusionWidget``'s real code runs here (Qt and the Slicer application cannot).

What is real: the MRML scene, volume, slice and composite nodes, ``vtkMRMLSliceLogic`` (the slice
views' layer pipeline) and ``slicer.util``'s scene functions (``setSliceViewerLayers``,
``tryWithErrorDisplay``, ``VTKObservationMixin``), all from the slicer-core wheel.

What stands in, and only as far as the panel uses it:

* widgets built from ``Resources/UI/MedFusion.ui`` (class and object names from the file): they
  hold their properties, fire their signals when a property changes (as Qt does: only on a
  change, not while ``blockSignals(True)``), and let a test click, toggle and pick;
* ``qt.QTimer``: started and stopped, fired by :meth:`QTimer.fire` on demand;
* ``slicer.parameterNodeWrapper``: typed properties stored in the real ``vtkMRMLScriptedModuleNode``
  and ``connectGui``/``disconnectGui`` binding widgets by their ``SlicerParameterName``, following
  Base/Python/slicer/parameterNodeWrapper/wrapper.py and guiConnectors.py;
* ``ScriptedLoadableModule*`` (Base/Python/slicer/ScriptedLoadableModule.py): module name from the
  class name, the singleton parameter node;
* dialogs (``errorDisplay``, ``confirmOkCancelDisplay``, ``confirmYesNoDisplay``): recorded in
  :attr:`Stand.dialogs`, answered from :attr:`Stand.answers`.

Every name offered here exists in Slicer's, Qt's or CTK's API (the widget classes and their
properties and signals as Qt Designer and PythonQt name them); ``Testing/test_slicer_widget.py``
checks that the stand-in's widget classes are exactly the .ui's. Nothing here decides anything
MedFusion decides: no fusion, no output policy, no checks.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import types
import typing
import xml.etree.ElementTree as ET
from pathlib import Path

import slicer
import slicer.util
import vtk

MODULE_DIR = Path(__file__).resolve().parents[1] / "MedFusion"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MedFusion.ui"
SLICE_VIEWS = ("Red", "Yellow", "Green")

# --- qt ---------------------------------------------------------------------------------------


def _positional_count(slot, available: int) -> int:
    """How many of a signal's arguments PythonQt passes to a Python slot: as many as it takes
    (Slicer's template connects ``clicked(bool)`` to ``onApplyButton(self)``)."""
    try:
        parameters = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return available
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return available
    return min(available, sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters))


class Signal:
    """A Qt signal: ``connect``/``disconnect`` slots; ``emit`` calls them unless the owner blocks."""

    def __init__(self, owner=None) -> None:
        self.owner = owner
        self.slots: list = []

    def connect(self, slot) -> None:
        self.slots.append(slot)

    def disconnect(self, slot) -> None:
        self.slots.remove(slot)

    def emit(self, *args) -> None:
        if self.owner is not None and self.owner._signalsBlocked:
            return
        for slot in list(self.slots):
            slot(*args[: _positional_count(slot, len(args))])


class Qt:
    UserRole = 0x0100
    ToolTipRole = 3
    WaitCursor = 16


class QApplication:
    cursors: list = []

    @staticmethod
    def setOverrideCursor(cursor) -> None:
        QApplication.cursors.append(cursor)

    @staticmethod
    def restoreOverrideCursor() -> None:
        QApplication.cursors.pop()


class QTimer:
    def __init__(self) -> None:
        self.timeout = Signal()
        self.interval = 0
        self.active = False
        self._signalsBlocked = False

    def setInterval(self, milliseconds: int) -> None:
        self.interval = milliseconds

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def isActive(self) -> bool:
        return self.active

    def fire(self) -> None:
        """What the event loop does when the interval passed (tests call it)."""
        if self.active:
            self.timeout.emit()


class QStandardItem:
    def __init__(self, text: str = "") -> None:
        self.roles = {0: text}
        self.enabled = True

    def setEnabled(self, enabled: bool) -> None:
        self.enabled = bool(enabled)

    def isEnabled(self) -> bool:
        return self.enabled


class QAbstractItemModel:
    """What PythonQt hands out for ``QComboBox.model()`` (declared ``QAbstractItemModel*``): no
    ``item()``; only a model the caller made itself is known to be a ``QStandardItemModel``."""

    def __init__(self) -> None:
        self.rows: list[QStandardItem] = []

    def rowCount(self) -> int:
        return len(self.rows)


class QStandardItemModel(QAbstractItemModel):
    def item(self, row: int) -> QStandardItem | None:
        return self.rows[row] if 0 <= row < len(self.rows) else None


class _Widget:
    """A widget of the .ui: properties as attributes, PythonQt's ``connect("signal(args)", slot)``."""

    SIGNALS: tuple[str, ...] = ()

    def __init__(self, name: str, properties: dict) -> None:
        self.objectName = name
        self._signalsBlocked = False
        self._dynamic = {}
        self.enabled = True
        self.toolTip = ""
        for signature in self.SIGNALS:
            setattr(self, signature.split("(")[0], Signal(self))
        for key, value in properties.items():
            setattr(self, key, value)

    def connect(self, signature: str, slot) -> None:
        assert signature in self.SIGNALS, f"{type(self).__name__} has no signal {signature}"
        getattr(self, signature.split("(")[0]).connect(slot)

    def blockSignals(self, block: bool) -> bool:
        previous, self._signalsBlocked = self._signalsBlocked, bool(block)
        return previous

    def property(self, name: str):
        return self._dynamic.get(name)

    def setProperty(self, name: str, value) -> None:
        self._dynamic[name] = value


class QLabel(_Widget):
    text = ""
    wordWrap = False


class QProgressBar(_Widget):
    value = 0


class ctkCollapsibleButton(_Widget):
    text = ""
    collapsed = False


class QPushButton(_Widget):
    SIGNALS = ("clicked(bool)",)
    text = ""

    def click(self) -> None:
        if self.enabled:
            self.clicked.emit(False)


class _ValueWidget(_Widget):
    """A widget whose value property fires a signal when it changes."""

    VALUE, SIGNAL = "", ""

    def __setattr__(self, name, value) -> None:
        if name == self.VALUE and "_signalsBlocked" in self.__dict__:
            value = self._coerce(value)
            changed = getattr(self, name, None) != value
            object.__setattr__(self, name, value)
            if changed:
                self._changed(value)
            return
        object.__setattr__(self, name, value)

    def _coerce(self, value):
        return value

    def _changed(self, value) -> None:
        getattr(self, self.SIGNAL).emit(value)


class QCheckBox(_ValueWidget):
    SIGNALS = ("toggled(bool)", "stateChanged(int)")
    VALUE, SIGNAL = "checked", "toggled"
    checked = False

    def _coerce(self, value):
        return bool(value)

    def _changed(self, value) -> None:
        self.toggled.emit(value)
        self.stateChanged.emit(2 if value else 0)


class QLineEdit(_ValueWidget):
    SIGNALS = ("textChanged(QString)",)
    VALUE, SIGNAL = "text", "textChanged"
    text = ""


class ctkSliderWidget(_ValueWidget):
    SIGNALS = ("valueChanged(double)",)
    VALUE, SIGNAL = "value", "valueChanged"
    value = 0.0
    minimum, maximum = 0.0, 99.0

    def _coerce(self, value):
        return min(max(float(value), self.minimum), self.maximum)


class QComboBox(_ValueWidget):
    SIGNALS = ("currentIndexChanged(int)",)
    VALUE, SIGNAL = "currentIndex", "currentIndexChanged"
    currentIndex = -1

    def __init__(self, name: str, properties: dict) -> None:
        super().__init__(name, properties)
        self._model = QStandardItemModel()

    def setModel(self, model: QStandardItemModel) -> None:
        self._model = model
        self.currentIndex = -1

    def model(self) -> QAbstractItemModel:
        view = QAbstractItemModel()
        view.rows = self._model.rows
        return view

    @property
    def count(self) -> int:
        return self._model.rowCount()

    def addItem(self, text: str, userData=None) -> None:
        item = QStandardItem(text)
        item.roles[Qt.UserRole] = userData
        self._model.rows.append(item)
        if self.currentIndex == -1:
            self.currentIndex = 0  # Qt selects the first item added to an empty combo box

    def clear(self) -> None:
        self._model.rows.clear()
        self.currentIndex = -1

    def itemData(self, index: int, role: int = Qt.UserRole):
        item = self._model.item(index)
        return None if item is None else item.roles.get(role)

    def setItemData(self, index: int, value, role: int = Qt.UserRole) -> None:
        self._model.rows[index].roles[role] = value

    def itemText(self, index: int) -> str:
        return self._model.rows[index].roles[0]

    def findData(self, data, role: int = Qt.UserRole) -> int:
        return next((i for i, item in enumerate(self._model.rows) if item.roles.get(role) == data), -1)

    def pick(self, index: int) -> None:
        """What the user's click does: only enabled items can be chosen."""
        if self._model.rows[index].enabled:
            self.currentIndex = index


class qMRMLNodeComboBox(_Widget):
    SIGNALS = ("currentNodeChanged(vtkMRMLNode*)",)
    nodeTypes: tuple = ()
    showChildNodeTypes = True
    noneEnabled = False

    def __init__(self, name: str, properties: dict) -> None:
        super().__init__(name, properties)
        self._scene = None
        self._node = None

    def setMRMLScene(self, scene) -> None:
        self._scene = scene

    def nodes(self) -> list:
        """The nodes the selector lists: of ``nodeTypes``, without subclasses unless shown."""
        listed = []
        for index in range(self._scene.GetNumberOfNodes() if self._scene else 0):
            node = self._scene.GetNthNode(index)
            if any(node.IsA(t) if self.showChildNodeTypes else node.GetClassName() == t for t in self.nodeTypes):
                listed.append(node)
        return listed

    def currentNode(self):
        if self._node is not None and self._node.GetScene() is not self._scene:
            self._node = None  # removed from the scene: the selector no longer shows it
        return self._node

    def setCurrentNode(self, node) -> None:
        if node is not self._node:
            self._node = node
            self.currentNodeChanged.emit(node)


class qMRMLWidget(_Widget):
    SIGNALS = ("mrmlSceneChanged(vtkMRMLScene*)",)

    def setMRMLScene(self, scene) -> None:
        self.mrmlSceneChanged.emit(scene)


class QVBoxLayout:
    def __init__(self) -> None:
        self.widgets: list = []

    def addWidget(self, widget) -> None:
        self.widgets.append(widget)

    def addStretch(self, stretch: int = 0) -> None:
        pass


WIDGET_CLASSES = {
    cls.__name__: cls
    for cls in (QLabel, QProgressBar, ctkCollapsibleButton, QPushButton, QCheckBox, QLineEdit, ctkSliderWidget,
                QComboBox, qMRMLNodeComboBox, qMRMLWidget)
}  # fmt: skip


def _property_value(element):
    kind = element.tag
    if kind == "bool":
        return element.text == "true"
    if kind in ("double", "number"):
        return float(element.text) if kind == "double" else int(element.text)
    if kind == "stringlist":
        return tuple(s.text for s in element.iter("string"))
    return element.text or ""


def load_ui(path):
    """The .ui's widgets (stand-ins of their classes, with their properties) and its connections."""
    root = ET.parse(path).getroot()
    widgets = {}
    for element in root.iter("widget"):
        if element.get("class") not in WIDGET_CLASSES:
            continue
        standard, dynamic = {}, {}
        for prop in element.findall("property"):
            (dynamic if prop.get("stdset") == "0" else standard)[prop.get("name")] = _property_value(prop[0])
        widget = WIDGET_CLASSES[element.get("class")](element.get("name"), standard)
        for key, value in dynamic.items():
            widget.setProperty(key, value)
        widgets[widget.objectName] = widget
    top = widgets[root.find("widget").get("name")]
    for connection in root.iter("connection"):
        sender, receiver = widgets[connection.findtext("sender")], widgets[connection.findtext("receiver")]
        assert connection.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)", "only scene hand-over is stood in"
        sender.mrmlSceneChanged.connect(getattr(receiver, connection.findtext("slot").split("(")[0]))
    top.children = widgets
    return top


# What the stand-in's ``qt`` module offers: the names MedFusion.py uses, and QApplication, which
# slicer.util.WaitCursor uses. The functions of slicer.util it replaces (they open Qt dialogs or
# windows); every other slicer.util function the panel calls is slicer-core's, i.e. Slicer's own.
QT_NAMES = (Qt, QApplication, QTimer, QStandardItemModel, QLabel)
UTIL_REPLACED = ("loadUI", "childWidgetVariables", "errorDisplay", "confirmOkCancelDisplay", "confirmYesNoDisplay",
                 "restart", "reloadScriptedModule")  # fmt: skip


# --- slicer.parameterNodeWrapper ---------------------------------------------------------------


class Choice:
    def __init__(self, choices) -> None:
        self.choices = tuple(choices)


class WithinRange:
    def __init__(self, minimum, maximum) -> None:
        self.minimum, self.maximum = minimum, maximum


def _split(hint):
    if typing.get_origin(hint) is typing.Annotated:
        return typing.get_args(hint)[0], hint.__metadata__
    return hint, ()


def _is_node_type(kind) -> bool:
    options = typing.get_args(kind) if typing.get_origin(kind) is typing.Union else (kind,)
    return all(option is type(None) or issubclass(option, slicer.vtkMRMLNode) for option in options)


class _Connector:
    """One widget bound to one parameter (guiConnectors.py: which signal, which property)."""

    def __init__(self, widget, kind, metadata) -> None:
        self.widget, self.kind = widget, kind
        self.choices = next((m.choices for m in metadata if isinstance(m, Choice)), None)
        bounds = next((m for m in metadata if isinstance(m, WithinRange)), None)
        if isinstance(widget, QComboBox):
            assert self.choices is not None, "a combo box needs the Choice annotation"
            widget.clear()
            for choice in self.choices:
                widget.addItem(str(choice))
        if isinstance(widget, ctkSliderWidget):
            assert bounds is not None, "a slider needs a bounded float"
            widget.minimum, widget.maximum = bounds.minimum, bounds.maximum
        if isinstance(widget, qMRMLNodeComboBox):
            options = typing.get_args(kind) if typing.get_origin(kind) is typing.Union else (kind,)
            widget.nodeTypes = tuple(o.__name__ for o in options if o is not type(None))
        self.signal = {
            QComboBox: "currentIndexChanged", QCheckBox: "stateChanged", QLineEdit: "textChanged",
            ctkSliderWidget: "valueChanged", qMRMLNodeComboBox: "currentNodeChanged",
        }[type(widget)]  # fmt: skip
        self.callback = None

    def read(self):
        widget = self.widget
        if isinstance(widget, QComboBox):
            return self.choices[widget.currentIndex]
        if isinstance(widget, qMRMLNodeComboBox):
            return widget.currentNode()
        return getattr(widget, widget.VALUE)

    def write(self, value) -> None:
        widget = self.widget
        if isinstance(widget, QComboBox):
            widget.currentIndex = self.choices.index(value)
        elif isinstance(widget, qMRMLNodeComboBox):
            widget.setCurrentNode(value)
        else:
            setattr(widget, widget.VALUE, value)

    def onChanged(self, callback) -> None:
        signal = getattr(self.widget, self.signal)
        if self.callback is not None:
            signal.disconnect(self.callback)
        self.callback = (lambda *args: callback()) if callback is not None else None
        if self.callback is not None:
            signal.connect(self.callback)


def parameterNodeWrapper(classtype):
    """Typed properties kept in a ``vtkMRMLScriptedModuleNode`` (nodes as node references, other
    values as strings), defaults written on wrapping, Choice/WithinRange checked on write."""
    hints = typing.get_type_hints(classtype, include_extras=True)
    fields = {}
    for name, hint in hints.items():
        kind, metadata = _split(hint)
        default = getattr(classtype, name, None)
        fields[name] = (kind, metadata, default)

        def getter(self, name=name):
            kind = fields[name][0]
            node = self.parameterNode
            if _is_node_type(kind):
                return node.GetNodeReference(name)
            text = node.GetParameter(name)
            return {bool: lambda t: t == "true", float: float}.get(kind, str)(text)

        def setter(self, value, name=name):
            kind, metadata, _ = fields[name]
            for check in metadata:
                if isinstance(check, Choice) and value not in check.choices:
                    raise ValueError(f"{value!r} is not one of {check.choices}")
                if isinstance(check, WithinRange) and not check.minimum <= value <= check.maximum:
                    raise ValueError(f"{value!r} is not within [{check.minimum}, {check.maximum}]")
            node = self.parameterNode
            if _is_node_type(kind):
                node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
            else:
                node.SetParameter(name, ("true" if value else "false") if kind is bool else str(value))

        setattr(classtype, name, property(getter, setter))

    def __init__(self, parameterNode) -> None:
        self.parameterNode = parameterNode
        self._guis = {}
        self._nextTag = 0
        self._updating = False
        for name, (kind, _, default) in fields.items():
            if not _is_node_type(kind) and not parameterNode.HasParameter(name):
                setattr(self, name, default)

    def connectGui(self, gui):
        connectors = {}
        for widget in gui.__dict__.values():
            name = widget.property("SlicerParameterName")
            if name:
                connectors[name] = _Connector(widget, *fields[name][:2])
        tag, self._nextTag = self._nextTag, self._nextTag + 1
        self._guis[tag] = connectors
        for name, connector in connectors.items():
            connector.write(getattr(self, name))
            connector.onChanged(lambda name=name, connector=connector: self._fromGui(name, connector))
        self.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: self._toGui())
        return tag

    def _fromGui(self, name, connector) -> None:
        if not self._updating:
            setattr(self, name, connector.read())

    def _toGui(self) -> None:
        if self._updating:
            return
        self._updating = True
        try:
            for connectors in self._guis.values():
                for name, connector in connectors.items():
                    connector.write(getattr(self, name))
        finally:
            self._updating = False

    def disconnectGui(self, tag) -> None:
        for connector in self._guis.pop(tag, {}).values():
            connector.onChanged(None)

    classtype.__init__ = __init__
    classtype.connectGui, classtype.disconnectGui = connectGui, disconnectGui
    classtype._fromGui, classtype._toGui = _fromGui, _toGui
    classtype.AddObserver = lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(
        event, callback, priority
    )
    classtype.RemoveObserver = lambda self, tag: self.parameterNode.RemoveObserver(tag)
    classtype.Modified = lambda self: self.parameterNode.Modified()
    return classtype


# --- ScriptedLoadableModule -----------------------------------------------------------------


class ScriptedLoadableModule:
    def __init__(self, parent) -> None:
        self.parent = parent
        self.moduleName = type(self).__name__


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None) -> None:
        self.moduleName = type(self).__name__.removesuffix("Widget")
        self.parent = parent
        self.layout = parent.layout

    def resourcePath(self, filename: str) -> str:
        return str(MODULE_DIR / "Resources" / filename)

    def setup(self) -> None:
        pass

    def onReload(self) -> None:
        slicer.util.reloadScriptedModule(self.moduleName)


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None) -> None:
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            node.SetAttribute("ModuleName", self.moduleName)
            node = slicer.mrmlScene.AddNode(node)
        return node


# --- the application ------------------------------------------------------------------------


class LayoutManager:
    """The slice views' logics, as ``qSlicerLayoutManager.mrmlSliceLogics()`` hands them out: Red
    axial, Yellow sagittal, Green coronal (Slicer's default layout), each view ``VIEW_SIZE``
    pixels. The scene gets the default colour tables, as Slicer's Colors module adds them."""

    VIEW_SIZE = (256, 256)

    def __init__(self, scene) -> None:
        self.application = slicer.vtkMRMLApplicationLogic()
        self.application.SetMRMLScene(scene)
        self.colors = slicer.vtkSlicerColorLogic()
        self.colors.SetMRMLApplicationLogic(self.application)
        self.colors.SetMRMLScene(scene)
        self.logics = {}
        self._collection = vtk.vtkCollection()
        for name, orientation in zip(SLICE_VIEWS, ("Axial", "Sagittal", "Coronal")):
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLScene(scene)
            logic.SetMRMLApplicationLogic(self.application)
            node = logic.AddSliceNode(name)
            node.SetOrientation(orientation)
            node.SetDimensions(*self.VIEW_SIZE, 1)
            self.logics[name] = logic
            self._collection.AddItem(logic)

    def mrmlSliceLogics(self):
        return self._collection

    def release(self) -> None:
        """Detach the logics from the scene before Python frees them in any order (else VTK may
        touch a freed scene during garbage collection)."""
        for logic in self.logics.values():
            logic.SetMRMLScene(None)
        self._collection.RemoveAllItems()
        self.logics.clear()
        self.colors.SetMRMLScene(None)
        self.application.SetMRMLScene(None)


class Application:
    majorVersion, minorVersion = 5, 10
    slicerHome = ""

    def __init__(self, scene, temporary: str) -> None:
        self.temporaryPath = temporary
        self._layout = LayoutManager(scene)
        self.cursors = []

    def layoutManager(self):
        return self._layout

    def processEvents(self) -> None:
        pass

    def testingEnabled(self) -> bool:
        return False

    def setOverrideCursor(self, cursor) -> None:
        self.cursors.append(cursor)

    def restoreOverrideCursor(self) -> None:
        self.cursors.pop()


class Stand:
    """The stand-in, installed: ``scene`` (real), ``app``, the recorded ``dialogs`` and the queued
    ``answers`` of confirm dialogs (True = OK/Yes), ``module`` (MedFusion.py loaded) and ``parent``
    (the module panel: ``isEntered``)."""

    def __init__(self, monkeypatch, temporary: str) -> None:
        self.scene = slicer.vtkMRMLScene()
        self.app = Application(self.scene, temporary)
        self.dialogs: list[tuple[str, str]] = []
        self.answers: list[bool] = []
        qt = types.ModuleType("qt")
        for cls in QT_NAMES:
            setattr(qt, cls.__name__, cls)
        wrapper = types.ModuleType("slicer.parameterNodeWrapper")
        wrapper.parameterNodeWrapper, wrapper.Choice, wrapper.WithinRange = parameterNodeWrapper, Choice, WithinRange
        scripted = types.ModuleType("slicer.ScriptedLoadableModule")
        for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic):
            setattr(scripted, cls.__name__, cls)
        import unittest

        scripted.ScriptedLoadableModuleTest = unittest.TestCase
        i18n = types.ModuleType("slicer.i18n")
        i18n.tr, i18n.translate = (lambda text: text), (lambda context, text: text)
        for name, module in (("qt", qt), ("slicer.parameterNodeWrapper", wrapper),
                             ("slicer.ScriptedLoadableModule", scripted), ("slicer.i18n", i18n)):  # fmt: skip
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(slicer, "app", self.app, raising=False)
        monkeypatch.setattr(slicer, "mrmlScene", self.scene, raising=False)
        replacements = {
            "loadUI": load_ui,
            "childWidgetVariables": lambda top: types.SimpleNamespace(**top.children),
            "errorDisplay": self._error,
            "confirmOkCancelDisplay": self._confirm,
            "confirmYesNoDisplay": self._confirm,
            "restart": lambda: self.dialogs.append(("restart", "")),
            "reloadScriptedModule": lambda name: self.dialogs.append(("reload", name)),
        }
        assert set(replacements) == set(UTIL_REPLACED)
        for name, replacement in replacements.items():
            monkeypatch.setattr(slicer.util, name, replacement)  # raises if Slicer's util lacks the name
        spec = importlib.util.spec_from_file_location("MedFusion", MODULE_DIR / "MedFusion.py")
        self.module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "MedFusion", self.module)
        spec.loader.exec_module(self.module)
        self.parent = types.SimpleNamespace(isEntered=False, layout=QVBoxLayout())

    def _error(self, text, windowTitle="", detailedText="", **keywords) -> None:
        self.dialogs.append(("error", f"{windowTitle}: {text}"))

    def _confirm(self, text, windowTitle="", **keywords) -> bool:
        self.dialogs.append(("confirm", f"{windowTitle}: {text}"))
        return self.answers.pop(0)

    def widget(self):
        """A new panel, set up (Slicer does this once per session, and again on Reload)."""
        widget = self.module.MedFusionWidget(self.parent)
        widget.setup()
        return widget

    def enter(self, widget) -> None:
        self.parent.isEntered = True
        widget.enter()

    def exit(self, widget) -> None:
        self.parent.isEntered = False
        widget.exit()
