"""eSurge's page map and a request's timeline, drawn as SVG in Python (no toolkit imports: the
ipywidgets views, the Panel dashboard and notebook 06 show the same pictures).

- `page_map_svg(snapshot)`: one square per KV page from `eSurge.kv_snapshot()`: used (held by a
  running request), cached (free, keeping a full block a later request may reuse) or free; the
  pages of one chosen request outlined; a tooltip per page (owners, reference count, hash).
- `timeline_svg(events)`: a request's `timeline()` on a time axis in three lanes: waiting (queued
  until scheduled, and preempted until resumed), prefill (one tick per chunk, its token count) and
  decode (first token until finished); `timeline_rows(events)` the same events as table rows.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

PAGE_COLORS = {"used": "#d62728", "cached": "#2ca02c", "free": "#e1e4e8"}
EVENT_COLORS = {"queued": "#8c959f", "scheduled": "#0969da", "prefix_lookup": "#2ca02c",
                "prefill_chunk": "#ff7f0e", "first_token": "#1f77b4", "preempted": "#d62728",
                "resumed": "#9467bd", "finished": "#24292f"}
_FONT = "font-family:system-ui,sans-serif;font-size:10px"


def page_map_svg(snapshot: dict, *, per_row: int = 32, cell: int = 12,
                 highlight: str | None = None) -> str:
    """The page map of a `kv_snapshot()`; pages owned by request `highlight` are outlined."""
    pages = snapshot["pages"]
    rows = max(1, -(-len(pages) // per_row))
    step = cell + 1
    width, top = max(per_row * step + 2, 420), 22  # room for the legend
    height = top + rows * step + 4
    n = max(1, snapshot["num_pages"])
    legend = (f"{snapshot['num_pages']} pages of {snapshot['page_size']} tokens: "
              f"used {snapshot['num_used']} ({100 * snapshot['num_used'] / n:.0f}%), "
              f"cached {snapshot['num_cached']}, free {snapshot['num_free']}")
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"class='wb-page-map' style='{_FONT}'>",
             f"<text x='1' y='13' font-size='11'>{html.escape(legend)}</text>"]
    for k, p in enumerate(pages):
        x, y = 1 + (k % per_row) * step, top + (k // per_row) * step
        mine = highlight is not None and highlight in p["owners"]
        stroke = " stroke='#000' stroke-width='2'" if mine else ""
        tip = f"page {p['page']}: {p['state']}"
        if p["owners"]:
            tip += f", owners {', '.join(p['owners'])} (ref {p['ref_cnt']})"
        if p["hash"]:
            tip += f", block {p['hash']}"
        parts.append(f"<rect x='{x}' y='{y}' width='{cell}' height='{cell}' "
                     f"fill='{PAGE_COLORS[p['state']]}' data-state='{p['state']}'{stroke}>"
                     f"<title>{html.escape(tip)}</title></rect>")
    parts.append("</svg>")
    return "".join(parts)


def page_legend_html() -> str:
    return " ".join(f"<span style='display:inline-block;width:10px;height:10px;background:{c};"
                    f"margin:0 3px 0 8px'></span>{s}" for s, c in PAGE_COLORS.items())


def _describe(e: dict) -> str:
    keep = {k: v for k, v in e.items() if k not in ("event", "time")}
    return ", ".join(f"{k}={v}" for k, v in keep.items())


def timeline_rows(events: Sequence[dict]) -> list[dict]:
    """[{"+ms", "event", "details"}]: milliseconds since the request was queued."""
    if not events:
        return []
    t0 = events[0]["time"]
    return [{"+ms": round(1e3 * (e["time"] - t0), 1), "event": e["event"],
             "details": _describe(e)} for e in events]


def timeline_svg(events: Sequence[dict], *, now: float | None = None, width: int = 640) -> str:
    """The request's events on a time axis (an unfinished request's lanes run to `now`)."""
    if not events:
        return "<i>no events</i>"
    t0 = events[0]["time"]
    finished = events[-1]["event"] == "finished"
    t1 = events[-1]["time"] if finished or now is None else max(now, events[-1]["time"])
    span = max(t1 - t0, 1e-6)
    left, right = 64, 12
    x = lambda t: left + (width - left - right) * (t - t0) / span  # noqa: E731
    lanes = {"waiting": 28, "prefill": 58, "decode": 88}
    height = 126
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"class='wb-timeline' style='{_FONT}'>"]
    for name, y in lanes.items():
        parts.append(f"<text x='2' y='{y + 4}'>{name}</text>"
                     f"<line x1='{left}' y1='{y}' x2='{width - right}' y2='{y}' "
                     f"stroke='#eaeef2'/>")

    def bar(lane, a, b, color, tip):
        y = lanes[lane]
        parts.append(f"<rect x='{x(a):.1f}' y='{y - 7}' width='{max(2.0, x(b) - x(a)):.1f}' "
                     f"height='14' fill='{color}' opacity='0.75'>"
                     f"<title>{html.escape(tip)}</title></rect>")

    waiting_since, first = t0, None
    for e in events:
        kind, t = e["event"], e["time"]
        if kind in ("scheduled", "resumed") and waiting_since is not None:
            color = EVENT_COLORS["queued" if kind == "scheduled" else "preempted"]
            bar("waiting", waiting_since, t, color,
                f"waiting {1e3 * (t - waiting_since):.1f} ms")
            waiting_since = None
        elif kind == "preempted":
            waiting_since = t
        elif kind == "prefill_chunk":
            xt = x(t)
            parts.append(f"<line x1='{xt:.1f}' y1='{lanes['prefill'] - 8}' x2='{xt:.1f}' "
                         f"y2='{lanes['prefill'] + 8}' stroke='{EVENT_COLORS[kind]}' "
                         f"stroke-width='3'><title>{html.escape(_describe(e))}</title></line>")
        elif kind == "first_token":
            first = t
    if waiting_since is not None:  # still waiting (or preempted and not resumed yet)
        bar("waiting", waiting_since, t1, EVENT_COLORS["queued"], "waiting")
    if first is not None:
        bar("decode", first, t1, EVENT_COLORS["first_token"],
            f"decoding {1e3 * (t1 - first):.1f} ms")
    for e in events:  # event marks on top
        if e["event"] in ("queued", "first_token", "preempted", "finished"):
            lane = {"queued": "waiting", "preempted": "waiting"}.get(e["event"], "decode")
            parts.append(f"<circle cx='{x(e['time']):.1f}' cy='{lanes[lane]}' r='4' "
                         f"fill='{EVENT_COLORS[e['event']]}'><title>"
                         f"{html.escape(e['event'] + ' ' + _describe(e))}</title></circle>")
    parts.append(f"<line x1='{left}' y1='{height - 18}' x2='{width - right}' y2='{height - 18}' "
                 f"stroke='#888'/><text x='{left}' y='{height - 4}'>0</text>"
                 f"<text x='{width - right}' y='{height - 4}' text-anchor='end'>"
                 f"{1e3 * span:.1f} ms{'' if finished else ' (running)'}</text></svg>")
    return "".join(parts)
