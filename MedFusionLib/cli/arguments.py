"""Argument types shared by the ``medfusion`` subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence


def comma_separated(what: str, choices: Sequence[str] | None = None) -> Callable[[str], list[str]]:
    """An argparse ``type`` for ``"a,b,c"``: the non-empty names in order.

    ``what`` names an item in errors (``"model"``); with ``choices``, a name outside them is an
    error that lists them, otherwise names are checked later by whatever uses them.
    """

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"give at least one {what}, separated by commas")
        unknown = [name for name in names if choices is not None and name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(choices)}")
        return names

    return parse
