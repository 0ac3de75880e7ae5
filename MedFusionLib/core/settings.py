"""Settings dataclasses read from JSON (training configuration, loss weights, augmentation)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields

from MedFusionLib.core.errors import InputError


def reject_unknown_settings(cls: type, values: Mapping[str, object], what: str) -> None:
    """Raise :class:`InputError` naming every key of ``values`` that is not a field of the dataclass
    ``cls`` (a misspelt setting must not be silently ignored), with the known ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown {what} setting(s) {unknown}; known: {sorted(known)}")
