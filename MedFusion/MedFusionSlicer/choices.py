"""The fusion options of the panel, the console logic and the headless script: MedFusionLib's
:class:`FusionOptions` (standard library only, so it loads before torch is installed). Every entry
point (``medfusion fuse``, the panel, the console, the worker, ``MedFusionBatch.py``) offers the
same choices with the same defaults because they all come from there.
"""

from __future__ import annotations

import dataclasses

from MedFusionLib.fusion.options import FusionOptions, OptionsError

CHOICES = FusionOptions.CHOICES
REGISTRATION_CHOICES = tuple(CHOICES["registration"])
BACKEND_CHOICES = tuple(CHOICES["backend"])
DEVICE_CHOICES = tuple(CHOICES["device"])
AXIS_CHOICES = tuple(CHOICES["axis"])
MODEL_CHOICES = tuple(CHOICES["model"])
DEFAULTS = FusionOptions()

__all__ = ["CHOICES", "DEFAULTS", "FusionOptions", "OptionsError", "make_options"]


def make_options(options: FusionOptions | None = None, **changes) -> FusionOptions:
    """``options`` (default: the library's defaults) with ``changes`` applied; ``None`` values in
    ``changes`` mean "keep". Raises ``OptionsError`` naming a bad value and its choices."""
    base = options if options is not None else FusionOptions()
    changes = {name: value for name, value in changes.items() if value is not None}
    known = {spec.name for spec in dataclasses.fields(base)}
    unknown = set(changes) - known
    if unknown:
        raise OptionsError(
            f"unknown fusion option(s) {', '.join(sorted(unknown))}; the options are {', '.join(sorted(known))}"
        )
    return dataclasses.replace(base, **changes) if changes else base
