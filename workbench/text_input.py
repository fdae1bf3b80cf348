"""Checks that text from a caller can be encoded, before it reaches a tokenizer.

Python strings may hold lone UTF-16 surrogates ("\\ud800", which JSON's "\\ud800" escape decodes
to); they have no UTF-8 encoding, and a fast tokenizer fails on them with a TypeError deep inside
its Rust code. Every text input (prompt, chat message content, stop string) is checked here at the
edge, so the caller gets a `ValueError` naming the field instead.
"""

from __future__ import annotations

from typing import Any


def check_text(name: str, text: str) -> str:
    """`text`, or ValueError naming `name` when it cannot be encoded as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start:exc.end]
        raise ValueError(f"{name} must be valid Unicode text: {bad!r} at index {exc.start} "
                         "(a lone UTF-16 surrogate) cannot be encoded as UTF-8") from None
    return text


def check_texts(name: str, value: Any) -> None:
    """Check every string inside `value` (nested dicts and lists, e.g. chat messages)."""
    if isinstance(value, str):
        check_text(name, value)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_texts(f"{name}.{key}", item)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_texts(f"{name}[{i}]", item)
