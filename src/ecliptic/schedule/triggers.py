"""Triggers: fire times from a schedule's trigger, zone, window and exclusions (placeholder being written)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ecliptic.schedule.spec import ScheduleSpec


def check(spec: ScheduleSpec) -> None:
    """Raise ValueError naming what is wrong with the trigger of ``spec``."""
