"""Callables that scheduler tests run in-process or in scheduler subprocesses, to see what really ran."""

from __future__ import annotations

import os
import threading
import time

_lock = threading.Lock()
calls: list[tuple[str, float]] = []
active = 0
peak = 0


def mark(path: str, tag: str) -> None:
    """Append one line per execution: O_APPEND writes of one short line are atomic across processes."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{tag} {os.getpid()} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)


def record(tag: str, seconds: float = 0.0) -> None:
    """Record a call in this process, optionally taking a while; tracks the most calls at once."""
    global active, peak
    with _lock:
        calls.append((tag, time.time()))
        active += 1
        peak = max(peak, active)
    try:
        if seconds:
            time.sleep(seconds)
    finally:
        with _lock:
            active -= 1


def fail(message: str = "boom") -> None:
    raise RuntimeError(message)


def reset() -> None:
    global active, peak
    with _lock:
        calls.clear()
        active = 0
        peak = 0
