"""Clocks: what time it is (UTC wall clock) and how to wait for a moment, real or controlled by a test.

Waits sleep on the monotonic clock in slices of at most ``max_slice`` and recompute from the wall clock after each
wake, so a wall-clock jump (NTP step, suspend/resume) is noticed within one slice instead of sleeping past it.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Protocol

from ecliptic.isotime import utcnow


class Clock(Protocol):
    def now(self) -> datetime: ...

    def wait_until(self, when: datetime | None, wake: threading.Event) -> bool:
        """Wait until ``when`` (forever when None) or until ``wake`` is set; True if woken."""
        ...


class SystemClock:
    """The machine's clock."""

    def __init__(self, max_slice: float = 1.0) -> None:
        self.max_slice = max_slice

    def now(self) -> datetime:
        return utcnow()

    def wait_until(self, when: datetime | None, wake: threading.Event) -> bool:
        while True:
            if when is None:
                delay = self.max_slice
            else:
                delay = (when - utcnow()).total_seconds()
                if delay <= 0:
                    return wake.is_set()
            if wake.wait(min(delay, self.max_slice)):
                return True
            if when is None:
                return False


class ManualClock:
    """A clock that moves only when a test says so; waiters wake when it passes their moment."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._changed = threading.Condition()

    def now(self) -> datetime:
        with self._changed:
            return self._now

    def advance(self, delta: timedelta | float) -> datetime:
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        with self._changed:
            self._now += step
            self._changed.notify_all()
            return self._now

    def set(self, when: datetime) -> None:
        with self._changed:
            self._now = when
            self._changed.notify_all()

    def wait_until(self, when: datetime | None, wake: threading.Event) -> bool:
        with self._changed:
            while not wake.is_set() and (when is None or self._now < when):
                # Short real-time slices: ``wake`` is a plain Event that does not notify this condition.
                self._changed.wait(0.005)
                if when is None:
                    break
            return wake.is_set()
