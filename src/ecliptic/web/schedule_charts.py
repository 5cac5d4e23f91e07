"""Pictures of a schedule as SVG, drawn on the server in the style of :mod:`ecliptic.web.charts`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from html import escape
from zoneinfo import ZoneInfo

from ecliptic.schedule.spec import RunView

MARKERS = frozenset(("missed", "skipped", "scheduled"))
"""Runs drawn as a marker on the time axis: they have no duration (they never ran, or have not yet)."""

LEGEND_ORDER = (
    "succeeded",
    "failed",
    "timed_out",
    "interrupted",
    "cancelled",
    "running",
    "cancelling",
    "missed",
    "skipped",
    "scheduled",
)


MIN_SPAN = timedelta(minutes=1)
"""The narrowest window drawn: a lone run of 50 ms is a sliver on a minute, not a bar across the picture."""


def _tick_format(span: timedelta) -> str:
    if span <= timedelta(minutes=10):
        return "%H:%M:%S"
    if span <= timedelta(days=1):
        return "%H:%M"
    if span <= timedelta(days=60):
        return "%d %b %H:%M"
    return "%Y-%m-%d"


def _label(run: RunView, zone: ZoneInfo) -> str:
    local = run.scheduled_at.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")
    parts = [f"run {run.id}", run.state, f"scheduled {local}", run.cause]
    if run.attempt > 1:
        parts.append(f"attempt {run.attempt}")
    if run.duration_s is not None:
        parts.append(f"{run.duration_s:.3g} s")
    if run.exit_code is not None:
        parts.append(f"exit {run.exit_code}")
    if run.error:
        parts.append(run.error[:160])
    return " · ".join(parts)


def runs_timeline_svg(
    runs: Sequence[RunView], now: datetime, zone: ZoneInfo, width: int = 960, max_lanes: int = 6
) -> str:
    """The runs on a time axis: x is the scheduled time, a bar's length the run's duration, its colour the
    outcome; runs that never ran (missed, skipped) and runs still waiting are markers below the bars.

    Runs that overlap share the picture in lanes, up to ``max_lanes``; tick labels are in ``zone``.
    """
    left, right, top = 16, 16, 14
    lane_h, lane_gap, marker_h, axis_h, legend_h = 12, 4, 18, 22, 22
    plot_w = width - left - right
    if not runs:
        height = 60
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="chart timeline" '
            'role="img" aria-label="run timeline: no runs yet">'
            f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle">no runs yet</text></svg>'
        )

    def end_of(run: RunView) -> datetime:
        if run.state in MARKERS or run.started_at is None:
            return run.scheduled_at
        if run.duration_s is not None:
            return run.scheduled_at + timedelta(seconds=run.duration_s)
        return run.scheduled_at + max(timedelta(0), now - run.started_at)  # still running

    first = min(run.scheduled_at for run in runs)
    last = max(now, *(end_of(run) for run in runs))  # up to now: how long ago the last run was shows too
    if last - first < MIN_SPAN:
        last = first + MIN_SPAN
    pad = (last - first) * 0.03
    start, end = first - pad, last + pad
    total = (end - start).total_seconds()

    def x(t: datetime) -> float:
        return left + (t - start).total_seconds() / total * plot_w

    # Bars into lanes: the first lane free at the bar's start, so overlapping runs stack instead of hiding.
    bars: list[tuple[RunView, float, float, int]] = []
    lane_ends: list[float] = []
    for run in sorted(runs, key=lambda r: (r.scheduled_at, r.id)):
        if run.state in MARKERS or run.started_at is None:
            continue
        x0 = x(run.scheduled_at)
        w = max(2.0, x(end_of(run)) - x0)
        lane = next((i for i, e in enumerate(lane_ends) if e + 1 <= x0), None)
        if lane is None:
            if len(lane_ends) < max_lanes:
                lane_ends.append(0.0)
                lane = len(lane_ends) - 1
            else:
                lane = min(range(len(lane_ends)), key=lane_ends.__getitem__)
        lane_ends[lane] = max(lane_ends[lane], x0 + w)
        bars.append((run, x0, w, lane))
    lanes = max(1, len(lane_ends))
    bars_bottom = top + lanes * (lane_h + lane_gap)
    marker_y = bars_bottom + marker_h / 2
    axis_y = bars_bottom + marker_h
    height = axis_y + axis_h + legend_h

    parts: list[str] = []
    fmt = _tick_format(end - start)
    for index in range(7):
        t = start + (end - start) * index / 6
        tx = x(t)
        label = t.astimezone(zone).strftime(fmt)
        anchor = "start" if index == 0 else "end" if index == 6 else "middle"
        parts.append(
            f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{axis_y}" class="grid"/>'
            f'<text x="{tx:.1f}" y="{axis_y + 14}" text-anchor="{anchor}">{escape(label)}</text>'
        )
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" class="axis"/>')
    if start <= now <= end:
        nx = x(now)
        parts.append(
            f'<line x1="{nx:.1f}" y1="{top - 6}" x2="{nx:.1f}" y2="{axis_y}" class="now"/>'
            f'<text x="{nx - 3:.1f}" y="{top - 4}" text-anchor="end" class="note">now</text>'
        )
    for run, x0, w, lane in bars:
        y0 = top + lane * (lane_h + lane_gap)
        parts.append(
            f'<a href="#run-{run.id}"><rect x="{x0:.1f}" y="{y0}" width="{w:.1f}" height="{lane_h}" rx="2" '
            f'class="bar run-{escape(run.state)}" data-run="{run.id}"><title>{escape(_label(run, zone))}</title>'
            "</rect></a>"
        )
    for run in runs:
        if not (run.state in MARKERS or run.started_at is None):
            continue
        mx = x(run.scheduled_at)
        title = f"<title>{escape(_label(run, zone))}</title>"
        cls = f"marker run-{escape(run.state)}"
        if run.state == "skipped":
            shape = (
                f'<path d="M {mx - 4:.1f} {marker_y - 4:.1f} L {mx + 4:.1f} {marker_y + 4:.1f} '
                f'M {mx - 4:.1f} {marker_y + 4:.1f} L {mx + 4:.1f} {marker_y - 4:.1f}" class="{cls}" '
                f'data-run="{run.id}">{title}</path>'
            )
        elif run.state == "scheduled":
            shape = (
                f'<path d="M {mx:.1f} {marker_y - 5:.1f} L {mx + 5:.1f} {marker_y:.1f} L {mx:.1f} '
                f'{marker_y + 5:.1f} L {mx - 5:.1f} {marker_y:.1f} Z" class="{cls}" data-run="{run.id}">'
                f"{title}</path>"
            )
        else:  # missed, or cancelled before it started
            shape = (
                f'<circle cx="{mx:.1f}" cy="{marker_y:.1f}" r="4.5" class="{cls}" data-run="{run.id}">'
                f"{title}</circle>"
            )
        parts.append(f'<a href="#run-{run.id}">{shape}</a>')

    counts: Counter[str] = Counter(str(run.state) for run in runs)
    lx = float(left)
    ly = axis_y + axis_h + legend_h - 8
    for state in (*LEGEND_ORDER, *sorted(set(counts) - set(LEGEND_ORDER))):
        if not counts.get(state):
            continue
        text = f"{state.replace('_', ' ')} {counts[state]}"
        parts.append(
            f'<rect x="{lx:.1f}" y="{ly - 9}" width="10" height="10" rx="2" class="swatch run-{escape(state)}"/>'
            f'<text x="{lx + 14:.1f}" y="{ly}" class="legend">{escape(text)}</text>'
        )
        lx += 14 + 7.2 * len(text) + 16
    zone_label = f"times in {zone.key}"
    if lx + 6.5 * len(zone_label) > left + plot_w:  # no room after the legend: a line of its own
        ly += legend_h
        height += legend_h
    parts.append(f'<text x="{left + plot_w}" y="{ly}" text-anchor="end">{escape(zone_label)}</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="chart timeline" '
        f'role="img" aria-label="timeline of the last {len(runs)} runs">' + "".join(parts) + "</svg>"
    )
