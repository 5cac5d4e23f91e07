"""Exponential backoff with full jitter, for handlers that raised."""

from __future__ import annotations

import random
from datetime import timedelta


def backoff_delay(
    attempts: int,
    *,
    base: timedelta = timedelta(seconds=1),
    cap: timedelta = timedelta(minutes=5),
    rng: random.Random | None = None,
) -> timedelta:
    """Delay before retry number ``attempts`` (1 = first retry): uniform in [base/2, min(cap, base * 2**n)]."""
    ceiling = min(cap.total_seconds(), base.total_seconds() * 2 ** max(0, attempts - 1))
    floor = min(base.total_seconds() / 2, ceiling)
    return timedelta(seconds=(rng or random).uniform(floor, ceiling))
