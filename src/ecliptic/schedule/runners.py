"""Running one run of a schedule: the runner kinds of :mod:`ecliptic.schedule.spec`, made to happen.

:func:`execute` is the one entry point. The scheduler core calls it from a thread of its own, once per run, and
it blocks until the run is over; a run's own failure (a non-zero exit, a missing program, an exception, a
timeout) is its result, never an exception.

Processes (``cmd``, ``python``, ``file``, ``entrypoint``) run in a session of their own with stdin from
``/dev/null`` and stdout/stderr appended to ``<log_dir>/<run_id>.out`` and ``.err``, so output of any size
never passes through memory. A run *is* its process group: on timeout or cancel the group gets SIGTERM and,
``kill_grace`` later, SIGKILL; processes the command leaves behind when it exits are stopped the same way.

``call`` runs in this process, on a helper thread; ``broker`` submits a request to an ExecutionBroker and
(by default) follows the session to its end; ``steps`` runs a list of these one after another.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import import_module
from pathlib import Path
from typing import IO, Any, Literal

from ecliptic.broker.client import BrokerClient, BrokerError, BrokerUnreachable, Format, Json
from ecliptic.broker.phases import TERMINAL, SessionPhase
from ecliptic.isotime import format_duration, format_instant, utcnow
from ecliptic.platforms.supervisor import signal_group
from ecliptic.schedule import pep723
from ecliptic.schedule.processes import kill_orphan, process_identity, supervise, wait_group_gone
from ecliptic.schedule.spec import (
    BrokerRunner,
    CallRunner,
    CommandRunner,
    EntrypointRunner,
    FileRunner,
    PythonRunner,
    ScheduleSpec,
    SingleRunner,
    StepsRunner,
    command_argv,
)

__all__ = ["RunContext", "RunResult", "execute", "kill_orphan", "process_identity"]

TAIL_CHARS = 4096
"""How much of stdout and stderr a result keeps (the full output is in the log files)."""

ERROR_CHARS = 500
"""The longest ``error`` line."""

BROKER_HTTP_TIMEOUT = 30.0
BROKER_POLL_MAX = 1.0
"""Seconds between polls of a broker session, after quick first polls."""

BROKER_UNREACHABLE_PATIENCE = 120.0
"""How long a session being waited for may be out of reach (a broker restarting, say) before the run fails."""

BROKER_LOG_LINES = 200

log = logging.getLogger(__name__)

RunOutcome = Literal["succeeded", "failed", "timed_out", "cancelled"]


def _nothing_started(pid: int | None, identity: str | None) -> None:
    return None


@dataclass
class RunContext:
    """Everything about one run that is not in the schedule's spec."""

    run_id: int
    schedule: str
    namespace: str
    scheduled_at: datetime
    attempt: int
    log_dir: Path
    """Full stdout and stderr go to ``<run_id>.out`` and ``<run_id>.err`` here (appended; created if needed)."""
    cancel: threading.Event = field(default_factory=threading.Event)
    """Set by the core to stop the run; the reason is appended to :attr:`cancel_reason` first."""
    cancel_reason: list[str] = field(default_factory=list)
    on_started: Callable[[int | None, str | None], None] = _nothing_started
    """Called once the run's process started, with its pid and :func:`process_identity`; (None, None) for
    runs without a process of their own (``call``, ``broker``). A step calls it for each step."""
    broker_url: str | None = None
    """The broker a ``broker`` runner without ``url`` talks to."""
    base_dir: Path | None = None
    """Relative ``file`` paths, request files and ``cwd`` are resolved against this (default: the current
    directory)."""


@dataclass
class RunResult:
    outcome: RunOutcome
    exit_code: int | None
    error: str | None
    """One line for people: ``exit status 3``, ``killed after timeout PT10S``, ``ValueError: bad input``."""
    stdout_tail: str
    stderr_tail: str
    started_at: datetime
    ended_at: datetime


def execute(
    spec: ScheduleSpec, ctx: RunContext, *, callable_override: Callable[..., Any] | None = None
) -> RunResult:
    """Run ``spec.run`` once and say how it went; blocks until the run (and its process group) is over.

    ``callable_override`` replaces the imported ``module:function`` of a ``call`` runner (the library registers
    in-process callables this way); other runners ignore it.
    """
    started = utcnow()
    if isinstance(spec.run, CallRunner) and spec.timeout is None:
        return _call_inline(spec.run, ctx, callable_override, started)
    out_path = ctx.log_dir / f"{ctx.run_id}.out"
    err_path = ctx.log_dir / f"{ctx.run_id}.err"
    try:
        ctx.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(out_path, "ab", buffering=0)  # noqa: SIM115 - closed below, after the run
        try:
            err = open(err_path, "ab", buffering=0)  # noqa: SIM115
        except BaseException:
            out.close()
            raise
    except OSError as exc:
        return RunResult(
            outcome="failed",
            exit_code=None,
            error=f"cannot write the run's logs in {ctx.log_dir}: {exc.strerror or exc}",
            stdout_tail="",
            stderr_tail="",
            started_at=started,
            ended_at=utcnow(),
        )
    with out, err:
        mark = os.fstat(out.fileno()).st_size, os.fstat(err.fileno()).st_size
        try:
            job = _Job(spec, ctx, out, err, out_path, err_path, callable_override)
            if ctx.cancel.is_set():
                ended = _Ended("cancelled", error=f"{job.cancel_error()} (before it started)")
            else:
                ended = _run(job, spec.run)
        except Exception as exc:  # a bug of ours: still a result, with the traceback in the run's log
            err.write(traceback.format_exc().encode("utf-8", "replace"))
            ended = _Ended("failed", error=f"ecliptic could not run it: {_one_line(exc)}")
        stdout_tail = ended.stdout_tail if ended.stdout_tail is not None else _tail(out_path, mark[0])
        stderr_tail = ended.stderr_tail if ended.stderr_tail is not None else _tail(err_path, mark[1])
    return RunResult(
        outcome=ended.outcome,
        exit_code=ended.exit_code,
        error=_clip(ended.error),
        stdout_tail=stdout_tail,
        stderr_tail=stderr_tail,
        started_at=started,
        ended_at=utcnow(),
    )


# -- plumbing ------------------------------------------------------------------------------------------------


@dataclass
class _Ended:
    outcome: RunOutcome
    exit_code: int | None = None
    error: str | None = None
    stdout_tail: str | None = None
    """None: the tail of what the log file got during this run (or step)."""
    stderr_tail: str | None = None


class _Job:
    """One :func:`execute` call: its spec and context, log files, environment, directory and deadline."""

    def __init__(
        self,
        spec: ScheduleSpec,
        ctx: RunContext,
        out: IO[bytes],
        err: IO[bytes],
        out_path: Path,
        err_path: Path,
        callable_override: Callable[..., Any] | None,
    ) -> None:
        self.spec = spec
        self.ctx = ctx
        self.out = out
        self.err = err
        self.out_path = out_path
        self.err_path = err_path
        self.callable_override = callable_override
        self.base = (ctx.base_dir or Path.cwd()).absolute()
        self.cwd = self.base if spec.cwd is None else self.base / Path(spec.cwd).expanduser()
        self.grace = max(spec.kill_grace.total_seconds(), 0.0)
        self.deadline = None if spec.timeout is None else time.monotonic() + spec.timeout.total_seconds()
        env = dict(os.environ)  # a copy: the scheduler's own environment is never changed
        env.update(
            ECLIPTIC_RUN_ID=str(ctx.run_id),
            ECLIPTIC_SCHEDULE=ctx.schedule,
            ECLIPTIC_NAMESPACE=ctx.namespace,
            ECLIPTIC_SCHEDULED_AT=format_instant(ctx.scheduled_at),
            ECLIPTIC_ATTEMPT=str(ctx.attempt),
        )
        env.update(spec.env)
        self.env = env

    # -- logs
    def mark(self) -> tuple[int, int]:
        """Where the log files end now: tails are taken from here on."""
        return os.fstat(self.out.fileno()).st_size, os.fstat(self.err.fileno()).st_size

    def tails(self, mark: tuple[int, int], ended: _Ended) -> tuple[str, str]:
        stdout = ended.stdout_tail if ended.stdout_tail is not None else _tail(self.out_path, mark[0])
        stderr = ended.stderr_tail if ended.stderr_tail is not None else _tail(self.err_path, mark[1])
        return stdout, stderr

    def write_out(self, text: str) -> None:
        self.out.write(text.encode("utf-8", "replace"))

    def write_err(self, text: str) -> None:
        self.err.write(text.encode("utf-8", "replace"))

    def note(self, text: str) -> None:
        """A line from ecliptic itself in the run's stderr log."""
        self.write_err(f"ecliptic: {text}\n")

    # -- time
    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def expired(self) -> bool:
        remaining = self.remaining()
        return remaining is not None and remaining <= 0

    def timeout_text(self) -> str:
        assert self.spec.timeout is not None
        return format_duration(self.spec.timeout)

    def cancel_error(self) -> str:
        reasons = [r for r in self.ctx.cancel_reason if r]
        return f"cancelled: {reasons[0]}" if reasons else "cancelled"

    def stopped(self, why: str) -> _Ended | None:
        """A cancelled or timed-out ending if the run must stop now (between steps, before starting)."""
        if self.ctx.cancel.is_set():
            return _Ended("cancelled", error=f"{self.cancel_error()} ({why})")
        if self.expired():
            return _Ended("timed_out", error=f"timeout {self.timeout_text()} reached ({why})")
        return None

    def started(self, pid: int | None, identity: str | None) -> None:
        try:
            self.ctx.on_started(pid, identity)
        except Exception:  # the core's callback failing must not leave the process unsupervised
            self.note("on_started failed:\n" + traceback.format_exc().rstrip())

    def resolve(self, path: str) -> Path:
        return self.base / Path(path).expanduser()


def _tail(path: Path, offset: int = 0) -> str:
    """The last :data:`TAIL_CHARS` characters written to ``path`` after ``offset``, reading only the end."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            start = max(offset, size - TAIL_CHARS * 4)  # UTF-8 needs at most 4 bytes a character
            fh.seek(start)
            data = fh.read(size - start)
    except OSError:
        return ""
    return data.decode("utf-8", "replace")[-TAIL_CHARS:]


def _clip_tail(text: str) -> str:
    return text[-TAIL_CHARS:]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _clip(error: str | None) -> str | None:
    if error is None:
        return None
    line = " ".join(error.split())
    return line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 1] + "…"


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


_TRACEBACK = "Traceback (most recent call last):"


def _python_error(stderr_tail: str) -> str | None:
    """The exception line (``ValueError: bad``) of the last traceback in a Python process' stderr."""
    at = stderr_tail.rfind(_TRACEBACK)
    if at < 0:
        return None
    for line in stderr_tail[at + len(_TRACEBACK) :].splitlines():
        if line.strip() and not line[0].isspace():
            return line.strip()
    return None


# -- dispatch ------------------------------------------------------------------------------------------------


def _run(job: _Job, runner: SingleRunner | StepsRunner) -> _Ended:
    if isinstance(runner, StepsRunner):
        return _steps(job, runner)
    if isinstance(runner, CommandRunner):
        return _command(job, runner)
    if isinstance(runner, PythonRunner):
        return _spawn(job, [sys.executable, "-c", runner.python], python=True)
    if isinstance(runner, FileRunner):
        return _file(job, runner)
    if isinstance(runner, EntrypointRunner):
        return _entrypoint(job, runner)
    if isinstance(runner, CallRunner):
        return _call(job, runner)
    return _broker(job, runner)


# -- processes -----------------------------------------------------------------------------------------------


def _spawn(
    job: _Job,
    argv: list[str],
    *,
    extra_env: Mapping[str, str] | None = None,
    preface: str | None = None,
    python: bool = False,
) -> _Ended:
    """Start ``argv`` in a session of its own and supervise it and its process group to the end."""
    if not job.cwd.is_dir():
        message = f"working directory not found: {job.cwd}"
        job.note(message)
        return _Ended("failed", error=message)
    env = job.env
    if extra_env:
        env = {**env, **{k: v for k, v in extra_env.items() if k not in job.spec.env}}
    err_mark = os.fstat(job.err.fileno()).st_size
    if preface:
        job.write_err(preface if preface.endswith("\n") else preface + "\n")
    program = argv[0]
    try:
        proc = subprocess.Popen(
            argv,
            cwd=str(job.cwd),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=job.out,
            stderr=job.err,
            close_fds=True,
            start_new_session=True,
        )
    except OSError as exc:
        about = exc.filename if isinstance(exc.filename, str) else program
        if about != program:  # the directory, say, rather than the program
            message = f"cannot start {program}: {exc.strerror or exc}: {about}"
        elif isinstance(exc, FileNotFoundError):
            message = f"program not found: {program}"
        elif isinstance(exc, PermissionError):
            message = f"program not executable: {program}"
        else:
            message = f"cannot start {program}: {exc.strerror or exc}"
        job.note(message)
        return _Ended("failed", error=message)

    try:
        job.started(proc.pid, process_identity(proc.pid))
        ending = supervise(proc, cancel=job.ctx.cancel, deadline=job.deadline, grace=job.grace)
    except BaseException:
        # Interrupted while waiting (KeyboardInterrupt, say): never leave the group running unsupervised.
        signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)
        wait_group_gone(proc.pid, 2.0)
        raise

    code = ending.returncode
    if ending.leftovers and ending.stopped is None:
        job.note(
            f"the command exited leaving {ending.leftovers} process(es) of its group running; "
            "they were stopped" + (" with SIGKILL" if ending.escalated else "")
        )
    forced = f"; SIGKILL after kill_grace {format_duration(job.spec.kill_grace)}" if ending.escalated else ""
    if ending.stopped == "timeout":
        return _Ended("timed_out", code, f"killed after timeout {job.timeout_text()}{forced}")
    if ending.stopped == "cancel":
        return _Ended("cancelled", code, f"{job.cancel_error()}{forced}")
    if code == 0:
        return _Ended("succeeded", 0)
    error = _describe_exit(code)
    if python:
        exception = _python_error(_tail(job.err_path, err_mark))
        if exception:
            error = f"{exception} ({error})"
    return _Ended("failed", code, error)


def _command(job: _Job, runner: CommandRunner) -> _Ended:
    try:
        argv = command_argv(runner)
    except ValueError as exc:  # shlex: an unclosed quote
        return _Ended("failed", error=f"cannot split the command: {exc}")
    if not argv:
        return _Ended("failed", error="the command is empty")
    return _spawn(job, argv)


def find_uv(env: Mapping[str, str]) -> str | None:
    """``uv`` on the run's PATH, else the one installed beside this interpreter (a virtual environment's)."""
    found = shutil.which("uv", path=env.get("PATH"))
    if found:
        return found
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


_FILE_BOOTSTRAP = """\
import asyncio, importlib.util, inspect, json, os, sys
path, name, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.argv = [path, *sys.argv[4:]]
sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
spec = importlib.util.spec_from_file_location("__ecliptic_task__", path)
if spec is None or spec.loader is None:
    raise ImportError(f"cannot load {path} as a Python module")
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
target = module
for part in name.split("."):
    if not hasattr(target, part):
        raise AttributeError(f"{path} has no function {name!r}")
    target = getattr(target, part)
result = target(**kwargs)
if inspect.isawaitable(result):
    async def _await(awaitable):
        return await awaitable
    asyncio.run(_await(result))
"""


def _file(job: _Job, runner: FileRunner) -> _Ended:
    path = job.resolve(runner.file)
    if not path.exists():
        message = f"file not found: {path}"
        job.note(message)
        return _Ended("failed", error=message)
    if path.is_dir():
        message = f"{path} is a directory, not a file to run"
        job.note(message)
        return _Ended("failed", error=message)
    if path.suffix != ".py":
        if runner.function is not None:
            return _Ended("failed", error=f"function {runner.function!r} needs a Python (.py) file: {path}")
        if not os.access(path, os.X_OK):
            message = (
                f"{path} is not executable: make it so (chmod +x) or run it through its interpreter "
                f"(cmd: [sh, {runner.file}])"
            )
            job.note(message)
            return _Ended("failed", error=message)
        return _spawn(job, [str(path), *runner.args])

    try:
        meta = pep723.read(path)
    except (pep723.ScriptMetadataError, OSError) as exc:
        message = str(exc)
        job.note(message)
        return _Ended("failed", error=message)
    uv = find_uv(job.env)
    use_uv = meta is not None and meta.wants_uv and uv is not None
    preface = None
    if meta is not None and meta.dependencies and uv is None:
        preface = (
            f"ecliptic: warning: {path.name} declares dependencies ({', '.join(meta.dependencies)}) "
            f"but uv is not installed: running it with {sys.executable} as it is"
        )
    extra = {"UV_NO_PROGRESS": "1"} if use_uv else None

    if runner.function is None:
        if use_uv:
            assert uv is not None
            argv = [uv, "run", "--script", str(path), *runner.args]
        else:
            argv = [sys.executable, str(path), *runner.args]
        return _spawn(job, argv, extra_env=extra, preface=preface, python=True)

    bootstrap = [
        "-c",
        _FILE_BOOTSTRAP,
        str(path),
        runner.function,
        json.dumps(runner.kwargs, default=str),
        *runner.args,
    ]
    if use_uv:
        assert uv is not None and meta is not None
        argv = [uv, "run", "--no-project"]
        if meta.requires_python:
            argv += ["--python", meta.requires_python]
        for dependency in meta.dependencies:
            argv += ["--with", dependency]
        argv += ["python", *bootstrap]
    else:
        argv = [sys.executable, *bootstrap]
    return _spawn(job, argv, extra_env=extra, preface=preface, python=True)


_ENTRYPOINT_BOOTSTRAP = """\
import asyncio, importlib, inspect, json, sys
base, ref, args, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
sys.argv = [ref]
sys.path.insert(0, base)
module_name, _, name = ref.partition(":")
target = importlib.import_module(module_name)
for part in name.split("."):
    if not hasattr(target, part):
        raise AttributeError(f"module {module_name!r} has no function {name!r}")
    target = getattr(target, part)
result = target(*args, **kwargs)
if inspect.isawaitable(result):
    async def _await(awaitable):
        return await awaitable
    asyncio.run(_await(result))
"""


def _entrypoint(job: _Job, runner: EntrypointRunner) -> _Ended:
    base = job.ctx.base_dir.absolute() if job.ctx.base_dir is not None else job.cwd
    argv = [
        sys.executable,
        "-c",
        _ENTRYPOINT_BOOTSTRAP,
        str(base),
        runner.entrypoint,
        json.dumps(runner.args, default=str),
        json.dumps(runner.kwargs, default=str),
    ]
    return _spawn(job, argv, python=True)


# -- in-process calls ----------------------------------------------------------------------------------------

_CALLABLES: dict[str, Callable[..., Any]] = {}
_CALLABLES_LOCK = threading.Lock()


def resolve_callable(ref: str, base_dir: Path | None = None) -> Callable[..., Any]:
    """``module:function`` (dotted function names too) imported into this process, cached by ``ref``.

    A module not found on ``sys.path`` is looked for in ``base_dir`` too, which is then appended to
    ``sys.path`` (appended, so it never shadows an installed module).
    """
    with _CALLABLES_LOCK:
        found = _CALLABLES.get(ref)
        if found is not None:
            return found
        module_name, _, name = ref.partition(":")
        try:
            module = import_module(module_name)
        except ModuleNotFoundError as exc:
            folder = str(base_dir.absolute()) if base_dir is not None else None
            top = module_name.split(".")[0]
            if folder is None or exc.name != top or folder in sys.path:
                raise
            sys.path.append(folder)
            module = import_module(module_name)
        target: Any = module
        for part in name.split("."):
            if not hasattr(target, part):
                raise AttributeError(f"module {module_name!r} has no function {name!r}")
            target = getattr(target, part)
        if not callable(target):
            raise TypeError(f"{ref} is a {type(target).__name__}, not something to call")
        _CALLABLES[ref] = target
        return target  # type: ignore[no-any-return]


def _call(job: _Job, runner: CallRunner) -> _Ended:
    """Call a function in this process, on a helper daemon thread.

    The thread lets the run end on timeout or cancel while the call is still busy, but a Python thread cannot
    be killed: the call is abandoned and goes on until it returns by itself, its result ignored. Output of the
    call is not captured (it is the scheduler's own stdout); an exception's traceback goes to the run's stderr.
    """
    try:
        target = job.callable_override or resolve_callable(runner.call, job.ctx.base_dir)
    except Exception as exc:
        trace = traceback.format_exc()
        job.write_err(trace)
        return _Ended("failed", error=_one_line(exc), stdout_tail="", stderr_tail=_clip_tail(trace))

    done = threading.Event()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            result = target(*runner.args, **runner.kwargs)
            if inspect.isawaitable(result):
                asyncio.run(_awaited(result))
        except BaseException as exc:  # SystemExit and KeyboardInterrupt of the call are its result too
            outcome["exc"] = exc
            outcome["trace"] = traceback.format_exc()
        finally:
            done.set()

    thread = threading.Thread(target=work, name=f"ecliptic-call-{job.ctx.run_id}", daemon=True)
    job.started(None, None)
    thread.start()
    while not done.wait(_slice(job)):
        if job.ctx.cancel.is_set():
            job.note(f"{job.cancel_error()}; the call goes on in its abandoned thread until it returns")
            return _Ended("cancelled", error=job.cancel_error(), stdout_tail="", stderr_tail="")
        if job.expired():
            job.note(f"still running after timeout {job.timeout_text()}; the call cannot be killed")
            return _Ended(
                "timed_out",
                error=f"still running after timeout {job.timeout_text()} (an in-process call cannot be "
                "killed: its thread was abandoned)",
                stdout_tail="",
                stderr_tail="",
            )
    raised = outcome.get("exc")
    if raised is None:
        return _Ended("succeeded", stdout_tail="", stderr_tail="")
    if isinstance(raised, SystemExit) and raised.code in (None, 0):
        return _Ended("succeeded", 0, stdout_tail="", stderr_tail="")
    trace = str(outcome.get("trace", ""))
    job.write_err(trace)
    if isinstance(raised, SystemExit):
        code = raised.code if isinstance(raised.code, int) else 1
        return _Ended("failed", code, f"exit status {code}", stdout_tail="", stderr_tail=_clip_tail(trace))
    return _Ended("failed", error=_one_line(raised), stdout_tail="", stderr_tail=_clip_tail(trace))


def _call_inline(
    runner: CallRunner, ctx: RunContext, override: Callable[..., Any] | None, started: datetime
) -> RunResult:
    """An in-process call without a timeout: on the caller's thread, with no log files unless it fails.

    This is the path of library callables at high rates: no helper thread, no files, no environment copy (it
    costs a few microseconds instead of milliseconds). Without a timeout nothing could end the run early
    anyway; a cancel that comes while it runs is noted, and the call runs to its end.
    """

    def result(
        outcome: RunOutcome, code: int | None = None, error: str | None = None, trace: str = ""
    ) -> RunResult:
        if trace:
            try:
                ctx.log_dir.mkdir(parents=True, exist_ok=True)
                with open(ctx.log_dir / f"{ctx.run_id}.err", "a", encoding="utf-8") as err:
                    err.write(trace)
            except OSError:
                log.warning("cannot write the traceback of run %s in %s", ctx.run_id, ctx.log_dir)
        return RunResult(outcome, code, _clip(error), "", _clip_tail(trace), started, utcnow())

    if ctx.cancel.is_set():
        reason = ctx.cancel_reason[0] if ctx.cancel_reason else "cancelled"
        return result("cancelled", error=f"cancelled: {reason} (before it started)")
    try:
        target = override or resolve_callable(runner.call, ctx.base_dir)
    except Exception as exc:
        return result("failed", error=_one_line(exc), trace=traceback.format_exc())
    ctx.on_started(None, None)
    try:
        value = target(*runner.args, **runner.kwargs)
        if inspect.isawaitable(value):
            asyncio.run(_awaited(value))
    except SystemExit as exc:
        if exc.code in (None, 0):
            return result("succeeded", 0)
        code = exc.code if isinstance(exc.code, int) else 1
        return result("failed", code, f"exit status {code}", traceback.format_exc())
    except BaseException as exc:  # KeyboardInterrupt of the call is its result too
        return result("failed", error=_one_line(exc), trace=traceback.format_exc())
    return result("succeeded")


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _slice(job: _Job) -> float:
    remaining = job.remaining()
    return 0.05 if remaining is None else min(0.05, max(remaining, 0.001))


# -- broker --------------------------------------------------------------------------------------------------


def _broker(job: _Job, runner: BrokerRunner) -> _Ended:
    url = runner.url or job.ctx.broker_url
    if not url:
        return _Ended("failed", error="no broker to send the request to: give the runner a url")
    body: Mapping[str, Any] | str
    fmt: Format = "json"
    if isinstance(runner.broker, dict):
        body = runner.broker
    else:
        from ecliptic.cli.request_file import RequestFileError, read_request

        path = job.resolve(runner.broker)
        try:
            document = read_request(str(path))
        except RequestFileError as exc:
            job.note(
                exc.message
                + (f"\n{exc.excerpt}" if exc.excerpt else "")
                + (f"\nhint: {exc.hint}" if exc.hint else "")
            )
            return _Ended("failed", error=exc.message)
        body, fmt = document.text, document.fmt

    def say(line: str) -> None:
        job.write_out(f"ecliptic: {line}\n")

    remaining = job.remaining()
    http_timeout = BROKER_HTTP_TIMEOUT if remaining is None else max(1.0, min(BROKER_HTTP_TIMEOUT, remaining))
    session_uuid: str | None = None
    with BrokerClient(url, timeout=http_timeout) as client:
        try:
            offerset = client.submit(body, fmt)
            offers = [o for o in offerset.get("offers") or [] if isinstance(o, dict)]
            if offerset.get("result") != "YES" or not offers:
                why = "; ".join(_messages(offerset)) or "no reason given"
                say(f"no offer from {client.url}: {why}")
                return _Ended("failed", error=f"the broker made no offer: {why}")
            session_uuid = _uuid(offers[0])
            say(f"offer set {_uuid(offerset)}: {len(offers)} offer(s); accepting session {session_uuid}")
            session = client.accept(session_uuid)
            job.started(None, None)
            say(f"session {session_uuid}: {session.get('phase')}")
            if not runner.wait:
                return _Ended("succeeded")
            return _follow(job, client, session_uuid, session)
        except BrokerUnreachable as exc:
            job.note(str(exc))
            if job.expired():  # the HTTP timeout was cut to what was left of the run's
                return _Ended("timed_out", error=f"timeout {job.timeout_text()} reached: {exc}")
            return _Ended("failed", error=str(exc))
        except BrokerError as exc:
            where = f" (session {session_uuid})" if session_uuid else ""
            message = f"the broker answered {exc.status}{where}: {exc.message}"
            job.note(message)
            return _Ended("failed", error=message)


def _follow(job: _Job, client: BrokerClient, session_uuid: str, session: Json) -> _Ended:
    """Poll the session until it ends, the run times out or it is cancelled (then the session is cancelled)."""
    polls = 0
    unreachable_since: float | None = None
    stopped: _Ended | None = None
    while str(session.get("phase")) not in TERMINAL:
        stopped = job.stopped(f"session {session_uuid} was {session.get('phase')}")
        if stopped is not None:
            break
        delay = min(BROKER_POLL_MAX, 0.1 * (polls + 1))
        remaining = job.remaining()
        if remaining is not None:
            delay = max(0.001, min(delay, remaining))
        if job.ctx.cancel.wait(delay):
            continue
        polls += 1
        try:
            session = client.session(session_uuid)
            unreachable_since = None
        except BrokerUnreachable as exc:
            now = time.monotonic()
            unreachable_since = unreachable_since or now
            if now - unreachable_since > BROKER_UNREACHABLE_PATIENCE:
                raise
            if polls == 1 or polls % 10 == 0:
                job.note(f"{exc} (still trying)")
    if stopped is not None:
        if stopped.outcome == "timed_out":
            stopped.error = f"killed after timeout {job.timeout_text()} (session {session_uuid} cancelled)"
        try:
            client.cancel(session_uuid)
            job.write_out(f"ecliptic: session {session_uuid}: CANCELLED ({stopped.error})\n")
        except (BrokerError, BrokerUnreachable) as exc:
            job.note(f"could not cancel session {session_uuid}: {exc}")
        return stopped

    phase = str(session.get("phase"))
    job.write_out(f"ecliptic: session {session_uuid}: {phase}\n")
    for stream, write in (("stdout", job.write_out), ("stderr", job.write_err)):
        try:
            text = client.logs(session_uuid, stream, tail=BROKER_LOG_LINES)
        except (BrokerError, BrokerUnreachable):
            continue
        if text:
            write(text if text.endswith("\n") else text + "\n")
    code = _session_exit_code(session)
    if phase == SessionPhase.COMPLETED:
        return _Ended("succeeded", code)
    reason = (_messages(session) or [phase.lower()])[-1]
    return _Ended("failed", code, f"session {session_uuid} {phase}: {reason}")


def _meta(item: Json) -> Json:
    meta = item.get("meta")
    return meta if isinstance(meta, dict) else {}


def _uuid(item: Json) -> str:
    return str(_meta(item).get("uuid") or "")


def _messages(item: Json) -> list[str]:
    found = _meta(item).get("messages")
    if not isinstance(found, list):
        return []
    return [str(m.get("message")) for m in found if isinstance(m, dict) and m.get("message")]


def _session_exit_code(session: Json) -> int | None:
    """The executable's exit code, which the broker reports as the ``code`` value of a message."""
    found = _meta(session).get("messages")
    for message in reversed(found if isinstance(found, list) else []):
        values = message.get("values") if isinstance(message, dict) else None
        if isinstance(values, dict) and values.get("code") is not None:
            with contextlib.suppress(TypeError, ValueError):
                return int(values["code"])
    return None


# -- steps ---------------------------------------------------------------------------------------------------


def _steps(job: _Job, runner: StepsRunner) -> _Ended:
    """The steps in order; the first that does not succeed ends the run. Tails are the last step's, after a
    summary of every step so far."""
    summary: list[str] = []
    last: tuple[str, _Ended, tuple[int, int]] | None = None
    total = len(runner.steps)
    for number, step in enumerate(runner.steps, 1):
        label = f"step {number}/{total}" + (f" {step.name}" if step.name else "")
        if not step.if_:
            summary.append(f"{label}: skipped (if: false)")
            continue
        header = f"--- {label} ---\n"
        job.write_out(header)
        job.write_err(header)
        mark = job.mark()
        ended = job.stopped(f"before {label}") or _run(job, step.run)
        summary.append(f"{label}: {ended.outcome}" + (f" ({_clip(ended.error)})" if ended.error else ""))
        last = (label, ended, mark)
        if ended.outcome != "succeeded":
            break
    if last is None:
        return _Ended("succeeded", stdout_tail="\n".join(summary) + "\n", stderr_tail="")
    label, ended, mark = last
    stdout, stderr = job.tails(mark, ended)
    head = "\n".join(summary) + f"\n--- {label} ---\n"
    error = ended.error if ended.outcome == "succeeded" or ended.error is None else f"{label}: {ended.error}"
    if ended.outcome != "succeeded" and error is None:
        error = f"{label}: {ended.outcome}"
    return _Ended(
        ended.outcome,
        ended.exit_code,
        error,
        stdout_tail=_with_head(head, stdout),
        stderr_tail=_with_head(f"--- {label} ---\n", stderr),
    )


def _with_head(head: str, tail: str) -> str:
    if len(head) >= TAIL_CHARS:
        return head[-TAIL_CHARS:]
    return head + tail[-(TAIL_CHARS - len(head)) :] if tail else head
