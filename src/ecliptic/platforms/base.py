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
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Capacity:
    cores: int
    memory_gib: int
    storage_gib: int
    max_duration: timedelta


COMMAND_KIND = "urn:ecliptic:executable:command"


@dataclass(frozen=True)
class Image:
    """A container image: the first location that resolves is used; a digest pins the content."""

    locations: tuple[str, ...]
    digest: str | None = None
    """``sha256:<hex>``; the platform refuses an image whose content has another digest."""


@dataclass(frozen=True)
class Mount:
    """A host directory made visible to the run at ``target`` (a container path, or a link in the workdir)."""

    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class Port:
    """A port the executable listens on, to be reachable from outside the run (published on loopback only)."""

    internal: int
    protocol: str = "TCP"
    """``TCP``, ``UDP``, ``HTTP`` or ``HTTPS``: how a connector to it is spelt."""
    path: str = ""


@dataclass(frozen=True)
class Connector:
    """How a client reaches a running session: reported by ``poll`` once the run is RUNNING."""

    kind: str
    """e.g. ``urn:ecliptic:connector:port``, ``urn:jupyter-notebook``, ``urn:ecliptic:connector:session``."""
    protocol: str
    location: str
    """A URL (``http://127.0.0.1:32768/``) or, for raw TCP/UDP, ``host:port``."""


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
    name: str = ""
    """A short human name (the session's, or its UUID's first part): platforms use it in their own names."""
    executable_kind: str = COMMAND_KIND
    image: Image | None = None
    """The container image, for container executables (and for platforms that always run one)."""
    entrypoint: str | None = None
    mounts: tuple[Mount, ...] = ()
    """Storage and staged data, by where the executable expects them (compute.volumes)."""
    ports: tuple[Port, ...] = ()
    session_type: str = "headless"
    """Interactive platforms (Skaha): ``headless``, ``notebook``, ``desktop``, ``carta``, …"""


class RunState(enum.StrEnum):
    PENDING = "pending"
    """Accepted by the platform, not running yet (queued, pulling, scheduling): compute is still PREPARING."""
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
    connectors: tuple[Connector, ...] = ()

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
    site: str = "local"
    """Where the platform's storage is, for transfer-time estimates: data already at this site stages fastest."""
    data_kinds: frozenset[str] | None = None
    """The data resource kinds sessions here may use; None means every kind the broker stages itself."""
    workdir_in_run: str | None = None
    """Where the run sees the session's workdir (a container path), when not at its host path."""


def launch_refused(exc: BaseException) -> bool:
    """Whether a launch error says the same launch can never work (a bad image, a refused limit), so the
    session fails now instead of being retried: platform errors carry ``retryable``, or an HTTP ``status``
    in the client-error range; a ``ValueError`` is a spec the platform cannot run."""
    retryable = getattr(exc, "retryable", None)
    if retryable is not None:
        return not retryable
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return 400 <= status < 500 and status not in (408, 429)
    return isinstance(exc, ValueError)


class Platform(Protocol):
    @property
    def info(self) -> PlatformInfo: ...

    def launch(self, spec: LaunchSpec) -> dict[str, Any]:
        """Start the work; returns a JSON-able handle. Calling it again for the same session starts nothing."""
        ...

    def poll(self, workdir: Path, handle: dict[str, Any]) -> RunStatus: ...

    def stop(self, workdir: Path, handle: dict[str, Any], reason: str) -> None:
        """Stop the work now (cancel, deadline), and remove what the platform made for it (container, job).

        Safe to call when it has already stopped, and again after it was removed.
        """
        ...

    def logs(self, workdir: Path, handle: dict[str, Any]) -> str:
        """The run's output so far (stdout then stderr, or the platform's combined log), for messages and the UI."""
        ...


@runtime_checkable
class RoomLimited(Protocol):
    """A platform with a limit of its own besides capacity (Skaha's interactive sessions per account): asked
    before offers are made, outside any store transaction, so a full account gets a clear NO, not a failure."""

    def has_room(self, session_type: str = "notebook") -> bool: ...
