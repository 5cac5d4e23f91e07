"""What a schedule is: one wire model shared by timetable files, the HTTP API, the library and the store.

A schedule is *when* (a trigger in an IANA time zone, with start/end, exclusions, jitter and a run limit), *what*
(a runner: a command, a Python snippet, file or entry point, an in-process callable, or a broker request) and
*how* (policies for catch-up after downtime, overlap, retries, timeouts and notifications). Every policy has a
documented default, so a schedule that names only a trigger and a runner does the expected thing.
"""

from __future__ import annotations

import re
import shlex
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    field_validator,
    model_validator,
)

from ecliptic.isotime import IsoTimeError, as_utc, format_duration, parse_duration, parse_instant

# -- durations and instants ---------------------------------------------------------------------------------

_SHORT_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*(ms|us|µs|s|m|h|d|w)\s*)+$", re.IGNORECASE)
_SHORT_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|us|µs|s|m|h|d|w)", re.IGNORECASE)
_UNIT = {
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}


def parse_short_duration(text: str) -> timedelta:
    """``PT10S`` (ISO 8601), ``10s``, ``500ms``, ``1h30m``, ``2d`` or a bare number of seconds."""
    stripped = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", stripped):
        return timedelta(seconds=float(stripped))
    if _SHORT_DURATION.match(stripped):
        return timedelta(seconds=sum(float(n) * _UNIT[u.lower()] for n, u in _SHORT_PART.findall(stripped)))
    try:
        return parse_duration(stripped)
    except IsoTimeError as exc:
        raise ValueError(
            f"{text!r} is not a duration (expected ISO 8601 like PT10S or P1D, or 10s, 500ms, 1h30m)"
        ) from exc


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        value = parse_short_duration(value)
    elif isinstance(value, bool):
        raise ValueError("a duration is not a boolean")
    elif isinstance(value, int | float):
        value = timedelta(seconds=value)
    if isinstance(value, timedelta) and value < timedelta(0):
        raise ValueError("a duration cannot be negative")
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration), PlainSerializer(format_duration, return_type=str)]
"""A duration: ISO 8601 on the wire, and ``10s``/``500ms``/``1h30m`` or seconds on the way in."""


def _instant(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return parse_instant(value)
        except IsoTimeError as exc:
            raise ValueError(str(exc)) from exc
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day).astimezone(ZoneInfo("UTC"))
    return value


def _format_instant(value: datetime) -> str:
    from ecliptic.isotime import format_instant

    return format_instant(value)


Instant = Annotated[datetime, BeforeValidator(_instant), PlainSerializer(_format_instant, return_type=str)]
"""An instant, UTC inside; ISO 8601 with ``Z`` on the wire. A naive value is taken as UTC."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# -- triggers -----------------------------------------------------------------------------------------------


class OnceTrigger(_Strict):
    """Fire once: at an instant, or as soon as the schedule exists (``now``)."""

    once: Instant | Literal["now"]


class IntervalTrigger(_Strict):
    """Fire every ``every``.

    ``rate`` (the default) fires at ``anchor + k·every`` whatever the runs take (``watch --precise``);
    ``delay`` fires ``every`` after the previous run *finished* (plain ``watch``). Intervals run in UTC, so an
    hourly interval is hourly across DST changes.
    """

    every: Duration
    mode: Literal["rate", "delay"] = "rate"
    anchor: Instant | None = Field(
        default=None,
        description="Where the grid of fire times starts; default: the schedule's start, else its creation.",
    )

    @field_validator("every")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("an interval must be longer than zero")
        return value


class CronTrigger(_Strict):
    """A 5-field cron expression (or ``@hourly``, ``@daily``, ``@weekly``, ``@monthly``, ``@yearly``).

    Weekdays follow cron: 0 and 7 are Sunday, names (``mon``–``sun``) work too. Seconds are an explicit extra
    field (``second: "*/10"``), never a positional sixth field, whose meaning differs between cron dialects.
    """

    cron: str
    second: Annotated[
        str | None, BeforeValidator(lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v)
    ] = Field(default=None, description="Cron-style seconds field, e.g. 0, */10, 0,30.")


class RRuleTrigger(_Strict):
    """An RFC 5545 recurrence rule (``FREQ=WEEKLY;BYDAY=MO,WE``), in the schedule's zone."""

    rrule: str
    dtstart: Instant | None = Field(
        default=None, description="First occurrence; default: when the schedule is created."
    )


def _keyed(keys: tuple[str, ...], what: str) -> Any:
    """A discriminator that picks a union member by which of its keys the mapping has, so an error names
    one model's fields instead of every member's."""

    def pick(value: Any) -> str | None:
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if isinstance(value, dict):
            for key in keys:
                if key in value:
                    return key
        return None

    return Discriminator(
        pick,
        custom_error_type="missing_kind",
        custom_error_message=f"a {what} needs one of the keys {', '.join(keys)}",
    )


Trigger = Annotated[
    Annotated[OnceTrigger, Tag("once")]
    | Annotated[IntervalTrigger, Tag("every")]
    | Annotated[CronTrigger, Tag("cron")]
    | Annotated[RRuleTrigger, Tag("rrule")],
    _keyed(("once", "every", "cron", "rrule"), "trigger"),
]


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class Exclusion(_Strict):
    """One entry of an exclusion calendar: a fire time that matches every field set here is skipped.

    Times and dates are read in the schedule's zone. A schedule's ``exclude`` is a list of these; a fire time
    matching any of them is not run (and not recorded as missed: it was never due).
    """

    dates: list[date] | None = Field(default=None, description="Local dates, e.g. holidays.")
    weekdays: list[Weekday] | None = None
    daily: tuple[time, time] | None = Field(
        default=None, description="A local time-of-day window [from, to); from > to wraps past midnight."
    )
    during: tuple[Instant, Instant] | None = Field(default=None, description="An absolute window [from, to).")
    cron: str | None = Field(default=None, description="Times matching this cron expression (to the minute).")

    @model_validator(mode="after")
    def _something(self) -> Exclusion:
        if not any(v is not None for v in (self.dates, self.weekdays, self.daily, self.during, self.cron)):
            raise ValueError("an exclusion needs at least one of dates, weekdays, daily, during, cron")
        return self


# -- runners ------------------------------------------------------------------------------------------------


AnyRunner = Annotated[
    Annotated["CommandRunner", Tag("cmd")]
    | Annotated["PythonRunner", Tag("python")]
    | Annotated["FileRunner", Tag("file")]
    | Annotated["EntrypointRunner", Tag("entrypoint")]
    | Annotated["CallRunner", Tag("call")]
    | Annotated["BrokerRunner", Tag("broker")],
    _keyed(("cmd", "python", "file", "entrypoint", "call", "broker"), "runner"),
]
"""A single runner (a step of a :class:`StepsRunner` cannot itself have steps)."""


class CommandRunner(_Strict):
    """Run a program. A list is the argv; a string is split like a shell would, but run without one unless
    ``shell: true`` (then ``sh -c``)."""

    cmd: list[str] | str
    shell: bool = False

    @field_validator("cmd")
    @classmethod
    def _not_empty(cls, value: list[str] | str) -> list[str] | str:
        if (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value):
            raise ValueError("the command is empty")
        return value


class PythonRunner(_Strict):
    """Run a Python snippet in a fresh interpreter."""

    python: str


class FileRunner(_Strict):
    """Run a file: a Python file (its PEP 723 dependencies through ``uv`` when it is installed) or any program.

    With ``function``, the Python file is loaded and that function is called with ``kwargs`` (Supertask's
    ``run(**options)`` convention)."""

    file: str
    args: list[str] = Field(default_factory=list)
    function: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)


class EntrypointRunner(_Strict):
    """Call ``module:function`` in a fresh interpreter, with JSON-able arguments."""

    entrypoint: str
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("entrypoint")
    @classmethod
    def _ref(cls, value: str) -> str:
        return _check_ref(value)


class CallRunner(_Strict):
    """Call ``module:function`` inside the scheduler process, on a thread (no isolation, no kill on timeout:
    for library use and very high rates)."""

    call: str
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("call")
    @classmethod
    def _ref(cls, value: str) -> str:
        return _check_ref(value)


class BrokerRunner(_Strict):
    """Submit an execution request to an ExecutionBroker and accept the best offer, then wait for the session.

    ``broker`` is the request (inline mapping) or the path of a request file; ``url`` the broker (default: this
    Ecliptic service). The run succeeds when the session COMPLETES, fails when it FAILS or gets no offer.
    """

    broker: dict[str, Any] | str
    url: str | None = None
    accept: Literal["first"] = "first"
    wait: bool = True


class Step(_Strict):
    """One step of a :class:`StepsRunner`."""

    name: str | None = None
    run: AnyRunner
    if_: bool = Field(default=True, alias="if", description="false skips the step.")


class StepsRunner(_Strict):
    """Run steps one after another in one run; the first failing step ends the run (Supertask's model)."""

    steps: list[Step] = Field(min_length=1)


Runner = Annotated[
    Annotated[CommandRunner, Tag("cmd")]
    | Annotated[PythonRunner, Tag("python")]
    | Annotated[FileRunner, Tag("file")]
    | Annotated[EntrypointRunner, Tag("entrypoint")]
    | Annotated[CallRunner, Tag("call")]
    | Annotated[BrokerRunner, Tag("broker")]
    | Annotated[StepsRunner, Tag("steps")],
    _keyed(("cmd", "python", "file", "entrypoint", "call", "broker", "steps"), "runner"),
]
SingleRunner = CommandRunner | PythonRunner | FileRunner | EntrypointRunner | CallRunner | BrokerRunner
AnyTrigger = OnceTrigger | IntervalTrigger | CronTrigger | RRuleTrigger

_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _check_ref(value: str) -> str:
    if not _REF.match(value):
        raise ValueError(f"{value!r} is not module:function (e.g. mypackage.tasks:cleanup)")
    return value


def parse_run(text: str) -> SingleRunner:
    """The command-line shorthand: ``cmd:echo hello``, ``sh:echo $HOME``, ``python:print(1)``,
    ``file:task.py``, ``entrypoint:pkg.mod:fn``, ``call:pkg.mod:fn``, ``broker:request.yaml``; a bare string is
    a command."""
    head, sep, rest = text.partition(":")
    kind = head.strip().lower() if sep else ""
    if kind == "cmd":
        return CommandRunner(cmd=rest.strip())
    if kind in ("sh", "shell"):
        return CommandRunner(cmd=rest.strip(), shell=True)
    if kind in ("python", "py"):
        return PythonRunner(python=rest)
    if kind == "file":
        return FileRunner(file=rest.strip())
    if kind == "entrypoint":
        return EntrypointRunner(entrypoint=rest.strip())
    if kind == "call":
        return CallRunner(call=rest.strip())
    if kind == "broker":
        return BrokerRunner(broker=rest.strip())
    if not text.strip():
        raise ValueError("the command is empty")
    return CommandRunner(cmd=text.strip())


_CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def parse_when(text: str) -> AnyTrigger:
    """The ``--when`` shorthand: ``once`` / ``now``, an ISO 8601 instant, ``@daily`` and the other macros, a
    5-field cron expression, ``every 10s`` / ``10s`` / ``PT10S`` (fixed rate; ``after 10s`` for fixed delay),
    or an RFC 5545 rule (``RRULE:FREQ=DAILY;BYHOUR=9`` or ``FREQ=…``)."""
    value = text.strip()
    lowered = value.lower()
    if not value:
        raise ValueError("--when is empty (try once, @daily, '0 9 * * 1-5', 'every 10s')")
    if lowered in ("once", "now"):
        return OnceTrigger(once="now")
    if lowered.startswith(_CRON_MACROS):
        return CronTrigger(cron=lowered)
    if lowered.startswith(("rrule:", "freq=")):
        return RRuleTrigger(rrule=value.split(":", 1)[1] if lowered.startswith("rrule:") else value)
    if len(value.split()) == 5:
        return CronTrigger(cron=value)
    if len(value.split()) == 6:
        raise ValueError(
            f"{value!r} has 6 fields: seconds are not a positional field here (dialects disagree on where "
            "they go); give 5 fields and the seconds separately (second: in a file, --second on the command line)"
        )
    for prefix, mode in (("every ", "rate"), ("after ", "delay")):
        if lowered.startswith(prefix):
            return IntervalTrigger(every=parse_short_duration(value[len(prefix) :]), mode=mode)
    try:
        return IntervalTrigger(every=parse_short_duration(value))
    except ValueError:
        pass
    try:
        return OnceTrigger(once=parse_instant(value))
    except IsoTimeError:
        pass
    raise ValueError(
        f"--when {value!r} is not a schedule: use once, an ISO 8601 instant, @hourly/@daily/@weekly/"
        "@monthly/@yearly, a 5-field cron expression ('0 9 * * 1-5'), 'every 10s', 'after 10s', or RRULE:…"
    )


def command_argv(runner: CommandRunner) -> list[str]:
    if runner.shell:
        script = runner.cmd if isinstance(runner.cmd, str) else shlex.join(runner.cmd)
        return ["sh", "-c", script]
    return shlex.split(runner.cmd) if isinstance(runner.cmd, str) else list(runner.cmd)


# -- policies -----------------------------------------------------------------------------------------------


class RetryPolicy(_Strict):
    """Retries of a failed, timed-out or interrupted run: exponential backoff with full jitter, persisted."""

    max: int = Field(default=0, ge=0, le=100, description="Retries after the first attempt.")
    backoff: Duration = Field(default=timedelta(seconds=10), description="Delay before the first retry.")
    factor: float = Field(default=2.0, ge=1.0, le=10.0)
    max_backoff: Duration = Field(default=timedelta(hours=1))
    jitter: bool = Field(default=True, description="Draw each delay uniformly from [delay/2, delay].")


class CatchupPolicy(_Strict):
    """What to do with fire times that passed while no scheduler was running (or the schedule's owner died).

    ``skip``: none run; ``latest`` (default): the most recent one within ``window`` runs; ``all``: each one
    within ``window`` runs, at most ``max_runs``, one after another. Every time that does not run is recorded as
    a ``missed`` run.
    """

    policy: Literal["skip", "latest", "all"] = "latest"
    window: Duration = Field(default=timedelta(days=1))
    max_runs: int = Field(default=100, ge=1, le=10_000)
    grace: Duration = Field(
        default=timedelta(seconds=30), description="Lateness still counted as on time (not a catch-up)."
    )


NotifyEvent = Literal["failure", "recovery", "missed", "success"]
_DEFAULT_EVENTS: tuple[NotifyEvent, ...] = ("failure", "recovery", "missed")


class Notification(_Strict):
    """Where to tell about run outcomes: a webhook (HTTP POST of JSON) or an MQTT topic."""

    webhook: str | None = None
    mqtt: str | None = Field(default=None, description="mqtt://host:port/topic")
    on: list[NotifyEvent] = Field(default_factory=lambda: list(_DEFAULT_EVENTS))

    @model_validator(mode="after")
    def _one_target(self) -> Notification:
        if (self.webhook is None) == (self.mqtt is None):
            raise ValueError("a notification needs exactly one of webhook or mqtt")
        for url, schemes in ((self.webhook, ("http://", "https://")), (self.mqtt, ("mqtt://",))):
            if url is not None and not url.startswith(schemes):
                raise ValueError(f"{url!r} must start with {' or '.join(schemes)}")
        return self


Overlap = Literal["skip", "queue", "replace", "allow"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")


def check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"{value!r} is not an IANA time zone (e.g. UTC, Europe/Vienna, America/New_York)"
        ) from exc
    return value


class ScheduleSpec(_Strict):
    """A schedule as a user writes it (timetable entry, API body, library call)."""

    name: str = Field(description="Unique within the namespace: letters, digits, _ . @ -")
    namespace: str | None = Field(default=None, description="Default: the namespace of the file or caller.")
    description: str | None = None
    author: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    trigger: Trigger
    timezone: str = Field(default="UTC", description="IANA zone the trigger is read in.")
    start: Instant | None = Field(default=None, description="No fire before this instant.")
    end: Instant | None = Field(default=None, description="No fire after this instant.")
    max_runs: int | None = Field(default=None, ge=1, description="Stop after this many fires.")
    exclude: list[Exclusion] = Field(default_factory=list)
    jitter: Duration | None = Field(
        default=None, description="Delay each fire by a random 0..jitter, never past the next fire."
    )
    paused: bool = False

    run: Runner
    env: dict[str, str] = Field(default_factory=dict, description="Added to the run's environment only.")
    cwd: str | None = None
    timeout: Duration | None = Field(default=None, description="Kill a run that takes longer.")
    kill_grace: Duration = Field(
        default=timedelta(seconds=5), description="SIGTERM, then SIGKILL after this long."
    )

    overlap: Overlap = Field(
        default="skip", description="When max_concurrency runs are running: skip, queue, replace, or allow."
    )
    max_concurrency: int = Field(default=1, ge=1, le=1000)
    catchup: CatchupPolicy = Field(default_factory=CatchupPolicy)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    notify: list[Notification] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"{value!r} is not a schedule name: 1–128 letters, digits, _ . @ -, starting with a letter or digit"
            )
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError(f"{value!r} is not a namespace name: 1–128 letters, digits, _ . @ -")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_timezone(value)

    @model_validator(mode="after")
    def _window(self) -> ScheduleSpec:
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError("end is before start")
        from ecliptic.schedule import triggers  # here: triggers builds on these models

        triggers.check(self)
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


# -- runs ---------------------------------------------------------------------------------------------------

Outcome = Literal["succeeded", "failed", "timed_out", "missed", "skipped", "cancelled", "interrupted"]
RunState = Literal["scheduled", "running", "cancelling"] | Outcome
OUTCOMES: frozenset[str] = frozenset(
    ("succeeded", "failed", "timed_out", "missed", "skipped", "cancelled", "interrupted")
)
RETRYABLE: frozenset[str] = frozenset(("failed", "timed_out", "interrupted"))
RunCause = Literal["schedule", "catchup", "manual", "backfill", "retry"]


class RunView(BaseModel):
    """One run of a schedule, as the API and CLI show it."""

    id: int
    schedule_id: str
    namespace: str
    schedule: str
    scheduled_at: Instant
    due_at: Instant
    attempt: int
    cause: RunCause
    state: RunState
    started_at: Instant | None = None
    ended_at: Instant | None = None
    duration_s: float | None = None
    exit_code: int | None = None
    error: str | None = None
    stdout_tail: str | None = None
    stderr_tail: str | None = None
    owner: str | None = None


class ScheduleView(BaseModel):
    """A schedule with its state, as the API and CLI show it."""

    id: str
    namespace: str
    name: str
    spec: ScheduleSpec
    description: str = Field(description="The trigger in words, e.g. 'At 09:00, Monday through Friday'.")
    paused: bool
    next_fire_at: Instant | None
    fires: int
    last_run: RunView | None = None
    created: Instant
    updated: Instant
    owner: str | None = None
    origin: dict[str, Any] = Field(default_factory=dict)
