"""Callables that scheduler tests run in-process or in scheduler subprocesses, to see what really ran."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

_lock = threading.Lock()
calls: list[tuple[str, float]] = []
_active: Counter[str] = Counter()
_peak: Counter[str] = Counter()


def mark(path: str, tag: str) -> None:
    """Append one line per execution: O_APPEND writes of one short line are atomic across processes."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{tag} {os.getpid()} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)


def record(tag: str, seconds: float = 0.0) -> None:
    """Record a call in this process, optionally taking a while; tracks the most calls of a tag at once."""
    with _lock:
        calls.append((tag, time.time()))
        _active[tag] += 1
        _peak[tag] = max(_peak[tag], _active[tag])
    try:
        if seconds:
            time.sleep(seconds)
    finally:
        with _lock:
            _active[tag] -= 1


def peak(tag: str) -> int:
    with _lock:
        return _peak[tag]


def fail(message: str = "boom") -> None:
    raise RuntimeError(message)


def reset() -> None:
    """Forget calls; tags must differ between tests, since calls of an earlier test may still be running."""
    with _lock:
        calls.clear()
