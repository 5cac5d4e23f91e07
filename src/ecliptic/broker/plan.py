"""A validated execution request, in the broker's own terms: what the planner books and the lifecycle runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ecliptic.broker.schema import Message
from ecliptic.isotime import Interval


@dataclass
class ComponentPlan:
    uuid: str
    role: str
    """``executable``, ``compute``, ``storage`` or ``data``."""
    kind: str
    name: str | None
    spec: dict[str, Any]
    """The component as the client sent it, normalised (kind, references rewritten to UUIDs)."""


@dataclass
class Plan:
    name: str | None
    executable: ComponentPlan
    compute: ComponentPlan
    storage: list[ComponentPlan]
    data: list[ComponentPlan]
    cores: tuple[int, int]
    memory_gib: tuple[int, int]
    storage_gib: int
    starts: list[Interval]
    """Requested start windows; empty means "as soon as possible"."""
    duration: timedelta
    messages: list[Message] = field(default_factory=list)
    """Warnings and information to return with the offers."""

    def components(self) -> list[ComponentPlan]:
        """In the order they are prepared: storage, then data, then executable and compute."""
        return [*self.storage, *self.data, self.executable, self.compute]


@dataclass
class Rejection:
    """The request is well formed but cannot be satisfied: answered with result NO and these messages."""

    messages: list[Message]
