"""The scheduler commands: run, preview, namespaces, jobs, runs, pause, resume, trigger, delete.

They work on the store directly (the settings' database: a SQLite file in the data directory by default,
``ECLIPTIC_DATABASE_URL`` for PostgreSQL), no server needed, like restic on a repository. ``ecliptic run`` also
starts a scheduler instance in the foreground; the other commands only write rows, which whichever scheduler
instance owns a schedule (an ``ecliptic run``, ``serve`` or ``worker`` process) acts on within a tick.

How a run is given on the command line:

- ``--command TEXT`` runs TEXT through ``sh -c`` (so pipes, ``&&`` and ``$VARS`` work), unless TEXT starts with
  a runner kind (``python:``, ``cmd:``, ``file:`` …), which then applies;
- after ``--``: ``cmd:PROGRAM ARGS`` runs the program without a shell (the words are kept as given),
  ``sh:TEXT`` through the shell, ``python:CODE`` a snippet in a fresh interpreter, ``file:task.py`` a file,
  ``entrypoint:pkg.mod:fn`` an entry point; words without a kind are a command without a shell.

Exit codes:

- 0: done; also when ``ecliptic run`` of recurring schedules is stopped with Ctrl-C or SIGTERM, which is how it
  is meant to end;
- 1: the store cannot be opened or used;
- 2: the input is wrong: a bad option or SPEC, a timetable with problems (each printed as
  ``file:line:col: field: message``), a JOB that names no schedule or several;
- a run of once-jobs (``--when once``, or a file of once-triggers) exits with the job's status like
  ``timeout(1)`` does: its exit code, 1 when it failed without one, 124 when it timed out, 128+N when a signal N
  killed it, and 130 (SIGINT) or 143 (SIGTERM) when it was interrupted before it ended. With several once-jobs:
  0 if all succeeded, else 1.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import queue
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from ecliptic.cli import render
from ecliptic.cli import schedule_render as show
from ecliptic.config import Settings, SettingsError, get_settings
from ecliptic.humantime import relative
from ecliptic.isotime import utcnow

# The scheduler and the store are imported where they are used: `ecliptic --help` and the client commands
# should not pay for SQLAlchemy, alembic and the scheduler core at every start.
if TYPE_CHECKING:
    from rich.live import Live

    from ecliptic.schedule.assembly import SchedulerParts
    from ecliptic.schedule.service import ApplyResult, SchedulerService
    from ecliptic.schedule.spec import AnyTrigger, RunView, ScheduleSpec, ScheduleView
    from ecliptic.store import Database

ACTOR = "cli"
RUNNER_KINDS = ("cmd", "sh", "shell", "python", "py", "file", "entrypoint", "call", "broker")
_WORD_KINDS = ("cmd", "sh", "shell", "")
"""Kinds whose trailing words are argv words: joined with shell quoting, so each word stays one word."""

EXIT_TIMEOUT = 124
DEFAULT_FILE = "ecliptic.yaml"
"""The timetable ``ecliptic run`` reads without --file (``timetable.DEFAULT_FILE``, repeated for the help)."""


# -- plumbing ------------------------------------------------------------------------------------------------
def _console(*, stderr: bool = False) -> Console:
    # Made per call, not at import: the console must write to whatever sys.stdout is now (tests swap it).
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 200
    return console


def _fail(message: str, code: int = 2, *, hint: str | None = None) -> NoReturn:
    err = _console(stderr=True)
    err.print(Text.assemble(("error: ", "bold red"), message))
    if hint:
        err.print(Text.assemble(("hint: ", "bold cyan"), hint))
    raise typer.Exit(code)


def _settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        _fail(str(exc))


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


@contextlib.contextmanager
def _store() -> Iterator[tuple[Settings, Database]]:
    """The settings and the store, brought to the newest schema; a store that cannot be opened exits 1."""
    from sqlalchemy.exc import SQLAlchemyError

    from ecliptic.store import Database, upgrade

    settings = _settings()
    url = settings.resolved_database_url()
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(url)
    except (OSError, SQLAlchemyError) as exc:
        _fail(f"cannot open the store {_safe_url(url)}: {exc}", 1)
    try:
        try:
            upgrade(db)
        except (OSError, SQLAlchemyError) as exc:
            _fail(f"cannot open the store {_safe_url(url)}: {exc}", 1)
        with _refused():
            yield settings, db
    finally:
        db.dispose()


@contextlib.contextmanager
def _refused() -> Iterator[None]:
    """A schedule the service cannot find or tell apart, or a change it refuses: one red line, exit 2."""
    from sqlalchemy.exc import SQLAlchemyError

    from ecliptic.schedule.service import ScheduleError

    try:
        yield
    except ScheduleError as exc:
        _fail(exc.message)
    except SQLAlchemyError as exc:
        _fail(f"the store failed: {exc}", 1)


def _service(db: Database) -> SchedulerService:
    from ecliptic.schedule.service import SchedulerService

    return SchedulerService(db)


def _print_json(data: Any) -> None:
    typer.echo(render.as_json(data))


def _ref(view: ScheduleView) -> str:
    return f"{view.namespace}/{view.name}"


# -- building schedules from options -------------------------------------------------------------------------
def _when(text: str | None, second: str | None) -> AnyTrigger | None:
    from ecliptic.schedule.spec import CronTrigger, parse_when

    if text is None:
        if second is not None:
            _fail(
                "--second goes with --when and a cron expression", hint="--when '* * * * *' --second '*/10'"
            )
        return None
    try:
        trigger = parse_when(text)
    except ValueError as exc:
        _fail(str(exc))
    if second is not None:
        if not isinstance(trigger, CronTrigger):
            _fail(
                f"--second goes with a cron expression, not {text!r}",
                hint="--when '* * * * *' --second '*/10'",
            )
        trigger = trigger.model_copy(update={"second": second})
    return trigger


@dataclass
class _Overrides:
    """Options that apply to every job: of the command, or of each job of a file."""

    timezone: str | None = None
    retries: int | None = None
    timeout: timedelta | None = None
    overlap: str | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.timezone, self.retries, self.timeout, self.overlap))

    def apply(self, spec: ScheduleSpec) -> ScheduleSpec:
        if not self:
            return spec
        from pydantic import ValidationError

        from ecliptic.schedule import timetable
        from ecliptic.schedule.spec import ScheduleSpec

        data = spec.model_dump(mode="json", by_alias=True)
        if self.timezone is not None:
            data["timezone"] = self.timezone
        if self.retries is not None:
            data["retry"] = {**data.get("retry", {}), "max": self.retries}
        if self.timeout is not None:
            data["timeout"] = self.timeout.total_seconds()
        if self.overlap is not None:
            data["overlap"] = self.overlap
        try:
            return ScheduleSpec.model_validate(data)
        except ValidationError as exc:
            _fail(f"job {spec.name}: {timetable.error_text(exc)}")


def derive_name(run_text: str) -> str:
    """A schedule name from a command: ``echo hello`` → ``echo-hello``, ``file:jobs/task.py`` → ``task.py``."""
    head, sep, rest = run_text.partition(":")
    kind = head.strip().lower() if sep else ""
    text = run_text
    if kind in ("cmd", "sh", "shell"):
        text = rest
    elif kind == "file":
        text = Path(rest.strip().split()[0] if rest.strip() else "file").name
    name = re.sub(r"[^A-Za-z0-9_.@]+", "-", text).strip("-_.@")
    name = name[:64].rstrip("-_.@")
    return name if name and name[0].isalnum() else "job"


def join_words(words: list[str]) -> str:
    """The words after ``--`` as one runner shorthand: ``cmd:echo`` ``a b`` → ``cmd:echo 'a b'``."""
    if len(words) == 1:
        return words[0]
    head = words[0]
    kind = head.partition(":")[0].strip().lower() if ":" in head else ""
    if kind in _WORD_KINDS or kind not in RUNNER_KINDS:
        return " ".join([head, *(shlex.quote(word) for word in words[1:])])
    return " ".join(words)


def _command_text(command: str | None, words: list[str]) -> str | None:
    """The runner shorthand of ``--command`` (``sh:`` unless it names a kind) or of the words after ``--``."""
    if command is None:
        return join_words(words) if words else None
    if words:  # `--command echo hello`, as Supertask's backlog writes it
        command = " ".join([command, *(shlex.quote(word) for word in words)])
    head, sep, _ = command.partition(":")
    if sep and head.strip().lower() in RUNNER_KINDS:
        return command
    return f"sh:{command}"


# -- what `run` set up ---------------------------------------------------------------------------------------
@dataclass
class _Plan:
    """The schedules `ecliptic run` made sure of, ready to show and to wait for."""

    namespace: str
    ephemeral: bool
    origin: dict[str, Any]
    specs: list[ScheduleSpec]
    source: str
    """What the namespace was derived from (a file path, "the command"), or where its name came from."""
    prune: bool = True

    @property
    def once(self) -> bool:
        from ecliptic.schedule.spec import OnceTrigger

        return all(isinstance(spec.trigger, OnceTrigger) for spec in self.specs)


def _plan_file(
    path: Path,
    namespace: str | None,
    trigger: AnyTrigger | None,
    weekdays: str,
    overrides: _Overrides,
    quiet: bool,
) -> _Plan:
    from ecliptic.schedule import timetable

    try:
        table = timetable.load(
            path,
            namespace=namespace,
            when=trigger,
            supertask_weekdays="aps" if weekdays == "aps" else "cron",
        )
    except timetable.TimetableError as exc:
        err = _console(stderr=True)
        for problem in exc.problems:
            err.print(Text(problem.render(), style="yellow" if problem.level == "warning" else "red"))
        count = sum(1 for p in exc.problems if p.level != "warning")
        err.print(
            Text.assemble(
                ("error: ", "bold red"),
                f"{path} has {count} problem{'s' if count != 1 else ''}; nothing changed",
            )
        )
        raise typer.Exit(2) from None
    err = _console(stderr=True)
    for problem in table.warnings:
        err.print(Text(problem.render(), style="yellow"))
    if namespace is not None:
        source = "--ns"
    elif table.ephemeral:
        source = str(table.path)
    else:
        source = "the file"
    return _Plan(
        namespace=table.namespace,
        ephemeral=table.ephemeral,
        origin=table.namespace_origin,
        specs=[overrides.apply(spec) for spec in table.schedules],
        source=source,
    )


def _plan_command(
    run_text: str, name: str | None, namespace: str | None, trigger: AnyTrigger, overrides: _Overrides
) -> _Plan:
    from pydantic import ValidationError

    from ecliptic.schedule import namespaces as ns_origin
    from ecliptic.schedule import timetable
    from ecliptic.schedule.spec import ScheduleSpec, parse_run

    try:
        runner = parse_run(run_text)
    except ValueError as exc:
        _fail(timetable.error_text(exc))
    resource = f"command:{run_text}"
    ns = namespace or ns_origin.ephemeral_namespace(resource)
    try:
        spec = ScheduleSpec(name=name or derive_name(run_text), namespace=ns, trigger=trigger, run=runner)
    except ValidationError as exc:
        _fail(timetable.error_text(exc))
    return _Plan(
        namespace=ns,
        ephemeral=namespace is None,
        origin=ns_origin.origin(resource, source="ecliptic run"),
        specs=[overrides.apply(spec)],
        source="--ns" if namespace is not None else "the command",
        # A command given a namespace of its own joins it: the namespace's other schedules stay.
        prune=namespace is None,
    )


def _namespace_line(plan: _Plan) -> Text:
    line = Text.assemble("namespace ", (plan.namespace, "bold"))
    if plan.ephemeral:
        line.append(
            f" (ephemeral: derived from host, user and {plan.source}; --ns NAME gives it a name)", style="dim"
        )
    else:
        line.append(f" (from {plan.source})", style="dim")
    return line


def _applied_line(result: ApplyResult) -> Text:
    parts = [
        f"{len(names)} {label}"
        for names, label in (
            (result.created, "new"),
            (result.updated, "changed"),
            (result.unchanged, "unchanged"),
        )
        if names
    ]
    line = Text("jobs: " + (", ".join(parts) if parts else "none"))
    if result.removed:
        line.append(
            f"; removed {len(result.removed)} no longer there ({', '.join(result.removed)})", style="dim"
        )
    return line


def _preview_jobs(specs: list[ScheduleSpec], now: datetime, count: int) -> list[show.PlannedJob]:
    from ecliptic.schedule import triggers
    from ecliptic.schedule.views import describe_spec

    jobs = []
    for spec in specs:
        try:
            fires = triggers.preview(spec, count, after=now, created=now)
        except Exception as exc:  # a trigger the model accepted but the engine cannot compute: say so
            jobs.append(
                show.PlannedJob(spec.name, describe_spec(spec), spec.zone, [], f"cannot compute: {exc}")
            )
            continue
        jobs.append(show.PlannedJob(spec.name, describe_spec(spec), spec.zone, list(fires)))
    return jobs


# -- the foreground scheduler --------------------------------------------------------------------------------
def exit_status(run: RunView) -> int:
    """A finished run as a process exit status, the way ``timeout(1)`` reports one."""
    if run.state == "succeeded":
        return 0
    if run.state == "timed_out":
        return EXIT_TIMEOUT
    if run.state == "failed" and run.exit_code is not None:
        if run.exit_code < 0:
            return 128 + (-run.exit_code)
        return run.exit_code if 0 < run.exit_code < 256 else 1
    return 1


@dataclass
class _Tail:
    """Copies what a run writes to its log files onto this process' stdout and stderr as it comes."""

    out: Path
    err: Path
    offsets: list[int] = field(default_factory=lambda: [0, 0])

    def pump(self) -> bool:
        """Copy what is new; False while neither log file exists."""
        found = self._copy(0, self.out, sys.stdout, typer.get_binary_stream("stdout"))
        return self._copy(1, self.err, sys.stderr, typer.get_binary_stream("stderr")) or found

    def _copy(self, index: int, path: Path, text: IO[str], binary: IO[bytes]) -> bool:
        try:
            with path.open("rb") as handle:
                handle.seek(self.offsets[index])
                data = handle.read()
        except OSError:
            return False  # not there yet (or written on another machine)
        if data:
            self.offsets[index] += len(data)
            _write(text, binary, data)
        return True


def _write(text: IO[str], binary: IO[bytes], data: bytes) -> None:
    text.flush()  # what was printed as text first stays first
    binary.write(data)
    binary.flush()


class Foreground:
    """A scheduler instance in this process until Ctrl-C/SIGTERM, or until the awaited once-jobs are done.

    Each run this instance finishes is reported as one line. Runs of the awaited schedules are also followed
    in the store (another instance, an ``ecliptic serve`` say, may own them), and their output is streamed.
    """

    def __init__(
        self,
        settings: Settings,
        parts: SchedulerParts,
        namespace: str,
        ours: dict[str, ScheduleSpec],
        awaited: set[str],
        baseline: int,
        *,
        quiet: bool,
    ) -> None:
        self.settings = settings
        self.parts = parts
        self.service = parts.service
        self.namespace = namespace
        self.ours = ours
        self.awaited = awaited
        self.baseline = baseline
        self.quiet = quiet
        self.once = bool(awaited)
        # Once-jobs: what they print is the output, so ecliptic's own lines go to stderr.
        self.say = _console(stderr=self.once)
        self.events: queue.Queue[tuple[str, int]] = queue.Queue()
        self.reported: set[int] = set()
        self.tails: dict[int, _Tail] = {}
        self.results: dict[str, RunView] = {}
        self.signalled: int | None = None
        self._next: tuple[str, datetime, tzinfo] | None = None

    # -- events -----------------------------------------------------------------------------------------------
    def listen(self, event: str, run: dict[str, Any]) -> None:
        """Called on the scheduler's writer thread after a commit: only hand the run over."""
        self.events.put((event, int(run["id"])))

    def _stop_on(self, signum: int, frame: FrameType | None) -> None:
        if self.signalled is None:
            self.signalled = signum

    def _handle(self, run: RunView) -> None:
        from ecliptic.schedule.spec import OUTCOMES

        if run.id in self.reported:
            return
        mine = run.schedule_id in self.awaited and run.id > self.baseline
        if run.state in OUTCOMES:
            self.reported.add(run.id)
            tail = self.tails.pop(run.id, None)
            if tail is None and mine:
                tail = self._tail(run.id)  # it ended before it was seen running
                if not tail.pump():
                    # Its logs are on the machine of the instance that ran it: the tails the store keeps.
                    _write(sys.stdout, typer.get_binary_stream("stdout"), (run.stdout_tail or "").encode())
                    _write(sys.stderr, typer.get_binary_stream("stderr"), (run.stderr_tail or "").encode())
            elif tail is not None:
                tail.pump()
            # Quiet once-jobs print only what they print, unless something went wrong.
            if not (self.quiet and self.once and run.state == "succeeded"):
                self._print(show.outcome_line(run, namespace=self.namespace))
            if mine and self._final(run):
                self.results[run.schedule_id] = run
        elif mine and run.id not in self.tails:
            self.tails[run.id] = self._tail(run.id)

    def _tail(self, run_id: int) -> _Tail:
        return _Tail(self.settings.runs_dir / f"{run_id}.out", self.settings.runs_dir / f"{run_id}.err")

    def _final(self, run: RunView) -> bool:
        """Whether no retry of this run will follow (the instance retries what its policy says)."""
        from ecliptic.schedule.spec import RETRYABLE

        spec = self.ours.get(run.schedule_id)
        retries = spec.retry.max if spec is not None else 0
        return run.state not in RETRYABLE or run.attempt > retries

    def _print(self, line: Text) -> None:
        self.say.print(line)

    def _drain(self, timeout: float) -> None:
        from ecliptic.schedule.service import NotFound

        try:
            event, run_id = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        pending: dict[int, str] = {run_id: event}
        while True:
            try:
                event, run_id = self.events.get_nowait()
            except queue.Empty:
                break
            if pending.get(run_id) != "finished":
                pending[run_id] = event
        for run_id, event in pending.items():
            if run_id in self.reported or (event != "finished" and not self.once):
                continue
            try:
                self._handle(self.service.run(run_id))
            except NotFound:
                continue

    def _poll(self, since: datetime) -> None:
        for run in self.service.run_changes(since):
            if run.schedule_id in self.awaited and run.id > self.baseline:
                self._handle(run)

    def _refresh_next(self) -> None:
        """The next fire of our jobs: a planned run (the instance plans a little ahead), else the schedule's."""
        views = {
            view.id: view
            for view in self.service.schedules(self.namespace)
            if view.id in self.ours and not view.paused
        }
        times = [(view.next_fire_at, view) for view in views.values() if view.next_fire_at is not None]
        for run in self.service.runs(namespace=self.namespace, state="scheduled", limit=100):
            if run.schedule_id in views:
                times.append((run.due_at, views[run.schedule_id]))
        if not times:
            self._next = None
            return
        at, view = min(times, key=lambda item: item[0])
        self._next = (view.name, at, show.zone_of(view.spec.timezone))

    def _status(self) -> Any:
        now = utcnow()
        name, at, zone = self._next if self._next is not None else (None, None, show.UTC)
        return show.status_line(self.parts.instance.running(), name, at, zone, now)

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> int:
        from rich.live import Live

        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._stop_on)
        self.parts.instance.subscribe(self.listen)
        try:
            self.parts.start()
            with contextlib.ExitStack() as stack:
                live: Live | None = None
                if not self.once and not self.quiet and self.say.is_terminal:
                    self._refresh_next()
                    live = stack.enter_context(
                        Live(self._status(), console=self.say, transient=True, refresh_per_second=4)
                    )
                self._loop(live)
        except KeyboardInterrupt:  # the handler could not be installed (not the main thread)
            self.signalled = int(signal.SIGINT)
        finally:
            stopping = self.signalled is not None
            if stopping and not self.quiet:
                _console(stderr=True).print(Text("stopping: waiting for running jobs to end…", style="dim"))
            try:
                self.parts.stop()
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
            # Outcomes of what the stop interrupted, as the writer committed them.
            while not self.events.empty():
                self._drain(0)
            for tail in self.tails.values():
                tail.pump()
        return self._code()

    def _loop(self, live: Live | None) -> None:
        started = self.service.clock.now()
        last_poll = 0.0
        since = started - timedelta(seconds=2)
        last_next = 0.0
        while self.signalled is None:
            self._drain(0.05 if self.once else 0.2)
            for tail in list(self.tails.values()):
                tail.pump()
            mono = time.monotonic()
            if self.once and mono - last_poll >= 0.5:
                poll_at = self.service.clock.now()
                self._poll(since)
                since, last_poll = poll_at - timedelta(seconds=2), mono
            if self.once and len(self.results) >= len(self.awaited):
                return
            if live is not None:
                if mono - last_next >= 1.0:
                    self._refresh_next()
                    last_next = mono
                live.update(self._status())

    def _code(self) -> int:
        if not self.once:
            return 0
        if self.signalled is not None or len(self.results) < len(self.awaited):
            return 128 + int(self.signalled or signal.SIGINT)
        if len(self.awaited) == 1:
            return exit_status(next(iter(self.results.values())))
        return 0 if all(run.state == "succeeded" for run in self.results.values()) else 1


def _not_a_run_event(record: logging.LogRecord) -> bool:
    return not hasattr(record, "notify_event")


def _quiet_scheduler_logs() -> None:
    # The root command logs at INFO: a line per instance reaped or schedule claimed is noise here, and the
    # notifier's line per outcome says again what the outcome lines say (its delivery problems still show).
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("ecliptic.schedule").setLevel(logging.WARNING)
        logging.getLogger("ecliptic.schedule.notify").addFilter(_not_a_run_event)


def _start(plan: _Plan, quiet: bool) -> int:
    """Apply the plan to the store, show it, run a scheduler instance in the foreground; the exit code."""
    from ecliptic.schedule.assembly import build_scheduler
    from ecliptic.schedule.spec import OnceTrigger

    with _store() as (settings, db):
        _quiet_scheduler_logs()
        # This timetable only: schedules of other namespaces are for `serve`/`worker` or their own `run`.
        parts = build_scheduler(db, settings, namespaces=frozenset({plan.namespace}))
        service = parts.service
        newest = service.runs(limit=1)
        baseline = newest[0].id if newest else 0
        result = service.apply(
            plan.specs,
            plan.namespace,
            actor=ACTOR,
            ephemeral=plan.ephemeral,
            origin=plan.origin,
            prune=plan.prune,
        )
        names = {spec.name for spec in plan.specs}
        views = {v.name: v for v in service.schedules(plan.namespace) if v.name in names}
        now = service.clock.now()
        notes: dict[str, str] = {}
        again: list[str] = []
        for spec in plan.specs:
            view = views.get(spec.name)
            if view is None or not isinstance(spec.trigger, OnceTrigger) or view.paused:
                continue
            if spec.trigger.once == "now" and spec.name not in result.created and view.next_fire_at is None:
                # `run` means run it: a once-now job that ran before runs again.
                service.trigger(view.id, actor=ACTOR)
                notes[spec.name] = "now (again)"
                again.append(view.id)
        ours = {views[s.name].id: s for s in plan.specs if s.name in views}
        awaited: set[str] = set()
        if plan.once:
            awaited = {
                views[s.name].id
                for s in plan.specs
                if s.name in views and (views[s.name].next_fire_at is not None or views[s.name].id in again)
            }
        say = _console(stderr=plan.once)
        if not quiet:
            say.print(_namespace_line(plan))
            say.print(_applied_line(result))
            planned = []
            for spec in plan.specs:
                view = views.get(spec.name)
                if view is None:
                    continue
                fires = [now] if spec.name in notes else ([view.next_fire_at] if view.next_fire_at else [])
                note = notes.get(spec.name, "")
                if not fires:
                    note = "paused" if view.paused else ("ran already" if view.fires else "no more fires")
                planned.append(show.PlannedJob(spec.name, view.description, spec.zone, fires, note))
            if planned:
                say.print(show.planned_table(planned, now))
        if plan.once and not awaited:
            if not quiet:
                say.print(Text("nothing to run: no job has a fire time left", style="dim"))
            return 0
        foreground = Foreground(settings, parts, plan.namespace, ours, awaited, baseline, quiet=quiet)
        code = foreground.run()
        if foreground.signalled is not None and not quiet:
            _console(stderr=True).print(Text("stopped", style="dim"))
        return code


# -- commands ------------------------------------------------------------------------------------------------
class OverlapChoice(enum.StrEnum):
    SKIP = "skip"
    QUEUE = "queue"
    REPLACE = "replace"  # upper case: a member `replace` would hide str.replace
    ALLOW = "allow"


class Weekdays(enum.StrEnum):
    cron = "cron"
    aps = "aps"


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table (for scripts).")]
JobArgument = Annotated[
    str,
    typer.Argument(metavar="JOB", help="A schedule: its id, namespace/name, or a name unique in the store."),
]
SecondOption = Annotated[
    str | None,
    typer.Option("--second", help="Cron seconds field for a cron --when, e.g. 0, */10, 0,30 (default 0)."),
]
ZoneOption = Annotated[
    str | None, typer.Option("--tz", help="IANA time zone the schedule is read in (default UTC).")
]


def run_command(
    words: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="-- RUN",
            help="What to run, after `--`: cmd:PROGRAM ARGS (no shell), sh:TEXT (shell), python:CODE, "
            "file:PATH, entrypoint:pkg.mod:fn; words without a kind are a command without a shell.",
            show_default=False,
        ),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help=f"Timetable: YAML/JSON, a Supertask timetable, or a Python task file (default {DEFAULT_FILE}).",
            show_default=False,
        ),
    ] = None,
    command: Annotated[
        str | None,
        typer.Option(
            "--command",
            "-c",
            help="Run this through `sh -c` (unless it starts with a runner kind such as python:).",
            show_default=False,
        ),
    ] = None,
    when: Annotated[
        str | None,
        typer.Option(
            "--when",
            "-w",
            help="once (default for a command), an ISO 8601 instant, @daily, '0 9 * * 1-5', 'every 10s', "
            "'after 10s', RRULE:…; for a file it replaces every job's trigger.",
            show_default=False,
        ),
    ] = None,
    second: SecondOption = None,
    tz: ZoneOption = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            "--ns",
            "--namespace",
            help="Namespace of the schedules (default: the file's, else one derived from host, user and "
            "file or command).",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="Name of the command's job (default derived from the command).", show_default=False
        ),
    ] = None,
    retries: Annotated[
        int | None,
        typer.Option("--retries", min=0, max=100, help="Retries of a failed run.", show_default=False),
    ] = None,
    timeout: Annotated[
        str | None,
        typer.Option(
            "--timeout",
            help="Kill a run after this long: 10s, 5m, PT1H (exit 124 for once).",
            show_default=False,
        ),
    ] = None,
    overlap: Annotated[
        OverlapChoice | None,
        typer.Option(
            "--overlap",
            case_sensitive=False,
            help="When the previous run still runs: skip (the default), queue, replace or allow.",
            show_default=False,
        ),
    ] = None,
    supertask_weekdays: Annotated[
        Weekdays,
        typer.Option(
            "--supertask-weekdays",
            case_sensitive=False,
            help="Numeric weekdays of Supertask timetables: cron (0 = Sunday) or aps (0 = Monday, as Supertask ran them).",
        ),
    ] = Weekdays.cron,
    check: Annotated[
        bool, typer.Option("--check", help="Only validate, and show the jobs with their next fire times.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only what the jobs print and the outcomes.")
    ] = False,
) -> None:
    """Run a timetable, or one command, in the foreground until Ctrl-C; once-jobs exit with their status.

    `ecliptic run` reads ecliptic.yaml in this directory; `ecliptic run -f nightly.yaml` another timetable.

    `ecliptic run --command "echo hello"` runs a command once, through `sh -c`.

    `ecliptic run --when @daily -- cmd:echo hello` runs a program daily, without a shell.

    `ecliptic run -- python:'print("hello")'` runs a Python snippet once.

    The schedules are written to the store first: a file's namespace then holds exactly the file's jobs.

    Once-jobs (--when once, the default for a command) stream their output and exit with the job's status: its exit code, 1 if it failed without one, 124 on timeout, 130 if interrupted.

    Recurring jobs run until Ctrl-C or SIGTERM, which exit 0.
    """
    from ecliptic.schedule import timetable
    from ecliptic.schedule.spec import check_timezone, parse_short_duration

    words = list(words or [])
    run_text = _command_text(command, words)
    if run_text is not None and file is not None:
        _fail("give a --file or a command, not both")
    if run_text is None and name is not None:
        _fail("--name names the job of a command; a file names its jobs")
    if tz is not None:
        try:
            check_timezone(tz)
        except ValueError as exc:
            _fail(str(exc))
    duration = None
    if timeout is not None:
        try:
            duration = parse_short_duration(timeout)
        except ValueError as exc:
            _fail(f"--timeout: {exc}")
        if duration <= timedelta(0):
            _fail("--timeout must be longer than zero")
    overrides = _Overrides(tz, retries, duration, overlap.value if overlap is not None else None)
    if run_text is not None:
        trigger = _when(when if when is not None else "once", second)
        assert trigger is not None
        plan = _plan_command(run_text, name, namespace, trigger, overrides)
    else:
        path = file if file is not None else Path(timetable.DEFAULT_FILE)
        plan = _plan_file(path, namespace, _when(when, second), supertask_weekdays.value, overrides, quiet)
    if check:
        now = utcnow()
        out = _console()
        out.print(_namespace_line(plan))
        out.print(show.planned_table(_preview_jobs(plan.specs, now, 3), now))
        out.print(Text(f"{len(plan.specs)} job{'s' if len(plan.specs) != 1 else ''}: ok", style="green"))
        return
    raise typer.Exit(_start(plan, quiet))


def preview(
    spec_words: Annotated[
        list[str],
        typer.Argument(
            metavar="SPEC",
            help="A --when form: a cron expression ('0 9 * * 1-5'), @daily, 'every 10s', RRULE:…, an instant.",
        ),
    ],
    tz: Annotated[str, typer.Option("--tz", help="IANA time zone the SPEC is read in.")] = "UTC",
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=1000, help="How many fire times.")] = 10,
    second: SecondOption = None,
) -> None:
    """Print the next fire times of SPEC, one ISO 8601 instant with its zone offset per line.

    Only the instants go to standard output, so the output pipes cleanly; the schedule in words goes to
    standard error.
    """
    from pydantic import ValidationError

    from ecliptic.schedule import timetable, triggers
    from ecliptic.schedule.spec import CommandRunner, CronTrigger, ScheduleSpec, parse_when
    from ecliptic.schedule.views import describe_spec

    text = " ".join(spec_words)
    try:
        trigger = parse_when(text)
    except ValueError as exc:
        _fail(str(exc).removeprefix("--when "))
    if second is not None:
        if not isinstance(trigger, CronTrigger):
            _fail(f"--second goes with a cron expression, not {text!r}")
        trigger = trigger.model_copy(update={"second": second})
    try:
        spec = ScheduleSpec(name="preview", trigger=trigger, timezone=tz, run=CommandRunner(cmd="true"))
    except ValidationError as exc:
        _fail(timetable.error_text(exc))
    now = utcnow().replace(microsecond=0)
    try:
        fires = triggers.preview(spec, count, after=now, created=now)
    except ValueError as exc:
        _fail(str(exc))
    words = describe_spec(spec)
    if spec.timezone not in words:
        words += f" (times in {spec.timezone})"
    _console(stderr=True).print(Text(words, style="dim"))
    zone = spec.zone
    for at in fires:
        typer.echo(at.astimezone(zone).isoformat())


def namespaces(json_out: JsonOption = False) -> None:
    """List the namespaces: ephemeral or named, where they came from, how many jobs."""
    with _store() as (_, db):
        found = _service(db).namespaces()
    if json_out:
        _print_json({"namespaces": [item.model_dump(mode="json") for item in found]})
        return
    _console().print(show.namespaces_table(found) if found else Text("no namespaces", style="dim"))


def jobs(
    namespace: Annotated[
        str | None, typer.Option("--ns", "--namespace", help="Only this namespace.", show_default=False)
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """List the jobs (schedules): their schedule in words, next fire, last outcome."""
    with _store() as (_, db):
        service = _service(db)
        found = service.schedules(namespace)
        now = service.clock.now()
    if json_out:
        _print_json({"jobs": [view.model_dump(mode="json", by_alias=True) for view in found]})
        return
    if not found:
        where = f" in namespace {namespace}" if namespace is not None else ""
        _console().print(Text(f"no jobs{where}", style="dim"))
        return
    _console().print(show.jobs_table(found, now))


def runs(
    job: Annotated[
        str | None,
        typer.Argument(
            metavar="[JOB]",
            help="A schedule: id, namespace/name or unique name (default: all).",
            show_default=False,
        ),
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option("--ns", "--namespace", help="Only runs of this namespace.", show_default=False),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=1000, help="At most this many runs.")
    ] = 20,
    json_out: JsonOption = False,
) -> None:
    """List the runs of a job (or of all jobs), newest first."""
    with _store() as (_, db):
        service = _service(db)
        zones: dict[str, tzinfo] = {}
        if job is not None:
            view = service.get(job)
            zones[view.id] = show.zone_of(view.spec.timezone)
            found = service.runs(view.id, limit=limit)
        else:
            found = service.runs(namespace=namespace, limit=limit)
            zones = {v.id: show.zone_of(v.spec.timezone) for v in service.schedules(namespace)}
    if json_out:
        _print_json({"runs": [run.model_dump(mode="json") for run in found]})
        return
    if not found:
        _console().print(Text("no runs", style="dim"))
        return
    _console().print(show.runs_table(found, zones, show_job=job is None))


def pause(job: JobArgument) -> None:
    """Pause a job: no fire until it is resumed (times that pass meanwhile are not caught up)."""
    with _store() as (_, db):
        view = _service(db).pause(job, actor=ACTOR)
    _console().print(Text.assemble((_ref(view), "bold"), " is ", ("paused", "yellow")))


def resume(job: JobArgument) -> None:
    """Resume a paused job from now."""
    with _store() as (_, db):
        service = _service(db)
        view = service.resume(job, actor=ACTOR)
        now = service.clock.now()
    line = Text.assemble((_ref(view), "bold"), " is ", ("resumed", "green"))
    if view.next_fire_at is not None:
        zone = show.zone_of(view.spec.timezone)
        line.append(f"; next fire {show.zoned(view.next_fire_at, zone)} ({relative(view.next_fire_at, now)})")
    else:
        line.append("; it has no fire time left", style="dim")
    _console().print(line)


def _live_instances(db: Database, within: timedelta) -> list[str]:
    """Scheduler instances whose heartbeat is recent: the ones that will act on a change."""
    from sqlalchemy import select

    from ecliptic.store.tables import SchedulerInstanceRow

    since = utcnow() - within
    with db.read() as session:
        return list(
            session.scalars(select(SchedulerInstanceRow.id).where(SchedulerInstanceRow.heartbeat_at >= since))
        )


def trigger(job: JobArgument) -> None:
    """Run a job now, outside its schedule (paused jobs too); a running scheduler instance starts it."""
    with _store() as (settings, db):
        service = _service(db)
        view = service.get(job)
        run = service.trigger(view.id, actor=ACTOR)
        alive = _live_instances(db, settings.scheduler_lease)
    out = _console()
    out.print(
        Text.assemble("run ", (str(run.id), "bold"), " of ", (_ref(view), "bold"), " is queued for now")
    )
    if alive:
        count = len(alive)
        out.print(
            Text(
                f"{count} scheduler instance{'s are' if count != 1 else ' is'} running on this store; "
                f"`ecliptic runs {_ref(view)}` shows how it went",
                style="dim",
            )
        )
    else:
        out.print(
            Text(
                "no scheduler instance is running on this store, so it runs when one starts: "
                "`ecliptic run` (a timetable, in the foreground), `ecliptic serve` or `ecliptic worker`",
                style="yellow",
            )
        )


def delete(job: JobArgument) -> None:
    """Delete a job; a run of it that is running is stopped by its scheduler instance."""
    with _store() as (_, db):
        service = _service(db)
        view = service.get(job)
        service.delete(view.id, actor=ACTOR)
    _console().print(Text.assemble("deleted ", (_ref(view), "bold")))


def register(app: typer.Typer) -> None:
    """Add the scheduler commands to the root ``ecliptic`` command."""
    # Everything after the first word of the command belongs to it, so `ecliptic run cmd:ls -la` needs no `--`.
    app.command("run", rich_help_panel="Scheduler", context_settings={"allow_interspersed_args": False})(
        run_command
    )
    for command in (preview, namespaces, jobs, runs, pause, resume, trigger, delete):
        app.command(rich_help_panel="Scheduler")(command)
