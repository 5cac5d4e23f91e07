"""The process that owns one local run: claims it, runs the command, enforces stop and deadline, records exit.

``LocalPlatform.launch`` starts it as ``python -m ecliptic.platforms.supervisor <workdir>`` in a session of
its own, so it outlives the broker process that started it. It learns everything from
``<workdir>/.ecliptic/launch.json`` and reports everything through files beside it; that is what lets another
broker process, possibly started after a crash, poll or stop the run with nothing but the workdir.

Control files, all under ``<workdir>/.ecliptic/``:

``launch.json``
    The launch spec, written by ``launch`` before the supervisor is spawned.
``claimed``
    Created with ``O_EXCL`` as the supervisor's first act. Whoever creates it runs the command; every other
    supervisor for the same workdir exits at once, which is why launching twice never runs the command twice.
``supervisor.json``
    The supervisor's pid, kernel start time and boot id (so a recycled pid is not mistaken for it), then the
    command's pid and process group once started, and the CPUs it was pinned to.
``stop``
    Created by ``stop``; its text is the reason. The supervisor checks for it every 0.2 s.
``exit.json``
    The result, written once the command and everything it left behind are gone.

The command's output goes to ``<workdir>/logs/stdout.txt`` and ``stderr.txt`` so that clients can fetch it
like any other session file.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import resource
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from types import FrameType
from typing import Any

from ecliptic.durable import write_json_atomic
from ecliptic.isotime import format_instant, parse_instant, utcnow

CONTROL_DIR = ".ecliptic"
LAUNCH_FILE = "launch.json"
CLAIM_FILE = "claimed"
SUPERVISOR_FILE = "supervisor.json"
STOP_FILE = "stop"
EXIT_FILE = "exit.json"
SUPERVISOR_LOG = "supervisor.log"
LOGS_DIR = "logs"
STDOUT_LOG = "stdout.txt"
STDERR_LOG = "stderr.txt"

CPU_LOCK_FILE = ".ecliptic-cpus.lock"
"""Lives in the workdir's parent (the sessions directory) so sibling runs can spread over the CPUs."""

CHECK_INTERVAL = 0.2
STOP_GRACE = 5.0
DEADLINE_GRACE = 10.0
LEFTOVER_GRACE = 2.0

REASON_EXITED = "exited"
REASON_DEADLINE = "deadline"
REASON_STOPPED = "stopped"
REASON_NOT_FOUND = "not-found"
REASON_NOT_EXECUTABLE = "not-executable"
REASON_ERROR = "error"

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_PR_SET_CHILD_SUBREAPER = 36
_DEAD_STATES = frozenset({"Z", "X", "x"})


# -- files ---------------------------------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- processes -----------------------------------------------------------------------------------------------

_HAVE_PROC = Path("/proc/self/stat").exists()


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    ppid: int
    pgid: int
    state: str
    start_ticks: int
    """Clock ticks after boot when the process started: with the boot id, unique over a process' lifetime."""

    @property
    def dead(self) -> bool:
        return self.state in _DEAD_STATES


@lru_cache(maxsize=1)
def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_info(pid: int) -> ProcessInfo | None:
    if not _HAVE_PROC:
        # Without /proc there is no start time to guard against pid reuse; existence is the best available.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ProcessInfo(pid=pid, ppid=0, pgid=0, state="R", start_ticks=0)
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) may itself contain spaces and parentheses; everything after the last ")" is
    # fixed-format, starting at field 3.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return ProcessInfo(
            pid=pid,
            ppid=int(fields[1]),
            pgid=int(fields[2]),
            state=fields[0].decode("ascii", "replace"),
            start_ticks=int(fields[19]),
        )
    except (IndexError, ValueError):
        return None


def is_same_process(pid: Any, start_ticks: Any, boot: Any) -> bool:
    """Whether ``pid`` is still alive and is the very process recorded, not a later one given the same pid."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    info = process_info(pid)
    if info is None or info.dead:
        return False
    return bool(info.start_ticks == start_ticks and boot == boot_id())


def _all_processes() -> Iterator[ProcessInfo]:
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if entry.isdigit():
            info = process_info(int(entry))
            if info is not None and not info.dead:
                yield info


def live_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in the group; a zombie holds no resources and cannot be killed anyway.

    A ``killpg(pgid, 0)`` first spares the scan of ``/proc`` in the usual case of a group that is gone."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    if not _HAVE_PROC:
        return [pgid]
    return [p.pid for p in _all_processes() if p.pgid == pgid]


def _live_children(pid: int) -> list[int]:
    return [p.pid for p in _all_processes() if p.ppid == pid]


def signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            return f"killed by signal {-code}"
        return f"killed by signal {-code} ({name})"
    return f"exited with code {code}"


# -- the supervisor ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    session: str
    command: list[str]
    environment: dict[str, str]
    cores: int
    memory_gib: int
    deadline: datetime

    @classmethod
    def load(cls, path: Path) -> _Spec:
        data = read_json(path)
        if data is None:
            raise RuntimeError(f"{path} is missing or not a JSON object")
        command = data.get("command")
        environment = data.get("environment") or {}
        if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
            raise RuntimeError(f"{path}: 'command' must be a non-empty list of strings")
        if not isinstance(environment, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in environment.items()
        ):
            raise RuntimeError(f"{path}: 'environment' must map strings to strings")
        return cls(
            session=str(data.get("session", "")),
            command=command,
            environment=environment,
            cores=int(data.get("cores", 1)),
            memory_gib=int(data.get("memory_gib", 0)),
            deadline=parse_instant(str(data["deadline"])),
        )


def child_environment(session: str, workdir: Path, environment: dict[str, str]) -> dict[str, str]:
    """A small known base rather than the broker's own environment, which may hold database credentials."""
    env = {
        "PATH": os.environ.get("PATH") or DEFAULT_PATH,
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
    }
    env.update(environment)
    # Set last so a client cannot make the command believe it is another session.
    env["ECLIPTIC_SESSION"] = session
    env["ECLIPTIC_WORKDIR"] = str(workdir)
    return env


def _address_space_limit(memory_gib: int) -> int | None:
    """RLIMIT_AS bounds virtual address space per process, not resident memory of the whole tree.

    It is the one limit an unprivileged process can impose without cgroups. Runtimes that reserve large
    address ranges up front (the JVM, Go, glibc's per-thread malloc arenas) can fail under it with little
    memory really in use; such commands need a larger ``memory_gib``.
    """
    if memory_gib <= 0:
        return None
    limit = memory_gib * 2**30
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    return limit


def _child_setup(as_limit: int | None, cpus: list[int] | None) -> Callable[[], None]:
    # Runs between fork and exec: only async-signal-tolerant work, which is safe here because the supervisor
    # never starts a thread.
    def setup() -> None:
        if as_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
        if cpus is not None and hasattr(os, "sched_setaffinity"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, cpus)

    return setup


def _become_subreaper() -> None:
    """Adopt orphaned descendants, so ones that left the command's group can still be found and reaped."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


class Supervisor:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.control = workdir / CONTROL_DIR
        self.record: dict[str, Any] = {}
        self.child_pid: int | None = None
        self.child_code: int | None = None
        self.started = utcnow()
        self.deadline: datetime | None = None
        self._signalled: int | None = None

    # -- entry ---------------------------------------------------------------------------------------------
    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        _become_subreaper()
        try:
            self._run()
        except Exception as exc:
            traceback.print_exc()
            if self.child_pid is not None and self.child_code is None:
                signal_group(self.child_pid, signal.SIGKILL)
                self._reap_until_gone(self.child_pid, timeout=LEFTOVER_GRACE)
            self._finish(self.child_code, REASON_ERROR, f"{type(exc).__name__}: {exc}")
            return 1
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # The host shutting down, or someone signalling the supervisor directly: stop the command cleanly and
        # still record how it ended, rather than dying and leaving it unsupervised.
        self._signalled = signum

    def _run(self) -> None:
        spec = _Spec.load(self.control / LAUNCH_FILE)
        self.deadline = spec.deadline
        cpus = self._register(spec.cores)

        logs = self.workdir / LOGS_DIR
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / STDOUT_LOG, "ab") as out, open(logs / STDERR_LOG, "ab") as err:
            early = self._stop_requested()
            if early is not None:
                self._finish(None, REASON_STOPPED, f"{early} (before the command started)")
                return
            if utcnow() >= spec.deadline:
                self._finish(None, REASON_DEADLINE, "the deadline passed before the command started")
                return
            try:
                proc = subprocess.Popen(
                    spec.command,
                    cwd=self.workdir,
                    env=child_environment(spec.session, self.workdir, spec.environment),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    close_fds=True,
                    process_group=0,
                    preexec_fn=_child_setup(_address_space_limit(spec.memory_gib), cpus),
                )
            except (FileNotFoundError, NotADirectoryError) as exc:
                self._start_failed(err, 127, REASON_NOT_FOUND, spec.command[0], exc)
                return
            except (OSError, subprocess.SubprocessError) as exc:
                self._start_failed(err, 126, REASON_NOT_EXECUTABLE, spec.command[0], exc)
                return

        self.child_pid = proc.pid
        child = process_info(proc.pid)
        self.record.update(
            child_pid=proc.pid,
            child_pgid=proc.pid,
            child_start_ticks=child.start_ticks if child else None,
        )
        write_json_atomic(self.control / SUPERVISOR_FILE, self.record)

        reason, message = self._watch(proc.pid, spec.deadline)
        # The supervisor reaps with waitpid(-1); tell Popen so it never waits on a pid that may be reused.
        proc.returncode = self.child_code
        self._clean_up_leftovers(proc.pid)
        self._finish(self.child_code, reason, message)

    # -- steps ---------------------------------------------------------------------------------------------
    def _register(self, cores: int) -> list[int] | None:
        """Record this supervisor and pick the CPUs for the command.

        Pinning every one-core run to CPU 0 would stack them on one CPU while the rest idle, so the choice
        prefers CPUs that live sibling runs (other workdirs in the same parent) are not pinned to. The file
        lock makes the look-and-record atomic among supervisors starting together.
        """
        me = process_info(os.getpid())
        self.record = {
            "pid": os.getpid(),
            "start_ticks": me.start_ticks if me else None,
            "boot_id": boot_id(),
            "started": format_instant(self.started),
            "cpus": None,
        }
        available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        wanted = min(max(cores, 1), len(available))
        if not available or wanted >= len(available):
            write_json_atomic(self.control / SUPERVISOR_FILE, self.record)
            return None
        try:
            lock = os.open(self.workdir.parent / CPU_LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError:
            cpus = available[:wanted]
            self.record["cpus"] = cpus
            write_json_atomic(self.control / SUPERVISOR_FILE, self.record)
            return cpus
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            usage = self._sibling_cpu_usage()
            cpus = sorted(sorted(available, key=lambda cpu: (usage[cpu], cpu))[:wanted])
            self.record["cpus"] = cpus
            write_json_atomic(self.control / SUPERVISOR_FILE, self.record)
        finally:
            os.close(lock)
        return cpus

    def _sibling_cpu_usage(self) -> Counter[int]:
        usage: Counter[int] = Counter()
        try:
            siblings = list(self.workdir.parent.iterdir())
        except OSError:
            return usage
        for sibling in siblings:
            control = sibling / CONTROL_DIR
            if sibling == self.workdir or (control / EXIT_FILE).exists():
                continue
            record = read_json(control / SUPERVISOR_FILE)
            if record is None or not isinstance(record.get("cpus"), list):
                continue
            if is_same_process(record.get("pid"), record.get("start_ticks"), record.get("boot_id")):
                usage.update(c for c in record["cpus"] if isinstance(c, int))
        return usage

    def _stop_requested(self) -> str | None:
        if self._signalled is not None:
            return f"the supervisor received {signal.Signals(self._signalled).name}"
        try:
            text = (self.control / STOP_FILE).read_text(encoding="utf-8", errors="replace").strip()
        except FileNotFoundError:
            return None
        except OSError:
            text = ""
        return text or "on request"

    def _start_failed(self, err: Any, code: int, reason: str, program: str, exc: BaseException) -> None:
        message = f"cannot start {program!r}: {exc}"
        err.write(f"ecliptic: {message}\n".encode())
        err.flush()
        self._finish(code, reason, message)

    def _watch(self, pid: int, deadline: datetime) -> tuple[str, str | None]:
        reason, message = REASON_EXITED, None
        kill_at: float | None = None
        while True:
            self._reap()
            if self.child_code is not None:
                return reason, message
            if reason == REASON_EXITED:
                requested = self._stop_requested()
                if requested is not None:
                    reason, message = REASON_STOPPED, requested
                    signal_group(pid, signal.SIGTERM)
                    kill_at = time.monotonic() + STOP_GRACE
                elif utcnow() >= deadline:
                    reason = REASON_DEADLINE
                    signal_group(pid, signal.SIGTERM)
                    kill_at = time.monotonic() + DEADLINE_GRACE
            elif kill_at is not None and time.monotonic() >= kill_at:
                signal_group(pid, signal.SIGKILL)
                kill_at = None
            time.sleep(CHECK_INTERVAL)

    def _reap(self) -> None:
        """Collect every exited child, the command and any orphan adopted as subreaper."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child_pid:
                self.child_code = os.waitstatus_to_exitcode(status)

    def _clean_up_leftovers(self, pgid: int) -> None:
        """The run is the command: whatever it leaves running is stopped too, freeing its cores and memory.

        That covers its process group and, thanks to the subreaper, descendants that moved to a group of
        their own and were orphaned.
        """
        me = os.getpid()
        if not live_group_members(pgid) and not _live_children(me):
            return
        signal_group(pgid, signal.SIGTERM)
        for pid in _live_children(me):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        if self._reap_until_gone(pgid, timeout=LEFTOVER_GRACE):
            return
        signal_group(pgid, signal.SIGKILL)
        for pid in _live_children(me):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self._reap_until_gone(pgid, timeout=LEFTOVER_GRACE)

    def _reap_until_gone(self, pgid: int, *, timeout: float) -> bool:
        until = time.monotonic() + timeout
        while True:
            self._reap()
            if not live_group_members(pgid) and not _live_children(os.getpid()):
                # What was killed since the last reap is a zombie now: collect it before this process exits
                # and hands it to an init that may never reap.
                self._reap()
                return True
            if time.monotonic() >= until:
                return False
            time.sleep(0.05)

    def _finish(self, code: int | None, reason: str, message: str | None) -> None:
        result: dict[str, Any] = {
            "exit_code": code,
            "reason": reason,
            "started": format_instant(self.started),
            "finished": format_instant(utcnow()),
        }
        if message:
            result["message"] = message
        if self.deadline is not None:
            result["deadline"] = format_instant(self.deadline)
        write_json_atomic(self.control / EXIT_FILE, result)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ecliptic.platforms.supervisor <workdir>", file=sys.stderr)
        return 2
    workdir = Path(args[0]).absolute()
    try:
        fd = os.open(workdir / CONTROL_DIR / CLAIM_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return 0
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{os.getpid()}\n")
    return Supervisor(workdir).run()


if __name__ == "__main__":
    sys.exit(main())
