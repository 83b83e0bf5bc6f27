"""A small SVG chart of recent runs: rows loaded, duration and estimated cost per day.

Pure (data in, SVG text out) and dependency-free, so ``tripflow report`` can write it next to the
warehouse and the flow can link it from the Prefect UI.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any, Final

WIDTH: Final = 760
PANEL_HEIGHT: Final = 150
MARGIN_LEFT: Final = 90
PANELS: Final = (
    ("rows", "rows loaded", "{:,.0f}"),
    ("seconds", "duration (s, stages)", "{:,.1f}"),
    ("usd", "estimated cost (USD)", "${:,.5f}"),
)


def history_svg(days: Sequence[dict[str, Any]]) -> str:
    """Bars per day for each panel; failed runs are drawn in red. ``days`` oldest first."""
    height = PANEL_HEIGHT * len(PANELS) + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
        '<text x="10" y="18" font-size="14" font-weight="bold">tripflow: recent runs</text>',
    ]
    n = max(len(days), 1)
    slot = (WIDTH - MARGIN_LEFT - 20) / n
    for p, (key, title, fmt) in enumerate(PANELS):
        top = 30 + p * PANEL_HEIGHT
        base = top + PANEL_HEIGHT - 30
        values = [float(d.get(key) or 0) for d in days]
        peak = max(values, default=0) or 1.0
        parts.append(f'<text x="10" y="{top + 14}" font-weight="bold">{escape(title)}</text>')
        parts.append(
            f'<line x1="{MARGIN_LEFT}" y1="{base}" x2="{WIDTH - 20}" y2="{base}" stroke="#888"/>'
        )
        parts.append(f'<text x="10" y="{top + 34}">{escape(fmt.format(peak))}</text>')
        for i, (day, value) in enumerate(zip(days, values, strict=True)):
            bar = (PANEL_HEIGHT - 60) * value / peak
            x = MARGIN_LEFT + i * slot + slot * 0.15
            colour = "#2e7d32" if day.get("status") == "published" else "#c62828"
            parts.append(
                f'<rect x="{x:.1f}" y="{base - bar:.1f}" width="{slot * 0.7:.1f}" '
                f'height="{bar:.1f}" fill="{colour}"><title>{escape(str(day["run_date"]))}: '
                f"{escape(fmt.format(value))}</title></rect>"
            )
            if p == len(PANELS) - 1 or n <= 10:
                parts.append(
                    f'<text x="{x:.1f}" y="{base + 14}" font-size="9">'
                    f"{escape(str(day['run_date'])[5:])}</text>"
                )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
