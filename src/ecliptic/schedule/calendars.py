"""Wall clocks, cron expressions and exclusion calendars: the time-zone arithmetic under :mod:`triggers`.

* **Wall clock → instant** (:func:`wall_to_utc`): a local time that happens twice (the fold when clocks go
  back) names its *first* occurrence; a local time that does not exist (the gap when clocks go forward) names
  the instant of the jump, i.e. the first instant whose local time is later. Cron (through cronsim) and
  RRULE triggers both use this rule.
* **Cron dialect** (:func:`cron_fields`, :func:`cron_template`): five fields (minute hour day-of-month month
  day-of-week), ``@hourly`` … ``@yearly`` macros, names (``mon``–``sun``, ``jan``–``dec``, any case), 0 and 7
  for Sunday, ``L``, ``LW``, ``5L`` and ``mon#2`` as cronsim reads them. Validation names the field that is
  wrong and what is allowed there.
* **Exclusions** (:class:`ExclusionCalendar`): a fire time is excluded when it matches any entry of a
  schedule's ``exclude``; an entry matches when all the fields it sets match, read in the schedule's zone.
  :meth:`ExclusionCalendar.excluded_until` also says how long the exclusion lasts, so a trigger skips a whole
  excluded stretch (a weekend, a holiday, a lunch window) in one step instead of testing each fire time in it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

from ecliptic.schedule.spec import Exclusion

_MINUTE = timedelta(minutes=1)
_DAY = timedelta(days=1)

_UTC_KEYS = frozenset(("UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu"))


def zone_for(key: str) -> tzinfo:
    """The zone for an IANA key; UTC as :data:`datetime.UTC`, which cronsim and datetime treat as fixed."""
    return UTC if key in _UTC_KEYS else ZoneInfo(key)


# -- wall clock ---------------------------------------------------------------------------------------------


def _offset(instant: datetime, zone: tzinfo) -> timedelta | None:
    return instant.astimezone(zone).utcoffset()


def _first_change(lo: datetime, hi: datetime, zone: tzinfo) -> datetime:
    """The first whole second in (lo, hi] whose UTC offset differs from lo's (the offset at hi differs)."""
    before = _offset(lo, zone)
    lo_s = int(lo.timestamp() // 1)
    hi_s = -int(-hi.timestamp() // 1)
    while hi_s - lo_s > 1:
        mid = (lo_s + hi_s) // 2
        if _offset(datetime.fromtimestamp(mid, UTC), zone) == before:
            lo_s = mid
        else:
            hi_s = mid
    return datetime.fromtimestamp(hi_s, UTC)


def wall_to_utc(naive: datetime, zone: tzinfo) -> datetime:
    """The instant a local wall-clock time names: the first occurrence in a fold, the jump in a gap."""
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == naive:
        return first
    # In a gap zoneinfo reads fold=0 with the offset before the jump (an instant after it) and fold=1 with
    # the offset after it (an instant before it): the jump lies between the two.
    other = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    lo, hi = min(first, other), max(first, other)
    if _offset(lo, zone) == _offset(hi, zone):  # not a plain gap (cannot happen with real zones)
        return hi
    return _first_change(lo, hi, zone)


def next_transition(start: datetime, end: datetime, zone: tzinfo) -> datetime | None:
    """The first instant in (start, end) at which the zone's UTC offset changes, if it does by ``end``.

    Assumes at most one change in the span (spans here are at most a day long)."""
    if zone is UTC or _offset(start, zone) == _offset(end, zone):
        return None
    return _first_change(start, end, zone)


# -- cron ---------------------------------------------------------------------------------------------------

MACROS: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    allowed: str
    names: tuple[str, ...] = ()
    first_name: int = 0


_SECOND = _Field("second", 0, 59, "0-59")
_FIELDS = (
    _Field("minute", 0, 59, "0-59"),
    _Field("hour", 0, 23, "0-23"),
    _Field("day-of-month", 1, 31, "1-31, or L for the last day"),
    _Field("month", 1, 12, "1-12 or jan-dec", _MONTH_NAMES, 1),
    _Field("day-of-week", 0, 7, "0-7, 0 and 7 = Sunday, or mon-sun", _DAY_NAMES, 0),
)
_NUMBER = re.compile(r"\d+")
_FIELD_ORDER = "minute hour day-of-month month day-of-week"


class CronError(ValueError):
    """A cron expression or seconds field that cannot be used; the message says which field and why."""


def _value(field: _Field, text: str, where: str) -> int:
    if field.names and text in field.names:
        return field.names.index(text) + field.first_name
    if not _NUMBER.fullmatch(text):
        raise CronError(f"{where}: {field.name} {text.lower()!r} is not a value ({field.allowed})")
    value = int(text)
    if not field.low <= value <= field.high:
        raise CronError(f"{where}: {field.name} {value} is out of range ({field.allowed})")
    return value


def _term(field: _Field, term: str, where: str) -> set[int]:
    """The values one comma-separated term of a field stands for (special day terms give no values)."""
    if field.name == "day-of-month" and term in ("L", "LW"):
        return set()
    if field.name == "day-of-week" and "#" in term:
        day, _, nth = term.partition("#")
        _value(field, day, where)
        if not (_NUMBER.fullmatch(nth) and 1 <= int(nth) <= 5):
            raise CronError(f"{where}: day-of-week {term.lower()!r}: the week after # must be 1-5")
        return set()
    if field.name == "day-of-week" and len(term) > 1 and term.endswith("L"):
        if not _NUMBER.fullmatch(term[:-1]):
            raise CronError(f"{where}: day-of-week {term.lower()!r}: L follows a day number, e.g. 5L")
        _value(field, term[:-1], where)
        return set()
    base, slash, step_text = term.partition("/")
    if slash and not (_NUMBER.fullmatch(step_text) and int(step_text) > 0):
        raise CronError(
            f"{where}: {field.name} {term.lower()!r}: the step after / must be a whole number > 0"
        )
    if base == "*":
        low, high = field.low, field.high
    elif "-" in base:
        first, _, last = base.partition("-")
        low, high = _value(field, first, where), _value(field, last, where)
        if high < low:
            raise CronError(
                f"{where}: {field.name} range {base.lower()} runs backwards; split it "
                f"(e.g. {first.lower()}-{field.high},{field.low}-{last.lower()})"
            )
    elif base == "?":
        raise CronError(f"{where}: {field.name} '?' is Quartz syntax; use *")
    else:
        low = _value(field, base, where)
        high = field.high if slash else low
    step = int(step_text) if slash else 1
    return set(range(low, high + 1, step))


def _field_values(field: _Field, text: str, where: str) -> set[int]:
    values: set[int] = set()
    for term in text.split(","):
        if not term:
            raise CronError(f"{where}: {field.name} {text.lower()!r} has an empty list item")
        values |= _term(field, term, where)
    return values


@lru_cache(maxsize=2048)
def cron_fields(expr: str, what: str = "cron") -> str:
    """The five fields of a cron expression or macro, upper case and single-spaced; raises CronError."""
    where = f"{what} {expr!r}"
    text = expr.strip()
    if text.startswith("@"):
        macro = MACROS.get(text.lower())
        if macro is None:
            raise CronError(f"{where} is not a cron macro (use {', '.join(MACROS)})")
        return macro
    parts = text.upper().split()
    if len(parts) == 6:
        raise CronError(
            f"{where} has 6 fields: seconds are not a positional field here (cron dialects disagree on where "
            f"they go); give the 5 fields {_FIELD_ORDER} and the seconds as `second:` (e.g. second: '*/10')"
        )
    if len(parts) != 5:
        raise CronError(
            f"{where} has {len(parts)} fields; cron needs 5: {_FIELD_ORDER} (or @hourly, @daily, …)"
        )
    for field, part in zip(_FIELDS, parts, strict=True):
        _field_values(field, part, where)
    normalised = " ".join(parts)
    try:
        CronSim(normalised, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        detail = str(exc)
        if detail == "Bad day-of-month":
            detail = "day-of-month never occurs in the months given"
        raise CronError(f"{where}: {detail}") from exc
    return normalised


@lru_cache(maxsize=1024)
def seconds_field(text: str) -> tuple[int, ...]:
    """The seconds a cron-style ``second`` field stands for, sorted; raises CronError."""
    stripped = text.strip().upper()
    if not stripped or len(stripped.split()) != 1:
        raise CronError(f"second {text!r}: give one cron-style field, e.g. 0, */10, 0,30 or 10-20")
    return tuple(sorted(_field_values(_SECOND, stripped, f"second {text!r}")))


class FastCronSim(CronSim):
    """cronsim, with the search for the next matching hour done in one step where that is plain arithmetic.

    cronsim moves an hour at a time until the hour matches (up to 23 steps for a daily job). On a naive wall
    clock (its fixed-time DST mode) and in UTC an hour is always 3600 s, so jumping straight to the next
    matching hour, or to midnight to re-check the day as cronsim does, gives the same result; with a zone
    whose offset can change on the way, cronsim's own stepping is kept."""

    def __init__(self, expr: str, dt: datetime) -> None:
        super().__init__(expr, dt)
        self.sorted_hours = sorted(self.hours)

    def advance_hour(self) -> bool:
        if self.dt.hour in self.hours:
            return False
        if self.dt.tzinfo not in (None, UTC) or self.tick_direction != 1:
            return bool(super().advance_hour())
        hour = self.dt.hour
        later = [h for h in self.sorted_hours if h > hour]
        start = self.dt.replace(minute=0, second=0)
        self.dt = start.replace(hour=later[0]) if later else start.replace(hour=0) + _DAY
        return True


@lru_cache(maxsize=2048)
def cron_template(fields: str, zone_key: str) -> Any:
    """A cronsim iterator for ``fields`` (from :func:`cron_fields`) in a zone, to copy and position.

    cronsim parses the expression when it is built; copying a built one (its parsed sets are shared and never
    changed) and setting its position is much cheaper than building one per query."""
    return FastCronSim(fields, datetime(2000, 1, 1, tzinfo=zone_for(zone_key)))


def cron_matches(template: Any, wall: datetime) -> bool:
    """Whether a local wall-clock time, read to the minute, matches a cronsim expression."""
    return bool(
        wall.minute in template.minutes
        and wall.hour in template.hours
        and wall.month in template.months
        and template.match_day(wall.date())
    )


# -- exclusions ---------------------------------------------------------------------------------------------

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def check_exclusions(exclusions: list[Exclusion]) -> None:
    """Raise ValueError for an exclusion entry that cannot work, naming it (``exclude[1].daily``)."""
    for index, entry in enumerate(exclusions):
        where = f"exclude[{index}]"
        if entry.cron is not None:
            cron_fields(entry.cron, f"{where}.cron")
        if entry.daily is not None:
            start, end = entry.daily
            if start.tzinfo is not None or end.tzinfo is not None:
                raise ValueError(
                    f"{where}.daily: give local times without an offset (they are read in the schedule's zone)"
                )
            if start == end:
                raise ValueError(
                    f"{where}.daily: from and to are both {start.isoformat()}, an empty window "
                    "(for whole days use weekdays or dates)"
                )
        if entry.during is not None and entry.during[1] <= entry.during[0]:
            raise ValueError(f"{where}.during: the window ends before it starts")


class _Entry:
    """One exclusion entry, prepared for fast matching."""

    def __init__(self, entry: Exclusion, zone: tzinfo, zone_key: str) -> None:
        self.zone = zone
        self.dates = frozenset(entry.dates) if entry.dates is not None else None
        self.weekdays = (
            frozenset(_WEEKDAYS.index(day) for day in entry.weekdays) if entry.weekdays is not None else None
        )
        self.daily = entry.daily
        self.during = (
            (entry.during[0].astimezone(UTC), entry.during[1].astimezone(UTC)) if entry.during else None
        )
        self.cron = cron_template(cron_fields(entry.cron), zone_key) if entry.cron is not None else None
        self.wall_based = any(v is not None for v in (self.dates, self.weekdays, self.daily, self.cron))

    def until(self, instant: datetime, local: datetime) -> datetime | None:
        """None when the entry does not match ``instant``; else an instant after it up to which it matches."""
        ends: list[datetime] = []
        if self.during is not None:
            if not self.during[0] <= instant < self.during[1]:
                return None
            ends.append(self.during[1])
        wall = local.replace(tzinfo=None)

        def after(boundary: datetime) -> datetime:
            # While the UTC offset stays what it is at ``instant`` the wall clock runs with real time; a
            # change of offset in between is dealt with below.
            return instant + (boundary - wall)

        midnight = datetime.combine(wall.date() + _DAY, time())
        if self.dates is not None:
            if wall.date() not in self.dates:
                return None
            ends.append(after(midnight))
        if self.weekdays is not None:
            if wall.weekday() not in self.weekdays:
                return None
            ends.append(after(midnight))
        if self.daily is not None:
            start, end = self.daily
            now = wall.time()
            if start < end:
                if not start <= now < end:
                    return None
                ends.append(after(datetime.combine(wall.date(), end)))
            elif now >= start:
                ends.append(after(datetime.combine(wall.date() + _DAY, end)))
            elif now < end:
                ends.append(after(datetime.combine(wall.date(), end)))
            else:
                return None
        if self.cron is not None:
            if not cron_matches(self.cron, wall):
                return None
            if len(self.cron.minutes) < 60:
                ends.append(after(wall.replace(second=0, microsecond=0) + _MINUTE))
            elif len(self.cron.hours) < 24:
                ends.append(after(wall.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)))
            else:
                ends.append(after(midnight))
        result = min(ends)
        if self.wall_based:
            change = next_transition(instant, result, self.zone)
            if change is not None:
                result = change
        return result


class ExclusionCalendar:
    """A schedule's exclusions, read in its zone."""

    def __init__(self, exclusions: list[Exclusion], zone_key: str) -> None:
        self.zone = zone_for(zone_key)
        self.entries = [_Entry(entry, self.zone, zone_key) for entry in exclusions]

    def excluded(self, instant: datetime) -> bool:
        return self.excluded_until(instant) is not None

    def excluded_until(self, instant: datetime) -> datetime | None:
        """None when ``instant`` is not excluded; else a later instant such that everything in between is
        excluded too (the end of the longest matching stretch, cut short at a change of UTC offset)."""
        local = instant.astimezone(self.zone)
        best: datetime | None = None
        for entry in self.entries:
            end = entry.until(instant, local)
            if end is not None and (best is None or end > best):
                best = end
        return best


def _fmt_local(instant: datetime, zone: tzinfo) -> str:
    local = instant.astimezone(zone)
    return local.strftime("%Y-%m-%d %H:%M:%S" if local.second else "%Y-%m-%d %H:%M")


def _fmt_time(value: time) -> str:
    return value.strftime("%H:%M:%S" if value.second else "%H:%M")


def _fmt_dates(dates: list[date]) -> str:
    return dates[0].isoformat() if len(dates) == 1 else f"{len(dates)} dates"


def describe_exclusions(exclusions: list[Exclusion], zone: tzinfo, cron_words: Callable[[str], str]) -> str:
    """``except Saturday, Sunday; 2 dates`` (empty without exclusions). ``cron_words(expr)`` describes a cron
    expression in words."""
    phrases: list[str] = []
    for entry in exclusions:
        parts: list[str] = []
        alone = (
            sum(v is not None for v in (entry.dates, entry.weekdays, entry.daily, entry.during, entry.cron))
            == 1
        )
        if entry.daily is not None:
            parts.append(f"{_fmt_time(entry.daily[0])}–{_fmt_time(entry.daily[1])}")
        if entry.weekdays is not None:
            days = ", ".join(WEEKDAY_NAMES[_WEEKDAYS.index(day)] for day in entry.weekdays)
            parts.append(days if alone else f"on {days}")
        if entry.dates is not None:
            parts.append(_fmt_dates(entry.dates) if alone else f"on {_fmt_dates(entry.dates)}")
        if entry.during is not None:
            window = f"{_fmt_local(entry.during[0], zone)}–{_fmt_local(entry.during[1], zone)}"
            parts.append(window if alone else f"within {window}")
        if entry.cron is not None:
            words = cron_words(entry.cron)
            parts.append(words[:1].lower() + words[1:])
        phrases.append(" ".join(parts))
    return f"except {'; '.join(phrases)}" if phrases else ""
