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
# The panel's colour-map choice: "off" (a grey fusion, FusionOptions.functional None) or a map.
FUNCTIONAL_OFF = "off"
FUNCTIONAL_CHOICES = (FUNCTIONAL_OFF, *CHOICES["functional"])
DEFAULTS = FusionOptions()

__all__ = [
    "CHOICES",
    "DEFAULTS",
    "FUNCTIONAL_CHOICES",
    "FusionOptions",
    "OptionsError",
    "make_options",
    "panel_options",
]


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


def panel_options(
    *, functional: str = FUNCTIONAL_OFF, functional_range: str = "auto", model: str = "", **choices
) -> FusionOptions:
    """The options of the panel's fields: ``functional`` ``off`` or a colour map; the range only
    counts with a colour map (a range typed while the map is off is ignored, not an error);
    ``model`` ``""`` is the default model; ``choices`` are other fields (registration, ...)."""
    colour_map = None if functional in (FUNCTIONAL_OFF, "") else functional
    return make_options(
        model=model or None,
        functional=colour_map,
        functional_range=(functional_range.strip() or "auto") if colour_map else None,
        **choices,
    )
