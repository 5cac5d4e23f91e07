"""How the client shows broker answers: phase colours, tables and panels built from the wire JSON.

Everything here reads plain JSON mappings rather than the broker's pydantic models, so the client also
copes with another ExecutionBroker that sends fewer fields or extra ones: a missing field shows as blank.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from ecliptic.isotime import IsoTimeError, parse_duration, parse_instant, utcnow

Json = Mapping[str, Any]

TERMINAL = frozenset({"REJECTED", "EXPIRED", "COMPLETED", "FAILED", "CANCELLED"})

PHASE_STYLES = {
    "INITIAL": "dim",
    "INITIALIZING": "dim",
    "OFFERED": "cyan",
    "ACCEPTED": "blue",
    "WAITING": "blue",
    "PREPARING": "yellow",
    "AVAILABLE": "yellow",
    "RUNNING": "bold yellow",
    "RELEASING": "yellow",
    "COMPLETED": "bold green",
    "FAILED": "bold red",
    "CANCELLED": "magenta",
    "REJECTED": "dim",
    "EXPIRED": "dim",
}
LEVEL_STYLES = {"ERROR": "bold red", "WARN": "yellow", "INFO": "cyan", "DEBUG": "dim"}


# -- fields --------------------------------------------------------------------------------------------------
def phase_text(phase: str | None) -> Text:
    if not phase:
        return Text("?", style="dim")
    return Text(phase, style=PHASE_STYLES.get(phase, ""))


def level_text(level: str | None) -> Text:
    level = level or "OTHER"
    return Text(level, style=LEVEL_STYLES.get(level, ""))


def instant(text: str | None) -> str:
    """A wire instant (or the ``instant/PT0S`` form of an available start) as ``2026-01-31 12:00:00Z``."""
    if not text:
        return ""
    head = text.split("/", 1)[0]
    try:
        value = parse_instant(head)
    except IsoTimeError:
        return text
    return value.strftime("%Y-%m-%d %H:%M:%SZ")


def span(value: timedelta) -> str:
    """A duration the way people say it: ``45s``, ``2m30s``, ``1h``, ``3d4h``."""
    seconds = int(value.total_seconds())
    if seconds <= 0:
        return "0s"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{amount}{unit}" for amount, unit in parts if amount]
    # Two units are enough to read at a glance; the exact value is in --json.
    return "".join(shown[:2])


def seconds(value: float) -> str:
    """Elapsed time with a tenth of a second while short (``3.2s``), then as :func:`span`."""
    return f"{value:.1f}s" if value < 60 else span(timedelta(seconds=value))


def duration(text: str | None) -> str:
    if not text:
        return ""
    try:
        return span(parse_duration(text))
    except IsoTimeError:
        return text


def expires_in(text: str | None) -> str:
    if not text:
        return ""
    try:
        left = parse_instant(text) - utcnow()
    except IsoTimeError:
        return text
    return "expired" if left.total_seconds() <= 0 else f"in {span(left)}"


def size(count: int | None) -> str:
    if count is None:
        return ""
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"


def short_kind(kind: str | None) -> str:
    """``docker-container`` for a Calycopis kind URI, ``command`` for ``urn:ecliptic:executable:command``."""
    if not kind:
        return ""
    tail = kind.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return tail.removesuffix(".yaml")


def minmax(value: Any) -> str:
    if not isinstance(value, Mapping):
        return ""
    low, high = value.get("min"), value.get("max")
    if low is None and high is None:
        return ""
    if low is None or high is None or low == high:
        return str(low if high is None else high)
    return f"{low}-{high}"


def _meta(item: Json) -> Json:
    meta = item.get("meta")
    return meta if isinstance(meta, Mapping) else {}


def uuid_of(item: Json) -> str:
    return str(_meta(item).get("uuid") or "")


def messages_of(item: Json) -> list[Json]:
    found = _meta(item).get("messages")
    return [m for m in found if isinstance(m, Mapping)] if isinstance(found, list) else []


def _available(session: Json) -> Json:
    schedule = session.get("schedule")
    if isinstance(schedule, Mapping) and isinstance(schedule.get("available"), Mapping):
        available: Json = schedule["available"]
        return available
    return {}


def _compute(session: Json) -> Json:
    compute = session.get("compute")
    return compute if isinstance(compute, Mapping) else {}


def exit_code(session: Json) -> str:
    """The executable's exit code, which the broker reports as the ``code`` value of a message."""
    for message in reversed(messages_of(session)):
        values = message.get("values")
        if isinstance(values, Mapping) and values.get("code") is not None:
            return str(values["code"])
    return ""


def components(session: Json) -> list[tuple[str, Json]]:
    """Each component with its role, in the order the wire format lists them."""
    found: list[tuple[str, Json]] = []
    for role in ("executable", "compute"):
        item = session.get(role)
        if isinstance(item, Mapping):
            found.append((role, item))
    for role in ("storage", "data"):
        items = session.get(role)
        if isinstance(items, list):
            found.extend((role, item) for item in items if isinstance(item, Mapping))
    return found


# -- tables --------------------------------------------------------------------------------------------------
def _table(*, title: str | None = None) -> Table:
    return Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False, show_edge=False)


def _uuid_column(table: Table, header: str = "session") -> None:
    # Never wrapped or shortened: the uuid is what people copy into the next command.
    table.add_column(header, no_wrap=True, min_width=36, style="bold")


def offers_table(offerset: Json) -> Table:
    table = _table()
    table.add_column("#", justify="right")
    _uuid_column(table)
    # Minimum widths so a narrow terminal wraps the start between date and time instead of cutting it.
    table.add_column("start (UTC)", min_width=10)
    table.add_column("for", justify="right")
    table.add_column("cores", justify="right")
    table.add_column("GiB", justify="right")
    table.add_column("expires", justify="right", min_width=8)
    offers = offerset.get("offers")
    for index, offer in enumerate(offers if isinstance(offers, list) else []):
        available = _available(offer)
        compute = _compute(offer)
        table.add_row(
            str(index),
            uuid_of(offer),
            instant(available.get("start")),
            duration(available.get("duration")),
            minmax(compute.get("cores")),
            minmax(compute.get("memory")),
            expires_in(offer.get("expires")),
        )
    return table


def messages_table(messages: Iterable[Json]) -> Table | None:
    rows = list(messages)
    if not rows:
        return None
    table = Table.grid(padding=(0, 2))
    table.add_column(no_wrap=True)
    table.add_column()
    for message in rows:
        text = message.get("message") or message.get("template") or ""
        table.add_row(level_text(message.get("level")), Text(str(text)))
    return table


def sessions_table(sessions: Iterable[Json]) -> Table:
    table = _table()
    _uuid_column(table)
    table.add_column("name")
    table.add_column("phase", no_wrap=True)
    table.add_column("start (UTC)", min_width=10)
    table.add_column("cores", justify="right")
    table.add_column("GiB", justify="right")
    table.add_column("exit", justify="right")
    for session in sessions:
        compute = _compute(session)
        table.add_row(
            uuid_of(session),
            Text(str(_meta(session).get("name") or "")),
            phase_text(session.get("phase")),
            instant(_available(session).get("start")),
            minmax(compute.get("cores")),
            minmax(compute.get("memory")),
            exit_code(session),
        )
    return table


def files_table(files: Iterable[Json]) -> Table:
    table = _table()
    table.add_column("path", overflow="fold")
    table.add_column("size", justify="right", no_wrap=True)
    for item in files:
        table.add_row(Text(str(item.get("path", ""))), size(item.get("size")))
    return table


# -- one session ---------------------------------------------------------------------------------------------
def _component_summary(role: str, item: Json) -> Text:
    text = Text()
    text.append(short_kind(item.get("kind")) or role)
    name = _meta(item).get("name")
    if name:
        text.append(f" {name!s}", style="italic")
    details: list[str] = []
    command = item.get("command")
    if isinstance(command, list):
        details.append(shlex.join(str(part) for part in command))
    image = item.get("image")
    if isinstance(image, Mapping) and image.get("locations"):
        details.append(", ".join(str(loc) for loc in image["locations"]))
    if role == "compute":
        cores, memory = minmax(item.get("cores")), minmax(item.get("memory"))
        if cores:
            details.append(f"{cores} cores")
        if memory:
            details.append(f"{memory} GiB")
    if role == "storage" and minmax(item.get("size")):
        details.append(f"{minmax(item.get('size'))} GiB")
    if role == "data" and item.get("location"):
        details.append(str(item["location"]))
    staging = item.get("staging")
    if role == "data" and isinstance(staging, Mapping):
        details.append(staging_summary(staging))
    if role == "storage" and item.get("destination"):
        details.append(f"results to {item['destination']}")
    if details:
        text.append(": " + "; ".join(details))
    text.append("  ")
    text.append_text(phase_text(item.get("phase")))
    return text


def staging_summary(staging: Mapping[str, Any]) -> str:
    """Where a data resource comes from, how far it is, and how long it took against the estimate."""
    parts = [f"from {staging['source']}"] if staging.get("source") else []
    progress = staging.get("progress")
    if staging.get("staging_seconds") is None and isinstance(progress, Mapping) and progress.get("total"):
        parts.append(f"{100 * int(progress.get('done') or 0) // int(progress['total'])} %")
    estimated = staging.get("estimated_seconds")
    if staging.get("staging_seconds") is not None:
        took = f"took {float(staging['staging_seconds']):.1f} s"
        if estimated is not None:
            took += f" (estimated {float(estimated):.1f} s, {staging.get('estimate_basis') or 'guess'})"
        parts.append(took)
    elif estimated is not None:
        parts.append(f"estimated {float(estimated):.1f} s ({staging.get('estimate_basis') or 'guess'})")
    return ", ".join(parts)


def session_panel(session: Json) -> Panel:
    meta = _meta(session)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("phase", phase_text(session.get("phase")))
    code = exit_code(session)
    if code:
        grid.add_row("exit code", code)
    if meta.get("name"):
        grid.add_row("name", Text(str(meta["name"])))
    if session.get("expires"):
        grid.add_row("expires", f"{instant(session['expires'])} ({expires_in(session['expires'])})")
    schedule = session.get("schedule")
    if isinstance(schedule, Mapping):
        for stage in ("preparing", "available", "releasing"):
            part = schedule.get(stage)
            if isinstance(part, Mapping) and part.get("start"):
                grid.add_row(stage, f"{instant(part.get('start'))} for {duration(part.get('duration'))}")
    for role, item in components(session):
        grid.add_row(role, _component_summary(role, item))
    for connector in session.get("connectors") or []:
        if isinstance(connector, Mapping):
            grid.add_row("connect", f"{connector.get('location')}  ({short_kind(connector.get('kind'))})")
    options = meta.get("options")
    if isinstance(options, list):
        allowed = [
            str(v) for option in options if isinstance(option, Mapping) for v in option.get("values", [])
        ]
        if allowed:
            grid.add_row("may become", ", ".join(allowed))
    for stamp in ("created", "modified"):
        if meta.get(stamp):
            grid.add_row(stamp, instant(str(meta[stamp])))
    parts: list[RenderableType] = [grid]
    table = messages_table(messages_of(session))
    if table is not None:
        parts.extend([Text(""), Text("messages", style="bold"), table])
    return Panel(Group(*parts), title=Text(f"session {uuid_of(session)}"), title_align="left", expand=False)


def watch_status(session: Json, elapsed: float) -> Spinner:
    """The live line of ``watch``: the session's phase, then each component's."""
    text = Text()
    # The full uuid is already on screen above; eight characters keep the line within a narrow terminal.
    text.append(f"{uuid_of(session)[:8]}  ")
    text.append_text(phase_text(session.get("phase")))
    for role, item in components(session):
        text.append(f"  {role} ", style="dim")
        text.append_text(phase_text(item.get("phase")))
        progress = (item.get("staging") or {}).get("progress") if role == "data" else None
        if item.get("phase") == "PREPARING" and isinstance(progress, Mapping) and progress.get("total"):
            text.append(f" {100 * int(progress.get('done') or 0) // int(progress['total'])} %", style="dim")
    text.append(f"  {span(timedelta(seconds=elapsed))}", style="dim")
    return Spinner("dots", text=text)


def as_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)
