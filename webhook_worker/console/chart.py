"""Events per minute by outcome as a server-side SVG: no chart library, no script, and only
numbers and fixed colours reach the markup (nothing from an event is interpolated)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from markupsafe import Markup

# Outcome → colour; the legend and the bars use the same order (stacked bottom up).
COLOURS = {
    "completed": "#2e7d32",
    "failed": "#c62828",
    "waiting": "#ef6c00",
    "ignored": "#9e9e9e",
    "received": "#1565c0",
    "processing": "#6a1b9a",
}
_WIDTH, _HEIGHT = 640, 160


def per_minute_svg(rows: list[dict[str, Any]], now: datetime) -> Markup:
    """Stacked bars for the last 60 minutes; `rows` have minute, status, events."""
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=59)
    return _stacked(rows, "minute", start, timedelta(minutes=1), 60, "-60 min", "/min")


def per_hour_svg(rows: list[dict[str, Any]], now: datetime) -> Markup:
    """Stacked bars for the last 24 hours; `rows` have hour, status, events."""
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
    return _stacked(rows, "hour", start, timedelta(hours=1), 24, "-24 h", "/h")


def _stacked(
    rows: list[dict[str, Any]],
    key: str,
    start: datetime,
    step: timedelta,
    count: int,
    left: str,
    unit: str,
) -> Markup:
    buckets: list[dict[str, int]] = [{} for _ in range(count)]
    for row in rows:
        index = int((row[key] - start) / step)
        if 0 <= index < count and row["status"] in COLOURS:
            buckets[index][row["status"]] = int(row["events"])
    peak = max([sum(b.values()) for b in buckets] + [1])
    bar = _WIDTH / count
    label = f"events per {key} by outcome"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {_WIDTH} '
        f'{_HEIGHT + 20}" role="img" aria-label="{label}">',
        f'<line x1="0" y1="{_HEIGHT}" x2="{_WIDTH}" y2="{_HEIGHT}" stroke="#bbb"/>',
    ]
    for index, bucket in enumerate(buckets):
        y = float(_HEIGHT)
        for status, colour in COLOURS.items():
            events = bucket.get(status, 0)
            if not events:
                continue
            height = _HEIGHT * events / peak
            y -= height
            parts.append(
                f'<rect x="{index * bar + 1:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" '
                f'height="{height:.1f}" fill="{colour}"><title>{events} {status}</title></rect>'
            )
    parts.append(f'<text x="0" y="{_HEIGHT + 15}" font-size="12" fill="#555">{left}</text>')
    parts.append(
        f'<text x="{_WIDTH}" y="{_HEIGHT + 15}" font-size="12" fill="#555" '
        f'text-anchor="end">now (peak {peak}{unit})</text>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built from numbers and constants only
