"""Atomic file transactions and file hashing: how every output of MedFusion reaches the disk.

Every write goes through :func:`atomic_output` (or :func:`atomic_output_directory`): the data
are written under a hidden temporary name next to the target and renamed onto it only when
complete, so a failed, interrupted or cancelled run leaves nothing half-written. A process
killed with SIGKILL cannot clean up; its leftovers are hidden entries named
``.<target name>.tmp-<hex>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from MedFusionLib.core.errors import InputError, OutputExistsError

PathLike = str | os.PathLike


def sha256_of(path: PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (weights cards, batch completion records)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()



@contextlib.contextmanager
def atomic_output(path: PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Write a file under a temporary name and move it onto ``path`` only on success.

    Yields a path with the *same file name* as ``path`` inside a hidden staging directory
    ``.<name>.tmp-<hex>`` next to it (same file system, so the final rename is atomic). The
    name keeps its extension, so writers pick the format from it, and writers that add
    companion files (``.mhd`` + ``.zraw``, ``.nhdr`` + ``.raw.gz``) find their references
    right after the move. On success every file in the staging directory is moved next to
    ``path`` (companions first, ``path`` last); on any exception, KeyboardInterrupt
    included, the staging directory is removed and ``path`` is left as it was.

    Missing parent directories are created.

    Raises:
        OutputExistsError: ``path`` (or a companion file) exists and ``overwrite`` is False.
        InputError: ``path`` is a directory, or its directory cannot be created or written.
    """
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{target} is a directory; give a file name, e.g. {target / 'fused.nii.gz'}.")
    _refuse_existing(target, overwrite)
    staging = _make_staging_directory(target)
    try:
        yield staging / target.name
        _publish_files(staging, target, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_directory(path: PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Fill a directory under a temporary name and rename it onto ``path`` only on success.

    Yields an empty hidden staging directory ``.<name>.tmp-<hex>`` next to ``path``. On success
    it is renamed to ``path``; an existing ``path`` (allowed with ``overwrite``, or when it is
    an empty directory) is moved aside first and deleted only after the rename worked. On
    any exception the staging directory is removed and ``path`` is left as it was.

    Raises:
        OutputExistsError: ``path`` exists (and is not an empty directory) and ``overwrite``
            is False.
        InputError: the parent directory cannot be created or written.
    """
    target = Path(path)
    _refuse_existing(target, overwrite)
    staging = _make_staging_directory(target)
    try:
        yield staging
        _publish_directory(staging, target, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _occupied(path: Path) -> bool:
    """True when writing ``path`` would replace something; an empty directory counts as free."""
    if path.is_dir() and not path.is_symlink():
        return any(path.iterdir())
    return os.path.lexists(path)


def _refuse_existing(target: Path, overwrite: bool) -> None:
    refuse_existing_outputs([target], overwrite=overwrite)


def refuse_existing_outputs(paths: Iterable[PathLike | None], *, overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` for the first of ``paths`` (``None`` entries skipped) that
    exists, unless ``overwrite``: the check every command runs before its slow part."""
    for target in paths:
        if target is not None and not overwrite and _occupied(Path(target)):
            raise OutputExistsError(
                f"{target} already exists. Pass --overwrite on the command line or overwrite=True "
                "in Python to replace it, or choose another output path."
            )


def _make_staging_directory(target: Path) -> Path:
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(
            f"Cannot create the output directory {parent}: {error.strerror or error}. "
            "Choose another output location."
        ) from error
    staging = parent / f".{target.name}.tmp-{secrets.token_hex(4)}"
    try:
        staging.mkdir()
    except OSError as error:
        raise InputError(
            f"Cannot write to the output directory {parent}: {error.strerror or error}. "
            "Choose a writable output location."
        ) from error
    return staging


def _publish_files(staging: Path, target: Path, overwrite: bool) -> None:
    main = staging / target.name
    if not main.exists():
        raise RuntimeError(f"nothing was written to {main} inside atomic_output; nothing to publish")
    companions = [p for p in staging.iterdir() if p.name != target.name]
    if not overwrite:
        destinations = [target.parent / p.name for p in [main, *companions]]
        clashes = [d for d in destinations if os.path.lexists(d)]
        if clashes:
            raise OutputExistsError(
                f"{', '.join(map(str, clashes))} already exist(s). Pass --overwrite on the command "
                "line or overwrite=True in Python to replace, or choose another output path."
            )
    created: list[Path] = []
    try:
        for companion in companions:
            destination = target.parent / companion.name
            existed = os.path.lexists(destination)
            os.replace(companion, destination)
            if not existed:
                created.append(destination)
        os.replace(main, target)
    except BaseException:
        for destination in created:  # a header without its data (or vice versa) is half-written
            destination.unlink(missing_ok=True)
        raise


def _publish_directory(staging: Path, target: Path, overwrite: bool) -> None:
    _refuse_existing(target, overwrite)  # again: something may have appeared while we wrote
    if not os.path.lexists(target):
        os.replace(staging, target)
        return
    aside = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
    os.replace(target, aside)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(aside, target)
        raise
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside)
    else:
        aside.unlink()
