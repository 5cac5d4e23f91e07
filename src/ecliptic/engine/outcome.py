"""What a handler is given, and what it answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Job:
    """A claimed work item, as a handler sees it."""

    id: int
    kind: str
    subject: str
    due_at: datetime
    generation: int
    attempts: int
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Done:
    """The work is finished: the item is deleted (unless it was rescheduled while it ran)."""


@dataclass(frozen=True)
class Again:
    """Run the same item again at ``at`` (a poll, a wait for a start time)."""

    at: datetime


Outcome = Done | Again
