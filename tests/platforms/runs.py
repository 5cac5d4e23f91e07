"""What every platform's tests build and wait for: a launch spec, and a run polled to the state wanted."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from ecliptic.isotime import utcnow
from ecliptic.platforms.base import LaunchSpec, Platform, RunStatus


def launch_spec(
    workdir: Path,
    command: list[str],
    *,
    deadline: timedelta = timedelta(minutes=5),
    session_uuid: str | None = None,
    environment: dict[str, str] | None = None,
    cores: int = 1,
    memory_gib: int = 1,
    **fields: Any,
) -> LaunchSpec:
    """A spec for one run in ``workdir``; ``fields`` are LaunchSpec's other fields (image, mounts, …)."""
    return LaunchSpec(
        session_uuid=session_uuid or str(uuid.uuid4()),
        workdir=workdir,
        command=command,
        environment=environment or {},
        cores=cores,
        memory_gib=memory_gib,
        deadline=utcnow() + deadline,
        **fields,
    )


def poll_until(
    platform: Platform,
    workdir: Path,
    handle: dict[str, Any],
    done: Callable[[RunStatus], bool] = lambda status: status.finished,
    timeout: float = 30.0,
    interval: float = 0.1,
) -> RunStatus:
    """Poll until ``done`` holds for the status; bounded by ``timeout``."""
    until = time.monotonic() + timeout
    while True:
        status = platform.poll(workdir, handle)
        if done(status):
            return status
        assert time.monotonic() < until, f"still {status} after {timeout:g} s"
        time.sleep(interval)
