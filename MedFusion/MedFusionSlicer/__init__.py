"""The Slicer side of MedFusion that needs no Qt: MRML volume nodes <-> SimpleITK images
(:mod:`.volumes`), the fusion logic the panel, the Python console and headless scripts share
(:mod:`.logic`), the separate worker process the panel runs (:mod:`.worker`) and the dependency
check (:mod:`.dependencies`).

Everything here imports with the ``slicer-core`` wheel (a real MRML scene without the Slicer
application), so it is tested outside Slicer; Qt, CTK and ``slicer.ScriptedLoadableModule`` are
used only by ``MedFusion.py``.
"""
# ruff: noqa: N999  (the package name is MedFusion's, in the CamelCase of Slicer modules)
