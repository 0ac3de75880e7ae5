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

# Order is the order of `medfusion --help`.
COMMANDS = ("fuse", "register", "demo", "batch", "models", "doctor", "evaluate", "train", "benchmark")


def build_parser() -> argparse.ArgumentParser:
    from MedFusionLib import __version__

    parser = argparse.ArgumentParser(
        prog="medfusion",
        description="Register and fuse multimodal medical images (CT/MRI, PET/SPECT/MRI, T1/T2).",
    )
    parser.add_argument("--version", action="version", version=f"medfusion {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f".{name}", __name__)
        sub = module.add_parser(subparsers)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
