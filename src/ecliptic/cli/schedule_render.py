"""How the scheduler commands show things: outcome colours, times in a job's zone, relative times, tables.

Times of a schedule (next fire, scheduled, started) are shown in the schedule's own zone with its abbreviation,
because that is how the schedule was written ("09:00 in Europe/Vienna"); the outcome lines of ``ecliptic run``
are a log and show the machine's local clock. ``--json`` carries every instant exactly (UTC, ISO 8601).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from rich import box
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from ecliptic.cli.render import span
from ecliptic.humantime import relative

if TYPE_CHECKING:  # only for annotations: importing the scheduler costs every `ecliptic` start
    from ecliptic.schedule.service import NamespaceView
    from ecliptic.schedule.spec import RunView, ScheduleView

UTC = ZoneInfo("UTC")

OUTCOME_STYLES = {
    "succeeded": "bold green",
    "failed": "bold red",
    "timed_out": "bold red",
    "interrupted": "yellow",
    "missed": "yellow",
    "skipped": "dim",
    "cancelled": "magenta",
    "scheduled": "blue",
    "running": "bold yellow",
    "cancelling": "yellow",
}


def outcome_text(state: str | None) -> Text:
    if not state:
        return Text("")
    return Text(state.replace("_", " "), style=OUTCOME_STYLES.get(state, ""))


# -- times -------------------------------------------------------------------------------------------------
def zone_of(name: str | None) -> tzinfo:
    try:
        return ZoneInfo(name) if name else UTC
    except (ValueError, KeyError):
        return UTC


def zoned(value: datetime | None, zone: tzinfo) -> str:
    """``2026-12-01 09:00:00 CET``: the instant on the wall clock of ``zone``."""
    if value is None:
        return ""
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def clock(value: datetime | None, zone: tzinfo, *, millis: bool = False) -> str:
    """``09:00:00`` (or ``09:00:00.004``) on the wall clock of ``zone``."""
    if value is None:
        return ""
    local = value.astimezone(zone)
    text = local.strftime("%H:%M:%S")
    return f"{text}.{local.microsecond // 1000:03d}" if millis else text


def utc(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else ""


def took(seconds: float | None) -> str:
    """A run's duration: ``0.012s``, ``3.2s``, then ``2m30s``."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.3f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return span(timedelta(seconds=seconds))


def first_line(text: str | None) -> str:
    if not text:
        return ""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


# -- tables ------------------------------------------------------------------------------------------------
def _table() -> Table:
    return Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)


def namespaces_table(found: Iterable[NamespaceView]) -> Table:
    table = _table()
    table.add_column("namespace", no_wrap=True, style="bold")
    table.add_column("ephemeral")
    table.add_column("host")
    table.add_column("user")
    table.add_column("resource", overflow="fold")
    table.add_column("jobs", justify="right")
    table.add_column("created (UTC)", no_wrap=True)
    for item in found:
        origin: Mapping[str, Any] = item.origin
        table.add_row(
            item.name,
            Text("yes", style="cyan") if item.ephemeral else Text("no", style="dim"),
            str(origin.get("host") or ""),
            str(origin.get("user") or ""),
            Text(str(origin.get("resource") or "")),
            str(item.schedules),
            utc(item.created),
        )
    return table


def jobs_table(found: Iterable[ScheduleView], now: datetime) -> Table:
    table = _table()
    table.add_column("namespace", no_wrap=True, style="dim")
    table.add_column("job", no_wrap=True, style="bold")
    table.add_column("schedule")
    table.add_column("next fire", no_wrap=True)
    table.add_column("in", no_wrap=True)
    table.add_column("last outcome", no_wrap=True)
    table.add_column("paused")
    for view in found:
        zone = zone_of(view.spec.timezone)
        last = view.last_run
        table.add_row(
            view.namespace,
            view.name,
            Text(view.description),
            zoned(view.next_fire_at, zone) if not view.paused else Text("paused", style="yellow"),
            relative(view.next_fire_at, now) if not view.paused else "",
            outcome_text(last.state if last is not None else None),
            Text("yes", style="yellow") if view.paused else "",
        )
    return table


def runs_table(found: Iterable[RunView], zones: Mapping[str, tzinfo], *, show_job: bool = False) -> Table:
    table = _table()
    table.add_column("run", justify="right", style="bold")
    if show_job:
        table.add_column("job", no_wrap=True)
    table.add_column("scheduled", no_wrap=True)
    table.add_column("started", no_wrap=True)
    table.add_column("took", justify="right", no_wrap=True)
    table.add_column("attempt", justify="right")
    table.add_column("cause")
    table.add_column("outcome", no_wrap=True)
    table.add_column("exit", justify="right")
    table.add_column("error")
    for run in found:
        zone = zones.get(run.schedule_id, UTC)
        started = ""
        if run.started_at is not None:
            started = clock(run.started_at, zone, millis=True)
            if run.started_at.astimezone(zone).date() != run.scheduled_at.astimezone(zone).date():
                started = run.started_at.astimezone(zone).strftime("%Y-%m-%d ") + started
        cells: list[Any] = [str(run.id)]
        if show_job:
            cells.append(f"{run.namespace}/{run.schedule}")
        cells += [
            zoned(run.scheduled_at, zone),
            started,
            took(run.duration_s),
            str(run.attempt),
            run.cause,
            outcome_text(run.state),
            "" if run.exit_code is None else str(run.exit_code),
            Text(first_line(run.error)),
        ]
        table.add_row(*cells)
    return table


@dataclass
class PlannedJob:
    """A job of a timetable as ``ecliptic run`` shows it before (or while) it runs."""

    name: str
    description: str
    zone: tzinfo
    fires: list[datetime]
    note: str = ""


def planned_table(jobs: Iterable[PlannedJob], now: datetime) -> Table:
    table = _table()
    table.add_column("job", no_wrap=True, style="bold")
    table.add_column("schedule")
    table.add_column("next fire", no_wrap=True)
    table.add_column("in", no_wrap=True)
    for job in jobs:
        if not job.fires:
            table.add_row(job.name, Text(job.description), Text(job.note or "no more fires", style="dim"), "")
            continue
        when = [relative(at, now) for at in job.fires]
        if job.note:
            when[0] = job.note
        table.add_row(
            job.name,
            Text(job.description),
            "\n".join(zoned(at, job.zone) for at in job.fires),
            "\n".join(when),
        )
    return table


# -- ecliptic run ------------------------------------------------------------------------------------------
def outcome_line(run: RunView, *, namespace: str | None = None) -> Text:
    """``12:00:01  backup  succeeded  0.012s  exit 0  <first line of the error>`` (local clock)."""
    ended = run.ended_at or run.started_at or run.scheduled_at
    local = ended.astimezone()
    job = run.schedule if run.namespace == namespace else f"{run.namespace}/{run.schedule}"
    line = Text()
    line.append(local.strftime("%H:%M:%S"), style="dim")
    line.append("  ")
    line.append(job, style="bold")
    if run.attempt > 1:
        line.append(f" (attempt {run.attempt})", style="dim")
    line.append("  ")
    line.append_text(outcome_text(run.state))
    if run.duration_s is not None:
        line.append(f"  {took(run.duration_s)}")
    if run.exit_code is not None:
        line.append(f"  exit {run.exit_code}")
    error = first_line(run.error)
    if error and run.state != "succeeded":
        line.append(f"  {error}", style="red" if run.state in ("failed", "timed_out") else "")
    return line


def status_line(
    running: int, next_job: str | None, next_at: datetime | None, zone: tzinfo, now: datetime
) -> Spinner:
    """``2 running · next: backup at 09:00:00 CET (in 12 s)``."""
    text = Text(f"{running} running", style="bold yellow" if running else "dim")
    if next_job is not None and next_at is not None:
        text.append(" · next: ", style="dim")
        text.append(next_job, style="bold")
        local = next_at.astimezone(zone)
        text.append(f" at {local.strftime('%H:%M:%S %Z')} ({relative(max(next_at, now), now)})")
    else:
        text.append(" · nothing more scheduled", style="dim")
    text.append("   Ctrl-C stops", style="dim")
    return Spinner("dots", text=text)
