"""LocalPlatform against real processes: every test runs real commands through a real supervisor."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ecliptic.platforms.base import Capacity, LaunchSpec, RunState, RunStatus
from ecliptic.platforms.local import LocalPlatform
from tests.platforms.runs import launch_spec
from tests.processes import gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux /proc")

CAPACITY = Capacity(cores=os.cpu_count() or 1, memory_gib=8, storage_gib=10, max_duration=timedelta(hours=1))


@pytest.fixture
def platform() -> LocalPlatform:
    return LocalPlatform(CAPACITY)


def make_spec(
    workdir: Path,
    command: list[str],
    *,
    environment: dict[str, str] | None = None,
    cores: int = 1,
    memory_gib: int = 4,
    deadline: timedelta = timedelta(minutes=5),
) -> LaunchSpec:
    return launch_spec(
        workdir, command, environment=environment, cores=cores, memory_gib=memory_gib, deadline=deadline
    )


def wait_until_finished(platform: LocalPlatform, workdir: Path, handle: dict[str, Any]) -> RunStatus:
    until = time.monotonic() + 30
    while True:
        status = platform.poll(workdir, handle)
        if status.finished:
            return status
        assert time.monotonic() < until, f"still {status} after 30 s"
        time.sleep(0.05)


def wait_for(condition: Any, what: str) -> None:
    until = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < until, f"timed out waiting for {what}"
        time.sleep(0.05)


def supervisor_record(workdir: Path) -> dict[str, Any]:
    path = workdir / ".ecliptic" / "supervisor.json"
    wait_for(lambda: path.exists() and "child_pid" in json.loads(path.read_text()), "the command to start")
    record: dict[str, Any] = json.loads(path.read_text())
    return record


def test_info(platform: LocalPlatform) -> None:
    info = platform.info
    assert info.name == "local"
    assert info.capacity == CAPACITY
    assert info.executable_kinds == frozenset({"urn:ecliptic:executable:command"})
    assert info.prepare_seconds == {"executable": 0, "compute": 1, "storage": 0}


def test_success_captures_output(platform: LocalPlatform, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    handle = platform.launch(make_spec(workdir, ["sh", "-c", "echo hello; echo oops >&2"]))
    status = wait_until_finished(platform, workdir, handle)
    assert status.state is RunState.SUCCEEDED
    assert status.exit_code == 0
    assert (workdir / "logs" / "stdout.txt").read_text() == "hello\n"
    assert (workdir / "logs" / "stderr.txt").read_text() == "oops\n"


def test_nonzero_exit_fails_with_code(platform: LocalPlatform, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    handle = platform.launch(make_spec(workdir, ["sh", "-c", "exit 3"]))
    status = wait_until_finished(platform, workdir, handle)
    assert status.state is RunState.FAILED
    assert status.exit_code == 3
    assert status.detail == "exited with code 3"


def test_environment_and_working_directory(
    platform: LocalPlatform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECLIPTIC_TEST_BROKER_SECRET", "do-not-leak")
    workdir = tmp_path / "work"
    script = textwrap.dedent(
        """
        import json, os
        print(json.dumps({"cwd": os.getcwd(), "env": dict(os.environ)}))
        """
    )
    spec = make_spec(
        workdir,
        [sys.executable, "-c", script],
        environment={"GREETING": "hello world", "ECLIPTIC_SESSION": "spoofed"},
    )
    handle = platform.launch(spec)
    assert wait_until_finished(platform, workdir, handle).state is RunState.SUCCEEDED
    seen = json.loads((workdir / "logs" / "stdout.txt").read_text())
    assert Path(seen["cwd"]) == workdir
    env = seen["env"]
    assert env["GREETING"] == "hello world"
    assert env["ECLIPTIC_SESSION"] == spec.session_uuid
    assert Path(env["ECLIPTIC_WORKDIR"]) == workdir
    assert Path(env["HOME"]) == workdir
    assert env["PATH"]
    assert "ECLIPTIC_TEST_BROKER_SECRET" not in env


def test_missing_executable_fails_127(platform: LocalPlatform, tmp_path: Path) -> None:
    for name, program in (("absolute", "/nonexistent/ecliptic-no-such-program"), ("path", "ecliptic-nope")):
        workdir = tmp_path / name
        handle = platform.launch(make_spec(workdir, [program, "--help"]))
        status = wait_until_finished(platform, workdir, handle)
        assert status.state is RunState.FAILED
        assert status.exit_code == 127
        assert status.detail is not None and "not found" in status.detail
        assert program in (workdir / "logs" / "stderr.txt").read_text()


def test_non_executable_file_fails_126(platform: LocalPlatform, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    script = workdir / "script.sh"
    script.write_text("#!/bin/sh\necho should not run\n")
    script.chmod(0o644)
    handle = platform.launch(make_spec(workdir, [str(script)]))
    status = wait_until_finished(platform, workdir, handle)
    assert status.state is RunState.FAILED
    assert status.exit_code == 126
    assert (workdir / "logs" / "stdout.txt").read_text() == ""


def test_launch_twice_runs_once(platform: LocalPlatform, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    spec = make_spec(workdir, ["sh", "-c", "echo ran >> runs.txt; sleep 0.5"])
    first = platform.launch(spec)
    second = platform.launch(spec)
    assert first == second
    wait_until_finished(platform, workdir, first)
    platform.launch(spec)
    time.sleep(1)
    assert wait_until_finished(platform, workdir, first).state is RunState.SUCCEEDED
    assert (workdir / "runs.txt").read_text() == "ran\n"


def test_concurrent_launches_run_once(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    spec = make_spec(workdir, ["sh", "-c", "echo ran >> runs.txt; sleep 0.5"])
    barrier = threading.Barrier(4)
    handles: list[dict[str, Any]] = []

    def launch() -> None:
        platform = LocalPlatform(CAPACITY)
        barrier.wait()
        handles.append(platform.launch(spec))

    threads = [threading.Thread(target=launch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(handles) == 4
    status = wait_until_finished(LocalPlatform(CAPACITY), workdir, handles[0])
    assert status.state is RunState.SUCCEEDED
    time.sleep(1)
    assert (workdir / "runs.txt").read_text() == "ran\n"


def test_broker_killed_after_spawn(tmp_path: Path) -> None:
    """A broker SIGKILLed right after launch: a new platform relaunches, polls and stops the one run."""
    workdir = tmp_path / "work"
    spec = make_spec(workdir, ["sh", "-c", "echo ran >> runs.txt; exec sleep 60"])
    broker = textwrap.dedent(
        f"""
        import os, signal, uuid
        from datetime import datetime, timedelta
        from pathlib import Path
        from ecliptic.platforms.base import Capacity, LaunchSpec
        from ecliptic.platforms.local import LocalPlatform
        platform = LocalPlatform(Capacity(1, 1, 1, timedelta(hours=1)))
        deadline = datetime.fromisoformat({spec.deadline.isoformat()!r})
        workdir = Path({str(workdir)!r})
        platform.launch(LaunchSpec({spec.session_uuid!r}, workdir, {spec.command!r}, {{}}, 1, 4, deadline))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    crashed = subprocess.run([sys.executable, "-c", broker], check=False)
    assert crashed.returncode == -signal.SIGKILL

    platform = LocalPlatform(CAPACITY)
    handle = platform.launch(spec)  # the handle was never stored, so the new broker launches again
    record = supervisor_record(workdir)
    assert platform.poll(workdir, handle).state is RunState.RUNNING

    platform.stop(workdir, handle, "cancelled by the client")
    status = wait_until_finished(platform, workdir, handle)
    assert status.state is RunState.FAILED
    assert status.detail is not None and "cancelled by the client" in status.detail
    assert gone(record["child_pid"])
    assert (workdir / "runs.txt").read_text() == "ran\n"


def test_stop_kills_the_whole_tree(platform: LocalPlatform, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    script = "sleep 60 & echo $! > pids.txt; sleep 60 & echo $! >> pids.txt; wait"
    handle = platform.launch(make_spec(workdir, ["sh", "-c", script]))
    pids_file = workdir / "pids.txt"
    wait_for(lambda: pids_file.exists() and len(pids_file.read_text().split()) == 2, "both sleeps")
    pids = [int(p) for p in pids_file.read_text().split()]
    record = supervisor_record(workdir)
    assert platform.poll(workdir, handle).state is RunState.RUNNING

    platform.stop(workdir, handle, "cancelled")

    status = platform.poll(workdir, handle)
    assert status.state is RunState.FAILED
    assert status.detail is not None and status.detail.startswith("stopped: cancelled")
    for pid in [*pids, record["child_pid"], record["pid"]]:
        wait_for(lambda pid=pid: gone(pid), f"pid {pid} to go")
    platform.stop(workdir, handle, "again")  # idempotent once finished
    assert platform.poll(workdir, handle) == status


@pytest.mark.skipif(shutil.which("setsid") is None, reason="needs setsid(1)")
def test_stop_reaches_descendants_that_left_the_group(platform: LocalPlatform, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    handle = platform.launch(make_spec(workdir, ["sh", "-c", "setsid sleep 60 & echo $! > pids.txt; wait"]))
    pids_file = workdir / "pids.txt"
    wait_for(lambda: pids_file.exists() and pids_file.read_text().strip(), "the escaped sleep")
    escaped = int(pids_file.read_text())
    supervisor_record(workdir)
    platform.stop(workdir, handle, "cancelled")
    assert platform.poll(workdir, handle).state is RunState.FAILED
    wait_for(lambda: gone(escaped), "the escaped sleep to go")


def test_leftover_background_processes_end_with_the_command(platform: LocalPlatform, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    handle = platform.launch(make_spec(workdir, ["sh", "-c", "sleep 60 & echo $! > pids.txt"]))
    assert wait_until_finished(platform, workdir, handle).state is RunState.SUCCEEDED
    wait_for(lambda: gone(int((workdir / "pids.txt").read_text())), "the background sleep to go")


def test_stop_before_start_never_runs_the_command(platform: LocalPlatform, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    spec = make_spec(workdir, ["sh", "-c", "echo ran >> runs.txt"])
    platform.stop(workdir, {}, "cancelled early")
    handle = platform.launch(spec)
    status = wait_until_finished(platform, workdir, handle)
    assert status.state is RunState.FAILED
    assert status.detail is not None and "cancelled early" in status.detail
    assert not (workdir / "runs.txt").exists()


def test_stop_escalates_to_sigkill(platform: LocalPlatform, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    # Ignored signals stay ignored across exec, so the sleep shrugs off SIGTERM as well as the shell.
    handle = platform.launch(make_spec(workdir, ["sh", "-c", "trap '' TERM; sleep 60 & wait; sleep 60"]))
    record = supervisor_record(workdir)
    platform.stop(workdir, handle, "cancelled")
    status = wait_until_finished(platform, workdir, handle)
    assert status.state is RunState.FAILED
    assert status.exit_code == -signal.SIGKILL
    wait_for(lambda: gone(record["child_pid"]), "the shell to go")


def test_signalled_supervisor_stops_and_records(platform: LocalPlatform, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    handle = platform.launch(make_spec(workdir, ["sleep", "60"]))
    assert not platform.poll(workdir, handle).finished
    record = supervisor_record(workdir)
    os.kill(record["pid"], signal.SIGTERM)
    status = wait_until_finished(platform, workdir, handle)
    assert status.state is RunState.FAILED
    assert status.detail is not None and "SIGTERM" in status.detail
    wait_for(lambda: gone(record["child_pid"]), "the command to go")


def test_deadline_stops_the_command(platform: LocalPlatform, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    handle = platform.launch(make_spec(workdir, ["sleep", "60"], deadline=timedelta(seconds=1)))
    status = wait_until_finished(platform, workdir, handle)
    assert status.state is RunState.FAILED
    assert status.exit_code == -signal.SIGTERM
    assert status.detail is not None and "deadline" in status.detail


def test_lost_when_supervisor_and_command_are_killed(platform: LocalPlatform, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    handle = platform.launch(make_spec(workdir, ["sleep", "60"]))
    record = supervisor_record(workdir)
    os.kill(record["pid"], signal.SIGKILL)
    os.killpg(record["child_pgid"], signal.SIGKILL)
    wait_for(lambda: gone(record["pid"]) and gone(record["child_pid"]), "both to die")
    status = wait_until_finished(platform, workdir, handle)
    assert status.state is RunState.LOST
    assert status.detail is not None and "supervisor" in status.detail
    assert not (workdir / ".ecliptic" / "exit.json").exists()
    platform.stop(workdir, handle, "cleanup")  # nothing left to stop; must not raise


def test_stop_ends_an_unsupervised_command(platform: LocalPlatform, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    handle = platform.launch(make_spec(workdir, ["sleep", "60"]))
    record = supervisor_record(workdir)
    os.kill(record["pid"], signal.SIGKILL)
    wait_for(lambda: gone(record["pid"]), "the supervisor to die")
    status = platform.poll(workdir, handle)
    assert status.state is RunState.LOST
    assert status.detail is not None and "still running" in status.detail
    platform.stop(workdir, handle, "cleanup")
    wait_for(lambda: gone(record["child_pid"]), "the orphaned command to go")


def test_memory_limit(platform: LocalPlatform, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    command = [sys.executable, "-c", "block = bytearray(3 * 2**30)"]
    handle = platform.launch(make_spec(workdir, command, memory_gib=1))
    status = wait_until_finished(platform, workdir, handle)
    assert status.state is RunState.FAILED
    assert status.exit_code == 1
    assert "MemoryError" in (workdir / "logs" / "stderr.txt").read_text()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_one_core_runs_are_pinned_to_different_cpus(platform: LocalPlatform, tmp_path: Path) -> None:
    script = "import os, time; print(sorted(os.sched_getaffinity(0))); time.sleep(1)"
    workdirs = [tmp_path / "a", tmp_path / "b"]
    handles = []
    for workdir in workdirs:
        handles.append(platform.launch(make_spec(workdir, [sys.executable, "-c", script], cores=1)))
        supervisor_record(workdir)
    seen = []
    for workdir, handle in zip(workdirs, handles, strict=True):
        assert wait_until_finished(platform, workdir, handle).state is RunState.SUCCEEDED
        seen.append(json.loads((workdir / "logs" / "stdout.txt").read_text()))
    assert all(len(cpus) == 1 for cpus in seen)
    assert seen[0] != seen[1]


def test_poll_of_a_never_launched_workdir_is_lost(platform: LocalPlatform, tmp_path: Path) -> None:
    status = platform.poll(tmp_path, {})
    assert status.state is RunState.LOST
    platform.stop(tmp_path, {}, "nothing there")
