"""The warm worker process: ``PythonSlicer -m MedFusionSlicer.server [--idle-timeout S] [--mailbox DIR]``.

Started by :class:`MedFusionSlicer.worker.WorkerProcess`; never imports Slicer, Qt or VTK. It
imports MedFusionLib and its runtime (OpenVINO on the CPU, torch on CUDA) once while the user is
still choosing inputs, then serves jobs
until its mailbox folder is removed, a ``shutdown`` arrives, or ``--idle-timeout`` seconds pass
without a job; when its standard input ends (Slicer quit or crashed) it removes its mailbox and
the running job's folder and ends at once, also in the middle of a job.

Protocol: JSON objects, one per line out, one per line or per file in.

In: one file per request in the ``--mailbox`` folder (``NNNNNN.json``, written to a temporary
name and renamed, so the worker never reads half a file), or one line per request on standard
input. The panel uses the mailbox: ``PythonSlicer`` is CTK's app launcher, which starts
``python-real`` as a child, and a launcher that does not forward its standard input would leave
the worker waiting for lines that never come; a folder needs nothing from the launcher::

    {"op": "fuse", "id": 3, "folder": "/tmp/MedFusion-x", "options": {...FusionOptions.to_dict()...},
     "source_map": false, "keep_files": false}
    {"op": "shutdown"}

Out (standard output; plain text lines are messages for the log, e.g. ``medfusion: ...`` notes
of the library such as a GPU out-of-memory fallback)::

    {"event": "started", "pid": 1234}
    {"event": "ready", "models": [...], "device": "GPU: ...", "seconds": 4.1}
    {"stage": "register", "done": 0, "total": 100}            (progress, as medfusion fuse --progress json)
    {"event": "registration", "id": 3, "metric_before": ..., "metric_after": ..., "confidence": {...}}
    {"event": "fused", "id": 3, "device": "cpu", "runtime": "openvino", "seconds": 7.2, ...}
    {"event": "finished", "id": 3, "state": "succeeded"}      (or "failed" with "error")
    {"event": "idle-exit", "seconds": 900}

A job reads ``reference.nrrd`` and ``moving.nrrd`` from its folder and writes ``fused.nrrd``
(RGB uint8 with the ``functional`` option), ``registered.nrrd`` and ``transform.h5`` when it
registers, and ``source_map.nrrd`` when ``source_map`` is true, uncompressed: both processes are
on one machine, so gzip would only cost time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path

from MedFusionSlicer.worker import (
    FUSED_FILE,
    MOVING_FILE,
    REFERENCE_FILE,
    REGISTERED_FILE,
    SOURCE_MAP_FILE,
    TRANSFORM_FILE,
)

# The documented fields of MedFusionLib.registration.confidence.Confidence, as the panel gets them.
CONFIDENCE_FIELDS = ("doubtful", "summary", "mutual_information", "overlap", "margin", "pose", "runner_up_pose")

_output_lock = threading.Lock()


def emit(record: dict) -> None:
    """One JSON line on standard output, flushed at once (the panel is waiting for it)."""
    with _output_lock:
        sys.stdout.write(json.dumps(record, default=str) + "\n")
        sys.stdout.flush()


def describe_device() -> str:
    """What runs the networks in this worker: the GPU torch uses, or the CPU runtime and why not a
    GPU. Imports torch only where it is installed and an NVIDIA driver is present."""
    from MedFusionLib.core.devices import nvidia_driver_present, resolve_device_name
    from MedFusionLib.runtimes import choose_runtime, installed_runtimes

    runtime = choose_runtime("auto", resolve_device_name("auto"))
    if runtime != "torch":
        versions = installed_runtimes()
        reason = ("no NVIDIA driver found" if not nvidia_driver_present()
                  else "torch, which CUDA needs, is not installed" if not versions["torch"]
                  else "torch sees no usable GPU")
        return f"CPU: {runtime} {versions[runtime]} ({reason})"
    import torch

    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        return f"GPU: {properties.name} ({properties.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
    if torch.version.cuda is None:
        return f"CPU only: torch {torch.__version__} is a CPU build (a CUDA build of torch uses an NVIDIA GPU)"
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "-1":
        return f"CPU only: the GPU is hidden from this run (device 'cpu'); torch {torch.__version__}"
    return f"CPU only: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU; check the NVIDIA driver"


def model_choices() -> list[dict]:
    """Every model choice, in order: ``auto`` (the network chosen by the device), then every model
    (learned first); each with name, description, default, usable, note. ``auto``'s note names the
    network it picks on this process's device (a worker started for CPU runs sees no GPU); a model
    is usable when the runtime ``auto`` picks here has its files intact. No torch is imported."""
    from MedFusionLib.core.choices import AUTO_MODEL, DEFAULT_MODEL_BY_DEVICE, MODEL_CHOICES
    from MedFusionLib.core.devices import resolve_device_name
    from MedFusionLib.core.model_files import model_description
    from MedFusionLib.fusion.pipeline import DEFAULT_MODEL, model_usable, resolve_model
    from MedFusionLib.runtimes import choose_runtime

    device = resolve_device_name("auto")
    runtime = choose_runtime("auto", device)
    by_device = ", ".join(f"{model} on {'the CPU' if kind == 'cpu' else kind.upper()}"
                          for kind, model in DEFAULT_MODEL_BY_DEVICE.items())  # fmt: skip
    choices = [
        {
            "name": AUTO_MODEL,
            "description": f"the network chosen by the device the run uses: {by_device}",
            "default": AUTO_MODEL == DEFAULT_MODEL,
            "usable": True,
            "note": f"{resolve_model(AUTO_MODEL, device, warn=False, runtime=runtime)} here",
        }
    ]
    for name in MODEL_CHOICES:
        if name == AUTO_MODEL:
            continue
        usable = model_usable(name, runtime)
        choices.append(
            {
                "name": name,
                "description": model_description(name),
                "default": name == DEFAULT_MODEL,
                "usable": usable,
                "note": "" if usable else f"its files for {runtime} are missing or damaged; reinstall MedFusion",
            }
        )
    return choices


def registration_report(registration) -> dict:
    """What the panel and the console show about a registration (a ``RegistrationResult``): preset,
    backend, metric before and after, seconds and its ``confidence`` (the documented fields of
    :class:`MedFusionLib.registration.confidence.Confidence`, plus ``reasons`` as a list), JSON-ready."""
    report = {
        "preset": registration.preset,
        "backend": registration.backend,
        "metric_before": float(registration.metric_before),
        "metric_after": float(registration.metric_after),
        "seconds": float(registration.seconds),
    }
    confidence = registration.confidence
    if confidence is not None:
        report["confidence"] = {name: getattr(confidence, name) for name in CONFIDENCE_FIELDS}
        report["confidence"]["reasons"] = list(confidence.reasons)
    return report


def fuse(reference, moving, options: dict, progress, cancel=None, source_map: bool = False):
    """:func:`MedFusionLib.fusion.pipeline.fuse_volumes` with ``FusionOptions.to_dict()``'s options;
    ``source_map``: also compute ``FusionResult.source_map``."""
    from MedFusionLib.fusion.options import FusionOptions
    from MedFusionLib.fusion.pipeline import fuse_volumes

    return fuse_volumes(
        reference, moving, FusionOptions.from_dict(options), progress=progress, cancel=cancel, source_map=source_map
    )


def run_fuse(job: dict) -> None:
    """One ``fuse`` job: read the two NRRD files, fuse, write the results next to them."""
    import SimpleITK as sitk

    from MedFusionLib.io import read_image, write_image

    job_id, folder = job.get("id"), Path(job["folder"])
    reference = read_image(folder / REFERENCE_FILE)
    moving = read_image(folder / MOVING_FILE)

    def progress(stage: str, done: int, total: int) -> None:
        emit({"stage": stage, "done": done, "total": total})

    result = fuse(reference, moving, job.get("options") or {}, progress, source_map=bool(job.get("source_map")))
    write_image(result.fused, folder / FUSED_FILE, overwrite=True, compress=False)
    if result.source_map is not None:
        write_image(result.source_map, folder / SOURCE_MAP_FILE, overwrite=True, compress=False)
    if result.registration is not None:
        write_image(result.registered_moving, folder / REGISTERED_FILE, overwrite=True, compress=False)
        sitk.WriteTransform(result.registration.transform, str(folder / TRANSFORM_FILE))
        emit({"event": "registration", "id": job_id, **registration_report(result.registration)})
    emit(
        {
            "event": "fused",
            "id": job_id,
            "model": result.model,
            "device": result.device,
            "runtime": result.runtime,
            "precision": result.precision,
            "seconds": round(result.seconds, 3),
            "stage_seconds": {k: round(v, 3) for k, v in result.stage_seconds.items()},
        }
    )


def _read_requests(stream, requests: queue.Queue, leftovers: _Leftovers) -> None:
    """Requests from standard input, one per line. Its end means Slicer is gone (quit or crashed):
    see :meth:`_Leftovers.slicer_gone`."""
    for line in stream:
        if line.strip():
            requests.put(line)
    leftovers.slicer_gone(requests)


class _Leftovers:
    """What the worker must remove when Slicer vanishes: its mailbox, and the folder of the job it
    is running (unless that job asked to keep its files)."""

    def __init__(self, mailbox: Path | None) -> None:
        self.mailbox = mailbox
        self.running = False
        self.job_folder: Path | None = None

    def slicer_gone(self, requests: queue.Queue) -> None:
        """In the middle of a job: remove its files and end now (its result has no reader any
        more). Idle: end once the requests already read are answered (a script may write its
        requests and close its end at once)."""
        if self.running:
            self.abandon()
        requests.put(None)

    def remove_mailbox(self) -> None:
        if self.mailbox is not None:
            shutil.rmtree(self.mailbox, ignore_errors=True)

    def abandon(self) -> None:
        import multiprocessing

        if self.job_folder is not None:
            shutil.rmtree(self.job_folder, ignore_errors=True)
        self.remove_mailbox()
        for child in multiprocessing.active_children():  # a library's helper (OpenVINO's telemetry)
            child.kill()  # holds this process's output pipe open: Slicer's reader would never see its end
        sys.stdout.flush()
        os._exit(0)  # from the reader thread: the serving thread is inside the fusion


MAILBOX_POLL_S = 0.05  # how often the mailbox is looked at: far below a job's own time
# How often an unreadable request file is tried again before its job is failed: 40 x 50 ms = 2 s,
# longer than an antivirus scanner holds a new file on Windows.
MAILBOX_ATTEMPTS = 40


def _take_request(path: Path) -> str:
    """The text of one request file, which is removed (raises ``OSError`` or ``UnicodeDecodeError``)."""
    text = path.read_text(encoding="utf-8")
    path.unlink()
    return text


def _watch_mailbox(folder: Path, requests: queue.Queue) -> None:
    """Requests from ``folder``, oldest name first; its removal means Slicer has let the worker go.

    A file that cannot be read or removed (briefly locked by a scanner, not UTF-8) is tried again
    first, in order; after :data:`MAILBOX_ATTEMPTS` tries it is dropped and the waiting job is
    failed with the reason (a ``finished`` event without an id), so nothing waits until Cancel.
    """
    attempts: dict[Path, int] = {}
    while True:
        try:
            names = sorted(path for path in folder.iterdir() if path.suffix == ".json")
        except FileNotFoundError:
            requests.put(None)
            return
        except OSError:  # the folder itself briefly unreadable: look again
            names = []
        for path in names:
            try:
                text = _take_request(path)
            except FileNotFoundError:
                continue
            except (OSError, UnicodeDecodeError) as error:
                attempts[path] = attempts.get(path, 0) + 1
                if attempts[path] < MAILBOX_ATTEMPTS:
                    break  # this one again at the next look, before any later request
                del attempts[path]
                with contextlib.suppress(OSError):
                    path.unlink()
                emit({"event": "finished", "state": "failed",
                      "error": f"the worker could not read the request {path.name}: {error}"})  # fmt: skip
                continue
            attempts.pop(path, None)
            requests.put(text)
        time.sleep(MAILBOX_POLL_S)


def serve(idle_timeout: float, stdin=None, mailbox: Path | None = None) -> int:
    """Answer jobs until ``mailbox`` is removed, ``shutdown``, or ``idle_timeout`` s without a job;
    the end of standard input ends the process from its reader thread (:func:`_read_requests`)."""
    emit({"event": "started", "pid": os.getpid()})
    requests: queue.Queue = queue.Queue()
    leftovers = _Leftovers(mailbox)
    threading.Thread(target=_read_requests, args=(stdin or sys.stdin, requests, leftovers), daemon=True).start()
    if mailbox is not None:
        threading.Thread(target=_watch_mailbox, args=(mailbox, requests), daemon=True).start()
    # The library's notes (e.g. a GPU out-of-memory fallback) as the medfusion command prints them.
    logging.basicConfig(format="medfusion: %(message)s", level=logging.INFO, stream=sys.stdout)

    started = time.perf_counter()
    try:
        ready = {"models": model_choices(), "device": describe_device()}
    except Exception as error:  # noqa: BLE001  (a broken runtime: say so; every job will fail with the same reason)
        ready = {"models": [], "device": f"the runtime cannot be used: {type(error).__name__}: {error}",
                 "error": str(error)}
    from MedFusionLib import __version__

    emit(
        {
            "event": "ready",
            **ready,
            "medfusionlib": __version__,
            "python": sys.version.split()[0],
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    # Nothing else is preloaded: rigid and affine register with SimpleITK (backend auto), which
    # costs nothing to load; itk-elastix (seconds to load) is needed only by a B-spline job, which
    # loads it once for the worker's life. A preload here would delay a job sent meanwhile.

    while True:
        try:
            line = requests.get(timeout=idle_timeout)
        except queue.Empty:
            emit({"event": "idle-exit", "seconds": idle_timeout})
            return 0
        if line is None:  # standard input ended, or Slicer removed the mailbox
            leftovers.remove_mailbox()
            return 0
        try:
            request = json.loads(line)
        except json.JSONDecodeError:
            print(f"medfusion: ignored a request that is not JSON: {line[:200]!r}", flush=True)
            continue
        op = request.get("op")
        if op == "shutdown":
            return 0
        if op != "fuse":
            emit({"event": "finished", "id": request.get("id"), "state": "failed", "error": f"unknown request {op!r}"})
            continue
        kept = request.get("keep_files") or not request.get("folder")
        leftovers.job_folder = None if kept else Path(request["folder"])
        leftovers.running = True
        outcome = _run_job(request)
        leftovers.running, leftovers.job_folder = False, None
        emit({"event": "finished", "id": request.get("id"), **outcome})


def _run_job(request: dict) -> dict:
    from MedFusionLib.core.errors import MedFusionError

    try:
        run_fuse(request)
    except MedFusionError as error:
        return {"state": "failed", "error": str(error)}
    except MemoryError:
        return {"state": "failed", "error": "out of memory in the worker; close other programs or fuse smaller volumes"}
    except Exception as error:  # noqa: BLE001  (a bug: the traceback goes to the log, the summary to the panel)
        traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()
        return {
            "state": "failed",
            "error": f"internal error ({type(error).__name__}: {error}); details in the Python console",
        }
    return {"state": "succeeded"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m MedFusionSlicer.server", description=__doc__.splitlines()[0])
    parser.add_argument("--idle-timeout", type=float, default=900.0, help="end after this many seconds without a job")
    parser.add_argument("--mailbox", type=Path, default=None, help="folder to take request files from")
    args = parser.parse_args(argv)
    # Messages of the library and of tracebacks must not interleave with protocol lines mid-line.
    sys.stderr = sys.stdout
    return serve(args.idle_timeout, mailbox=args.mailbox)


if __name__ == "__main__":
    sys.exit(main())
