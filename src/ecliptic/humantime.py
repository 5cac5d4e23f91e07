"""Time spans in words for people: ``in 12 s``, ``in 2 h 5 min``, ``3 d ago`` (CLI tables and web pages alike)."""

from __future__ import annotations

from datetime import datetime


def amount(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min" + (f" {secs} s" if secs and minutes < 10 else "")
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h" + (f" {minutes} min" if minutes else "")
    days, hours = divmod(hours, 24)
    return f"{days} d" + (f" {hours} h" if hours else "")


def relative(value: datetime | None, now: datetime) -> str:
    """``in 12 s``, ``in 5 min``, ``in 2 h 5 min``, ``3 d ago``; ``now`` within half a second."""
    if value is None:
        return ""
    delta = (value - now).total_seconds()
    if abs(delta) < 0.5:
        return "now"
    return f"in {amount(delta)}" if delta > 0 else f"{amount(-delta)} ago"
