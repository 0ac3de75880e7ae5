"""One fusion run in a separate process, watched without blocking: what keeps Slicer responsive.

:class:`FusionJob` runs ``python -m MedFusionLib fuse reference.nrrd moving.nrrd -o fused.nrrd
--progress json`` in a folder that holds the two inputs. A reader thread collects the process's
output; the GUI calls :meth:`FusionJob.poll` from a timer on the main thread and gets the events
that arrived since the last call. A crash or an out-of-memory kill there cannot take Slicer down,
and :meth:`FusionJob.cancel` ends the whole process group: a real Cancel.

GPU out-of-memory is handled inside the worker by MedFusionLib (smaller batches, then the CPU);
the command reports it as a ``medfusion: ...`` line, which arrives here as a :class:`Message`.

Only the standard library is used here, so the module loads before torch is installed.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

# Share of the progress bar given to registration when the run registers: it is the slow part on
# the CPU, but its backends report no steps, so it moves in one jump.
REGISTRATION_SHARE = 0.3


@dataclass(frozen=True)
class Progress:
    """A progress report of the worker: ``stage`` ``register`` or ``fuse``, ``done``/``total`` steps."""

    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class Message:
    """A line for the user: the worker's own output, or a note from the job (e.g. a retry)."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The job ended: ``state`` is ``succeeded``, ``failed`` or ``cancelled``; ``error`` says why."""

    state: str
    error: str = ""


Event = Progress | Message | Finished


def parse_progress_line(line: str) -> Progress | None:
    """A :class:`Progress` for a line ``{"stage": ..., "done": n, "total": m}``, else ``None``."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or set(record) != {"stage", "done", "total"}:
        return None
    return Progress(str(record["stage"]), int(record["done"]), int(record["total"]))


def overall_fraction(progress: Progress, registering: bool) -> float:
    """Where a progress report puts the whole run, in [0, 1] (registration first, then fusion)."""
    share = REGISTRATION_SHARE if registering else 0.0
    fraction = progress.done / progress.total if progress.total else 1.0
    if progress.stage == "register":
        return share * fraction
    return share + (1.0 - share) * fraction


def error_summary(lines: list[str]) -> str:
    """The line that says why a worker failed: MedFusion's ``medfusion: error: ...`` line, else
    the last line of a traceback, else the last line of output."""
    for line in reversed(lines):
        if line.startswith("medfusion: error:"):
            return line[len("medfusion: error:") :].strip()
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return "the worker process ended without a message"


class FusionJob:
    """A ``medfusion fuse`` run on ``folder/reference.nrrd`` and ``folder/moving.nrrd``.

    Results (on success): ``fused_path``; ``registered_path`` and ``transform_path`` when it
    registers. ``state``: ``new``, ``running``, ``succeeded``, ``failed`` or ``cancelled``.
    ``command``, when given, replaces the ``medfusion fuse`` command line (for other front ends
    and tests).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        registration: str = "rigid",
        model: str | None = None,
        device: str = "auto",
        axis: str = "axial",
        backend: str = "auto",
        batch_size: int | None = None,
        python_executable: str | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.registration = registration
        self.model = model
        self.axis = axis
        self.backend = backend
        self.device = device
        self.batch_size = batch_size
        self.python_executable = python_executable or sys.executable
        self.command = command or self._fuse_command()
        self.state = "new"
        self.error = ""
        self.output_lines: list[str] = []
        self._process: subprocess.Popen | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._pending: list[Event] = []

    @property
    def fused_path(self) -> Path:
        return self.folder / "fused.nrrd"

    @property
    def registered_path(self) -> Path:
        return self.folder / "registered.nrrd"

    @property
    def transform_path(self) -> Path:
        return self.folder / "transform.h5"

    def _fuse_command(self) -> list[str]:
        command = [
            self.python_executable, "-m", "MedFusionLib", "fuse",
            str(self.folder / "reference.nrrd"), str(self.folder / "moving.nrrd"),
            "-o", str(self.fused_path),
            "--registration", self.registration, "--backend", self.backend,
            "--device", self.device, "--axis", self.axis,
            "--progress", "json", "--overwrite",
        ]  # fmt: skip
        if self.model:
            command += ["--model", self.model]
        if self.batch_size:
            command += ["--batch-size", str(self.batch_size)]
        if self.registration != "none":
            command += ["--save-registered", str(self.registered_path), "--save-transform", str(self.transform_path)]
        return command

    def _environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        # The worker must import the MedFusionLib that this Slicer module ships, wherever it lies.
        import MedFusionLib

        library_parent = str(Path(MedFusionLib.__file__).resolve().parent.parent)
        environment["PYTHONPATH"] = os.pathsep.join(p for p in (library_parent, environment.get("PYTHONPATH")) if p)
        environment["PYTHONUNBUFFERED"] = "1"
        if self.device == "cpu":
            environment["CUDA_VISIBLE_DEVICES"] = "-1"  # no CUDA context, no GPU memory taken
        return environment

    def start(self) -> None:
        """Start the worker process (non-blocking)."""
        self.state = "running"
        platform_options: dict = {}
        if os.name == "nt":
            platform_options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            platform_options["start_new_session"] = True  # its own process group, so cancel ends all of it
        self._process = subprocess.Popen(
            self.command,
            cwd=self.folder,
            env=self._environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **platform_options,
        )
        self._reader = threading.Thread(target=self._read_output, args=(self._process, self._lines), daemon=True)
        self._reader.start()

    @staticmethod
    def _read_output(process: subprocess.Popen, lines: queue.Queue) -> None:
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)  # end of output

    def poll(self) -> list[Event]:
        """Events since the last call; never blocks. The last event of a run is :class:`Finished`."""
        events, self._pending = self._pending, []
        if self.state != "running":
            return events
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return events
            if line is None:
                events.extend(self._on_exit())
                return events
            progress = parse_progress_line(line)
            if progress is not None:
                events.append(progress)
            else:
                self.output_lines.append(line)
                events.append(Message(line))

    def _on_exit(self) -> list[Event]:
        if self._process.wait() == 0:
            self.state = "succeeded"
            return [Finished("succeeded")]
        self.state = "failed"
        self.error = error_summary(self.output_lines)
        return [Finished("failed", self.error)]

    def cancel(self) -> None:
        """End the worker and everything it started; the next :meth:`poll` reports ``cancelled``."""
        if self.state != "running" or self._process is None:
            return
        self.state = "cancelled"
        self._pending.append(Finished("cancelled", "cancelled by the user"))
        if self._process.poll() is None:
            if os.name == "nt":
                self._process.kill()
            else:
                try:
                    os.killpg(self._process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # it ended on its own in the meantime
        self._process.wait()

    def wait(self, timeout: float | None = None) -> list[Event]:
        """Block until the job ends (for scripts and tests) and return all its events."""
        events: list[Event] = []
        while True:
            events.extend(self.poll())
            if self.state not in ("new", "running"):
                return events
            self._reader.join(timeout)
            if self._reader.is_alive():
                raise TimeoutError(f"the fusion worker did not finish within {timeout} s")

    def cleanup(self) -> None:
        """Delete the job's folder (inputs and results); call it once the results are imported."""
        shutil.rmtree(self.folder, ignore_errors=True)
