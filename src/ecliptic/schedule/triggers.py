"""Triggers: the fire times of a schedule, from its trigger, zone, start/end window and exclusions.

:func:`check` validates a trigger (the wire model calls it), :func:`compile_trigger` turns a schedule into a
:class:`CompiledTrigger` that answers "when next?", :func:`preview` lists the next fire times and
:func:`describe` says the trigger in words. Instants come out timezone-aware in UTC.

Fire times
    ``next_after(t)`` is the first fire time strictly after ``t`` that is at or after ``start``, not after
    ``end`` and not excluded. An excluded stretch is skipped in one step (see :mod:`calendars`); a trigger that
    stays excluded for 10 years of fire times (or 100,000 candidates) has no next fire time. ``max_runs`` is
    the caller's business.

    * ``once``: the instant, or the creation time for ``now`` (``start``, when later, for ``now``).
    * interval, ``rate``: ``anchor + k·every`` for k ≥ 0 (anchor: given, else ``start``, else the creation
      time), in UTC.
    * interval, ``delay``: ``every`` after the instant passed in (the end of the previous run).
    * cron: cronsim on the schedule's zone. ``second:`` gives the seconds within each fire minute.
    * RRULE: RFC 5545 (dateutil) on local wall-clock times, from ``dtstart`` (a ``DTSTART`` line, the
      ``dtstart`` field, or else the creation time to the minute); ``UNTIL`` ends it (a date: that whole day).

Daylight-saving time
    Intervals are DST-blind: an hourly interval stays exactly an hour apart across a change. Cron follows
    cronsim, which mimics Debian cron. A *fixed-time* expression — neither the minute nor the hour field
    starts with ``*`` (``30 2 * * *``, ``0 9 * * 1-5``, ``0 2,14 * * *``) — is matched on the wall clock: a
    time in the spring-forward gap fires once, at the jump (Europe/Berlin 2026-03-29: ``30 2 * * *`` fires
    at 03:00 CEST = 01:00Z; several times in the gap give that one fire), and a time in the repeated hour
    fires once, at its first occurrence (2026-10-25: 02:30 CEST = 00:30Z, not again at 02:30 CET). Any other
    expression (``0 * * * *``, ``*/30 * * * *``, ``* 2 * * *``, ``0 */2 * * *``) runs on real time: it fires
    at every instant whose local time matches, so local times in the gap never come (hourly: 01:00 CET, then
    03:00 CEST, one real hour later) and the repeated hour fires twice (02:00 CEST and 02:00 CET). The
    ``second`` field never changes which minutes fire. An RRULE is evaluated on wall-clock times and every
    occurrence is mapped like a fixed-time cron job: in the gap to the jump (once), in the fold to the first
    occurrence only (so ``FREQ=HOURLY`` has no fire in the second pass of the repeated hour). Exclusions are
    read on the wall-clock time of each fire instant.
"""

from __future__ import annotations

import datetime as _datetime_module
import re
import threading
import types
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Any, cast

from dateutil.relativedelta import relativedelta
from dateutil.rrule import rrule, rrulestr

from ecliptic.isotime import as_utc
from ecliptic.schedule.calendars import (
    WEEKDAY_NAMES,
    ExclusionCalendar,
    FastCronSim,
    check_exclusions,
    cron_fields,
    cron_template,
    describe_exclusions,
    seconds_field,
    wall_to_utc,
    zone_for,
)
from ecliptic.schedule.spec import CronTrigger, IntervalTrigger, OnceTrigger, RRuleTrigger, ScheduleSpec

_US = timedelta(microseconds=1)
_MINUTE = timedelta(minutes=1)
_HORIZON = timedelta(days=3653)
"""How far past the first excluded candidate the search for a fire time that is not excluded goes."""
_MAX_CANDIDATES = 100_000
_MAX_SKIPS = 1_000_000
"""Candidates a cron or RRULE search may pass over (the repeated hour; cannot really be reached)."""
_SEARCH_YEARS = 50
"""How many years an RRULE is searched for its next occurrence (cronsim gives up after 50 years too)."""


def check(spec: ScheduleSpec) -> None:
    """Raise ValueError naming what is wrong with the trigger or the exclusions of ``spec``."""
    trigger = spec.trigger
    if isinstance(trigger, CronTrigger):
        cron_fields(trigger.cron)
        if trigger.second is not None:
            seconds_field(trigger.second)
    elif isinstance(trigger, RRuleTrigger):
        _check_rrule(trigger.rrule, spec.timezone, trigger.dtstart)
    check_exclusions(spec.exclude)


# -- compiled triggers --------------------------------------------------------------------------------------


class CompiledTrigger(ABC):
    """A schedule's fire times. Build one with :func:`compile_trigger`; safe to share between threads."""

    def __init__(self, spec: ScheduleSpec, created: datetime) -> None:
        self.spec = spec
        self.created = as_utc(created)
        self.zone = zone_for(spec.timezone)
        self.start = spec.start.astimezone(UTC) if spec.start is not None else None
        self.end = spec.end.astimezone(UTC) if spec.end is not None else None
        self.calendar = ExclusionCalendar(spec.exclude, spec.timezone) if spec.exclude else None

    @abstractmethod
    def _candidate_after(self, after: datetime) -> datetime | None:
        """The first time of the bare trigger strictly after ``after`` (UTC), ignoring window and exclusions."""

    def next_after(self, after: datetime) -> datetime | None:
        """The first fire time strictly after ``after``, or None when there is none."""
        if after.tzinfo is not UTC:
            after = as_utc(after)
        if self.start is not None and after < self.start:
            after = self.start - _US
        horizon: datetime | None = None
        for _ in range(_MAX_CANDIDATES):
            fire = self._candidate_after(after)
            if fire is None or (self.end is not None and fire > self.end):
                return None
            if self.calendar is None:
                return fire
            if horizon is None:
                horizon = fire + _HORIZON
            elif fire > horizon:
                return None
            until = self.calendar.excluded_until(fire)
            if until is None:
                return fire
            after = max(fire, until - _US)
        return None

    def times_between(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        """The fire times in (after, until], at most ``limit``."""
        until = as_utc(until)
        times: list[datetime] = []
        fire = self.next_after(after)
        while fire is not None and fire <= until and len(times) < limit:
            times.append(fire)
            fire = self.next_after(fire)
        return times


class _Once(CompiledTrigger):
    def __init__(self, spec: ScheduleSpec, created: datetime, trigger: OnceTrigger) -> None:
        super().__init__(spec, created)
        if trigger.once == "now":
            self.instant = max(self.created, self.start) if self.start is not None else self.created
        else:
            self.instant = trigger.once.astimezone(UTC)

    def _candidate_after(self, after: datetime) -> datetime | None:
        return self.instant if self.instant > after else None


class _Rate(CompiledTrigger):
    def __init__(self, spec: ScheduleSpec, created: datetime, trigger: IntervalTrigger) -> None:
        super().__init__(spec, created)
        self.every = trigger.every
        # The grid starts at the anchor, else at the window's start (every 1h from 09:00 is 09:00, 10:00, …),
        # else when the schedule was created.
        if trigger.anchor is not None:
            self.anchor = trigger.anchor.astimezone(UTC)
        elif self.start is not None:
            self.anchor = self.start
        else:
            self.anchor = self.created

    def _candidate_after(self, after: datetime) -> datetime | None:
        if after < self.anchor:
            return self.anchor
        try:
            return self.anchor + ((after - self.anchor) // self.every + 1) * self.every
        except OverflowError:
            return None


class _Delay(CompiledTrigger):
    def __init__(self, spec: ScheduleSpec, created: datetime, trigger: IntervalTrigger) -> None:
        super().__init__(spec, created)
        self.every = trigger.every

    def _candidate_after(self, after: datetime) -> datetime | None:
        return after + self.every

    def next_after(self, after: datetime) -> datetime | None:
        """``every`` after ``after`` (the end of the previous run), moved past start and exclusions."""
        try:
            fire = as_utc(after) + self.every
        except OverflowError:
            return None
        if self.start is not None and fire < self.start:
            fire = self.start
        horizon = fire + _HORIZON
        for _ in range(_MAX_CANDIDATES):
            if (self.end is not None and fire > self.end) or fire > horizon:
                return None
            until = self.calendar.excluded_until(fire) if self.calendar is not None else None
            if until is None:
                return fire
            fire = max(until, fire + _US)
        return None


class _Cron(CompiledTrigger):
    """A cron expression through cronsim, with a cursor so that the common call ``next_after(previous fire)``
    continues the previous search instead of starting a new one."""

    def __init__(self, spec: ScheduleSpec, created: datetime, trigger: CronTrigger) -> None:
        super().__init__(spec, created)
        self._template = cron_template(cron_fields(trigger.cron), spec.timezone)
        self._wall = self._template.fixup_tz is not None  # cronsim's wall-clock (Debian fixed-time) mode
        seconds = seconds_field(trigger.second) if trigger.second is not None else (0,)
        self._seconds = None if seconds == (0,) else [timedelta(seconds=s) for s in seconds]
        self._cursor: tuple[datetime, Any] | None = None

    def _minute_after(self, after: datetime) -> datetime | None:
        cursor = self._cursor
        # A copy of the template or of the cursor (their parsed sets are shared and never changed); much
        # cheaper than building a cronsim iterator, and than copy.copy.
        it = FastCronSim.__new__(FastCronSim)
        if cursor is not None and cursor[0] == after:
            it.__dict__.update(cursor[1].__dict__)
        else:
            it.__dict__.update(self._template.__dict__)
            local = after.astimezone(self.zone)
            it.dt = (local.replace(tzinfo=None) if self._wall else local).replace(microsecond=0)
            it.skip_initial_tick = False
        for _ in range(_MAX_SKIPS):
            try:
                fire: datetime = next(it).astimezone(UTC)
            except StopIteration:
                return None
            # In wall-clock mode a start in the second pass of the repeated hour can give a time of its first
            # pass, which is earlier: skip those.
            if fire > after:
                self._cursor = (fire, it)
                return fire
        return None

    def _candidate_after(self, after: datetime) -> datetime | None:
        if self._seconds is None:
            return self._minute_after(after)
        # Fire minutes are at least a minute apart, so the last one found is still the first candidate while
        # ``after`` is inside it.
        cursor = self._cursor
        if cursor is not None and cursor[0] <= after < cursor[0] + _MINUTE:
            minute: datetime | None = cursor[0]
        else:
            minute = self._minute_after(after - _MINUTE)
        while minute is not None:
            for second in self._seconds:
                if minute + second > after:
                    return minute + second
            minute = self._minute_after(minute)
        return None


class _RRule(CompiledTrigger):
    """An RRULE on local wall-clock times. dateutil iterates a rule from its start, so a query far from the
    start first moves the start forward by whole periods (the same occurrences follow), and a cursor lets
    ``next_after(previous fire)`` continue the previous iteration."""

    def __init__(self, spec: ScheduleSpec, created: datetime, trigger: RRuleTrigger) -> None:
        super().__init__(spec, created)
        parsed = parse_rrule(trigger.rrule, spec.timezone)
        if trigger.dtstart is not None:
            start = trigger.dtstart.astimezone(self.zone).replace(tzinfo=None, microsecond=0)
        elif parsed.dtstart is not None:
            start = parsed.dtstart
        else:
            start = self.created.astimezone(self.zone).replace(tzinfo=None, second=0, microsecond=0)
        self._dtstart = start
        self._until = parsed.until
        self._rule: rrule | None
        try:
            self._rule = _build_rrule(parsed, start)
        except ValueError:  # a start that leaves the rule empty (FREQ=HOURLY;INTERVAL=2;BYHOUR=1 at 02:00)
            self._rule = None
        self._step: timedelta | None = None
        self._step_months: int | None = None
        if parsed.count is None:
            if parsed.freq in _FIXED_PERIODS:
                self._step = _FIXED_PERIODS[parsed.freq] * parsed.interval
            elif start.day <= 28:  # monthly and yearly: whole months never move the day
                self._step_months = parsed.interval * (12 if parsed.freq == _YEARLY else 1)
        self._lock = threading.Lock()
        self._cursor: tuple[datetime, Iterator[datetime]] | None = None

    def _rebased(self, wall: datetime) -> rrule:
        assert self._rule is not None
        start = self._dtstart
        if wall <= start:
            return self._rule
        if self._step is not None:
            periods = (wall - start) // self._step
            shifted = start + periods * self._step
        elif self._step_months is not None:
            months = (wall.year - start.year) * 12 + wall.month - start.month
            periods = months // self._step_months - 1
            shifted = start + relativedelta(months=periods * self._step_months)
        else:
            return self._rule
        if periods <= 1:
            return self._rule
        return self._rule.replace(dtstart=shifted)

    def _candidate_after(self, after: datetime) -> datetime | None:
        if self._rule is None or (self._until is not None and after >= self._until):
            return None
        wall = after.astimezone(self.zone).replace(tzinfo=None)
        with self._lock:
            cursor = self._cursor if self._cursor is not None and self._cursor[0] == after else None
            if cursor is not None:
                self._cursor = None
        if cursor is not None:
            fire, final = self._scan(cursor[1], wall, after)
            if final:
                return fire
            # the continued iteration reached its search limit: search afresh from here
        return self._scan(_occurrences(self._rebased(wall), wall.year + _SEARCH_YEARS), wall, after)[0]

    def _scan(
        self, occurrences: Iterator[datetime], wall: datetime, after: datetime
    ) -> tuple[datetime | None, bool]:
        """The first fire after ``after`` from ``occurrences``, and whether that answer is final (False: the
        occurrences ran out, which may be the search limit of the iteration)."""
        for _, occurrence in zip(range(_MAX_SKIPS), occurrences, strict=False):
            if occurrence <= wall:
                continue
            fire = wall_to_utc(occurrence, self.zone)
            if self._until is not None and fire > self._until:
                return None, True
            if fire > after:  # not a first-pass time of the repeated hour while ``after`` is in its second
                with self._lock:
                    self._cursor = (fire, occurrences)
                return fire, True
        return None, False


def compile_trigger(spec: ScheduleSpec, created: datetime) -> CompiledTrigger:
    """The fire times of ``spec``, a schedule created at ``created`` (the default anchor and dtstart)."""
    trigger = spec.trigger
    if isinstance(trigger, OnceTrigger):
        return _Once(spec, created, trigger)
    if isinstance(trigger, IntervalTrigger):
        return _Rate(spec, created, trigger) if trigger.mode == "rate" else _Delay(spec, created, trigger)
    if isinstance(trigger, CronTrigger):
        return _Cron(spec, created, trigger)
    return _RRule(spec, created, trigger)


def preview(
    spec: ScheduleSpec, count: int = 10, after: datetime | None = None, created: datetime | None = None
) -> list[datetime]:
    """The next ``count`` fire times at or after ``after`` (default: now), never more than ``max_runs``.

    ``created`` (default: now) anchors intervals, ``once: now`` and a default RRULE start. A ``delay``
    interval is previewed as if every run took no time."""
    now = datetime.now(UTC)
    created = as_utc(created) if created is not None else now
    after = as_utc(after) if after is not None else now
    if spec.max_runs is not None:
        count = min(count, spec.max_runs)
    if count <= 0:
        return []
    return compile_trigger(spec, created).times_between(after - _US, datetime.max.replace(tzinfo=UTC), count)


# -- RRULE --------------------------------------------------------------------------------------------------

_YEARLY, _MONTHLY, _WEEKLY, _DAILY, _HOURLY, _MINUTELY, _SECONDLY = range(7)
_FREQS = {
    "YEARLY": _YEARLY,
    "MONTHLY": _MONTHLY,
    "WEEKLY": _WEEKLY,
    "DAILY": _DAILY,
    "HOURLY": _HOURLY,
    "MINUTELY": _MINUTELY,
    "SECONDLY": _SECONDLY,
}
_FIXED_PERIODS = {
    _WEEKLY: timedelta(weeks=1),
    _DAILY: timedelta(days=1),
    _HOURLY: timedelta(hours=1),
    _MINUTELY: timedelta(minutes=1),
    _SECONDLY: timedelta(seconds=1),
}
_INT_LISTS = {  # part: (low, high, negatives allowed)
    "BYSECOND": (0, 59, False),
    "BYMINUTE": (0, 59, False),
    "BYHOUR": (0, 23, False),
    "BYMONTHDAY": (1, 31, True),
    "BYYEARDAY": (1, 366, True),
    "BYWEEKNO": (1, 53, True),
    "BYMONTH": (1, 12, False),
    "BYSETPOS": (1, 366, True),
}
_PARTS = frozenset(("FREQ", "INTERVAL", "COUNT", "UNTIL", "BYDAY", "WKST", *_INT_LISTS))
_DAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
_BYDAY = re.compile(r"^([+-]?\d{1,2})?(MO|TU|WE|TH|FR|SA|SU)$")
_DATE_VALUE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})(?:T(\d{2}):?(\d{2})(?::?(\d{2}))?(Z)?)?$")
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@dataclass(frozen=True)
class ParsedRule:
    """An RRULE read and checked; ``rule`` is what dateutil gets (without UNTIL, which is applied in UTC)."""

    rule: str
    parts: tuple[tuple[str, str], ...]
    freq: int
    interval: int
    count: int | None
    until: datetime | None
    until_text: str | None
    dtstart: datetime | None


def _date_value(text: str, where: str, *, end_of_day: bool) -> datetime:
    """A DATE or DATE-TIME value: aware (UTC) when it ends in Z, else a naive (floating) time; ``end_of_day``:
    a bare date means the last instant of that day rather than its start."""
    match = _DATE_VALUE.match(text.strip().upper())
    if match is None:
        raise ValueError(f"{where}: {text!r} is not a date or date-time (e.g. 20261231 or 20261231T235959Z)")
    year, month, day, hour, minute, second, utc = match.groups()
    try:
        if hour is None:
            value = datetime(int(year), int(month), int(day))
            if end_of_day:
                value += timedelta(days=1) - _US
        else:
            value = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0))
    except ValueError as exc:
        raise ValueError(f"{where}: {text!r} is not a valid date ({exc})") from exc
    return value.replace(tzinfo=UTC) if utc else value


def _dtstart_line(line: str, where: str, zone: tzinfo) -> datetime:
    """The wall time in ``zone`` that a DTSTART line names (with TZID=, in UTC, or floating = ``zone``)."""
    head, colon, text = line.partition(":")
    if not colon:
        raise ValueError(f"{where}: {line!r} has no value (DTSTART:20260105T090000)")
    source: tzinfo | None = None
    for param in head.split(";")[1:]:
        name, _, param_value = param.partition("=")
        if name.upper() == "TZID":
            try:
                source = zone_for(param_value)
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{where}: DTSTART TZID {param_value!r} is not an IANA time zone") from exc
        elif name.upper() != "VALUE" or param_value.upper() not in ("DATE", "DATE-TIME"):
            raise ValueError(f"{where}: DTSTART parameter {param!r} is not supported (TZID= or VALUE=)")
    value = _date_value(text, f"{where}: DTSTART", end_of_day=False)
    if value.tzinfo is None and source is not None:
        value = value.replace(tzinfo=source)
    return value.astimezone(zone).replace(tzinfo=None) if value.tzinfo is not None else value


def _int_list(name: str, value: str, where: str) -> list[int]:
    low, high, negative = _INT_LISTS[name]
    numbers: list[int] = []
    for item in value.split(","):
        try:
            number = int(item)
        except ValueError:
            raise ValueError(f"{where}: {name}={value} is not a list of whole numbers") from None
        if not (low <= number <= high or (negative and -high <= number <= -low)):
            allowed = f"{low}-{high}" + (f" or -{high} to -{low}" if negative else "")
            raise ValueError(f"{where}: {name} value {number} is out of range ({allowed})")
        numbers.append(number)
    return numbers


@lru_cache(maxsize=1024)
def parse_rrule(text: str, zone_key: str) -> ParsedRule:
    """Read an RRULE (``RRULE:FREQ=…``, bare ``FREQ=…``, optionally with a ``DTSTART`` line); raises
    ValueError with a message that names the part that is wrong."""
    where = f"rrule {text!r}"
    zone = zone_for(zone_key)
    dtstart: datetime | None = None
    rule_line: str | None = None
    for line in text.split():
        upper = line.upper()
        if upper.startswith("DTSTART"):
            if dtstart is not None:
                raise ValueError(f"{where}: more than one DTSTART")
            dtstart = _dtstart_line(line, where, zone)
        elif upper.startswith(("RRULE:", "FREQ=")) or (
            rule_line is None and "=" in upper and ":" not in upper
        ):
            if rule_line is not None:
                raise ValueError(f"{where}: more than one RRULE (give one rule per schedule)")
            rule_line = upper.removeprefix("RRULE:")
        else:
            raise ValueError(
                f"{where}: {line!r} is not supported: give one RRULE, optionally with a DTSTART line "
                "(exceptions go in exclude:)"
            )
    if rule_line is None:
        raise ValueError(f"{where} has no rule (e.g. FREQ=WEEKLY;BYDAY=MO,WE;BYHOUR=9;BYMINUTE=0)")
    parts: dict[str, str] = {}
    for pair in rule_line.strip(";").split(";"):
        name, equals, value = pair.partition("=")
        if not equals or not value:
            raise ValueError(f"{where}: {pair!r} is not NAME=VALUE")
        if name not in _PARTS:
            raise ValueError(f"{where}: {name} is not an RRULE part ({', '.join(sorted(_PARTS))})")
        if name in parts:
            raise ValueError(f"{where}: {name} is given twice")
        parts[name] = value
    if "FREQ" not in parts:
        raise ValueError(
            f"{where} has no FREQ (YEARLY, MONTHLY, WEEKLY, DAILY, HOURLY, MINUTELY or SECONDLY)"
        )
    if parts["FREQ"] not in _FREQS:
        raise ValueError(f"{where}: FREQ={parts['FREQ']} is not one of {', '.join(_FREQS)}")
    counts: dict[str, int] = {}
    for name in ("INTERVAL", "COUNT"):
        if name in parts:
            if not (parts[name].isdigit() and int(parts[name]) >= 1):
                raise ValueError(f"{where}: {name} must be a whole number of at least 1")
            counts[name] = int(parts[name])
    if "COUNT" in parts and "UNTIL" in parts:
        raise ValueError(f"{where}: give COUNT or UNTIL, not both (RFC 5545)")
    for name in _INT_LISTS:
        if name in parts:
            _int_list(name, parts[name], where)
    for item in parts.get("BYDAY", "").split(",") if "BYDAY" in parts else ():
        match = _BYDAY.match(item)
        if match is None or (match.group(1) is not None and not 1 <= abs(int(match.group(1))) <= 53):
            raise ValueError(f"{where}: BYDAY {item!r} is not a day (MO…SU, optionally numbered: 1MO, -1FR)")
    if "WKST" in parts and parts["WKST"] not in _DAYS:
        raise ValueError(f"{where}: WKST={parts['WKST']} is not a day (MO…SU)")
    if "BYMONTHDAY" in parts:
        months = _int_list("BYMONTH", parts["BYMONTH"], where) if "BYMONTH" in parts else list(range(1, 13))
        longest = max(_MONTH_DAYS[m - 1] for m in months)
        if all(abs(day) > longest for day in _int_list("BYMONTHDAY", parts["BYMONTHDAY"], where)):
            raise ValueError(f"{where}: BYMONTHDAY never occurs in the months given (at most {longest} days)")
    until: datetime | None = None
    if "UNTIL" in parts:
        last = _date_value(parts["UNTIL"], f"{where}: UNTIL", end_of_day=True)
        until = last.astimezone(UTC) if last.tzinfo is not None else wall_to_utc(last, zone)
    rule = ";".join(f"{name}={value}" for name, value in parts.items() if name != "UNTIL")
    return ParsedRule(
        rule=rule,
        parts=tuple(parts.items()),
        freq=_FREQS[parts["FREQ"]],
        interval=counts.get("INTERVAL", 1),
        count=counts.get("COUNT"),
        until=until,
        until_text=parts.get("UNTIL"),
        dtstart=dtstart,
    )


def _build_rrule(parsed: ParsedRule, dtstart: datetime) -> rrule:
    result = rrulestr("RRULE:" + parsed.rule, dtstart=dtstart)
    assert isinstance(result, rrule)
    return result


@lru_cache(maxsize=1024)
def _check_rrule(text: str, zone_key: str, dtstart: datetime | None) -> None:
    parsed = parse_rrule(text, zone_key)
    if parsed.dtstart is not None and dtstart is not None:
        raise ValueError(f"rrule {text!r}: give the start once, as a DTSTART line or as dtstart:, not both")
    start = parsed.dtstart
    if dtstart is not None:
        start = dtstart.astimezone(zone_for(zone_key)).replace(tzinfo=None, microsecond=0)
    try:
        _build_rrule(parsed, start or datetime(2000, 1, 3))
    except ValueError as exc:
        hint = "" if start is not None else " (it may depend on the start: give dtstart)"
        raise ValueError(f"rrule {text!r}: {exc}{hint}") from exc


@lru_cache(maxsize=64)
def _iterator_until(year: int) -> Callable[[rrule], Iterator[datetime]] | None:
    """dateutil's rrule iteration, stopping after ``year``.

    dateutil searches a rule that has no more occurrences up to the year 9999, which takes seconds; its loop
    stops at ``datetime.MAXYEAR``, so the same code run with a ``datetime`` whose MAXYEAR is ``year`` bounds
    the search. None if dateutil's internals are not what this expects (then the plain iteration is used)."""
    import dateutil.rrule as module

    original = getattr(module.rrule, "_iter", None)
    if not isinstance(original, types.FunctionType) or "datetime" not in original.__code__.co_names:
        return None
    shim = types.SimpleNamespace(**{name: getattr(_datetime_module, name) for name in dir(_datetime_module)})
    shim.MAXYEAR = min(year, _datetime_module.MAXYEAR)
    scope = dict(vars(module))
    scope["datetime"] = shim
    function = types.FunctionType(
        original.__code__, scope, original.__name__, original.__defaults__, original.__closure__
    )
    return cast(Callable[[rrule], Iterator[datetime]], function)


def _occurrences(rule: rrule, until_year: int) -> Iterator[datetime]:
    bounded = _iterator_until(until_year)
    return bounded(rule) if bounded is not None else iter(rule)


# -- describe -----------------------------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _cron_words(expr: str, second: str | None = None) -> str:
    from cron_descriptor import ExpressionDescriptor, Options

    fields = cron_fields(expr)
    text = fields if second is None else f"{second.strip()} {fields}"
    try:
        options = Options(use_24hour_time_format=True, locale_code="en_US")
        return str(ExpressionDescriptor(text, options).get_description())
    except Exception:  # cron-descriptor cannot read every cronsim expression
        return f"cron {expr}" + (f", second {second}" if second is not None else "")


_UNITS = (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def duration_words(value: timedelta) -> str:
    """``10 seconds``, ``1.5 seconds``, ``500 milliseconds``, ``1 hour 30 minutes``, ``2 days``."""
    micros = value // _US
    if micros % 1_000_000:
        if micros < 1_000_000:
            millis = f"{micros / 1000:g}"
            return f"{millis} millisecond" + ("" if millis == "1" else "s")
        return f"{micros / 1_000_000:g} seconds"
    seconds = micros // 1_000_000
    words: list[str] = []
    for unit, size in _UNITS:
        amount, seconds = divmod(seconds, size)
        if amount:
            words.append(f"{amount} {unit}" + ("" if amount == 1 else "s"))
    return " ".join(words)


def _every(value: timedelta) -> str:
    words = duration_words(value)
    return (
        f"Every {words.removeprefix('1 ')}"
        if words.startswith("1 ") and " " not in words[2:]
        else f"Every {words}"
    )


def _local(instant: datetime, zone: tzinfo) -> str:
    local = instant.astimezone(zone)
    return local.strftime("%Y-%m-%d %H:%M:%S" if local.second else "%Y-%m-%d %H:%M")


_FREQ_WORDS = {
    _YEARLY: ("Yearly", "year"),
    _MONTHLY: ("Monthly", "month"),
    _WEEKLY: ("Weekly", "week"),
    _DAILY: ("Daily", "day"),
    _HOURLY: ("Hourly", "hour"),
    _MINUTELY: ("Every minute", "minute"),
    _SECONDLY: ("Every second", "second"),
}
_MONTH_WORDS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_ORDINAL_WORDS = {
    1: "first",
    2: "second",
    3: "third",
    4: "fourth",
    5: "fifth",
    -1: "last",
    -2: "second-to-last",
}


def _ordinal(number: int) -> str:
    if number in _ORDINAL_WORDS:
        return _ORDINAL_WORDS[number]
    if number < 0:
        return f"{_ordinal(-number)}-to-last"
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def _and(items: list[str]) -> str:
    return ", ".join(items)


_DESCRIBED_PARTS = frozenset(
    (
        "FREQ",
        "INTERVAL",
        "COUNT",
        "UNTIL",
        "BYDAY",
        "BYMONTH",
        "BYMONTHDAY",
        "BYHOUR",
        "BYMINUTE",
        "BYSECOND",
        "WKST",
    )
)


def _rrule_words(trigger: RRuleTrigger, zone_key: str) -> str:
    parsed = parse_rrule(trigger.rrule, zone_key)
    parts = dict(parsed.parts)
    zone = zone_for(zone_key)
    if set(parts) - _DESCRIBED_PARTS:
        until = f";UNTIL={parsed.until_text}" if parsed.until_text else ""
        return f"Recurring: {parsed.rule}{until} ({zone_key})"
    single, unit = _FREQ_WORDS[parsed.freq]
    text = single if parsed.interval == 1 else f"Every {parsed.interval} {unit}s"
    if "BYMONTH" in parts:
        text += " in " + _and([_MONTH_WORDS[int(m) - 1] for m in parts["BYMONTH"].split(",")])
    if "BYMONTHDAY" in parts:
        days = [int(d) for d in parts["BYMONTHDAY"].split(",")]
        text += " on the " + _and([_ordinal(d) for d in days]) + (" day" if len(days) == 1 else " days")
    if "BYDAY" in parts:
        names = []
        for item in parts["BYDAY"].split(","):
            match = _BYDAY.match(item)
            assert match is not None
            day = WEEKDAY_NAMES[_DAYS.index(match.group(2))]
            names.append(f"the {_ordinal(int(match.group(1)))} {day}" if match.group(1) else day)
        text += " on " + _and(names)
    hours = [int(h) for h in parts["BYHOUR"].split(",")] if "BYHOUR" in parts else None
    minutes = [int(m) for m in parts["BYMINUTE"].split(",")] if "BYMINUTE" in parts else None
    seconds = [int(s) for s in parts["BYSECOND"].split(",")] if "BYSECOND" in parts else None
    if hours is not None and minutes is not None and len(hours) * len(minutes) * len(seconds or [0]) <= 8:
        times = [
            f"{h:02d}:{m:02d}" + (f":{s:02d}" if seconds is not None else "")
            for h in sorted(hours)
            for m in sorted(minutes)
            for s in sorted(seconds or [0])
        ]
        text += " at " + _and(times)
    else:
        if hours is not None:
            text += " in hour " + _and([str(h) for h in sorted(hours)])
        if minutes is not None:
            text += " at minute " + _and([str(m) for m in sorted(minutes)])
        if seconds is not None:
            text += " at second " + _and([str(s) for s in sorted(seconds)])
    if trigger.dtstart is not None:
        text += f", from {_local(trigger.dtstart, zone)}"
    elif parsed.dtstart is not None:
        text += f", from {parsed.dtstart.strftime('%Y-%m-%d %H:%M')}"
    if parsed.count is not None:
        text += ", once" if parsed.count == 1 else f", {parsed.count} times"
    if parsed.until is not None:
        text += f", until {_local(parsed.until, zone)}"
    return f"{text} ({zone_key})"


def describe(spec: ScheduleSpec) -> str:
    """The trigger in words: ``At 09:00, Monday through Friday (Europe/Vienna)``, ``Every 10 seconds``,
    ``Once, at 2026-12-01 10:00 (Europe/Vienna)``, ``Weekly on Monday, Wednesday at 09:00 (Europe/Vienna)``,
    with the exclusions appended (``…, except Saturday, Sunday``)."""
    trigger = spec.trigger
    zone = zone_for(spec.timezone)
    if isinstance(trigger, OnceTrigger):
        if isinstance(trigger.once, datetime):
            text = f"Once, at {_local(trigger.once, zone)} ({spec.timezone})"
        else:
            text = "Once, now"
    elif isinstance(trigger, IntervalTrigger):
        if trigger.mode == "delay":
            text = f"{_every(trigger.every)} after the previous run finished"
        else:
            text = _every(trigger.every)
            if trigger.anchor is not None:
                text += f", aligned to {_local(trigger.anchor, UTC)} UTC"
    elif isinstance(trigger, CronTrigger):
        text = f"{_cron_words(trigger.cron, trigger.second)} ({spec.timezone})"
    else:
        text = _rrule_words(trigger, spec.timezone)
    excluded = describe_exclusions(spec.exclude, zone, _cron_words)
    return f"{text}, {excluded}" if excluded else text
