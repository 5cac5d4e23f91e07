"""Transfer-time estimates: how long staging one replica to a platform's site will take.

An estimate is ``latency + size / rate`` and names the basis it came from:

* ``local``: the copy is at the platform's site already (or on a file system the platform reads): a disk read
  at ``local_rate``, no latency.
* ``static``: the configured figures for the source, by fnmatch pattern, else the default. Used until
  ``min_history`` transfers from the source to the site have succeeded.
* ``history``: latency and rate fitted to the last ``history_size`` successful transfers from the source to
  the site, by Theil–Sen (the median of the pairwise slopes, then the median intercept), so that one stalled
  or lucky transfer does not move the estimate.
* ``dynamic``: the history fit with its rate pulled towards what the transfers that finished within
  ``recent_window`` achieved (an exponentially weighted average, newest last), so that an estimate follows a
  source that slows down or speeds up within a few transfers.

Transfers from one source at the same time share its bandwidth: ``estimate(..., in_flight=n)`` gives this
transfer 1/(n+1) of the source's rate, and ``record(..., in_flight=n)`` says a transfer had company, so its
source is credited with (n+1) times the rate the transfer achieved.

The planner asks for an estimate on every offer request, so each (source, site) pair's summary is kept in
memory for ``cache_ttl`` seconds; what other processes record shows after at most that long, what is recorded
through the estimator itself shows at once.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any, Literal

from sqlalchemy import bindparam, event, select
from sqlalchemy.orm import Session

from ecliptic.staging.sources import Replica
from ecliptic.store.database import Database
from ecliptic.store.tables import TransferRow

Basis = Literal["local", "static", "history", "dynamic"]

RATE_UNITS = (
    "B/s; kB/s, MB/s, GB/s, TB/s count in 1000s; KiB/s, MiB/s, GiB/s, TiB/s in 1024s; "
    "bit/s, kbit/s, Mbit/s, Gbit/s (or Mb/s, Mbps) are bits"
)

_NUMBER = re.compile(r"\s*(?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<rest>.*?)\s*")
_PER_SECOND = re.compile(r"(?P<unit>.*?)\s*(?:/\s*(?:s|sec|second)|ps)", re.IGNORECASE)
_PREFIXES = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "p": 10**15,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
    "pi": 2**50,
}
_WILDCARDS = frozenset("*?[]")


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _unit_factor(unit: str) -> float | None:
    """Bytes per unit (``MB``: 1e6, ``Mbit``: 1.25e5), or None when ``unit`` is not one."""
    spelt = next((base for base in ("bytes", "byte", "bits", "bit") if unit.lower().endswith(base)), None)
    if spelt is not None:
        prefix, per_byte = unit[: -len(spelt)].lower(), 1.0 if spelt.startswith("byte") else 0.125
    elif unit and unit[-1] in "Bb":
        # A single letter is case-sensitive, as everywhere in networking: B is a byte, b a bit.
        prefix, per_byte = unit[:-1].lower(), 1.0 if unit[-1] == "B" else 0.125
    else:
        return None
    factor = _PREFIXES.get(prefix)
    return None if factor is None else factor * per_byte


def parse_rate(value: str | float) -> float:
    """Bytes per second from a number (bytes per second) or a text such as ``"100 MB/s"`` or ``"1 Gbit/s"``.

    Raises ValueError naming the text and what is wrong with it.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f'{value!r} is not a rate: write bytes per second or a text like "100 MB/s"')
    if isinstance(value, int | float):
        rate = float(value)
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(
                f"{value!r} is not a rate: a rate is a finite number of bytes per second above 0"
            )
        return rate
    match = _NUMBER.fullmatch(value)
    if match is None:
        if value.strip().startswith("-"):
            raise ValueError(f"{_quote(value)} is not a rate: a rate must be more than zero")
        if not value.strip():
            raise ValueError('an empty text is not a rate: write a number and a unit, like "100 MB/s"')
        raise ValueError(
            f'{_quote(value)} is not a rate: write a number followed by a unit ({RATE_UNITS}), like "100 MB/s"'
        )
    number = float(match["number"])
    rest = match["rest"]
    if not rest:
        factor = 1.0
    else:
        per_second = _PER_SECOND.fullmatch(rest)
        if per_second is None:
            amount, slash, per = rest.partition("/")
            if slash and _unit_factor(amount.strip()) is not None:
                raise ValueError(
                    f"{_quote(value)} is not a rate: rates are per second, not per {_quote(per.strip())}; "
                    f'write it like "100 MB/s"'
                )
            if _unit_factor(rest) is not None:
                raise ValueError(
                    f"{_quote(value)} is not a rate: {_quote(rest)} is an amount, not an amount per second; "
                    f'add "/s", like "{match["number"]} {rest}/s"'
                )
            raise ValueError(
                f"{_quote(value)} is not a rate: {_quote(rest)} is not a unit (use {RATE_UNITS})"
            )
        unit = per_second["unit"]
        found = _unit_factor(unit)
        if found is None:
            raise ValueError(
                f"{_quote(value)} is not a rate: {_quote(unit or rest)} is not a unit (use {RATE_UNITS})"
            )
        factor = found
    rate = number * factor
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"{_quote(value)} is not a rate: a rate must be more than zero")
    return rate


def _parse_latency(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: latency {value!r} is not a number of seconds")
    latency = float(value)
    if not math.isfinite(latency) or latency < 0:
        raise ValueError(f"{where}: latency {value!r} must be a finite number of seconds, 0 or more")
    return latency


@dataclass(frozen=True)
class StaticRate:
    """Configured figures for a source: what it is believed to deliver before anything was measured."""

    rate_bps: float
    latency_s: float = 0.0

    @classmethod
    def parse(cls, value: Mapping[str, Any] | StaticRate, where: str) -> StaticRate:
        """From ``{"rate": "100 MB/s" or bytes per second, "latency": seconds}``; ``where`` names it in errors."""
        if isinstance(value, StaticRate):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(
                f'{where}: expected a table like {{rate = "100 MB/s", latency = 2}}, not {value!r}'
            )
        unknown = sorted(set(value) - {"rate", "latency"})
        if unknown:
            raise ValueError(
                f"{where}: unknown key {', '.join(map(repr, unknown))} (known: 'rate', 'latency')"
            )
        if "rate" not in value:
            raise ValueError(f'{where}: a rate is required, like rate = "100 MB/s"')
        try:
            rate = parse_rate(value["rate"])
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        return cls(rate, _parse_latency(value.get("latency", 0.0), where))


DEFAULT_STATIC = StaticRate(rate_bps=20e6, latency_s=10.0)
"""For a source nothing is configured or known about: pessimistic on purpose, since an offer that starts
before its data is there is worse than one that starts a little late."""

DEFAULT_ASSUMED_SIZE = 2**30
"""The size estimated for when the catalogue does not know one."""


@dataclass(frozen=True)
class Estimate:
    seconds: float
    basis: Basis
    rate_bps: float
    """Bytes per second this transfer is expected to get: its share of the source when others are in flight,
    so that ``seconds == latency_s + size / rate_bps``."""
    latency_s: float
    size: int
    """The bytes estimated for (the assumed size when the size was not known)."""
    samples: int = 0
    """Successful transfers from the source to the site that the estimator knew of (up to its history size)."""
    recent: int = 0
    """Of those, the ones within the recent window that a dynamic estimate weighed."""
    in_flight: float = 0.0
    """The other transfers sharing the source, in whole-transfer equivalents (see ``ecliptic.staging.booked``)."""
    rule: str | None = None
    """For a static estimate, the configured pattern it used, or ``"default"``."""

    def explain(self) -> str:
        """One line for people: where the numbers came from and how they add up."""
        if self.basis == "local":
            origin = "a copy at the site"
        elif self.basis == "static":
            origin = (
                "the default figures" if self.rule == "default" else f"the figures configured for {self.rule}"
            )
        elif self.basis == "history":
            origin = f"a fit to {self.samples} transfers"
        else:
            origin = f"a fit to {self.samples} transfers, weighted to the {self.recent} recent ones"
        shared = f", shared with {self.in_flight:.3g} more" if self.in_flight else ""
        return (
            f"{self.basis} ({origin}): {self.latency_s:.3g} s + {_decimal(self.size, 'B')} at "
            f"{_decimal(self.rate_bps, 'B/s')}{shared} = {self.seconds:.3g} s"
        )


def _decimal(value: float, unit: str) -> str:
    for prefix, factor in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


# -- fitting -------------------------------------------------------------------------------------------------

_SEPARATION = 1.5
"""Two transfers give a slope only when one moved at least this many times the bytes of the other: between
similar sizes the difference in time is mostly noise."""


def fit_transfers(samples: Sequence[tuple[float, float]], prior_latency: float) -> tuple[float, float] | None:
    """``(latency seconds, seconds per byte)`` that best explain ``(bytes, seconds)`` samples, or None.

    None when no sample moved any bytes. When the sizes are too alike to tell latency from rate, the latency
    is ``prior_latency`` (at most half the fastest transfer) and the rate the median of what is left.
    """
    moving = [(x, s) for x, s in samples if x > 0]
    if not moving:
        return None
    ordered = sorted(samples)
    slopes = [
        (s_j - s_i) / (x_j - x_i)
        for i, (x_i, s_i) in enumerate(ordered)
        for x_j, s_j in ordered[i + 1 :]
        if x_j > x_i and x_j >= x_i * _SEPARATION
    ]
    slope = statistics.median(slopes) if slopes else 0.0
    fastest = min(s for _, s in samples)
    if slope > 0:
        latency = statistics.median(s - slope * x for x, s in samples)
        latency = min(max(latency, 0.0), fastest)
        return latency, slope
    latency = min(prior_latency, fastest / 2)
    spent = [(s - latency) / x for x, s in moving if s > latency]
    if not spent:
        return None
    return latency, statistics.median(spent)


# -- the estimator -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Recent:
    at: float
    """Epoch seconds the transfer finished."""
    slowness: float
    """Seconds per (shared) byte it took after the fitted latency."""
    weight: float
    """The part of its time it spent moving bytes rather than waiting out latency: a small transfer says
    little about the rate."""


@dataclass(frozen=True)
class _Summary:
    loaded: float
    generation: int
    samples: int
    fit: tuple[float, float] | None
    recent: tuple[_Recent, ...]
    """The newest transfers, oldest first."""
    observed: tuple[tuple[float, float, float, float], ...] = ()
    """The newest transfers as ``(finished epoch s, bytes, seconds, others in flight)``, newest first."""


_HISTORY_READ = (
    select(TransferRow.bytes, TransferRow.seconds, TransferRow.finished_at, TransferRow.in_flight)
    .where(
        TransferRow.source == bindparam("source"),
        TransferRow.site == bindparam("site"),
        TransferRow.ok.is_(True),
    )
    .order_by(TransferRow.finished_at.desc())
    .limit(bindparam("limit"))
)
"""The newest successful transfers of one pair: a backward range scan of (source, site, finished_at)."""

_RATIO_SAMPLES = 5
"""Recent transfers of about the same size whose median ratio to the model corrects a dynamic estimate."""
_RATIO_MINIMUM = 3
_RECENT_KEPT = 32
"""Enough for any weighted average: at the default weight the 32nd transfer back counts for 1e-10."""
_MAX_CACHED = 10_000
"""Bounds the memory the caches take should source keys not repeat (one HTTP host per request, say)."""


class TransferEstimator:
    """Estimates transfer times from configuration and the recorded history; records finished transfers.

    Thread-safe. ``static`` maps fnmatch patterns of source keys to ``{"rate": ..., "latency": ...}``: an
    exact key wins, else the matching pattern with the most characters that are not wildcards (the first
    written, on a tie), else ``default``. Sources matching ``local_sources`` are always local.
    """

    def __init__(
        self,
        db: Database,
        static: Mapping[str, Mapping[str, Any] | StaticRate] | None = None,
        *,
        default: Mapping[str, Any] | StaticRate = DEFAULT_STATIC,
        local_rate: str | float = "500 MB/s",
        local_sources: Iterable[str] = ("file:*",),
        assumed_size: int = DEFAULT_ASSUMED_SIZE,
        min_history: int = 3,
        history_size: int = 50,
        recent_window: timedelta = timedelta(minutes=10),
        recent_weight: float = 0.5,
        cache_ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min_history < 1:
            raise ValueError(f"min_history must be 1 or more, not {min_history}")
        if history_size < min_history:
            raise ValueError(f"history_size ({history_size}) must be at least min_history ({min_history})")
        if not 0 < recent_weight <= 1:
            raise ValueError(f"recent_weight must be more than 0 and at most 1, not {recent_weight}")
        if recent_window <= timedelta(0):
            raise ValueError(f"recent_window must be longer than zero, not {recent_window}")
        if cache_ttl < 0:
            raise ValueError(f"cache_ttl must be 0 or more seconds, not {cache_ttl}")
        if assumed_size < 0:
            raise ValueError(f"assumed_size must be 0 or more bytes, not {assumed_size}")
        self.db = db
        self.static = {
            pattern: StaticRate.parse(value, f"transfer rates for {_quote(pattern)}")
            for pattern, value in (static or {}).items()
        }
        self.default = StaticRate.parse(default, "default transfer rate")
        try:
            self.local_rate = parse_rate(local_rate)
        except ValueError as exc:
            raise ValueError(f"local_rate: {exc}") from None
        self.local_sources = tuple(local_sources)
        self.assumed_size = assumed_size
        self.min_history = min_history
        self.history_size = history_size
        self.recent_window = recent_window.total_seconds()
        self.recent_weight = recent_weight
        self.cache_ttl = cache_ttl
        self._clock = clock
        # Most specific first, so that the first match is the one to use.
        self._patterns = sorted(
            self.static.items(), key=lambda item: -sum(ch not in _WILDCARDS for ch in item[0])
        )
        self._lock = threading.Lock()
        self._rules: dict[str, tuple[bool, str, StaticRate]] = {}
        self._summaries: dict[tuple[str, str], _Summary] = {}
        self._generations: dict[tuple[str, str], int] = {}

    # -- estimates ---------------------------------------------------------------------------------------

    def estimate(
        self,
        source: str,
        site: str,
        size: int | None,
        *,
        now: datetime,
        in_flight: float = 0.0,
        replica_site: str | None = None,
        db_session: Session | None = None,
    ) -> Estimate:
        """How long moving ``size`` bytes from ``source`` to a platform at ``site`` is expected to take.

        ``in_flight``: other transfers from the same source running meanwhile. ``replica_site``: where the
        copy lives, when known; equal to ``site`` means no transfer. ``db_session``: read the history in this
        transaction (the planner's) rather than in a transaction of its own, when it is not cached.
        """
        if in_flight < 0:
            raise ValueError(f"in_flight must be 0 or more, not {in_flight}")
        if size is not None and size < 0:
            raise ValueError(f"size must be 0 or more bytes, not {size}")
        nbytes = self.assumed_size if size is None else size
        share = 1 + in_flight
        local, rule, static = self._rule(source)
        if local or (replica_site is not None and replica_site == site):
            rate = self.local_rate / share
            return Estimate(nbytes / rate, "local", rate, 0.0, nbytes, in_flight=in_flight)
        summary = self._summary(source, site, static, db_session)
        if summary.fit is None:
            rate = static.rate_bps / share
            return Estimate(
                static.latency_s + nbytes / rate,
                "static",
                rate,
                static.latency_s,
                nbytes,
                samples=summary.samples,
                in_flight=in_flight,
                rule=rule,
            )
        latency, slowness = summary.fit
        basis: Basis = "history"
        cutoff = now.timestamp() - self.recent_window
        corrected = self._recent_correction(summary, latency, slowness, cutoff, nbytes)
        if corrected is not None:
            seconds = (latency + nbytes * share * slowness) * corrected
            moving = max(seconds - latency, 1e-9)
            return Estimate(
                seconds,
                "dynamic",
                nbytes / moving if nbytes else 1.0 / (slowness * share),
                latency,
                nbytes,
                samples=summary.samples,
                recent=_RATIO_SAMPLES,  # at most; enough of the same size
                in_flight=in_flight,
            )
        recent = 0
        for sample in summary.recent:
            if sample.at >= cutoff and sample.weight > 0:
                weight = self.recent_weight * sample.weight
                slowness += weight * (sample.slowness - slowness)
                recent += 1
        if recent:
            basis = "dynamic"
        rate = 1.0 / (slowness * share)
        return Estimate(
            latency + nbytes / rate,
            basis,
            rate,
            latency,
            nbytes,
            samples=summary.samples,
            recent=recent,
            in_flight=in_flight,
        )

    @staticmethod
    def _recent_correction(
        summary: _Summary, latency: float, slowness: float, cutoff: float, nbytes: float
    ) -> float | None:
        """How much slower (or faster) than the fitted model the last few transfers of about this size were.

        The model explains a source's history; what it cannot see is what the source and this broker are going
        through now (a burst of sessions, a busy disk, a link shared with others). Sharing does not treat sizes
        alike: a small transfer is over before most others it started with, a large one meets many that start
        after it. So the median ratio of actual to modelled time is taken over recent transfers within a factor
        of two of this size; a median of up to five turns within three transfers when the source changes,
        without following a single outlier.
        """
        ratios = []
        for at, moved, seconds, company in summary.observed:
            if at < cutoff:
                break
            if not (nbytes / 2 <= moved <= nbytes * 2 or (nbytes == 0 and moved == 0)):
                continue
            model = latency + moved * (1 + company) * slowness
            if model > 0:
                ratios.append(seconds / model)
                if len(ratios) == _RATIO_SAMPLES:
                    break
        if len(ratios) < _RATIO_MINIMUM:
            return None
        return statistics.median(ratios)

    def estimate_replica(
        self,
        replica: Replica,
        site: str,
        *,
        now: datetime,
        in_flight: float = 0.0,
        db_session: Session | None = None,
    ) -> Estimate:
        """:meth:`estimate` for a resolved replica: its source key, size and site."""
        return self.estimate(
            replica.source,
            site,
            replica.size,
            now=now,
            in_flight=in_flight,
            replica_site=replica.site,
            db_session=db_session,
        )

    def _rule(self, source: str) -> tuple[bool, str, StaticRate]:
        found = self._rules.get(source)
        if found is not None:
            return found
        local = any(fnmatchcase(source, pattern) for pattern in self.local_sources)
        if source in self.static:
            found = (local, source, self.static[source])
        else:
            match = next(((p, r) for p, r in self._patterns if fnmatchcase(source, p)), None)
            found = (local, "default", self.default) if match is None else (local, match[0], match[1])
        with self._lock:
            if len(self._rules) >= _MAX_CACHED:
                self._rules.clear()
            self._rules[source] = found
        return found

    def _summary(self, source: str, site: str, static: StaticRate, db_session: Session | None) -> _Summary:
        key = (source, site)
        generation = self._generations.get(key, 0)
        summary = self._summaries.get(key)
        now = self._clock()
        if summary is not None and summary.generation == generation and now - summary.loaded < self.cache_ttl:
            return summary
        # The generation is taken before the read: a record that commits during it bumps the generation, so
        # the summary cached here, which may lack that record, is stale for the next call.
        summary = self._load(source, site, static, db_session, now, generation)
        with self._lock:
            if len(self._summaries) >= _MAX_CACHED:
                self._summaries.clear()
            self._summaries[key] = summary
        return summary

    def _load(
        self,
        source: str,
        site: str,
        static: StaticRate,
        db_session: Session | None,
        loaded: float,
        generation: int,
    ) -> _Summary:
        params = {"source": source, "site": site, "limit": self.history_size}
        if db_session is None:
            with self.db.read() as session:
                rows = session.execute(_HISTORY_READ, params).all()
        else:
            rows = db_session.execute(_HISTORY_READ, params).all()
        # The shared-bandwidth model: a transfer with n others in flight moved its bytes at 1/(n+1) of the
        # source's rate, as if the source had moved (n+1) times the bytes alone.
        points = [(float(nbytes) * (1 + company), float(seconds)) for nbytes, seconds, _, company in rows]
        fit = fit_transfers(points, static.latency_s) if len(rows) >= self.min_history else None
        recent: list[_Recent] = []
        if fit is not None:
            latency, _ = fit
            for (shared, seconds), row in zip(points[:_RECENT_KEPT], rows, strict=False):
                moving = seconds - latency
                if shared > 0 and moving > 0:
                    recent.append(_Recent(row.finished_at.timestamp(), moving / shared, moving / seconds))
            recent.reverse()
        observed = tuple(
            (finished.timestamp(), float(nbytes), float(seconds), float(company or 0))
            for nbytes, seconds, finished, company in rows[:_RECENT_KEPT]
        )
        return _Summary(loaded, generation, len(rows), fit, tuple(recent), observed)

    # -- recording ---------------------------------------------------------------------------------------

    def record(
        self,
        source: str,
        site: str,
        size: int,
        seconds: float,
        *,
        now: datetime,
        ok: bool = True,
        session: str | None = None,
        component: str | None = None,
        in_flight: float = 0.0,
        db_session: Session | None = None,
    ) -> None:
        """Remember a finished transfer of ``size`` bytes that took ``seconds`` and ended at ``now``.

        ``session`` and ``component`` are the uuids it staged for; ``in_flight`` the other transfers from the
        same source that ran alongside it. Written in a short transaction of its own, or added to
        ``db_session`` and counted once that commits. Failed transfers (``ok=False``) are kept for the record
        but estimates learn from successful ones only.
        """
        if size < 0:
            raise ValueError(f"size must be 0 or more bytes, not {size}")
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be a finite number, 0 or more, not {seconds}")
        if in_flight < 0:
            raise ValueError(f"in_flight must be 0 or more, not {in_flight}")
        if now.tzinfo is None:
            raise ValueError("now must be a timezone-aware datetime")
        row = TransferRow(
            source=source,
            site=site,
            bytes=size,
            seconds=seconds,
            finished_at=now,
            ok=ok,
            in_flight=in_flight,
            session_uuid=session,
            component_uuid=component,
        )
        key = (source, site)
        if db_session is None:
            with self.db.write() as own:
                own.add(row)
            self._invalidate(key)
            return
        db_session.add(row)
        # Forgotten when the caller's transaction ends, not now: until it commits other readers cannot see the
        # row, and a read through db_session meanwhile caches a history that a rollback would make untrue.
        for end in ("after_commit", "after_rollback"):
            event.listen(db_session, end, lambda _session: self._invalidate(key), once=True)

    def _invalidate(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._generations[key] = self._generations.get(key, 0) + 1
            self._summaries.pop(key, None)
