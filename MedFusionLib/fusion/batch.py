"""Fusing a cohort: a manifest of cases, sharded, resumable, one failure never stops the rest.

A manifest is a CSV with the columns ``reference`` and ``moving`` (paths, relative ones taken from
the manifest's folder) and optionally ``output`` (a file name or path inside the output folder).
Each case is fused with :func:`~MedFusionLib.fusion.pipeline.fuse_volumes` and written atomically; then
a small *completion record* ``.<output name>.done.json`` is written beside it, holding the
output's sha256, the options used and the model that ran (the concrete network model ``auto``
resolved to on that machine's device; the report CSV has it too). ``resume`` trusts an output only
when that record exists, the options match (with ``auto``, also the model it picks here), and the
file still hashes to the recorded value: a file left by a killed run, or fused with other options,
is redone.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from MedFusionLib.core.choices import AUTO_MODEL
from MedFusionLib.core.errors import InputError, MedFusionError
from MedFusionLib.core.files import atomic_output, sha256_of
from MedFusionLib.fusion.options import FusionOptions
from MedFusionLib.io import write_image

REPORT_COLUMNS = ("case", "reference", "moving", "output", "status", "model", "seconds", "error")


@dataclass(frozen=True)
class BatchCase:
    """One row of the manifest; ``index`` is its 1-based row number (the header not counted)."""

    index: int
    reference: Path
    moving: Path
    output: Path


@dataclass
class CaseOutcome:
    case: BatchCase
    status: str  # "done", "skipped" (complete from an earlier run) or "failed"
    seconds: float = 0.0
    error: str = ""
    model: str = ""  # the network that fused it ("auto" resolved), when known


@dataclass
class BatchSummary:
    outcomes: list[CaseOutcome] = field(default_factory=list)
    report: Path | None = None

    def count(self, status: str) -> int:
        return sum(outcome.status == status for outcome in self.outcomes)


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``1 <= K <= N`` (K is 1-based, like a Slurm array ``--array=1-N``)."""
    try:
        shard, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise InputError(f"--shard takes K/N with whole numbers, e.g. 2/8; got {text!r}") from None
    if not 1 <= shard <= count:
        raise InputError(f"--shard {text}: K must be between 1 and N")
    return shard, count


def read_manifest(manifest: Path, output_dir: Path) -> list[BatchCase]:
    """All cases of ``manifest``; checks columns, empty cells and duplicate outputs up front."""
    if not manifest.is_file():
        raise InputError(f"manifest {manifest} not found; give a CSV with columns reference,moving[,output]")
    with open(manifest, newline="") as stream:
        reader = csv.DictReader(stream)
        columns = set(reader.fieldnames or ())
        if not {"reference", "moving"} <= columns:
            raise InputError(
                f"manifest {manifest} needs the columns 'reference' and 'moving' (optional 'output'); "
                f"its header has: {', '.join(sorted(columns)) or 'nothing'}"
            )
        rows = list(reader)
    base = manifest.resolve().parent
    cases, outputs = [], {}
    for index, row in enumerate(rows, start=1):
        reference, moving = (row.get("reference") or "").strip(), (row.get("moving") or "").strip()
        if not reference or not moving:
            raise InputError(f"manifest {manifest}, case {index}: 'reference' and 'moving' must both be filled in")
        name = (row.get("output") or "").strip() or f"{index:05d}_{_stem(reference)}_fused.nii.gz"
        output = output_dir / name
        if output in outputs:
            raise InputError(f"manifest {manifest}: cases {outputs[output]} and {index} both write {output}")
        outputs[output] = index
        cases.append(BatchCase(index, base / reference, base / moving, output))
    return cases


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def select_shard(cases: list[BatchCase], shard: int, count: int) -> list[BatchCase]:
    """Cases ``shard, shard + N, shard + 2N, ...`` (by row number): the same on every machine."""
    return [case for case in cases if (case.index - 1) % count == shard - 1]


def completion_record_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.done.json")


def read_completion_record(output: Path) -> dict:
    """The completion record of ``output`` (``{}`` when there is none or it is unreadable)."""
    try:
        record = json.loads(completion_record_path(output).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def is_complete(case: BatchCase, options: FusionOptions, model: str | None = None) -> bool:
    """Whether an earlier run finished ``case`` with these ``options`` and its output is intact.

    ``model``: the concrete model these options would run now (model ``auto`` depends on the
    device); a record naming another model is not complete (e.g. fused on a GPU machine by
    ``emfusion-full``, resumed on a CPU one that picks ``emfusion``). ``None``: not checked."""
    if not case.output.is_file():
        return False
    record = read_completion_record(case.output)
    if not record or record.get("options") != options.to_dict():
        return False
    if model is not None and record.get("model") not in (None, model):
        return False
    return record.get("sha256") == sha256_of(case.output)


def expected_model(options: FusionOptions) -> str | None:
    """The concrete model a case fused with ``options`` would use on this machine (``auto``
    resolved by the device), or ``None`` when it cannot be known now (e.g. CUDA asked for but not
    usable: the cases then fail with that error)."""
    from MedFusionLib.fusion.pipeline import resolve_model  # torch: only when resuming an "auto" run

    try:
        return resolve_model(options.model, options.device, warn=False)
    except MedFusionError:
        return None


# Fuses one case and writes ``case.output`` (replacing it): the library's own below, or another
# front end's (the headless Slicer script reads and fuses through MRML nodes). Returns the name of
# the model that ran (FusionResult.model: "auto" resolved), or None if it does not know it.
CaseWriter = Callable[[BatchCase, FusionOptions], "str | None"]


def write_fused_case(case: BatchCase, options: FusionOptions) -> str:
    """The library's case writer: :func:`fuse_volumes` and an atomic write of the fused image;
    returns the model that ran."""
    from MedFusionLib.fusion.pipeline import fuse_volumes  # imported in the worker process

    result = fuse_volumes(case.reference, case.moving, options)
    write_image(result.fused, case.output, overwrite=True)
    return result.model


def fuse_case(case: BatchCase, options: FusionOptions, write_case: CaseWriter = write_fused_case) -> CaseOutcome:
    """Fuse one case with ``write_case``, then write its completion record; errors become a failed outcome."""
    started = time.perf_counter()
    try:
        # An earlier record must not vouch for a file this run is replacing.
        completion_record_path(case.output).unlink(missing_ok=True)
        model = write_case(case, options)
        record = {
            "sha256": sha256_of(case.output),
            "options": options.to_dict(),
            "reference": str(case.reference),
            "moving": str(case.moving),
        }
        if model:
            record["model"] = model
        with atomic_output(completion_record_path(case.output), overwrite=True) as temporary:
            temporary.write_text(json.dumps(record, indent=1))
        return CaseOutcome(case, "done", time.perf_counter() - started, model=model or "")
    except MedFusionError as error:
        return CaseOutcome(case, "failed", time.perf_counter() - started, str(error))
    except Exception as error:  # a bug or a library failure on one case must not stop the cohort
        detail = traceback.format_exception_only(type(error), error)[-1].strip()
        return CaseOutcome(case, "failed", time.perf_counter() - started, f"unexpected error: {detail}")


def _init_worker(threads: int) -> None:
    """A worker process's share of the cores, for whichever runtime it will use, without importing one:
    torch reads OMP_NUM_THREADS when it starts, the CPU runtimes take the default from
    :func:`MedFusionLib.runtimes.set_default_threads`."""
    from MedFusionLib.runtimes import set_default_threads

    os.environ["OMP_NUM_THREADS"] = str(threads)
    set_default_threads(threads)


def run_batch(
    manifest: Path,
    output_dir: Path,
    options: FusionOptions,
    *,
    shard: tuple[int, int] = (1, 1),
    resume: bool = False,
    workers: int = 1,
    on_outcome=None,
    write_case: CaseWriter = write_fused_case,
) -> BatchSummary:
    """Fuse every case of ``manifest`` in ``shard`` into ``output_dir``; write a report CSV.

    ``options``: how every case is registered and fused; stored in each completion record. The output
    folder is the batch's own: without ``resume`` every selected case is fused again and its
    output replaced. ``shard=(K, N)`` keeps every N-th case starting at K (see
    :func:`select_shard`). ``workers > 1`` fuses cases in parallel processes, splitting the CPU
    threads between them (``write_case`` must then be a module-level function, to reach the
    processes). ``write_case`` fuses and writes one case: the library's :func:`write_fused_case`
    unless a front end brings its own. ``on_outcome(outcome)`` is called as each case ends. The report CSV
    (one row per selected case: done, skipped or failed with its error) is returned in the
    summary.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(output_dir, os.W_OK):
        raise InputError(f"output folder {output_dir} is not writable; choose another --out")
    cases = select_shard(read_manifest(manifest, output_dir), *shard)
    summary = BatchSummary()
    pending = []
    model = expected_model(options) if resume and options.model == AUTO_MODEL else None
    for case in cases:
        if resume and is_complete(case, options, model):
            recorded = read_completion_record(case.output).get("model", "")
            summary.outcomes.append(CaseOutcome(case, "skipped", model=str(recorded)))
            if on_outcome:
                on_outcome(summary.outcomes[-1])
        else:
            pending.append(case)
    if workers <= 1:
        for case in pending:
            summary.outcomes.append(fuse_case(case, options, write_case))
            if on_outcome:
                on_outcome(summary.outcomes[-1])
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        # "spawn", not fork: forking a process whose torch/OpenMP thread pools are running can hang.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
            for outcome in pool.map(fuse_case, pending, [options] * len(pending), [write_case] * len(pending)):
                summary.outcomes.append(outcome)
                if on_outcome:
                    on_outcome(outcome)
    summary.outcomes.sort(key=lambda outcome: outcome.case.index)
    suffix = "" if shard == (1, 1) else f"_shard{shard[0]}of{shard[1]}"
    summary.report = output_dir / f"batch_report{suffix}.csv"
    with atomic_output(summary.report, overwrite=True) as temporary:
        with open(temporary, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(REPORT_COLUMNS)
            for outcome in summary.outcomes:
                case = outcome.case
                writer.writerow(
                    [
                        case.index,
                        case.reference,
                        case.moving,
                        case.output,
                        outcome.status,
                        outcome.model,
                        f"{outcome.seconds:.2f}",
                        outcome.error,
                    ]
                )
    return summary
