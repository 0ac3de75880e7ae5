"""Which Slicer runs MedFusion, and keeping Slicer's Reload honest. Standard library only.

MedFusion needs Slicer 5.10 or later: Slicer 5.6 and 5.8 ship Python 3.9, and MedFusionLib (like
this module's worker and logic) uses Python 3.10 syntax that is evaluated at import time
(``X | Y`` type unions). ``MedFusion.py`` calls :func:`refusal_reason` before it imports anything
else of MedFusion, and on an older Slicer shows that one message instead of a traceback.

This file must therefore itself load on Python 3.9, and on Python 3.7 for a clear message on
every Slicer with Python 3.7 or later (all Slicer 5 releases): no ``X | Y`` outside annotations,
no ``match``, and annotations stay strings. Python 3.6 (Slicer 4.11) cannot: this file and
``MedFusion.py`` start with ``from __future__ import annotations``, which Python 3.7 introduced.
``Testing/test_slicer_compat.py`` checks that it parses with Python 3.9's grammar.
"""

from __future__ import annotations

import sys

# Slicer 5.10 is the first release with Python 3.12 (5.6 and 5.8: Python 3.9.10) and the first
# where parameterNodeWrapper.connectGui() returns the tag that disconnectGui() needs (Slicer #7545).
MINIMUM_SLICER = (5, 10)
MINIMUM_PYTHON = (3, 10)
# Top-level packages that Slicer's "Reload" must forget so that the next import reads them anew.
OWN_PACKAGES = ("MedFusionSlicer", "MedFusionLib")


def refusal_reason(python_version, slicer_version):
    """Why MedFusion cannot run here, as one message for the user, or ``None`` when it can.

    ``python_version``: ``sys.version_info`` (or a ``(major, minor)`` tuple); ``slicer_version``:
    ``(major, minor)`` of the running Slicer, or ``None`` outside Slicer (plain Python with the
    slicer-core wheel, where only Python's version matters).
    """
    python = tuple(python_version[:2])
    if slicer_version is not None and tuple(slicer_version[:2]) < MINIMUM_SLICER:
        needed, running = "{}.{}".format(*MINIMUM_SLICER), "{}.{}".format(*slicer_version[:2])
        return (
            f"MedFusion needs 3D Slicer {needed} or later; this is Slicer {running} (Python {python[0]}.{python[1]}). "
            "Install the current Slicer release from https://download.slicer.org and install MedFusion "
            "there; this Slicer's scenes and data are not affected."
        )
    if python < MINIMUM_PYTHON:
        needed, slicer_needed = "{}.{}".format(*MINIMUM_PYTHON), "{}.{}".format(*MINIMUM_SLICER)
        return (
            f"MedFusion needs Python {needed} or later (3D Slicer {slicer_needed} or later ships it); "
            f"this Python is {python[0]}.{python[1]}."
        )
    return None


def running_slicer_version(slicer_module):
    """``(major, minor)`` of the Slicer application, or ``None`` when there is none (slicer-core)."""
    app = getattr(slicer_module, "app", None)
    if app is None:
        return None
    return (int(app.majorVersion), int(app.minorVersion))


def forget_modules(prefixes=OWN_PACKAGES, modules=None):
    """Remove ``prefixes`` and their submodules from ``sys.modules`` (or ``modules``); return their names.

    Slicer's Reload re-executes ``MedFusion.py`` only: without this, the panel would keep running
    the MedFusionSlicer and MedFusionLib code that was loaded at start-up.
    """
    table = sys.modules if modules is None else modules
    names = [
        name for name in list(table) if any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)
    ]
    for name in names:
        del table[name]
    return names
