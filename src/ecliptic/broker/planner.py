"""Offers: where and when a plan fits on each platform's capacity calendar.

The planner honours the requested start windows (start *and* end), the minimum and maximum cores and memory,
the storage size and the duration; every offer is one time slot; no offer starts in the past. It offers, in
this order: the earliest slot at the largest size that fits there; a later slot with the full requested
maximum, when the earliest one is smaller; then later, non-overlapping slots; on every platform that can run
the executable. :meth:`Planner.offers` locks the platforms it reads, so the caller must book the offers in the
same transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.orm import Session

from ecliptic.broker import messages
from ecliptic.broker.calendar import CapacityCalendar, Fit, Resources
from ecliptic.broker.data_plan import DataAssessment
from ecliptic.broker.plan import Plan
from ecliptic.broker.schema import Message
from ecliptic.isotime import Interval, format_duration, format_instant
from ecliptic.platforms.base import Platform
from ecliptic.store.tables import BookingRow, PlatformRow

MAX_CANDIDATES = 5000
"""How many candidate starts one platform may try for one request: bounds the cost of a hopeless request."""

DATA_STAGING_SECONDS = {"file": 5.0, "http": 30.0, "https": 30.0}


@dataclass(frozen=True)
class Offer:
    platform: str
    prepare_start: datetime
    available_start: datetime
    available_end: datetime
    release_end: datetime
    cores: int
    memory_gib: int
    storage_gib: int


@dataclass(frozen=True)
class PlannerSettings:
    default_start_range: timedelta
    slot_step: timedelta
    release_margin: timedelta
    max_offers: int


_CALENDAR_READ = select(
    BookingRow.start_s, BookingRow.end_s, BookingRow.cores, BookingRow.memory_gib, BookingRow.storage_gib
).where(
    BookingRow.platform == bindparam("platform"),
    BookingRow.start_s >= bindparam("from_start"),
    BookingRow.start_s < bindparam("end"),
    BookingRow.end_s > bindparam("start"),
    or_(BookingRow.expires_s.is_(None), BookingRow.expires_s > bindparam("now")),
)
"""Holds overlapping a window: a range scan of (platform, start_s) that reaches back one longest hold."""


def _epoch(value: datetime) -> int:
    return int(value.timestamp())


def _align(value: int, step: int) -> int:
    return -(-value // step) * step


def static_staging_seconds(plan: Plan) -> float:
    """A guess from URL schemes alone, for plans whose data was not located (see ``data_plan.assess``)."""
    staging = 0.0
    for data in plan.data:
        scheme = str(data.spec.get("location", "")).split(":", 1)[0].lower()
        staging += DATA_STAGING_SECONDS.get(scheme, 30.0)
    return staging


def preparation_seconds(platform: Platform, staging_seconds: float) -> float:
    """Storage and executable prepare side by side, then data is staged, then compute starts."""
    estimates = platform.info.prepare_seconds
    parallel = max(estimates.get("storage", 0.0), estimates.get("executable", 0.0))
    return parallel + staging_seconds + estimates.get("compute", 0.0)


class Planner:
    def __init__(self, platforms: dict[str, Platform], settings: PlannerSettings) -> None:
        self.platforms = platforms
        self.settings = settings

    def _lock(self, session: Session, names: Sequence[str]) -> dict[str, int]:
        """Serialise booking per platform: SQLite's write transaction already does; PostgreSQL takes row locks.

        Also reads how long the longest booking on each platform is, which bounds the calendar reads.
        """
        query = select(PlatformRow.name, PlatformRow.longest_hold_s).where(
            PlatformRow.name.in_(sorted(names))
        )
        if session.get_bind().dialect.name == "postgresql":
            query = query.order_by(PlatformRow.name).with_for_update()
        return {name: int(longest or 0) for name, longest in session.execute(query).all()}

    def note_holds(self, session: Session, bookings: Sequence[BookingRow], known: dict[str, int]) -> None:
        """Raise each platform's longest-hold mark where a new booking is longer than any before it."""
        longest: dict[str, int] = {}
        for booking in bookings:
            length = booking.end_s - booking.start_s
            if length > max(known.get(booking.platform, 0), longest.get(booking.platform, 0)):
                longest[booking.platform] = length
        for name, length in longest.items():
            session.execute(
                update(PlatformRow)
                .where(PlatformRow.name == name, PlatformRow.longest_hold_s < length)
                .values(longest_hold_s=length)
            )

    def offers(
        self,
        session: Session,
        plan: Plan,
        now: datetime,
        limit: int | None = None,
        data: DataAssessment | None = None,
    ) -> tuple[list[Offer] | list[Message], dict[str, int]]:
        """Offers for ``plan`` (or the messages that explain why there are none), and each platform's longest hold.

        ``data`` says how long each platform needs to stage the plan's data, and which platforms cannot take
        it; without it, staging time is guessed from URL schemes. Locks the platforms: the caller books what
        it takes in the same transaction.
        """
        limit = limit or self.settings.max_offers
        found: list[Offer] = []
        reasons: list[Message] = []
        longest = self._lock(session, list(self.platforms))
        for name, platform in self.platforms.items():
            if data is not None and name in data.unfit:
                reasons.append(data.unfit[name])
                continue
            located = data.staging_seconds if data is not None else {}
            staging = located[name] if name in located else static_staging_seconds(plan)
            result = self._offers_on(session, name, platform, plan, now, limit, longest.get(name, 0), staging)
            if isinstance(result, Message):
                reasons.append(result)
            else:
                found.extend(result)
        if not found:
            return reasons, longest
        found.sort(key=lambda offer: (offer.available_start, -offer.cores, -offer.memory_gib, offer.platform))
        return found[:limit], longest

    def _offers_on(
        self,
        session: Session,
        name: str,
        platform: Platform,
        plan: Plan,
        now: datetime,
        limit: int,
        lookback: int,
        staging_seconds: float,
    ) -> list[Offer] | Message:
        info = platform.info
        capacity = info.capacity
        if plan.executable.kind not in info.executable_kinds:
            return messages.error(
                "urn:not-supported",
                "Platform {platform} cannot run executables of kind {kind}",
                platform=name,
                kind=plan.executable.kind,
            )
        if plan.duration > capacity.max_duration:
            return messages.error(
                "urn:resource-limit",
                "The requested duration {requested} is longer than the maximum {maximum} on platform {platform}",
                requested=format_duration(plan.duration),
                maximum=format_duration(capacity.max_duration),
                platform=name,
            )
        for label, wanted, limit_value in (
            ("compute.cores.min", plan.cores[0], capacity.cores),
            ("compute.memory.min", plan.memory_gib[0], capacity.memory_gib),
            ("storage size", plan.storage_gib, capacity.storage_gib),
        ):
            if wanted > limit_value:
                return messages.error(
                    "urn:resource-limit",
                    "{field} asks for {requested}, more than platform {platform} has in all ({limit})",
                    field=label,
                    requested=wanted,
                    platform=name,
                    limit=limit_value,
                )

        step = max(1, int(self.settings.slot_step.total_seconds()))
        prep = _align(int(preparation_seconds(platform, staging_seconds) + 0.999), step)
        duration = int(plan.duration.total_seconds())
        release = int(self.settings.release_margin.total_seconds())
        length = prep + duration + release
        now_s = int(now.timestamp())
        windows = plan.starts or [Interval(now, now + self.settings.default_start_range)]
        # Hold-start ranges: a session available at t holds its capacity from t - prep.
        ranges = []
        for window in windows:
            earliest = max(_epoch(window.start), now_s + prep) - prep
            latest = _epoch(window.end) - prep
            if _align(earliest, step) <= latest:
                ranges.append((earliest, latest))
        if not ranges:
            first_start = _align(now_s + prep, step)
            return messages.error(
                "urn:start-too-soon",
                "Platform {platform} needs {prepare} to prepare, so the earliest start is {earliest}; "
                "every requested start interval closes before then",
                platform=name,
                prepare=format_duration(timedelta(seconds=prep)),
                earliest=format_instant(datetime.fromtimestamp(first_start, tz=now.tzinfo)),
            )
        ranges.sort()
        calendar = self._calendar(
            session, name, capacity_of(platform), ranges[0][0], ranges[-1][1] + length, now_s, lookback
        )
        need = Resources(plan.cores[0], plan.memory_gib[0], plan.storage_gib)
        best = Resources(plan.cores[1], plan.memory_gib[1], plan.storage_gib)

        def fits(wanted: Resources, after: int | None = None) -> Iterator[Fit]:
            for earliest, latest in ranges:
                if after is not None:
                    earliest = max(earliest, after)
                yield from calendar.fits(earliest, latest, length, wanted, step, MAX_CANDIDATES)

        def offer(fit: Fit) -> Offer:
            start = fit.start
            tz = now.tzinfo
            return Offer(
                platform=name,
                prepare_start=datetime.fromtimestamp(start, tz=tz),
                available_start=datetime.fromtimestamp(start + prep, tz=tz),
                available_end=datetime.fromtimestamp(start + prep + duration, tz=tz),
                release_end=datetime.fromtimestamp(start + length, tz=tz),
                cores=min(best.cores, fit.free.cores),
                memory_gib=min(best.memory_gib, fit.free.memory_gib),
                storage_gib=plan.storage_gib,
            )

        chosen: list[Offer] = []
        first = next(fits(need), None)
        if first is None:
            return messages.error(
                "urn:no-capacity",
                "Platform {platform} has no room for {cores} cores, {memory} GiB memory and {storage} GiB storage "
                "for {duration} in the requested start range",
                platform=name,
                cores=need.cores,
                memory=need.memory_gib,
                storage=need.storage_gib,
                duration=format_duration(plan.duration),
            )
        chosen.append(offer(first))
        if not best.fits_in(first.free) and len(chosen) < limit:
            bigger = next(fits(best), None)
            if bigger is not None and bigger.start != first.start:
                chosen.append(offer(bigger))
        starts = {offer.prepare_start for offer in chosen}
        cursor = first.start
        while len(chosen) < limit:
            later = next(fits(need, after=cursor + duration), None)
            if later is None:
                break
            cursor = later.start
            candidate = offer(later)
            if candidate.prepare_start not in starts:
                starts.add(candidate.prepare_start)
                chosen.append(candidate)
        return chosen

    def _calendar(
        self,
        session: Session,
        platform: str,
        capacity: Resources,
        start: int,
        end: int,
        now: int,
        lookback: int,
    ) -> CapacityCalendar:
        rows = session.execute(
            _CALENDAR_READ,
            {"platform": platform, "from_start": start - lookback, "start": start, "end": end, "now": now},
        ).all()
        return CapacityCalendar(capacity, rows)


def capacity_of(platform: Platform) -> Resources:
    capacity = platform.info.capacity
    return Resources(capacity.cores, capacity.memory_gib, capacity.storage_gib)
