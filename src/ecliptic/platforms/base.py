"""The one ``Platform`` protocol every execution platform implements.

The broker's lifecycle handlers call these methods from engine workers, possibly in another process than the
one that launched the work, possibly twice for the same session after a crash. So every method is idempotent
and works from what is on disk or in the platform itself, plus the small JSON ``handle`` that ``launch``
returned and the broker stored.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Capacity:
    cores: int
    memory_gib: int
    storage_gib: int
    max_duration: timedelta


@dataclass(frozen=True)
class LaunchSpec:
    session_uuid: str
    workdir: Path
    """The session's storage directory: the command runs here; staged data and outputs live under it."""
    command: list[str]
    environment: dict[str, str]
    cores: int
    memory_gib: int
    deadline: datetime
    """When the booked time is over: the platform stops the work then, whatever the broker is doing."""


class RunState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LOST = "lost"
    """Nothing is running and no result was recorded (e.g. the machine rebooted under it)."""


@dataclass(frozen=True)
class RunStatus:
    state: RunState
    exit_code: int | None = None
    detail: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in (RunState.SUCCEEDED, RunState.FAILED, RunState.LOST)


@dataclass(frozen=True)
class PlatformInfo:
    name: str
    capacity: Capacity
    executable_kinds: frozenset[str]
    prepare_seconds: dict[str, float] = field(default_factory=dict)
    """Estimated preparation time per component role (``executable``, ``compute``, ``storage``)."""


class Platform(Protocol):
    @property
    def info(self) -> PlatformInfo: ...

    def launch(self, spec: LaunchSpec) -> dict[str, Any]:
        """Start the work; returns a JSON-able handle. Calling it again for the same session starts nothing."""
        ...

    def poll(self, workdir: Path, handle: dict[str, Any]) -> RunStatus: ...

    def stop(self, workdir: Path, handle: dict[str, Any], reason: str) -> None:
        """Stop the work now (cancel, deadline). Safe to call when it has already stopped."""
        ...
