"""`IncrementalDetokenizer`: turn a stream of token ids into a stream of text deltas.

Decoding token by token does not work: byte-level BPE (GPT-2, Llama 3, SmolLM) and
SentencePiece byte fallback split one character (emoji, CJK, accents) over several tokens,
each of which decodes to U+FFFD on its own, and SentencePiece ("▁" metaspace) decoders drop
the leading space of the first token they see. Decoding the whole sequence each step is
correct but O(n) per token.

The approach is the one of vLLM / TGI: keep two offsets into the ids, `prefix_offset` and
`read_offset`, where `ids[:read_offset]` is exactly the text emitted so far and
`ids[prefix_offset:read_offset]` (a few tokens) is context. Each step decodes only the window

    prefix_text = decode(ids[prefix_offset:read_offset])
    new_text    = decode(ids[prefix_offset:])

and, when `new_text` is longer than `prefix_text` and does not end with "\\ufffd" (an
incomplete character), emits `new_text[len(prefix_text):]` and moves the window up
(`prefix_offset = read_offset; read_offset = len(ids)`). Otherwise nothing is emitted and
the window grows by the new token until the character completes. Per-token cost is O(1).

Why the window decode equals the full decode: byte-level decoding is local once the
context ends on a character boundary (the offsets only move after clean text), and a
metaspace decoder's strip of the first leading space falls on the context, never on the
new text, because the context always decodes to something (the offsets only move when a
token produced text; special tokens skipped by `skip_special_tokens` produce none, so the
context reaches back past them). At the very start the window starts at id 0, exactly like
the full decode. With `prompt_ids` the window starts with the last prompt tokens (going
further back until they decode to some text that does not start mid-character), so the
first generated token gets the space a full decode of prompt + output gives it; that
prompt text is never emitted.

`flush()` ends the stream: it emits whatever is still held back (an incomplete character at
the very end comes out as the U+FFFD the full decode has). Invariant: the deltas plus
`flush()` equal `tokenizer.decode(token_ids)` (with no prompt) or the part of
`decode(prompt_ids + token_ids)` after `decode(prompt_ids)` (with a prompt).

One exception, only for invalid byte output: a SentencePiece byte-fallback decoder turns a
whole run of byte tokens that is not valid UTF-8 (e.g. cut off mid-character) into one
U+FFFD per byte, erasing even the complete characters of the run. Those may already have
been streamed; they stay, and only the bytes after them come out as U+FFFD each.
"""

from __future__ import annotations

from collections.abc import Iterable

from workbench.tokenizer import Tokenizer

# How many prompt tokens start the window (more while they decode to "" or start mid-character).
PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Streams the text of token ids one token at a time, without splitting characters."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        skip_special_tokens: bool = False,
        prompt_ids: Iterable[int] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        context = self._prompt_context([int(i) for i in prompt_ids or ()])
        self._ids: list[int] = context  # context (prompt tail) + generated ids
        self._n_context = len(context)
        self._prefix_offset = 0
        self._read_offset = len(context)
        self._chunks: list[str] = []
        self._text: str | None = ""

    @property
    def token_ids(self) -> list[int]:
        """The generated ids added so far (no prompt)."""
        return self._ids[self._n_context:]

    @property
    def text(self) -> str:
        """The text emitted so far (all deltas joined)."""
        if self._text is None:
            self._text = "".join(self._chunks)
        return self._text

    def add(self, token_id: int) -> str:
        """Append one id; return the new text it completes ("" while a character is partial)."""
        self._ids.append(int(token_id))
        prefix_text, new_text = self._decode_window()
        if len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT):
            return ""
        delta = self._delta(prefix_text, new_text)
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return self._emit(delta)

    def add_many(self, token_ids: Iterable[int]) -> str:
        """`add` each id; return the joined deltas."""
        return "".join([self.add(i) for i in token_ids])

    def flush(self) -> str:
        """End of stream: return the text still held back (e.g. a trailing partial character)."""
        delta = self._delta(*self._decode_window())
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return self._emit(delta)

    def _decode_window(self) -> tuple[str, str]:
        window = self._ids[self._prefix_offset:]
        split = self._read_offset - self._prefix_offset
        decode = self.tokenizer.decode
        skip = self.skip_special_tokens
        return decode(window[:split], skip), decode(window, skip)

    def _delta(self, prefix_text: str, new_text: str) -> str:
        if new_text.startswith(prefix_text):
            return new_text[len(prefix_text):]
        # Only an invalid byte-fallback run gets here (see the module docstring): keep what was
        # streamed and decode the held-back ids on their own.
        return self.tokenizer.decode(self._ids[self._read_offset:], self.skip_special_tokens)

    def _emit(self, delta: str) -> str:
        if delta:
            self._chunks.append(delta)
            self._text = None
        return delta

    def _prompt_context(self, prompt_ids: list[int]) -> list[int]:
        # The last few prompt ids, more while they decode to nothing (skipped special tokens)
        # or start mid-character (which would also garble a byte-fallback run after it).
        n = PROMPT_CONTEXT_TOKENS
        while n < len(prompt_ids):
            text = self.tokenizer.decode(prompt_ids[-n:], self.skip_special_tokens)
            if text and not text.startswith(_REPLACEMENT):
                break
            n *= 2
        return prompt_ids[-n:]
