"""What the views show, as plain data and HTML, shared by the ipywidgets views and the Panel
dashboard (no toolkit imports): engine rows, device and memory summary, a chat conversation, the
server's request log, bench results, the request-rate field."""

from __future__ import annotations

import html
import math
import time

from widgets.formatting import html_table
from widgets.svg_chart import bar_chart
from workbench.devices import format_bytes

ENGINE_COLUMNS = ("name", "kind", "state", "served", "max_model_len", "kv", "running", "waiting",
                  "finished", "generation_tokens")
COMPARE_COLUMNS = ("engine", "kind", "tokens", "wall_s", "output_tok_s", "ttft_p50_ms",
                   "itl_p50_ms", "itl_p99_ms", "compile_s", "identical", "error")
LOG_COLUMNS = ("time", "method", "path", "status", "duration_ms", "client")
BENCH_COLUMNS = ("target", "via", "requests", "failed", "requests/s", "output tok/s",
                 "TTFT p50 (ms)", "TTFT p99 (ms)", "TPOT p50 (ms)", "ITL p50 (ms)",
                 "ITL p99 (ms)")


def engines_rows(wb) -> list[dict]:
    return [dict(info, kv=format_bytes(info["kv_cache_bytes"])) for info in wb.engines_info()]


def devices_html(wb) -> str:
    mem = wb.memory()
    rows = [{"device": d["id"], "platform": d["platform"], "kind": d["kind"],
             "in use": format_bytes(d["bytes_in_use"]), "limit": format_bytes(d["bytes_limit"])}
            for d in wb.devices()]
    return html_table(rows) + (
        f"<div style='font-size:12px'>live device arrays "
        f"<b>{format_bytes(mem['live_array_bytes'])}</b>, process RSS "
        f"<b>{format_bytes(mem['process_rss_bytes'])}</b> of "
        f"{format_bytes(mem['host_memory_bytes'])} host memory</div>")


def conversation_html(messages: list[dict], pending: str | None = None) -> str:
    parts = []
    for m in messages + ([{"role": "assistant", "content": pending}] if pending is not None
                         else []):
        color = {"user": "#ddf4ff", "system": "#fff8c5"}.get(m["role"], "#f6f8fa")
        parts.append(f"<div class='wb-message' style='background:{color};border-radius:8px;"
                     f"padding:6px 10px;margin:4px 0;white-space:pre-wrap;font-size:13px'>"
                     f"<b>{html.escape(m['role'])}</b><br>{html.escape(m['content'])}</div>")
    return "".join(parts)


def answer_stats_html(engine: str, ttft_s: float | None, tok_s: float | None, tokens: int,
                      finish_reason: str | None) -> str:
    from widgets.formatting import fmt

    ttft = fmt(None if ttft_s is None else 1e3 * ttft_s)
    return (f"<span class='wb-stats' style='font-size:12px'>TTFT <b>{ttft} ms</b> · "
            f"<b>{fmt(tok_s)}</b> tok/s · <b>{tokens}</b> tokens · finish reason "
            f"<b>{finish_reason}</b> · engine {html.escape(engine)}</span>")


def request_log_rows(log, last: int = 15) -> list[dict]:
    rows = list(log)[-last:][::-1]
    return [dict(r, time=time.strftime("%H:%M:%S", time.localtime(r["time"]))) for r in rows]


def bench_charts(results) -> list[str]:
    labels = [f"{r.target} ({r.via})" for r in results]
    return [bar_chart(labels, [r.metrics["output tok/s"] for r in results],
                      title="output tok/s", unit="tok/s"),
            bar_chart(labels, [r.metrics["TTFT p50 (ms)"] for r in results],
                      title="TTFT p50", unit="ms")]


def parse_rate(text: str) -> float:
    t = (text or "").strip().lower()
    if t in ("", "inf", "infinity"):
        return math.inf
    try:
        rate = float(t)
    except ValueError:
        raise ValueError(f"request rate must be a number of requests/s or 'inf', got {t!r}") \
            from None
    if not rate > 0:
        raise ValueError(f"request rate must be > 0, got {rate}")
    return rate
