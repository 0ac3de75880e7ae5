"""Where the shared development data lives (``../shared/data`` beside the checkout; not part of the project).

Tests, benchmarks and bench scripts find the Harvard pairs and BraTS volumes here, and skip or fall
back to phantoms when this returns ``None``.
"""

from __future__ import annotations

from pathlib import Path


def shared_data_dir() -> Path | None:
    """The shared data folder (holding ``harvard/``, ``brats/``, ``ct/``), or ``None`` when absent.

    Looked for beside the repository (a checkout or an editable install), then beside the
    working directory.
    """
    candidates = (Path(__file__).resolve().parents[3] / "shared" / "data", Path.cwd().parent / "shared" / "data")
    return next((candidate for candidate in candidates if candidate.is_dir()), None)
