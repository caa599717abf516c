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
_WIDTH, _HEIGHT, _MINUTES = 1260, 180, 60


def per_minute_svg(rows: list[dict[str, Any]], now: datetime) -> Markup:
    """Stacked bars for the last 60 minutes; `rows` have minute, status, events."""
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=_MINUTES - 1)
    buckets: list[dict[str, int]] = [{} for _ in range(_MINUTES)]
    for row in rows:
        index = int((row["minute"] - start).total_seconds() // 60)
        if 0 <= index < _MINUTES and row["status"] in COLOURS:
            buckets[index][row["status"]] = int(row["events"])
    peak = max([sum(b.values()) for b in buckets] + [1])
    bar = _WIDTH / _MINUTES
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {_WIDTH} '
        f'{_HEIGHT + 20}" role="img" aria-label="events per minute by outcome, last hour">',
        f'<line x1="0" y1="{_HEIGHT}" x2="{_WIDTH}" y2="{_HEIGHT}" stroke="#bbb"/>',
    ]
    for index, bucket in enumerate(buckets):
        y = float(_HEIGHT)
        for status, colour in COLOURS.items():
            count = bucket.get(status, 0)
            if not count:
                continue
            height = _HEIGHT * count / peak
            y -= height
            parts.append(
                f'<rect x="{index * bar + 1:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" '
                f'height="{height:.1f}" fill="{colour}"><title>{count} {status}</title></rect>'
            )
    parts.append(f'<text x="0" y="{_HEIGHT + 15}" font-size="11" fill="#555">-60 min</text>')
    parts.append(
        f'<text x="{_WIDTH}" y="{_HEIGHT + 15}" font-size="11" fill="#555" '
        f'text-anchor="end">now (peak {peak}/min)</text>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built from numbers and constants only
