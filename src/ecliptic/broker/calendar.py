"""The capacity calendar of one platform: what is held when, and where a new session fits.

Holds are the bookings of unexpired offers and of accepted or active sessions, each over
``[prepare start, release end)`` in epoch seconds. The calendar is a step function of used cores, memory and
storage. Finding a slot looks only at the steps inside the window asked about, so the cost of an offer set
grows with how many bookings overlap the requested start range (bounded by the platform's size), not with how
many bookings the platform has in all.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class Resources:
    cores: int
    memory_gib: int
    storage_gib: int

    def fits_in(self, other: Resources) -> bool:
        return (
            self.cores <= other.cores
            and self.memory_gib <= other.memory_gib
            and self.storage_gib <= other.storage_gib
        )


class Hold(NamedTuple):
    start: int
    end: int
    cores: int
    memory_gib: int
    storage_gib: int


@dataclass(frozen=True, slots=True)
class Fit:
    """A hold window ``[start, start + length)`` where ``free`` is the least capacity left at any moment."""

    start: int
    free: Resources


class CapacityCalendar:
    def __init__(self, capacity: Resources, holds: Iterable[Hold | tuple[int, int, int, int, int]]) -> None:
        """``holds`` are :class:`Hold` or plain ``(start, end, cores, memory, storage)`` rows from the store."""
        self.capacity = capacity
        events: list[tuple[int, int, int, int]] = []
        for start, end, cores, memory, storage in holds:
            if end > start:
                events.append((start, cores, memory, storage))
                events.append((end, -cores, -memory, -storage))
        events.sort()
        self.times: list[int] = []
        # used[i] holds over [times[i], times[i+1]); before times[0] nothing is used.
        self.used: list[tuple[int, int, int]] = []
        self.releases: list[int] = []
        cores = memory = storage = 0
        for time, d_cores, d_memory, d_storage in events:
            cores += d_cores
            memory += d_memory
            storage += d_storage
            if self.times and self.times[-1] == time:
                self.used[-1] = (cores, memory, storage)
            else:
                self.times.append(time)
                self.used.append((cores, memory, storage))
            if (d_cores < 0 or d_memory < 0 or d_storage < 0) and (
                not self.releases or self.releases[-1] != time
            ):
                self.releases.append(time)

    def peak(self, start: int, end: int) -> Resources:
        """The most that is used at any moment in ``[start, end)``."""
        first = bisect_right(self.times, start) - 1
        last = bisect_left(self.times, end) - 1
        cores = memory = storage = 0
        for index in range(max(first, 0), last + 1):
            used = self.used[index]
            if used[0] > cores:
                cores = used[0]
            if used[1] > memory:
                memory = used[1]
            if used[2] > storage:
                storage = used[2]
        return Resources(cores, memory, storage)

    def free(self, start: int, end: int) -> Resources:
        peak = self.peak(start, end)
        return Resources(
            self.capacity.cores - peak.cores,
            self.capacity.memory_gib - peak.memory_gib,
            self.capacity.storage_gib - peak.storage_gib,
        )

    def candidate_starts(self, earliest: int, latest: int, step: int) -> Iterator[int]:
        """Hold starts worth trying in ``[earliest, latest]``: the first, then each moment capacity frees up."""

        def align(value: int) -> int:
            return -(-value // step) * step

        seen = set()
        first = align(earliest)
        if first <= latest:
            seen.add(first)
            yield first
        for release in self.releases[bisect_right(self.releases, earliest) :]:
            candidate = align(release)
            if candidate > latest:
                break
            if candidate not in seen:
                seen.add(candidate)
                yield candidate

    def fits(
        self, earliest: int, latest: int, length: int, need: Resources, step: int, max_candidates: int = 5000
    ) -> Iterator[Fit]:
        """Every hold window of ``length`` seconds starting in ``[earliest, latest]`` where ``need`` fits.

        At most ``max_candidates`` starts are tried, which bounds the cost of a request that fits nowhere.
        """
        for tried, start in enumerate(self.candidate_starts(earliest, latest, step)):
            if tried >= max_candidates:
                return
            free = self.free(start, start + length)
            if need.fits_in(free):
                yield Fit(start, free)
