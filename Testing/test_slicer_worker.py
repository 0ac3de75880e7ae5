"""The warm worker and its protocol, with real processes (no Slicer, no Qt): jobs on one process,
Cancel killing the whole process tree, a fresh worker after Cancel, the idle timeout, the end of
the worker when Slicer goes away, and the plain-Python helpers (launcher, environment, parsing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "MedFusion"))

from conftest import SMALL_SIZE, SMALL_SPACING

from MedFusionLib.fusion.options import FusionOptions
from MedFusionLib.imaging.phantom import make_head_phantom
from MedFusionLib.io import write_image
from MedFusionSlicer.worker import (
    Finished,
    FusionJob,
    Message,
    Notice,
    Progress,
    WorkerProcess,
    error_summary,
    kill_process_tree,
    overall_fraction,
    parse_line,
    python_executable,
    tree_kill_command,
    worker_environment,
)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def job_folder_factory(tmp_path_factory):
    phantom = make_head_phantom(size=SMALL_SIZE, spacing=SMALL_SPACING, seed=1)

    def make() -> Path:
        folder = tmp_path_factory.mktemp("job")
        write_image(phantom.ct, folder / "reference.nrrd", compress=False)
        write_image(phantom.mr, folder / "moving.nrrd", compress=False)
        return folder

    return make


@pytest.fixture(scope="module")
def worker():
    process = WorkerProcess(cpu_only=True, idle_timeout=120)
    yield process
    process.stop()


def _wait_for(worker: WorkerProcess, name: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in worker.take_lines(block_s=0.2):
            event = None if line is None else parse_line(line)
            if isinstance(event, Notice) and event.name == name:
                return event.data
            if line is None:
                raise AssertionError(f"the worker ended (exit {worker.exit_code}) before '{name}'")
    raise AssertionError(f"no '{name}' event within {timeout} s")


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
def test_cancel_kills_the_whole_process_tree(tmp_path):
    """B1: Cancel ends the worker and the process it started (as PythonSlicer starts python-real),
    at once; the job reports cancelled."""
    pid_file = tmp_path / "grandchild.pid"
    (tmp_path / "grandchild.py").write_text(
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(300)\n"
    )
    (tmp_path / "launcher.py").write_text(
        f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, {str(tmp_path / 'grandchild.py')!r}])\n"
        "print('started', flush=True)\ntime.sleep(300)\n"
    )
    launcher = [sys.executable, str(tmp_path / "launcher.py")]
    process = WorkerProcess(command=launcher, environment=dict(os.environ))
    job = FusionJob(tmp_path, {"registration": "none"}, process)
    job.start()
    deadline = time.monotonic() + 60
    while not pid_file.is_file() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the grandchild did not start"
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    assert _alive(grandchild) and process.alive
    started = time.monotonic()
    job.cancel()
    assert time.monotonic() - started < 5
    assert not process.alive and process.process.returncode is not None
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the launcher's child survived Cancel"
    assert job.poll()[-1].state == "cancelled" and job.state == "cancelled"


def test_tree_kill_on_windows_uses_taskkill_with_tree():
    assert tree_kill_command(4242) == ["taskkill", "/F", "/T", "/PID", "4242"]


def test_jobs_run_on_one_warm_process_and_report_progress(worker, job_folder_factory):
    """Two jobs on the same process: the second pays no start-up; each ends with its own
    finished event and writes uncompressed results."""
    ready = worker.info or (worker.start() or _wait_for(worker, "ready"))
    assert {choice["name"] for choice in ready["models"]} >= {"emfusion", "average"}
    assert "CPU" in ready["device"]
    pid = worker.process.pid
    seconds = []
    for model in ("average", "maximum"):
        folder = job_folder_factory()
        job = FusionJob(folder, FusionOptions(model=model, registration="none", device="cpu").to_dict(), worker)
        started = time.perf_counter()
        job.start()
        events = job.wait(timeout=180)
        seconds.append(time.perf_counter() - started)
        assert job.state == "succeeded", job.error
        assert any(isinstance(event, Progress) and event.stage == "fuse" for event in events)
        assert job.report["model"] == model
        fused = sitk.ReadImage(str(job.fused_path))
        assert fused.GetSize() == SMALL_SIZE and b"encoding: raw" in job.fused_path.read_bytes()[:1000]
        assert not job.registered_path.exists()
        assert worker.process.pid == pid
    assert seconds[1] < 30


def test_a_failed_job_leaves_the_worker_serving(worker, job_folder_factory):
    if not worker.alive:
        worker.start()
    folder = job_folder_factory()
    (folder / "moving.nrrd").write_bytes(b"NRRD0004\nnot really\n")
    job = FusionJob(folder, FusionOptions(model="average", registration="none", device="cpu").to_dict(), worker)
    job.start()
    job.wait(timeout=180)
    assert job.state == "failed" and "moving.nrrd" in job.error and "Traceback" not in job.error
    good = FusionJob(
        job_folder_factory(), FusionOptions(model="average", registration="none", device="cpu").to_dict(), worker
    )
    good.start()
    good.wait(timeout=180)
    assert good.state == "succeeded", good.error


def test_after_cancel_the_next_job_starts_a_fresh_worker(job_folder_factory):
    process = WorkerProcess(cpu_only=True, idle_timeout=120)
    try:
        job = FusionJob(
            job_folder_factory(), FusionOptions(model="average", registration="none", device="cpu").to_dict(), process
        )
        job.start()
        first_pid = process.process.pid
        job.cancel()
        assert not process.alive
        again = FusionJob(
            job_folder_factory(), FusionOptions(model="average", registration="none", device="cpu").to_dict(), process
        )
        again.start()
        again.wait(timeout=180)
        assert again.state == "succeeded", again.error
        assert process.process.pid != first_pid
    finally:
        process.stop()


def test_idle_timeout_and_closed_input_end_the_worker():
    """The worker never outlives its purpose: it ends after the idle timeout, and at once when its
    standard input closes (Slicer quit or crashed)."""
    idle = WorkerProcess(cpu_only=True, idle_timeout=1.0)
    idle.start()
    data = _wait_for(idle, "idle-exit", timeout=180)
    assert data["seconds"] == 1.0
    idle.process.wait(30)
    assert idle.process.returncode == 0
    orphan = WorkerProcess(cpu_only=True, idle_timeout=600)
    orphan.start()
    _wait_for(orphan, "started")
    mailbox = orphan.mailbox
    orphan.process.stdin.close()
    assert orphan.process.wait(120) == 0
    assert not mailbox.exists()  # Slicer is gone: nobody else would remove it
    orphan.stop()


def test_a_job_sent_as_the_worker_times_out_is_sent_again(tmp_path, job_folder_factory):
    """The race at the idle timeout: the job is written just as the worker announces its exit and
    ends without reading it. The job goes to a fresh worker once, and succeeds."""
    marker = tmp_path / "first-launch-done"
    script = tmp_path / "ending_then_serving.py"
    script.write_text(
        "import os, sys\n"
        f"marker = {str(marker)!r}\n"
        "if not os.path.exists(marker):\n"
        "    open(marker, 'w').close()\n"
        "    sys.stdin.readline()  # the job arrives ...\n"
        '    print(\'{"event": "idle-exit", "seconds": 1}\', flush=True)  # ... as it times out\n'
        "    sys.exit(0)\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'MedFusionSlicer.server', '--idle-timeout', '60'])\n"
    )
    environment = worker_environment(
        dict(os.environ), cpu_only=True, search_path=[str(Path(__file__).resolve().parents[1] / "MedFusion")]
    )
    process = WorkerProcess(command=[sys.executable, str(script)], environment=environment)
    process.start()
    first = process.process.pid
    job = FusionJob(
        job_folder_factory(), FusionOptions(model="average", registration="none", device="cpu").to_dict(), process
    )
    try:
        job.start()
        job.wait(timeout=180)
        assert job.state == "succeeded", job.error
        assert process.process.pid != first and marker.exists()
    finally:
        process.stop()


def test_a_cpu_worker_never_imports_torch_and_a_broken_torch_fails_only_its_jobs(tmp_path, job_folder_factory):
    """On the CPU the worker runs the networks on OpenVINO: a torch that breaks on import (B5) does
    not stop it; only a job that asks for the torch runtime fails, with the reason."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise RuntimeError('this torch build is broken')\n")
    search_path = [
        str(tmp_path),
        str(Path(__file__).resolve().parents[1] / "MedFusion"),
        str(Path(__file__).resolve().parents[1]),
    ]
    process = WorkerProcess(
        cpu_only=True, environment=worker_environment(dict(os.environ), cpu_only=True, search_path=search_path)
    )
    try:
        process.start()
        ready = _wait_for(process, "ready")
        assert ready["device"].startswith("CPU: openvino"), ready["device"]
        assert [choice["name"] for choice in ready["models"]][:2] == ["auto", "emfusion"]
        assert all(choice["usable"] for choice in ready["models"])
        fine = FusionJob(job_folder_factory(),
                         FusionOptions(model="emfusion", registration="none", device="cpu").to_dict(), process)
        fine.start()
        fine.wait(timeout=120)
        assert fine.state == "succeeded", fine.error
        on_torch = FusionJob(job_folder_factory(), FusionOptions(model="average", registration="none", device="cpu",
                                                                 runtime="torch").to_dict(), process)
        on_torch.start()
        on_torch.wait(timeout=120)
        assert on_torch.state == "failed" and "broken" in on_torch.error
    finally:
        process.stop()


def test_protocol_lines_are_parsed_strictly():
    assert parse_line('{"stage": "fuse", "done": 3, "total": 40}\n') == Progress("fuse", 3, 40)
    assert parse_line('{"event": "registration", "id": 2, "confidence": {"doubtful": true}}') == Notice(
        "registration", {"id": 2, "confidence": {"doubtful": True}}
    )
    assert parse_line("medfusion: error: the moving image is constant") is None
    assert parse_line('{"stage": "fuse"}') is None
    assert parse_line('{"stage": "fuse", "done": "x", "total": 4}') is None
    assert parse_line("{not json") is None and parse_line("[1, 2]") is None
    assert overall_fraction(Progress("register", 1, 1), registering=True) == pytest.approx(0.3)
    assert overall_fraction(Progress("fuse", 20, 40), registering=True) == pytest.approx(0.65)
    assert overall_fraction(Progress("fuse", 20, 40), registering=False) == pytest.approx(0.5)
    assert error_summary(["x", "medfusion: error: bad input", "y"]) == "bad input"
    assert Message("a") != Message("b")


def test_worker_environment_is_utf8_unbuffered_and_finds_medfusion():
    environment = worker_environment({"PYTHONPATH": "/existing", "HOME": "/h"}, cpu_only=True, search_path=["/a", "/b"])
    assert environment["PYTHONPATH"] == os.pathsep.join(["/a", "/b", "/existing"])
    assert environment["PYTHONUTF8"] == "1" and environment["PYTHONUNBUFFERED"] == "1"
    assert environment["CUDA_VISIBLE_DEVICES"] == "-1" and environment["HOME"] == "/h"
    assert "CUDA_VISIBLE_DEVICES" not in worker_environment({}, cpu_only=False, search_path=["/a"])
    # The real search path lets a fresh interpreter import the server module from anywhere.
    from MedFusionSlicer.worker import own_search_path

    environment = worker_environment(dict(os.environ, PYTHONPATH=""), cpu_only=True, search_path=own_search_path())
    result = subprocess.run(
        [sys.executable, "-c", "import MedFusionSlicer.server, MedFusionLib; print('ok')"],
        env=environment, cwd="/", capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.stdout.strip() == "ok", result.stderr


def test_python_launcher_is_found_on_path_then_in_install_and_build_trees(tmp_path):
    """B2: PATH first (as slicer.util does), then <home>/bin, then a build tree's python-install/bin."""
    assert python_executable(which=lambda name: "/opt/Slicer/bin/PythonSlicer") == "/opt/Slicer/bin/PythonSlicer"
    build = tmp_path / "Slicer-build"
    (tmp_path / "python-install" / "bin").mkdir(parents=True)
    (tmp_path / "python-install" / "bin" / "PythonSlicer").write_text("")
    (build / "bin").mkdir(parents=True)
    assert python_executable(which=lambda name: None, slicer_home=str(build), windows=False) == str(
        tmp_path / "python-install" / "bin" / "PythonSlicer"
    )
    (build / "bin" / "PythonSlicer.exe").write_text("")
    assert python_executable(which=lambda name: None, slicer_home=str(build), windows=True) == str(
        build / "bin" / "PythonSlicer.exe"
    )
    with pytest.raises(FileNotFoundError, match="PythonSlicer"):
        python_executable(which=lambda name: None, slicer_home=str(tmp_path / "other" / "nowhere"))


def test_server_answers_an_unknown_request_and_shuts_down_on_request():
    process = subprocess.Popen(
        [sys.executable, "-m", "MedFusionSlicer.server", "--idle-timeout", "60"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=worker_environment(dict(os.environ), cpu_only=True, search_path=[str(REPO_ROOT / "MedFusion")]),
    )  # fmt: skip
    try:
        process.stdin.write(json.dumps({"op": "explode", "id": 7}) + "\n" + json.dumps({"op": "shutdown"}) + "\n")
        process.stdin.flush()
        output, _ = process.communicate(timeout=180)
    finally:
        kill_process_tree(process)
    events = [parse_line(line) for line in output.splitlines()]
    finished = [event for event in events if isinstance(event, Notice) and event.name == "finished"]
    assert finished == [Notice("finished", {"id": 7, "state": "failed", "error": "unknown request 'explode'"})]
    assert process.returncode == 0


def test_requests_arrive_through_the_mailbox_with_standard_input_left_silent(tmp_path):
    """A launcher that does not forward standard input (CTK's PythonSlicer starts python-real as
    a child) must not starve the worker: requests come as files in the mailbox folder, and the
    folder's removal ends the worker. Standard input stays open and is never written here."""
    mailbox = tmp_path / "mailbox"
    mailbox.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "MedFusionSlicer.server", "--idle-timeout", "120", "--mailbox", str(mailbox)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=worker_environment(dict(os.environ), cpu_only=True, search_path=[str(REPO_ROOT / "MedFusion")]),
    )  # fmt: skip
    try:
        (mailbox / "000000001.part").write_text(json.dumps({"op": "explode", "id": 9}))
        os.replace(mailbox / "000000001.part", mailbox / "000000001.json")
        finished = None
        for line in process.stdout:
            event = parse_line(line)
            if isinstance(event, Notice) and event.name == "finished":
                finished = event
                break
        assert finished == Notice("finished", {"id": 9, "state": "failed", "error": "unknown request 'explode'"})
        assert not any(mailbox.iterdir())  # taken out of the mailbox once read
        mailbox.rmdir()
        assert process.wait(60) == 0  # Slicer removed the mailbox: the worker ends
    finally:
        kill_process_tree(process)


def test_worker_process_hands_requests_over_as_files_and_removes_its_mailbox(job_folder_factory):
    worker = WorkerProcess(cpu_only=True, idle_timeout=120)
    worker.start()
    try:
        mailbox = worker.mailbox
        assert mailbox is not None and mailbox.is_dir() and str(mailbox) in worker.process.args
        options = FusionOptions(model="average", registration="none", device="cpu").to_dict()
        job = FusionJob(job_folder_factory(), options, worker, keep_files=True)
        job.start()
        events = []
        while not any(isinstance(event, Finished) for event in events):
            events += job.poll(block_s=1.0)
        assert job.state == "succeeded", events
    finally:
        worker.stop()
    assert not mailbox.exists()


def test_a_worker_whose_slicer_vanished_ends_mid_job_and_leaves_nothing(job_folder_factory):
    """Review 23.6: when Slicer crashes its pipe to the worker closes; the worker ends at once, even
    in the middle of a job (a B-spline registration here, seconds long), removing its mailbox and
    the job's folder. Before, it finished the job first and left both behind."""
    worker = WorkerProcess(cpu_only=True, idle_timeout=120)
    worker.start()
    folder = job_folder_factory()
    try:
        mailbox = worker.mailbox
        options = FusionOptions(model="average", registration="bspline", backend="elastix", device="cpu")
        job = FusionJob(folder, options.to_dict(), worker)
        job.start()
        deadline = time.monotonic() + 180
        while not any(isinstance(event, Progress) for event in job.poll(block_s=0.2)):
            assert job.state == "running" and time.monotonic() < deadline, job.error
        worker.process.stdin.close()  # what a crashed Slicer's end of the pipe does
        closed = time.monotonic()
        assert worker.process.wait(30) == 0
        assert time.monotonic() - closed < 5, "the worker went on with the job"
        events = job.wait(timeout=10)
        assert job.state == "failed" and not any(isinstance(event, Finished) and event.state == "succeeded"
                                                 for event in events)  # fmt: skip
        assert not folder.exists() and not mailbox.exists()
    finally:
        worker.kill()


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
def test_a_reaped_worker_is_not_signalled_by_its_old_group_id(monkeypatch):
    """Review 23.7: once the worker was reaped (poll() or wait()), its pid, and so its process group
    id, may belong to an unrelated process: kill_process_tree must not signal that group. While the
    worker is unreaped, its group is signalled (that is what ends the launcher's child)."""
    sent = []
    real_killpg = os.killpg
    monkeypatch.setattr(
        os, "killpg", lambda group, signal_number: sent.append(group) or real_killpg(group, signal_number)
    )
    finished = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    finished.wait()
    kill_process_tree(finished)
    assert sent == []
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    kill_process_tree(running)
    assert sent == [running.pid] and running.returncode is not None


def test_an_unreadable_request_file_fails_its_job_and_the_mailbox_keeps_working(tmp_path):
    """Review 23.8: a request file that cannot be read (not UTF-8 here; on Windows a file an
    antivirus holds briefly) is tried again, then its job is failed with the reason, and the
    mailbox watcher goes on: the next request is answered. Before, the watcher thread died
    silently and every later job waited until Cancel."""
    mailbox = tmp_path / "mailbox"
    mailbox.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "MedFusionSlicer.server", "--idle-timeout", "120", "--mailbox", str(mailbox)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env=worker_environment(dict(os.environ), cpu_only=True, search_path=[str(REPO_ROOT / "MedFusion")]),
    )  # fmt: skip
    try:
        (mailbox / "000000001.part").write_bytes(b'{"op": "fuse", "id": 1, "folder": "\xff\xfe"}')
        os.replace(mailbox / "000000001.part", mailbox / "000000001.json")
        (mailbox / "000000002.part").write_text(json.dumps({"op": "explode", "id": 2}))
        os.replace(mailbox / "000000002.part", mailbox / "000000002.json")
        finished = []
        for line in process.stdout:
            event = parse_line(line)
            if isinstance(event, Notice) and event.name == "finished":
                finished.append(event.data)
                if len(finished) == 2:
                    break
        assert finished[0]["state"] == "failed" and "id" not in finished[0]
        assert "could not read the request 000000001.json" in finished[0]["error"]
        assert finished[1] == {"id": 2, "state": "failed", "error": "unknown request 'explode'"}
        assert not any(mailbox.iterdir())
    finally:
        kill_process_tree(process)
