"""The panel's fusion runs in a separate, long-lived worker process, watched without blocking.

Why a separate process: a crash or an out-of-memory kill there cannot take Slicer down, torch is
never imported into Slicer's own Python, and killing it is a real Cancel. Why a *warm* one:
starting Python and importing torch and MedFusionLib costs seconds (and a B-spline registration's
itk-elastix about 15 s more on two cores); a worker that stays alive for the Slicer session pays
that once, not at every Apply.

* :class:`WorkerProcess` is one ``PythonSlicer -m MedFusionSlicer.server`` process
  (:mod:`.server`). It receives jobs as files in a mailbox folder of its own and answers with
  JSON lines (and plain text) on its standard output; a reader thread queues those lines, and the
  GUI drains the queue from a timer on the main thread. (``PythonSlicer`` is CTK's app launcher:
  it starts ``python-real`` as a child in its process group, so one kill of the group ends both.
  Whether a launcher forwards its standard input to that child was not checkable here, so jobs
  do not depend on it: a folder needs nothing from the launcher.) Its idle timeout ends it after
  :data:`DEFAULT_IDLE_TIMEOUT_S` without a job, and it ends when its standard input closes or its
  mailbox is removed (Slicer quit or let it go), so it never outlives its use.
* :class:`FusionJob` is one fusion on that worker: two input volumes in a folder, uncompressed
  NRRD in and out (``bench/bench_slicer_worker.py`` measured gzip NIfTI against it). Its
  :meth:`FusionJob.poll` returns the events since the last call; :meth:`FusionJob.cancel` kills
  the worker's whole process tree (the next job starts a fresh worker).

GPU out-of-memory is handled inside the worker by MedFusionLib (smaller batches, then the CPU); it
arrives here as a ``medfusion: ...`` :class:`Message`.

Only the standard library is used here, so this module loads before torch is installed.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

# Share of the progress bar given to registration when the run registers: it is the slow part on
# the CPU, but its backends report few steps.
REGISTRATION_SHARE = 0.3
# A worker with nothing to do ends after this long (s): it holds torch, the model weights and,
# on a GPU, a CUDA context (hundreds of MB) that other programs may need.
DEFAULT_IDLE_TIMEOUT_S = 15 * 60
# The files a job exchanges with the worker, in the job's folder.
REFERENCE_FILE, MOVING_FILE = "reference.nrrd", "moving.nrrd"
FUSED_FILE, REGISTERED_FILE, TRANSFORM_FILE = "fused.nrrd", "registered.nrrd", "transform.h5"
SOURCE_MAP_FILE = "source_map.nrrd"


@dataclass(frozen=True)
class Progress:
    """A progress report: ``stage`` ``register`` or ``fuse``, ``done``/``total`` steps."""

    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class Message:
    """A line for the user: the worker's own output, or a note from the job (e.g. a retry)."""

    text: str


@dataclass(frozen=True)
class Notice:
    """A JSON event of the worker other than progress, e.g. ``registration`` (transform quality,
    confidence) or ``fused`` (device, seconds): ``name`` and the event's other fields."""

    name: str
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Finished:
    """The job ended: ``state`` is ``succeeded``, ``failed`` or ``cancelled``; ``error`` says why."""

    state: str
    error: str = ""


def parse_line(line: str) -> Progress | Notice | None:
    """A worker's output line as :class:`Progress` (``{"stage", "done", "total"}``, the format of
    ``medfusion fuse --progress json``) or :class:`Notice` (``{"event": NAME, ...}``), else ``None``
    (a plain text line)."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("event"), str):
        data = {key: value for key, value in record.items() if key != "event"}
        return Notice(record["event"], data)
    if {"stage", "done", "total"} <= set(record):
        try:
            return Progress(str(record["stage"]), int(record["done"]), int(record["total"]))
        except (TypeError, ValueError):
            return None
    return None


def overall_fraction(progress: Progress, registering: bool) -> float:
    """Where a progress report puts the whole run, in [0, 1] (registration first, then fusion)."""
    share = REGISTRATION_SHARE if registering else 0.0
    fraction = min(1.0, progress.done / progress.total) if progress.total else 1.0
    if progress.stage == "register":
        return share * fraction
    return share + (1.0 - share) * fraction


def error_summary(lines: list[str]) -> str:
    """The line that says why a run failed: MedFusion's ``medfusion: error: ...`` line, else the
    last line of a traceback, else the last line of output."""
    for line in reversed(lines):
        if line.startswith("medfusion: error:"):
            return line[len("medfusion: error:") :].strip()
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return "the worker process ended without a message"


# --- finding and ending processes ------------------------------------------------------------


def python_executable(which=shutil.which, slicer_home: str | None = None, windows: bool = os.name == "nt") -> str:
    """Slicer's own Python launcher (``PythonSlicer``), which runs the worker.

    ``PythonSlicer`` is on ``PATH`` inside Slicer (Slicer's own ``slicer.util`` finds it with
    ``shutil.which``). Where it is not, look in the install tree (``<home>/bin``) and in a build
    tree (``<home>/../python-install/bin``, where ``<home>/bin`` has no launcher).
    """
    name = "PythonSlicer.exe" if windows else "PythonSlicer"
    found = which("PythonSlicer")
    if found:
        return found
    candidates = []
    if slicer_home:
        home = Path(slicer_home)
        candidates += [
            home / "bin" / name,
            home.parent / "python-install" / "bin" / name,
            home / "python-install" / "bin" / name,
        ]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(
        "Slicer's Python launcher (PythonSlicer) was not found on PATH"
        + (f" nor under {slicer_home}" if slicer_home else "")
        + "; reinstall Slicer, or run MedFusion from the Python console with MedFusion.MedFusionLogic().process(...)"
    )


def tree_kill_command(pid: int) -> list[str]:
    """Windows: the command that ends ``pid`` and every process it started.

    ``PythonSlicer.exe`` is a launcher (CTK's app launcher) that runs ``python-real.exe`` as its
    child; killing only the launcher leaves the real Python computing.
    """
    return ["taskkill", "/F", "/T", "/PID", str(pid)]


def kill_process_tree(process: subprocess.Popen) -> None:
    """End ``process`` and everything it started, at once, and reap it.

    POSIX: the worker runs in its own session (``start_new_session``), so one ``SIGKILL`` to its
    process group reaches the launcher, the real Python and any helper; sent only while the
    leader is unreaped. Windows: ``taskkill /T``.
    """
    if os.name == "nt":
        if process.poll() is None:
            subprocess.run(
                tree_kill_command(process.pid),
                capture_output=True,
                check=False,
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
            )
            if process.poll() is None:
                process.kill()
    elif process.returncode is None:
        # Not reaped yet (running, or a zombie): its pid, which is its group's id, cannot have been
        # given to another process, so the signal reaches only the worker's group, helpers included.
        # Once reaped (poll() or wait() set returncode), that id may belong to a stranger's group.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    process.wait()


def worker_environment(base: dict[str, str], *, cpu_only: bool, search_path: list[str]) -> dict[str, str]:
    """The worker's environment: ``search_path`` first on ``PYTHONPATH`` (the MedFusionLib and
    MedFusionSlicer this module ships), unbuffered UTF-8 output (``PYTHONUTF8``: Windows' default
    code page would mangle non-ASCII paths in messages), and no GPU at all for a CPU-only worker."""
    environment = dict(base)
    environment["PYTHONPATH"] = os.pathsep.join(
        [*search_path, *([environment["PYTHONPATH"]] if environment.get("PYTHONPATH") else [])]
    )
    environment["PYTHONUNBUFFERED"] = "1"
    environment["PYTHONUTF8"] = "1"
    environment["PYTHONIOENCODING"] = "utf-8"
    if cpu_only:
        environment["CUDA_VISIBLE_DEVICES"] = "-1"  # no CUDA context, no GPU memory taken
    return environment


def own_search_path() -> list[str]:
    """The folders holding the MedFusionSlicer and MedFusionLib that this Slicer module imports."""
    import MedFusionLib

    folders = [str(Path(__file__).resolve().parent.parent), str(Path(MedFusionLib.__file__).resolve().parent.parent)]
    return list(dict.fromkeys(folders))


# --- the worker process --------------------------------------------------------------------------


class WorkerProcess:
    """One warm worker: ``python -m MedFusionSlicer.server`` (or ``command``, for tests).

    ``info`` holds the worker's ``ready`` event once it arrived (models, device); ``state`` is
    ``new``, ``running`` or ``ended``. Not thread-safe: use it from one thread (Slicer's main thread).
    """

    def __init__(
        self,
        python: str | None = None,
        *,
        cpu_only: bool = False,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
        command: list[str] | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.python = python or sys.executable
        self.cpu_only = cpu_only
        self.idle_timeout = idle_timeout
        self.command = command or [self.python, "-m", "MedFusionSlicer.server", "--idle-timeout", str(idle_timeout)]
        # Requests go as files into a mailbox folder (see MedFusionSlicer.server: the app launcher
        # need not forward standard input); a test's own ``command`` is spoken to on standard input.
        self._uses_mailbox = command is None
        self.mailbox: Path | None = None
        self._environment = environment
        self.process: subprocess.Popen | None = None
        self.info: dict | None = None
        self.exit_code: int | None = None
        self.ending = False  # it announced its idle-timeout exit
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._ids = itertools.count(1)
        self._sent = itertools.count(1)

    @property
    def alive(self) -> bool:
        """Running and able to take a job (not ending after its idle timeout)."""
        return self.process is not None and self.exit_code is None and not self.ending and self.process.poll() is None

    def start(self) -> None:
        """Start the process (non-blocking: it imports torch in the background)."""
        environment = self._environment
        if environment is None:
            environment = worker_environment(dict(os.environ), cpu_only=self.cpu_only, search_path=own_search_path())
        options: dict = {}
        # A fresh queue: lines of an earlier process of this worker (killed, or ended when idle)
        # can still arrive from its reader thread and must not be mistaken for this one's.
        self._lines = queue.Queue()
        self.info = self.exit_code = None
        self.ending = False
        command = list(self.command)
        if self._uses_mailbox:
            self._remove_mailbox()
            self.mailbox = Path(tempfile.mkdtemp(prefix="MedFusion-requests-"))
            command += ["--mailbox", str(self.mailbox)]
        if os.name == "nt":
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            options["start_new_session"] = True  # its own process group: Cancel ends all of it
        self.process = subprocess.Popen(
            command,
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **options,
        )
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout, self._lines), daemon=True)
        self._reader.start()

    @staticmethod
    def _read(stream, lines: queue.Queue) -> None:
        for line in stream:
            lines.put(line.rstrip("\r\n"))
        lines.put(None)  # end of output: the process ended

    def next_id(self) -> int:
        return next(self._ids)

    def send(self, message: dict) -> None:
        """Hand one request to the worker; :class:`BrokenPipeError` if it is gone."""
        if self.process is None or self.process.stdin is None:
            raise BrokenPipeError("the worker process was not started")
        if self.mailbox is not None:
            if self.process.poll() is not None or not self.mailbox.is_dir():
                raise BrokenPipeError("the worker process is gone")
            name = f"{next(self._sent):09d}"  # numbered: the worker takes them in order
            temporary = self.mailbox / f"{name}.part"
            temporary.write_text(json.dumps(message), encoding="utf-8")
            os.replace(temporary, self.mailbox / f"{name}.json")
            return
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except (OSError, ValueError) as error:  # ValueError: write to a closed pipe
            raise BrokenPipeError(f"the worker process is gone ({error})") from error

    def take_lines(self, block_s: float = 0.0) -> list[str | None]:
        """The lines that arrived since the last call (``None``: the process ended); never blocks
        unless ``block_s`` > 0, then waits up to that long for the first line."""
        lines: list[str | None] = []
        try:
            if block_s > 0:
                lines.append(self._lines.get(timeout=block_s))
            while True:
                lines.append(self._lines.get_nowait())
        except queue.Empty:
            pass
        for line in lines:
            if line is None:
                self.exit_code = self.process.wait() if self.process is not None else -1
            else:
                event = parse_line(line)
                if isinstance(event, Notice) and event.name == "ready":
                    self.info = event.data
                elif isinstance(event, Notice) and event.name == "idle-exit":
                    self.ending = True
        return lines

    def kill(self) -> None:
        """End the worker's whole process tree now."""
        if self.process is not None:
            kill_process_tree(self.process)
            self.exit_code = self.process.returncode
        self._remove_mailbox()

    def _remove_mailbox(self) -> None:
        if self.mailbox is not None:
            shutil.rmtree(self.mailbox, ignore_errors=True)
            self.mailbox = None

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the worker to end (it finishes nothing half-way: it is idle), then kill it if needed."""
        if not self.alive:
            if self.process is not None:
                self.kill()  # reap it, and any helper left in its group
            return
        try:
            self.send({"op": "shutdown"})
            self.process.wait(timeout)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            pass
        self.kill()


class FusionJob:
    """One fusion on a :class:`WorkerProcess`: ``folder`` holds ``reference.nrrd`` and
    ``moving.nrrd``; on success also ``fused.nrrd`` (RGB for a functional fusion), with
    registration ``registered.nrrd`` and ``transform.h5``, and with ``source_map``
    ``source_map.nrrd``.

    ``options``: the fusion options as a dict (``FusionOptions.to_dict()``); ``source_map``: also
    compute the source map (not a fusion option: an extra output). ``state``: ``new``,
    ``running``, ``succeeded``, ``failed`` or ``cancelled``; ``registration``: the worker's
    ``registration`` event (metrics, confidence) once it arrived; ``report``: its ``fused`` event
    (device, seconds). ``keep_files``: :meth:`cleanup` leaves the folder (debugging).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        options: dict,
        worker: WorkerProcess,
        *,
        keep_files: bool = False,
        source_map: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.options = dict(options)
        self.source_map = source_map
        self.worker = worker
        self.keep_files = keep_files
        self.id: int | None = None
        self.state = "new"
        self.error = ""
        self.output_lines: list[str] = []
        self.registration: dict | None = None
        self.report: dict = {}
        self.context: dict = {}  # what the caller captured at start (e.g. the MRML nodes); not used here
        self._pending: list = []
        self._idled = self._resubmitted = False

    @property
    def registering(self) -> bool:
        return self.options.get("registration", "none") != "none"

    @property
    def fused_path(self) -> Path:
        return self.folder / FUSED_FILE

    @property
    def registered_path(self) -> Path:
        return self.folder / REGISTERED_FILE

    @property
    def transform_path(self) -> Path:
        return self.folder / TRANSFORM_FILE

    @property
    def source_map_path(self) -> Path:
        return self.folder / SOURCE_MAP_FILE

    def start(self) -> None:
        """Send the job to the worker (starting the worker if it is not running or is ending)."""
        self.worker.take_lines()  # what the worker said while idle: ready, warm, or that it is ending
        if not self.worker.alive:
            self._fresh_worker()
        self.id = self.worker.next_id()
        self.state = "running"
        try:
            self._submit()
        except BrokenPipeError:
            # It ended (idle timeout) between the check and the write: one fresh worker.
            self._fresh_worker()
            self._submit()

    def _fresh_worker(self) -> None:
        if self.worker.process is not None:
            self.worker.kill()  # reap it and anything left in its process group
            self.worker.take_lines()
        self.worker.start()

    def _submit(self) -> None:
        self.worker.send(
            {
                "op": "fuse",
                "id": self.id,
                "folder": str(self.folder),
                "options": self.options,
                "source_map": self.source_map,
                "keep_files": self.keep_files,  # the worker leaves them also if Slicer vanishes
            }
        )

    def poll(self, block_s: float = 0.0) -> list:
        """Events since the last call; never blocks (unless ``block_s``). The last is :class:`Finished`."""
        events, self._pending = self._pending, []
        if self.state != "running":
            return events
        for line in self.worker.take_lines(block_s):
            if line is None:
                if self._idled and not self._resubmitted:
                    # The worker reached its idle timeout just as this job was written to it, and
                    # ended without reading it: send the job once more, to a fresh worker.
                    self._resubmitted = True
                    self._fresh_worker()
                    self._submit()
                    return events
                events.append(self._worker_ended())
                return events
            event = parse_line(line)
            if isinstance(event, Progress):
                events.append(event)
            elif isinstance(event, Notice):
                if event.data.get("id") not in (None, self.id):
                    continue  # another job's (cannot happen with one job at a time; be safe)
                if event.name == "idle-exit":
                    self._idled = True
                    continue
                if event.name == "finished":
                    events.append(self._finished(event.data))
                    return events
                if event.name == "registration":
                    self.registration = event.data
                elif event.name == "fused":
                    self.report = event.data
                events.append(event)
            else:
                self.output_lines.append(line)
                events.append(Message(line))
        return events

    def _finished(self, data: dict) -> Finished:
        if data.get("state") == "succeeded":
            self.state = "succeeded"
            return Finished("succeeded")
        self.state = "failed"
        self.error = str(data.get("error") or error_summary(self.output_lines))
        return Finished("failed", self.error)

    def _worker_ended(self) -> Finished:
        self.state = "failed"
        detail = error_summary(self.output_lines) if self.output_lines else ""
        self.error = f"the MedFusion worker process ended unexpectedly (exit status {self.worker.exit_code})" + (
            f": {detail}" if detail else "; see the Python console for its output"
        )
        return Finished("failed", self.error)

    def cancel(self) -> None:
        """End the run at once by killing the worker's process tree; the next :meth:`poll`
        reports ``cancelled``. The next job starts a fresh worker."""
        if self.state != "running":
            return
        self.state = "cancelled"
        self._pending.append(Finished("cancelled", "cancelled by the user"))
        self.worker.kill()
        self.worker.take_lines()  # the rest of its output belongs to no one

    def wait(self, timeout: float | None = None) -> list:
        """Block until the job ends (scripts, tests, the benchmark) and return all its events."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        events: list = []
        while True:
            events.extend(self.poll(block_s=0.2))
            if self.state not in ("new", "running"):
                return events
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the fusion worker did not finish within {timeout} s")

    def cleanup(self) -> None:
        """Delete the job's folder (inputs and results) unless ``keep_files``; call it once the
        results are imported (or the job failed)."""
        if not self.keep_files:
            shutil.rmtree(self.folder, ignore_errors=True)
