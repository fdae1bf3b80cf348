"""`line_chart(...) -> str`: a small line chart as an SVG string, drawn in Python.

Why SVG in an HTML widget for the ipywidgets app: it renders wherever HTML does (JupyterLab,
classic Notebook, VS Code, Colab) with nothing to install and no JavaScript. Bokeh's
`push_notebook` does not work in Colab, and a live Bokeh figure in Colab needs the
`jupyter_bokeh` widget extension; a redrawn SVG needs neither and costs ~1 ms per chart at the
metrics tab's 1 Hz. The Panel dashboard, which runs on a Bokeh server, uses real Bokeh charts fed
by `ColumnDataSource.stream` instead.

Series are (label, xs, ys); None in ys is a gap. The y range starts at 0 unless values are
negative; the x range is the union of the series'.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f")


def _nice(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x / 1000:.3g}k"
    return f"{x:.3g}"


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float | None]]], *,
               title: str = "", y_label: str = "", x_label: str = "s", width: int = 420,
               height: int = 170) -> str:
    left, right, top, bottom = 48, 10, 22, 26
    pw, ph = width - left - right, height - top - bottom
    points = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys)
              if y is not None and not (isinstance(y, float) and math.isnan(y))]
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"class='wb-chart' style='font-family:system-ui,sans-serif;font-size:10px'>",
             f"<text x='{left}' y='14' font-size='12' font-weight='600'>"
             f"{html.escape(title)}</text>"]
    if not points:
        parts.append(f"<text x='{left + pw / 2}' y='{top + ph / 2}' text-anchor='middle' "
                     f"fill='#888'>no data yet</text></svg>")
        return "".join(parts)
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(0.0, min(p[1] for p in points)), max(p[1] for p in points)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    y1 *= 1.05

    def sx(x):
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return top + ph - (y - y0) / (y1 - y0) * ph

    parts.append(f"<rect x='{left}' y='{top}' width='{pw}' height='{ph}' fill='none' "
                 f"stroke='#ccc'/>")
    for frac in (0.0, 0.5, 1.0):
        yv = y0 + frac * (y1 - y0)
        parts.append(f"<line x1='{left}' x2='{left + pw}' y1='{sy(yv):.1f}' y2='{sy(yv):.1f}' "
                     f"stroke='#eee'/><text x='{left - 4}' y='{sy(yv) + 3:.1f}' "
                     f"text-anchor='end' fill='#555'>{_nice(yv)}</text>")
    parts.append(f"<text x='{left}' y='{height - 8}' fill='#555'>{_nice(x0)}</text>"
                 f"<text x='{left + pw}' y='{height - 8}' text-anchor='end' fill='#555'>"
                 f"{_nice(x1)} {html.escape(x_label)}</text>")
    if y_label:
        parts.append(f"<text x='10' y='{top + ph / 2}' fill='#555' transform='rotate(-90 10 "
                     f"{top + ph / 2})' text-anchor='middle'>{html.escape(y_label)}</text>")
    for k, (label, xs, ys) in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        runs, run = [], []
        for x, y in zip(xs, ys):
            if y is None or (isinstance(y, float) and math.isnan(y)):
                if run:
                    runs.append(run)
                run = []
            else:
                run.append(f"{sx(x):.1f},{sy(y):.1f}")
        if run:
            runs.append(run)
        for r in runs:
            if len(r) == 1:
                cx, cy = r[0].split(",")
                parts.append(f"<circle cx='{cx}' cy='{cy}' r='2' fill='{color}'/>")
            else:
                parts.append(f"<polyline fill='none' stroke='{color}' stroke-width='1.5' "
                             f"points='{' '.join(r)}'/>")
        lx = left + 6 + 90 * k
        parts.append(f"<rect x='{lx}' y='{top + 4}' width='8' height='8' fill='{color}'/>"
                     f"<text x='{lx + 11}' y='{top + 11}'>{html.escape(label[:12])}</text>")
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(labels: Sequence[str], values: Sequence[float | None], *, title: str = "",
              unit: str = "", width: int = 420, height: int = 170) -> str:
    """Horizontal bars, one per label (None -> no bar)."""
    left, right, top = 110, 50, 22
    n = max(len(labels), 1)
    bar_h = max(8, min(24, (height - top - 8) / n - 4))
    vmax = max([v for v in values if v is not None] or [1.0]) or 1.0
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"class='wb-chart' style='font-family:system-ui,sans-serif;font-size:10px'>",
             f"<text x='4' y='14' font-size='12' font-weight='600'>{html.escape(title)}</text>"]
    for k, (label, v) in enumerate(zip(labels, values)):
        y = top + k * (bar_h + 4)
        parts.append(f"<text x='{left - 4}' y='{y + bar_h / 2 + 3:.1f}' text-anchor='end'>"
                     f"{html.escape(label[:18])}</text>")
        if v is not None:
            w = (width - left - right) * v / vmax
            parts.append(f"<rect x='{left}' y='{y:.1f}' width='{w:.1f}' height='{bar_h:.1f}' "
                         f"fill='{PALETTE[k % len(PALETTE)]}'/>"
                         f"<text x='{left + w + 3:.1f}' y='{y + bar_h / 2 + 3:.1f}'>"
                         f"{_nice(v)} {html.escape(unit)}</text>")
    parts.append("</svg>")
    return "".join(parts)
