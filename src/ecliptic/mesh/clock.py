"""Hybrid logical clocks: versions that order like wall time yet never run backwards.

A timestamp is ``physical_ms << 16 | counter``. Every local change takes ``now()``; every change received
moves the clock past it (``observe``), so a version made after seeing another always sorts after it, even
when the two pods' wall clocks disagree. Ties between pods are broken by node id wherever versions compare.
"""

from __future__ import annotations

import threading
import time

COUNTER_BITS = 16
COUNTER_MASK = (1 << COUNTER_BITS) - 1


def physical_ms(stamp: int) -> int:
    return stamp >> COUNTER_BITS


def to_ns(stamp: int) -> int:
    return physical_ms(stamp) * 1_000_000


class HybridClock:
    def __init__(self, last: int = 0) -> None:
        self._last = last
        self._lock = threading.Lock()

    @property
    def last(self) -> int:
        return self._last

    def now(self) -> int:
        with self._lock:
            wall = time.time_ns() // 1_000_000 << COUNTER_BITS
            self._last = wall if wall > self._last else self._last + 1
            return self._last

    def observe(self, stamp: int) -> None:
        with self._lock:
            if stamp > self._last:
                self._last = stamp
