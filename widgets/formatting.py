"""Plain-HTML pieces shared by the ipywidgets views and the Panel dashboard (no toolkit imports).

- `html_table(rows, columns=None)`: a styled table of dicts; values formatted by `fmt`, escaped.
- `fmt(value)`: numbers to 3 significant digits, None -> "–".
- `badge(ok, text)`: a green or red pill.
- `agreement_badge(comparison, i)`: "identical" or "differs at token k (engine)".
- `curl_snippet`, `openai_snippet`: ready-to-copy client code for a running server.
- `status_html(text, error=False)`: a status line (errors in red).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

TABLE_CSS = ("border-collapse:collapse;font-size:12px;font-family:system-ui,sans-serif;"
             "margin:4px 0")
CELL = "border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top"


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def html_table(rows: Sequence[dict], columns: Sequence[str] | None = None,
               headers: dict[str, str] | None = None, raw: Iterable[str] = ()) -> str:
    """`raw` names columns whose values are HTML already (badges)."""
    if not rows:
        return "<i>nothing yet</i>"
    columns = list(columns or rows[0].keys())
    headers = headers or {}
    raw = set(raw)
    head = "".join(f"<th style='{CELL};background:#f4f4f4'>{html.escape(headers.get(c, c))}</th>"
                   for c in columns)
    body = "".join(
        "<tr>" + "".join(
            f"<td style='{CELL}'>"
            f"{row.get(c, '') if c in raw else html.escape(fmt(row.get(c)))}</td>"
            for c in columns) + "</tr>"
        for row in rows)
    return f"<table style='{TABLE_CSS}'><tr>{head}</tr>{body}</table>"


def badge(ok: bool, text: str) -> str:
    color = "#1a7f37" if ok else "#cf222e"
    return (f"<span class='wb-badge' style='background:{color};color:white;border-radius:9px;"
            f"padding:1px 8px;font-size:11px'>{html.escape(text)}</span>")


def agreement_badge(comparison, index: int) -> str:
    a = comparison.agreement(index)
    if a["identical"]:
        return badge(True, "identical")
    if a["first_difference"] is None:
        return badge(False, f"{a['engine']} failed" if a["engine"] else "no result")
    return badge(False, f"differs at token {a['first_difference']} ({a['engine']})")


def status_html(text: str, error: bool = False) -> str:
    color = "#cf222e" if error else "#57606a"
    prefix = "Error: " if error else ""
    return f"<span style='color:{color}'>{html.escape(prefix + text)}</span>"


def curl_snippet(url: str, model: str, api_key: str | None = None) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello!"}],
            "max_tokens": 32}
    lines = [f"curl {url}/v1/chat/completions \\", "  -H 'Content-Type: application/json' \\"]
    if api_key:
        lines.append('  -H "Authorization: Bearer $WORKBENCH_API_KEY" \\')
    lines.append(f"  -d '{json.dumps(body)}'")
    return "\n".join(lines)


def openai_snippet(url: str, model: str, api_key: str | None = None) -> str:
    key = 'os.environ["WORKBENCH_API_KEY"]' if api_key else '"none"'
    imports = "import os\n" if api_key else ""
    return (f"{imports}from openai import OpenAI\n\n"
            f"client = OpenAI(base_url=\"{url}/v1\", api_key={key})\n"
            f"reply = client.chat.completions.create(\n"
            f"    model=\"{model}\", messages=[{{\"role\": \"user\", \"content\": \"Hello!\"}}],\n"
            f"    max_tokens=32)\n"
            f"print(reply.choices[0].message.content)")


def code_block(text: str) -> str:
    return (f"<pre style='background:#f6f8fa;padding:8px;border-radius:6px;font-size:12px;"
            f"white-space:pre-wrap'>{html.escape(text)}</pre>")
