"""Transfers running now, per source: a source's bandwidth is shared by all of them, so estimates made while
others run (and the history of transfers that ran side by side) account for it.

Counted per process: brokers that share a store but not a process each see their own transfers only.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class InFlight:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: Counter[str] = Counter()

    def count(self, source: str) -> int:
        with self._lock:
            return self._running[source]

    @contextmanager
    def transfer(self, source: str) -> Iterator[_Transfer]:
        """Counts one transfer from ``source`` while the block runs; ``.others`` says how many shared it."""
        with self._lock:
            self._running[source] += 1
            record = _Transfer(self, source, self._running[source] - 1)
        try:
            yield record
        finally:
            with self._lock:
                record.observe(self._running[source] - 1)
                self._running[source] -= 1
                if self._running[source] <= 0:
                    del self._running[source]


class _Transfer:
    def __init__(self, owner: InFlight, source: str, others: int) -> None:
        self.owner = owner
        self.source = source
        self.at_start = others
        self.at_end = others

    def observe(self, others: int) -> None:
        self.at_end = others

    @property
    def others(self) -> int:
        """Others running meanwhile, as the mean of what was seen at the start and at the end."""
        return round((self.at_start + self.at_end) / 2)
