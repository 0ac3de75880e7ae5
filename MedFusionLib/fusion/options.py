"""One description of a fusion run, shared by every entry point.

:class:`FusionOptions` is what ``medfusion fuse``, ``medfusion batch``, the Slicer panel and
console logic, the Slicer worker and the headless script all build and hand to
:func:`~MedFusionLib.fusion.pipeline.fuse_volumes`. It knows its command-line flags (so the CLI
and the worker's argument list come from one table), validates every value in one place with one
kind of error (:class:`OptionsError`), and serialises to JSON for batch completion records.

Standard library only (choices come from :mod:`MedFusionLib.core.choices`): the Slicer module
imports it before torch is installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from MedFusionLib.core.choices import (
    AXIS_CHOICES,
    BACKEND_CHOICES,
    CT_WINDOWS,
    DEFAULT_CT_WINDOW,
    DEFAULT_FUNCTIONAL_COLOUR_MAP,
    DEFAULT_MODEL,
    DEFAULT_MODEL_BY_DEVICE,
    DEFAULT_REGISTRATION,
    DEVICE_CHOICES,
    FUNCTIONAL_COLOUR_MAPS,
    FUNCTIONAL_RANGE_PERCENTILE,
    INIT_CHOICES,
    MODEL_CHOICES,
    PRECISION_CHOICES,
    REGISTRATION_CHOICES,
    RUNTIME_CHOICES,
)
from MedFusionLib.core.errors import InputError


class OptionsError(InputError):
    """A fusion option has a value MedFusion does not accept; the message names the allowed ones."""


def _option(default, flag: str, help: str, *, choices: tuple[str, ...] | None = None, kind: str = "text"):
    """A dataclass field carrying its command-line flag, help text, choices and value kind.

    ``kind``: ``text`` (a string, one of ``choices`` if given), ``count`` (a positive whole number
    or unset), ``switch`` (a boolean flag), ``window`` (a CT window), ``path`` (a file path or unset),
    ``colour-map`` (unset = off, or one of ``choices``; the flag alone picks the first), ``range``
    (``auto`` or ``LOW,HIGH``).
    """
    return field(default=default, metadata={"flag": flag, "help": help, "choices": choices, "kind": kind})


def parse_window(text: str | tuple[float, float] | None) -> str | tuple[float, float] | None:
    """A CT window in the form the pipeline takes: ``"bone"`` -> ``"bone"``, ``"40,80"`` or
    ``(40, 80)`` -> ``(40.0, 80.0)`` (level, width in HU), ``"auto"`` -> ``"auto"`` (a window
    chosen for an image recognised as CT, the percentile rule otherwise), ``None``/``"none"`` ->
    ``None`` (the percentile rule)."""
    if text is None:
        return None
    if isinstance(text, (tuple, list)):
        values = tuple(text)
    elif "," in text:
        values = tuple(text.split(",", 1))
    elif text == "none":
        return None
    elif text == "auto":
        return "auto"
    elif text in CT_WINDOWS:
        return text
    else:
        raise OptionsError(
            f"unknown CT window {text!r}; choose one of auto, none, {', '.join(CT_WINDOWS)}, or LEVEL,WIDTH in HU"
        )
    try:
        level, width = (float(value) for value in values)
    except (TypeError, ValueError):
        raise OptionsError(f"a CT window is a name or LEVEL,WIDTH in HU (e.g. 40,80), not {text!r}") from None
    if not width > 0:
        raise OptionsError(f"a CT window's width must be positive, got {width:g} HU in {text!r}")
    return level, width


def _window_text(value: str | tuple[float, float] | None) -> str:
    """The canonical text of a CT window: ``auto``, ``none`` (also for ``None``), a name, or
    ``"LEVEL,WIDTH"`` (as ``%g``)."""
    parsed = parse_window(value)
    if parsed is None:
        return "none"
    if isinstance(parsed, str):
        return parsed
    return f"{parsed[0]:g},{parsed[1]:g}"


@dataclass(frozen=True)
class FusionOptions:
    """How to register and fuse one pair. Frozen: derive variants with :func:`dataclasses.replace`.

    Every field is validated on construction (:class:`OptionsError` names the value and the
    choices); ``FusionOptions()`` holds the defaults every entry point uses.
    """

    model: str = _option(
        DEFAULT_MODEL,
        "--model",
        "fusion network or rule (see `medfusion models`); auto: chosen by the device ("
        + ", ".join(f"{model} on {kind}" for kind, model in DEFAULT_MODEL_BY_DEVICE.items())
        + ")",
        choices=MODEL_CHOICES,
    )
    registration: str = _option(
        DEFAULT_REGISTRATION,
        "--registration",
        "register MOVING onto REFERENCE first: auto (none when both share a voxel grid, else rigid), none, "
        "resample (no registration: resample by physical coordinates, for hybrid PET/CT, SPECT/CT, PET/MR), "
        "rigid, affine, bspline",
        choices=REGISTRATION_CHOICES,
    )
    backend: str = _option(
        "auto",
        "--backend",
        "registration backend: auto (simpleitk for rigid and affine, elastix for bspline)",
        choices=BACKEND_CHOICES,
    )
    init: str = _option(
        "auto",
        "--init",
        "registration's starting alignment: auto (the best of the 24 axis-aligned orientations about the centres of "
        "mass, for images that overlap), moments (centres of mass), geometry (image centres) or none",
        choices=INIT_CHOICES,
    )
    initial_transform: str | None = _option(
        None,
        "--initial-transform",
        "start registration from this ITK transform file (reference -> moving points) instead of --init",
        kind="path",
    )
    strict: bool = _option(
        False,
        "--strict",
        "a doubtful registration (see its confidence) is an error: exit 2, nothing written",
        kind="switch",
    )
    device: str = _option(
        "auto", "--device", "compute device: auto (CUDA when usable), cpu, cuda or cuda:N", choices=DEVICE_CHOICES
    )
    precision: str = _option(
        "auto",
        "--precision",
        "auto (fp16 on CUDA, fp32 on the CPU), fp32, bf16 (torch or openvino; fast only on some CPUs) or fp16 (CUDA)",
        choices=PRECISION_CHOICES,
    )
    runtime: str = _option(
        "auto",
        "--runtime",
        "what runs the network: auto (torch on CUDA; on the CPU openvino, else onnxruntime, else torch), "
        "torch, openvino or onnxruntime (CPU only, no torch needed)",
        choices=RUNTIME_CHOICES,
    )
    axis: str = _option("axial", "--axis", "slicing plane for 3D fusion", choices=AXIS_CHOICES)
    batch_size: int | None = _option(
        None, "--batch-size", "slices per forward pass (default 1 on the CPU, 32 on CUDA)", kind="count"
    )
    threads: int | None = _option(None, "--threads", "CPU threads of the runtime (default: one per core)", kind="count")
    compile: bool = _option(
        False, "--compile", "torch.compile the model (torch only; pays off only over many volumes)", kind="switch"
    )
    reference_window: str = _option(
        "auto",
        "--reference-window",
        f"display window of the reference: auto ({DEFAULT_CT_WINDOW} for an image recognised as CT, else "
        "percentiles), none (percentiles), a name (" + ", ".join(CT_WINDOWS) + ") or LEVEL,WIDTH in HU",
        kind="window",
    )
    moving_window: str = _option(
        "auto", "--moving-window", "display window of the moving image (as --reference-window)", kind="window"
    )
    functional: str | None = _option(
        None,
        "--functional",
        "MOVING is a functional volume (PET, SPECT): fuse it in colour through this colour map (the flag alone: "
        f"{DEFAULT_FUNCTIONAL_COLOUR_MAP}); the output is RGB",
        choices=FUNCTIONAL_COLOUR_MAPS,
        kind="colour-map",
    )
    functional_range: str = _option(
        "auto",
        "--functional-range",
        "display range of the functional volume, in its units (e.g. SUV 0,10): LOW,HIGH, or auto (0 to the "
        f"{FUNCTIONAL_RANGE_PERCENTILE:g}th percentile of its voxels above 0)",
        kind="range",
    )

    # Option name -> its allowed values, for combo boxes (options with free-form values are absent).
    CHOICES: ClassVar[dict[str, tuple[str, ...]]]

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            object.__setattr__(self, spec.name, _checked(spec, value))
        if self.initial_transform is not None and self.registration in ("none", "resample"):
            raise OptionsError(
                "--initial-transform starts a registration; it needs --registration auto, rigid, affine or bspline"
            )
        if self.functional is None and self.functional_range != "auto":
            raise OptionsError(
                "--functional-range sets the display range of a functional volume; it needs --functional"
            )

    # -- command line -----------------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, *, exclude: tuple[str, ...] = ()) -> None:
        """Add one flag per option (except ``exclude``) to ``parser``, defaults and choices in the help.

        Values arrive as text and are checked by :meth:`from_namespace`, so a wrong value gets the
        same :class:`OptionsError` from every entry point.
        """
        for spec in dataclasses.fields(cls):
            if spec.name in exclude:
                continue
            meta = spec.metadata
            help_text = meta["help"]
            if meta["choices"]:
                help_text += f" [{'|'.join(meta['choices'])}]"
            if meta["kind"] == "switch":
                parser.add_argument(meta["flag"], dest=spec.name, action="store_true", default=None, help=help_text)
                continue
            if meta["kind"] == "colour-map":
                parser.add_argument(
                    meta["flag"],
                    dest=spec.name,
                    nargs="?",
                    const=meta["choices"][0],
                    default=None,
                    metavar="COLOURMAP",
                    help=help_text,
                )
                continue
            if spec.default is not None:
                help_text += f" (default {spec.default})"
            parser.add_argument(meta["flag"], dest=spec.name, default=None, metavar=spec.name.upper(), help=help_text)

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> FusionOptions:
        """The options parsed by a parser that :meth:`add_arguments` set up; unset flags keep defaults."""
        given = {
            spec.name: getattr(namespace, spec.name)
            for spec in dataclasses.fields(cls)
            if getattr(namespace, spec.name, None) is not None
        }
        return cls(**given)

    def to_argv(self) -> list[str]:
        """The flags that reproduce these options (defaults omitted): ``from_argv(o.to_argv()) == o``."""
        argv: list[str] = []
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if value == spec.default:
                continue
            if spec.metadata["kind"] == "switch":
                argv.append(spec.metadata["flag"])
            else:
                argv += [spec.metadata["flag"], str(value)]
        return argv

    @classmethod
    def from_argv(cls, argv: list[str]) -> FusionOptions:
        """Options from flags as :meth:`to_argv` writes them; an unknown flag is an :class:`OptionsError`."""
        parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
        cls.add_arguments(parser)
        try:
            namespace, unknown = parser.parse_known_args(argv)
        except argparse.ArgumentError as error:
            raise OptionsError(f"fusion options {argv}: {error}") from None
        if unknown:
            raise OptionsError(f"unknown fusion option(s) {' '.join(unknown)}; see `medfusion fuse --help`")
        return cls.from_namespace(namespace)

    # -- records ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every option by name, JSON-ready (windows as text)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FusionOptions:
        """Options from :meth:`to_dict`'s form; unknown names are an :class:`OptionsError`."""
        unknown = set(values) - set(_FIELDS)
        if unknown:
            raise OptionsError(f"unknown fusion option(s) {', '.join(sorted(unknown))}; known: {', '.join(_FIELDS)}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    # -- values in the form the pipeline uses -----------------------------------------------

    @property
    def reference_window_value(self) -> str | tuple[float, float] | None:
        return parse_window(self.reference_window)

    @property
    def moving_window_value(self) -> str | tuple[float, float] | None:
        return parse_window(self.moving_window)

    @property
    def functional_range_value(self) -> tuple[float, float] | None:
        """``(low, high)`` in the functional volume's units, or ``None`` for ``auto``."""
        return parse_range(self.functional_range)


def parse_range(text: str | tuple[float, float] | None) -> tuple[float, float] | None:
    """A display range: ``"auto"``/``None`` -> ``None``; ``"0,10"`` or ``(0, 10)`` -> ``(0.0, 10.0)`` (LOW < HIGH)."""
    if text is None or text == "auto":
        return None
    values = tuple(text) if isinstance(text, (tuple, list)) else tuple(str(text).split(","))
    try:
        low, high = (float(value) for value in values)
    except (TypeError, ValueError):
        raise OptionsError(
            f"a display range is auto or LOW,HIGH in the image's units (e.g. 0,10), not {text!r}"
        ) from None
    if not high > low:
        raise OptionsError(f"a display range needs LOW < HIGH, got {low:g},{high:g}")
    return low, high


_FIELDS = {spec.name: spec for spec in dataclasses.fields(FusionOptions)}
FusionOptions.CHOICES = {name: spec.metadata["choices"] for name, spec in _FIELDS.items() if spec.metadata["choices"]}
_CUDA_INDEX = re.compile(r"cuda:\d+")


def _checked(spec: dataclasses.Field, value: Any) -> Any:
    """``value`` for option ``spec`` in canonical form, or an :class:`OptionsError` saying why not."""
    meta, flag = spec.metadata, spec.metadata["flag"]
    kind, choices = meta["kind"], meta["choices"]
    if kind == "switch":
        if not isinstance(value, bool):
            raise OptionsError(f"{flag} is on or off (True/False), not {value!r}")
        return value
    if kind == "count":
        if value is None:
            return None
        if isinstance(value, bool):
            raise OptionsError(f"{flag} takes a whole number of at least 1, not {value!r}")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise OptionsError(f"{flag} takes a whole number of at least 1, not {value!r}") from None
        if number != float(value) or number < 1:
            raise OptionsError(f"{flag} takes a whole number of at least 1, not {value!r}")
        return number
    if kind == "window":
        return _window_text(value)
    if kind == "colour-map":
        if value is None:
            return None
        if value not in choices:
            raise OptionsError(f"unknown colour map {value!r} for {flag}; choose one of {', '.join(choices)}")
        return value
    if kind == "range":
        parsed = parse_range(value)
        return "auto" if parsed is None else f"{parsed[0]:g},{parsed[1]:g}"
    if kind == "path":
        if value is None:
            return None
        text = str(value)
        if not text:
            raise OptionsError(f"{flag} needs a file path")
        return text
    if not isinstance(value, str):
        raise OptionsError(f"{flag} takes a name ({', '.join(choices or ())}), not {value!r}")
    if choices and value not in choices and not (flag == "--device" and _CUDA_INDEX.fullmatch(value)):
        raise OptionsError(f"unknown {flag[2:]} {value!r}; choose one of {', '.join(choices)}")
    return value
