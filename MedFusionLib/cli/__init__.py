"""The ``medfusion`` command: one module per subcommand, each with ``add_parser`` and ``run``.

A subcommand module defines::

    def add_parser(subparsers) -> argparse.ArgumentParser   # registers its name and options
    def run(args: argparse.Namespace) -> int                # does the work, returns the exit code

Errors derived from :class:`MedFusionLib.core.errors.MedFusionError` are printed as one line
(``medfusion: error: ...``) with exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from MedFusionLib.core.errors import FusionCancelled, MedFusionError

# Subcommand -> its one-line summary; the order is the order of `medfusion --help`.
COMMANDS = {
    "fuse": "fuse a moving image into a reference image",
    "register": "register a moving image to a fixed (reference) image",
    "demo": "register and fuse a built-in CT/MR head phantom",
    "batch": "fuse many cases listed in a CSV manifest",
    "models": "list the fusion models",
    "doctor": "report versions, CUDA, elastix and weights integrity",
    "evaluate": "score fusion methods with EN, SD, SF, MI, SCD, VIF, Qabf, SSIM, ...",
    "train": "train EMFusion, HAF or DenseFuse on paired images and export weights + model card",
    "benchmark": "time fusion (naive loop vs product path) and registration on this machine",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``medfusion`` parser with ``command``'s full options (every command's when ``None``;
    none when ``command`` names no subcommand, e.g. for ``medfusion --help``).

    The other subcommands are listed by name and summary only: importing a subcommand's module
    can import torch (seconds), which ``medfusion --help`` or ``medfusion register`` do not need.
    """
    from MedFusionLib import __version__

    parser = argparse.ArgumentParser(
        prog="medfusion",
        description="Register and fuse multimodal medical images (CT/MRI, PET/SPECT/MRI, T1/T2).",
    )
    parser.add_argument("--version", action="version", version=f"medfusion {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary in COMMANDS.items():
        if command is None or name == command:
            module = importlib.import_module(f".{name}", __name__)
            module.add_parser(subparsers).set_defaults(handler=module.run)
        else:
            subparsers.add_parser(name, help=summary)
    return parser


def _command_in(argv: list[str]) -> str:
    """The subcommand named in ``argv``: its first word that is not an option ("" if none)."""
    return next((word for word in argv if not word.startswith("-")), "")


# Packages that only an extra brings, and the extra: a command that needs one says what to install.
_EXTRAS = {"torch": "torch", "safetensors": "torch", "tensorboard": "train", "onnx": "train",
           "onnxruntime": "onnxruntime", "highdicom": "dicom", "itk": "elastix"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _run(argv)
    except ModuleNotFoundError as error:
        root = (error.name or "").split(".")[0]
        if root not in _EXTRAS:
            raise
        print(f"medfusion: error: this needs {root}, which is not installed: pip install 'medfusion[{_EXTRAS[root]}]'"
              + (" (a CUDA or CPU build of torch: README, 'CPU or CUDA')" if root == "torch" else ""),
              file=sys.stderr)
        return 2


def _run(argv: list[str]) -> int:
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    # The library reports fallbacks (e.g. GPU out of memory -> smaller batches) on its logger.
    logging.basicConfig(format="medfusion: %(message)s", level=logging.INFO)
    try:
        return int(args.handler(args) or 0)
    except FusionCancelled as error:
        print(f"medfusion: cancelled: {error}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("medfusion: interrupted; no output was written", file=sys.stderr)
        return 130
    except MedFusionError as error:
        print(f"medfusion: error: {error}", file=sys.stderr)
        return 2
