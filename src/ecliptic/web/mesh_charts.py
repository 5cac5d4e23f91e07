"""Pictures of the mesh's pods as SVG, drawn on the server in the style of :mod:`ecliptic.web.charts`.

Colours are written into the SVG itself rather than into app.css, so a bar reads the same wherever it is
shown (the page, a test's string, a screenshot) and the legend is drawn from the same table.
"""

from __future__ import annotations

from html import escape

from ecliptic.mesh.settings import format_size

HELD = "#f5b642"
OTHER = "#6b7591"
FREE = "#2f7d55"
TRACK = "#0b1019"
EDGE = "#34425f"

SEGMENTS = (("held", "held here", HELD), ("other", "other use of the disk", OTHER), ("free", "free", FREE))

MIN_VISIBLE = 2.0
"""Pixels a non-empty segment gets at least: a few KiB on a TiB disk would otherwise not show at all."""


def space_parts(held: int, free: int, capacity: int) -> dict[str, int]:
    """Bytes of each segment; ``other`` is what the disk holds besides this pod's files (and its reserve).

    A pod's ``free`` is already net of its reserve and its ``max_disk``, so held + free may fall short of
    the capacity (the rest is other use) but never goes past it unless the figures are from different
    moments; then the bar is as long as their sum.
    """
    held, free, capacity = max(held, 0), max(free, 0), max(capacity, 0)
    return {"held": held, "other": max(capacity - held - free, 0), "free": free}


def _widths(parts: dict[str, int], width: float) -> dict[str, float]:
    total = sum(parts.values())
    if total <= 0:
        return dict.fromkeys(parts, 0.0)
    widths = {key: value / total * width for key, value in parts.items()}
    # Tiny segments are widened at the expense of the widest, so the bar keeps its length.
    for key, value in parts.items():
        if value > 0 and widths[key] < MIN_VISIBLE:
            widest = max(widths, key=lambda k: widths[k])
            grow = MIN_VISIBLE - widths[key]
            if widths[widest] - grow >= MIN_VISIBLE:
                widths[widest] -= grow
                widths[key] = MIN_VISIBLE
    return widths


def _percent(value: int, total: int) -> str:
    if total <= 0:
        return ""
    share = value / total * 100
    return f" ({share:.0f} %)" if share >= 1 or value == 0 else " (<1 %)"


def space_bar_svg(
    held: int,
    free: int,
    capacity: int,
    *,
    name: str = "",
    dim: bool = False,
    width: int = 220,
    height: int = 16,
) -> str:
    """One pod's disk as a horizontal bar: held by the pod, used otherwise, free; ``dim`` for stale figures."""
    parts = space_parts(held, free, capacity)
    total = sum(parts.values())
    who = f"pod {name}: " if name else ""
    if total <= 0:
        label = f"{who}no space reported yet"
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" class="space-bar" role="img" aria-label="{escape(label)}">'
            f"<title>{escape(label)}</title>"
            f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" rx="4" fill="{TRACK}" '
            f'stroke="{EDGE}" stroke-dasharray="4 3"/></svg>'
        )
    widths = _widths(parts, width)
    summary = ", ".join(
        f"{text} {format_size(parts[key])}{_percent(parts[key], total)}" for key, text, _ in SEGMENTS
    )
    label = f"{who}{summary} of {format_size(max(capacity, total))}"
    rects = []
    x = 0.0
    for key, text, colour in SEGMENTS:
        if parts[key] <= 0:
            continue
        tip = f"{text}: {format_size(parts[key])}{_percent(parts[key], total)}"
        rects.append(
            f'<rect class="{key}" x="{x:.1f}" y="0" width="{widths[key]:.1f}" height="{height}" '
            f'fill="{colour}" data-bytes="{parts[key]}"><title>{escape(tip)}</title></rect>'
        )
        x += widths[key]
    opacity = ' opacity="0.45"' if dim else ""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" class="space-bar" role="img" aria-label="{escape(label)}"{opacity}>'
        f"<title>{escape(label)}</title>"
        f'<rect x="0" y="0" width="{width}" height="{height}" rx="4" fill="{TRACK}"/>'
        + "".join(rects)
        + f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" rx="4" fill="none" '
        f'stroke="{EDGE}"/></svg>'
    )


def space_legend_svg(height: int = 14) -> str:
    """The bars' key, one swatch per segment, in the bars' own colours."""
    items = []
    x = 0
    for key, text, colour in SEGMENTS:
        items.append(
            f'<rect class="{key}" x="{x}" y="{(height - 10) / 2:.0f}" width="10" height="10" rx="2" '
            f'fill="{colour}"/><text x="{x + 14}" y="{height - 3}" fill="#8b93a7" font-size="11">'
            f"{escape(text)}</text>"
        )
        x += 14 + round(5.4 * len(text)) + 16  # 11 px system-ui runs about 5.4 px a character
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {x} {height}" width="{x}" height="{height}" '
        f'class="space-legend" role="img" aria-label="key: held here, other use of the disk, free">'
        + "".join(items)
        + "</svg>"
    )
