"""The Compare view's side-by-side grid (prompts as rows, engines as columns, text so far with
per-request stats, and an agreement badge once the run is over), as plain HTML: `cell_html(run)`
for one cell (the dashboard keeps one pane per cell, so a token redraws one cell, not the grid)
and `compare_grid_html(...)` for the whole table (the ipywidgets view)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

from widgets.formatting import CELL, TABLE_CSS, fmt


def cell_html(run) -> str:
    """One engine's text for one prompt so far, with its stats line."""
    if run is None:
        return "<span style='color:#999'>waiting…</span>"
    ms = None if run.ttft_s is None else 1e3 * run.ttft_s
    stats = (f"{run.num_tokens} tok · TTFT {fmt(ms)} ms · {fmt(run.decode_tok_s)} tok/s"
             + (f" · {run.finish_reason}" if run.finish_reason else ""))
    return (f"<div class='wb-text' style='white-space:pre-wrap;font-size:13px'>"
            f"{html.escape(run.text)}</div>"
            f"<div style='color:#57606a;font-size:11px;margin-top:3px'>{stats}</div>")


def compare_grid_html(prompts: Sequence[str], engines: Sequence[str],
                      live: Mapping[str, Mapping[int, object]],
                      badges: Sequence[str] | None = None) -> str:
    if not prompts:
        return ""
    head = "".join(f"<th style='{CELL};background:#f4f4f4;min-width:220px'>"
                   f"{html.escape(e)}</th>" for e in engines)
    if badges is not None:
        head += f"<th style='{CELL};background:#f4f4f4'>tokens</th>"
    rows = []
    for i, p in enumerate(prompts):
        cells = "".join(f"<td style='{CELL}'>{cell_html(live.get(e, {}).get(i))}</td>"
                        for e in engines)
        if badges is not None:
            cells += f"<td style='{CELL}'>{badges[i]}</td>"
        rows.append(f"<tr><td style='{CELL};max-width:180px;color:#57606a'>"
                    f"{html.escape(str(p))}</td>{cells}</tr>")
    return (f"<table style='{TABLE_CSS};width:100%'><tr><th style='{CELL};background:#f4f4f4'>"
            f"prompt</th>{head}</tr>{''.join(rows)}</table>")
