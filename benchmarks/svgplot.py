"""A horizontal bar chart as SVG, with the standard library only.

The benchmarks' plots are committed with their results; matplotlib is not
among pflask's dependencies (nor on every machine that runs the benchmarks),
and a bar per command with its figure written beside it says all they need.
"""

from __future__ import annotations

from html import escape
from pathlib import Path


def bars(
    path: Path,
    title: str,
    values: dict[str, float],
    unit: str,
    note: str = "",
) -> None:
    """Write a chart of `values` (label -> number, drawn in the order given)."""
    label_width, bar_width, row, top = 330, 420, 26, 48
    height = top + row * len(values) + (40 if note else 20)
    largest = max(values.values()) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_width + bar_width + 110}" '
        f'height="{height}" font-family="sans-serif" font-size="13">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="24" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]
    for index, (label, value) in enumerate(values.items()):
        y = top + index * row
        width = max(1.0, bar_width * value / largest)
        parts += [
            f'<text x="{label_width - 8}" y="{y + 15}" text-anchor="end">{escape(label)}</text>',
            f'<rect x="{label_width}" y="{y + 2}" width="{width:.1f}" height="{row - 8}" '
            'fill="#4477aa"/>',
            f'<text x="{label_width + width + 6:.1f}" y="{y + 15}">'
            f"{value:.2f} {escape(unit)}</text>",
        ]
    if note:
        parts.append(f'<text x="10" y="{height - 12}" fill="#555">{escape(note)}</text>')
    parts.append("</svg>\n")
    path.write_text("\n".join(parts))
