"""Pictures as SVG, drawn on the server: no script or chart library needed in the browser."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

from ecliptic.broker.calendar import CapacityCalendar, Hold, Resources


def capacity_svg(
    capacity: Resources, holds: Sequence[Hold], start: int, end: int, width: int = 960, height: int = 260
) -> str:
    """Cores in use over ``[start, end)`` as a step chart, with the platform's capacity as a line."""
    calendar = CapacityCalendar(capacity, holds)
    left, right, top, bottom = 48, 12, 16, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    span = max(1, end - start)
    ceiling = max(capacity.cores, max((u[0] for u in calendar.used), default=0), 1)

    def x(t: int) -> float:
        return left + (min(max(t, start), end) - start) / span * plot_w

    def y(cores: float) -> float:
        return top + plot_h - cores / ceiling * plot_h

    points = [(start, calendar.peak(start, start + 1).cores)]
    for time, used in zip(calendar.times, calendar.used, strict=True):
        if start < time < end:
            points.append((time, used[0]))
    path = f"M {x(points[0][0]):.1f} {y(points[0][1]):.1f}"
    for time, cores in points[1:]:
        path += f" H {x(time):.1f} V {y(cores):.1f}"
    path += f" H {x(end):.1f}"
    area = path + f" V {y(0):.1f} H {x(start):.1f} Z"
    ticks = []
    for index in range(7):
        t = start + span * index // 6
        label = datetime.fromtimestamp(t, tz=UTC).strftime("%H:%M")
        ticks.append(
            f'<line x1="{x(t):.1f}" y1="{top}" x2="{x(t):.1f}" y2="{top + plot_h}" class="grid"/>'
            f'<text x="{x(t):.1f}" y="{height - 8}" text-anchor="middle">{label}</text>'
        )
    cap_y = y(capacity.cores)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="chart" role="img" '
        f'aria-label="cores in use over time">'
        + "".join(ticks)
        + f'<path d="{area}" class="used-area"/><path d="{path}" class="used-line"/>'
        f'<line x1="{left}" y1="{cap_y:.1f}" x2="{left + plot_w}" y2="{cap_y:.1f}" class="capacity"/>'
        f'<text x="{left - 6}" y="{cap_y + 4:.1f}" text-anchor="end">{capacity.cores}</text>'
        f'<text x="{left - 6}" y="{y(0) + 4:.1f}" text-anchor="end">0</text>'
        f'<text x="{left + 4}" y="{cap_y - 4:.1f}" class="note">capacity: {escape(str(capacity.cores))} cores</text>'
        "</svg>"
    )
