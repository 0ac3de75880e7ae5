"""Timing helpers shared by ``medfusion benchmark`` and the scripts in ``bench/``."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_seconds(
    action: Callable[[], object], repeats: int, *, warmups: int = 0, before: Callable[[], object] | None = None
) -> float:
    """Shortest wall time in seconds of ``action()`` over ``repeats`` timed runs.

    ``warmups`` untimed runs come first (caches, lazily built kernels); ``before()``, when given,
    runs untimed before every timed run (e.g. deleting the previous run's output). The fastest run
    is the one least disturbed by other work on a shared machine.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmups):
        action()
    fastest = float("inf")
    for _ in range(repeats):
        if before is not None:
            before()
        started = time.perf_counter()
        action()
        fastest = min(fastest, time.perf_counter() - started)
    return fastest
