"""The local platform: runs a command executable as a subprocess of this machine, in the session's workdir.

Each run is owned by a supervisor process (``ecliptic.platforms.supervisor``) in a session of its own, so runs
survive the broker's restart, and everything about a run lives in files under ``<workdir>/.ecliptic/``. Any
broker process can therefore poll or stop any run from the workdir alone; the handle is informational.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import ecliptic
from ecliptic.durable import write_json_atomic, write_text_atomic
from ecliptic.isotime import format_duration, format_instant, parse_instant, utcnow
from ecliptic.platforms.base import (
    COMMAND_KIND,
    Capacity,
    LaunchSpec,
    PlatformInfo,
    RunState,
    RunStatus,
)
from ecliptic.platforms.supervisor import (
    CLAIM_FILE,
    CONTROL_DIR,
    EXIT_FILE,
    LAUNCH_FILE,
    LOGS_DIR,
    REASON_DEADLINE,
    REASON_ERROR,
    REASON_EXITED,
    REASON_NOT_EXECUTABLE,
    REASON_NOT_FOUND,
    REASON_STOPPED,
    STDERR_LOG,
    STDOUT_LOG,
    STOP_FILE,
    SUPERVISOR_FILE,
    SUPERVISOR_LOG,
    boot_id,
    describe_exit,
    is_same_process,
    live_group_members,
    process_info,
    read_json,
    signal_group,
)

START_WINDOW = 30.0
"""How long a spawned supervisor may take to record itself before the run counts as lost."""

ORPHAN_GRACE = 5.0


class LocalPlatform:
    def __init__(self, capacity: Capacity, name: str = "local", site: str = "local") -> None:
        self._info = PlatformInfo(
            name=name,
            capacity=capacity,
            executable_kinds=frozenset({COMMAND_KIND}),
            prepare_seconds={"executable": 0, "compute": 1, "storage": 0},
            site=site,
        )

    @property
    def info(self) -> PlatformInfo:
        return self._info

    # -- launch ----------------------------------------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> dict[str, Any]:
        """Spawn a supervisor for the run; it, not this call, decides whether the command starts.

        Every call spawns a supervisor unless the run is already claimed, and only the first supervisor to
        claim the workdir runs the command. So a repeated launch, a concurrent one, or one after the broker
        died between spawning and storing the handle, all end with exactly one run.
        """
        if not spec.command:
            raise ValueError("a command executable needs at least the program to run")
        workdir = spec.workdir.absolute()
        control = workdir / CONTROL_DIR
        control.mkdir(parents=True, exist_ok=True)
        (workdir / LOGS_DIR).mkdir(exist_ok=True)
        handle: dict[str, Any] = {
            "platform": self._info.name,
            "session": spec.session_uuid,
            "workdir": str(workdir),
        }
        if (control / CLAIM_FILE).exists():
            return handle
        write_json_atomic(
            control / LAUNCH_FILE,
            {
                "session": spec.session_uuid,
                "command": list(spec.command),
                "environment": dict(spec.environment),
                "cores": spec.cores,
                "memory_gib": spec.memory_gib,
                "deadline": format_instant(spec.deadline),
                "written": format_instant(utcnow()),
            },
        )
        self._spawn_supervisor(workdir, control)
        return handle

    @staticmethod
    def _spawn_supervisor(workdir: Path, control: Path) -> None:
        env = dict(os.environ)
        # The supervisor must import this very ecliptic, also when the broker runs from a source tree.
        package_root = str(Path(ecliptic.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        with open(control / SUPERVISOR_LOG, "ab") as log:
            proc = subprocess.Popen(
                # -P and cwd "/": a workdir holding a directory named "ecliptic" must not shadow the package.
                [sys.executable, "-P", "-m", "ecliptic.platforms.supervisor", str(workdir)],
                cwd="/",
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                close_fds=True,
                start_new_session=True,
            )
        # Reap it when it ends so it does not linger as a zombie of the broker; if the broker dies first the
        # supervisor is adopted by init and carries on.
        threading.Thread(target=proc.wait, name=f"ecliptic-local-reap-{proc.pid}", daemon=True).start()

    # -- poll ------------------------------------------------------------------------------------------------
    def poll(self, workdir: Path, handle: dict[str, Any]) -> RunStatus:
        control = workdir.absolute() / CONTROL_DIR
        # Liveness before the result: the supervisor writes exit.json before it exits, so a supervisor seen
        # dead here with no exit.json read afterwards really did die without recording one.
        record = read_json(control / SUPERVISOR_FILE)
        alive = record is not None and _supervisor_alive(record)
        result = read_json(control / EXIT_FILE)
        if result is not None:
            return _status_from_result(result)
        if alive:
            return RunStatus(RunState.RUNNING)
        if record is not None:
            return RunStatus(RunState.LOST, detail=_lost_detail(control, record))
        if _starting(control):
            return RunStatus(RunState.PENDING, detail="the supervisor is starting")
        if (control / LAUNCH_FILE).exists():
            return RunStatus(
                RunState.LOST,
                detail=f"the supervisor never started or died at once{_log_tail(control)}",
            )
        return RunStatus(RunState.LOST, detail="the run was never launched")

    # -- stop ------------------------------------------------------------------------------------------------
    def logs(self, workdir: Path, handle: dict[str, Any]) -> str:
        return read_logs(workdir)

    def stop(self, workdir: Path, handle: dict[str, Any], reason: str, *, wait: float = 10.0) -> None:
        """Ask the supervisor to stop the command and wait up to ``wait`` seconds for it to be gone.

        The stop file also reaches a supervisor that has not started the command yet: it then never starts
        it. When the supervisor itself is gone, nobody else will end its command, so the command's process
        group is signalled from here.
        """
        workdir = workdir.absolute()
        control = workdir / CONTROL_DIR
        if (control / EXIT_FILE).exists() or not workdir.is_dir():
            return
        control.mkdir(exist_ok=True)
        if not (control / STOP_FILE).exists():
            write_text_atomic(control / STOP_FILE, (reason.strip() or "on request") + "\n")
        until = time.monotonic() + wait
        while True:
            record = read_json(control / SUPERVISOR_FILE)
            alive = record is not None and _supervisor_alive(record)
            if (control / EXIT_FILE).exists():
                return
            if record is not None and not alive:
                _kill_orphaned_command(record, until)
                return
            if record is None and not _starting(control):
                return
            if time.monotonic() >= until:
                return
            time.sleep(0.1)


# -- helpers -------------------------------------------------------------------------------------------------


def read_logs(workdir: Path, limit: int = 64 * 1024) -> str:
    """The last ``limit`` bytes of the run's stdout, then of its stderr."""
    parts = []
    for name in (STDOUT_LOG, STDERR_LOG):
        path = workdir / LOGS_DIR / name
        try:
            with open(path, "rb") as fh:
                fh.seek(max(0, path.stat().st_size - limit))
                parts.append(fh.read().decode("utf-8", errors="replace"))
        except OSError:
            continue
    return "".join(parts)


def _supervisor_alive(record: dict[str, Any]) -> bool:
    return is_same_process(record.get("pid"), record.get("start_ticks"), record.get("boot_id"))


def _starting(control: Path) -> bool:
    """A supervisor has been spawned recently enough that it may still be on its way to recording itself."""
    marker = control / CLAIM_FILE
    if not marker.exists():
        marker = control / LAUNCH_FILE
    try:
        age = time.time() - marker.stat().st_mtime
    except OSError:
        return False
    return age < START_WINDOW


def _log_tail(control: Path) -> str:
    try:
        lines = (control / SUPERVISOR_LOG).read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return f" (supervisor log: {lines[-1].strip()})" if lines else ""


def _command_alive(record: dict[str, Any]) -> bool:
    pgid = record.get("child_pgid")
    if not isinstance(pgid, int) or record.get("boot_id") != boot_id():
        return False
    if is_same_process(record.get("child_pid"), record.get("child_start_ticks"), record.get("boot_id")):
        return True
    # The group outlives its leader; but if the leader's pid now belongs to another process, the number may
    # name someone else's group.
    leader = process_info(pgid)
    return (leader is None or leader.dead) and bool(live_group_members(pgid))


def _lost_detail(control: Path, record: dict[str, Any]) -> str:
    pid = record.get("pid")
    detail = f"the supervisor (pid {pid}) is gone and recorded no result"
    if _command_alive(record):
        detail += f"; its command (process group {record.get('child_pgid')}) is still running unsupervised"
    return detail + _log_tail(control)


def _kill_orphaned_command(record: dict[str, Any], until: float) -> None:
    if not _command_alive(record):
        return
    pgid = int(record["child_pgid"])
    signal_group(pgid, signal.SIGTERM)
    kill_at = min(until, time.monotonic() + ORPHAN_GRACE)
    while live_group_members(pgid):
        if time.monotonic() >= kill_at:
            signal_group(pgid, signal.SIGKILL)
            break
        time.sleep(0.1)
    while live_group_members(pgid) and time.monotonic() < until:
        time.sleep(0.1)


def _status_from_result(result: dict[str, Any]) -> RunStatus:
    code = result.get("exit_code")
    code = code if isinstance(code, int) else None
    reason = result.get("reason")
    message = result.get("message")
    how = f", {describe_exit(code)}" if code is not None else ""
    if reason == REASON_EXITED and code == 0:
        return RunStatus(RunState.SUCCEEDED, exit_code=0, detail=describe_exit(0))
    if reason == REASON_EXITED and code is not None:
        detail = describe_exit(code)
    elif reason == REASON_DEADLINE:
        detail = f"stopped: deadline reached after {_booked(result)}{how}"
        if code is None and message:
            detail = f"stopped: {message}"
    elif reason == REASON_STOPPED:
        detail = f"stopped: {message or 'on request'}{how}"
    elif reason == REASON_NOT_FOUND:
        detail = f"command not found: {message}" if message else "command not found"
    elif reason == REASON_NOT_EXECUTABLE:
        detail = f"command could not be executed: {message}" if message else "command could not be executed"
    elif reason == REASON_ERROR:
        detail = f"the supervisor failed: {message}{how}"
    else:
        detail = f"ended ({reason}){how}"
    return RunStatus(RunState.FAILED, exit_code=code, detail=detail)


def _booked(result: dict[str, Any]) -> str:
    try:
        span = parse_instant(str(result["deadline"])) - parse_instant(str(result["started"]))
    except (KeyError, ValueError):
        return "the booked time"
    return format_duration(timedelta(seconds=max(0, round(span.total_seconds()))))
