"""ISO 8601 instants, durations and intervals, as the ExecutionBroker wire format uses them.

All values come out timezone-aware in UTC. Date-only forms are accepted everywhere (the reference broker
rejects them although its own schema examples use them): a bare date as an instant is midnight UTC, and a bare
date as a start interval means "some time on that day".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta


class IsoTimeError(ValueError):
    """A value that is not a valid ISO 8601 instant, duration or interval."""


_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A naive datetime is taken to be UTC already (that is how the store keeps them)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_instant(text: str) -> datetime:
    text = text.strip()
    if not text:
        raise IsoTimeError("an empty string is not an ISO 8601 instant")
    try:
        if _DATE_ONLY.match(text):
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        value = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError as exc:
        raise IsoTimeError(
            f"{text!r} is not an ISO 8601 instant (expected e.g. 2026-01-31T12:00:00Z)"
        ) from exc
    return as_utc(value)


def _is_date_only(text: str) -> bool:
    return bool(_DATE_ONLY.match(text.strip()))


def parse_duration(text: str, *, at: datetime | None = None) -> timedelta:
    """Parse a duration such as ``PT30M``, ``P1D`` or ``P1W``.

    Calendar units (months, years) depend on where they start: they are resolved from ``at`` (default: now).
    """
    import isodate  # here, not at the top: the local platform's supervisor imports this module at every launch

    text = text.strip()
    try:
        value = isodate.parse_duration(text)
    except (isodate.ISO8601Error, ValueError, TypeError) as exc:
        raise IsoTimeError(f"{text!r} is not an ISO 8601 duration (expected e.g. PT30M, PT2H, P1D)") from exc
    if isinstance(value, timedelta):
        result = value
    else:
        base = at or utcnow()
        result = (base + value) - base
    if result < timedelta(0):
        raise IsoTimeError(f"{text!r} is a negative duration")
    return result


def format_instant(value: datetime) -> str:
    """UTC with a ``Z`` suffix; whole seconds unless there is a fraction."""
    value = as_utc(value)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def format_duration(value: timedelta) -> str:
    total = value.total_seconds()
    if total == 0:
        return "PT0S"
    seconds = int(total)
    frac = total - seconds
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = "P"
    if days:
        text += f"{days}D"
    if hours or minutes or secs or frac:
        text += "T"
        if hours:
            text += f"{hours}H"
        if minutes:
            text += f"{minutes}M"
        if secs or frac:
            text += f"{secs + frac:g}S"
    return text


@dataclass(frozen=True)
class Interval:
    """A closed time interval ``[start, end]``; ``start == end`` means an exact instant."""

    start: datetime
    end: datetime

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    def format(self) -> str:
        return f"{format_instant(self.start)}/{format_duration(self.duration)}"


def parse_interval(text: str) -> Interval:
    """Parse ``start/end``, ``start/duration``, a bare instant (exact) or a bare date (that whole day)."""
    text = text.strip()
    if "/" not in text:
        start = parse_instant(text)
        if _is_date_only(text):
            return Interval(start, start + timedelta(days=1))
        return Interval(start, start)
    head, _, tail = text.partition("/")
    if not head or not tail or "/" in tail:
        raise IsoTimeError(
            f"{text!r} is not an ISO 8601 interval (expected start/end or start/duration, "
            "e.g. 2026-01-31T12:00:00Z/PT2H)"
        )
    if head.strip().upper().startswith("P"):
        raise IsoTimeError(f"{text!r}: an interval must begin with a start instant, not a duration")
    start = parse_instant(head)
    if tail.strip().upper().startswith("P"):
        end = start + parse_duration(tail, at=start)
    else:
        end = parse_instant(tail)
        if _is_date_only(tail):
            end += timedelta(days=1)
    if end < start:
        raise IsoTimeError(f"{text!r}: the interval ends before it starts")
    return Interval(start, end)
