"""`Tokenizer`: a thin, typed wrapper over a Hugging Face (transformers) tokenizer.

It fixes the few behaviours inference code relies on: `encode`/`decode` always take and
return plain `list[int]`/`str`, decoding never applies WordPiece-style space clean-up
(lossless for the BPE/SentencePiece tokenizers of generative models, and what the
incremental detokenizer reproduces), `apply_chat_template` validates its input and
returns plain text or ids, and the eos ids are a frozenset that may include extra ids
(e.g. from `generation_config.json`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

TOKENIZER_FILES: tuple[str, ...] = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def has_tokenizer_files(path: str) -> bool:
    """Whether directory `path` holds any of `TOKENIZER_FILES`."""
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES
    )


class Tokenizer:
    """A Hugging Face tokenizer (`.hf`) with a small, strict interface for inference."""

    def __init__(self, hf_tokenizer: Any, *, extra_eos_ids: Iterable[int] = ()) -> None:
        self.hf = hf_tokenizer
        self._extra_eos_ids = frozenset(int(i) for i in extra_eos_ids)

    @classmethod
    def from_pretrained(cls, path: str, *, extra_eos_ids: Iterable[int] = ()) -> Tokenizer:
        """Load the tokenizer saved in directory `path` (ValueError if there is none)."""
        if not os.path.isdir(path):
            raise ValueError(f"tokenizer directory {path!r} does not exist")
        if not has_tokenizer_files(path):
            raise ValueError(
                f"no tokenizer files in {path!r} (expected one of {', '.join(TOKENIZER_FILES)})"
            )
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(path), extra_eos_ids=extra_eos_ids)

    def __repr__(self) -> str:
        return f"Tokenizer({type(self.hf).__name__}, vocab_size={self.vocab_size})"

    def __len__(self) -> int:
        return self.vocab_size

    # -- text <-> ids ---------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text` (with the tokenizer's BOS etc. when `add_special_tokens`)."""
        return [int(i) for i in self.hf.encode(text, add_special_tokens=add_special_tokens)]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """The vocabulary's token strings (byte-level pieces such as "Ġthe"), as vLLM's
        `/tokenize` `token_strs` are."""
        return list(self.hf.convert_ids_to_tokens([int(i) for i in ids]))

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids` (any iterable of ints, e.g. a numpy array); no space clean-up."""
        return self.hf.decode(
            [int(i) for i in ids],
            skip_special_tokens=skip_special_tokens,
            clean_up_tokenization_spaces=False,
        )

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
    ) -> str | list[int]:
        """Render `messages` ([{'role', 'content'}, ...]) with the chat template.

        Returns the prompt text, or its ids when `tokenize`. ValueError if the tokenizer has
        no chat template or a message is malformed.
        """
        _check_messages(messages)
        if self.chat_template is None:
            raise ValueError(
                f"tokenizer {type(self.hf).__name__} has no chat template; "
                "format the prompt yourself or use a chat/instruct model's tokenizer"
            )
        out = self.hf.apply_chat_template(
            list(messages),
            add_generation_prompt=add_generation_prompt,
            tokenize=tokenize,
            return_dict=False,
        )
        if tokenize:
            return [int(i) for i in out]
        return out

    # -- special tokens and sizes ---------------------------------------------------------

    @property
    def eos_token_id(self) -> int | None:
        """The tokenizer's own end-of-sequence id, if any."""
        return self.hf.eos_token_id

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Every id that ends generation: the tokenizer's eos plus `extra_eos_ids`."""
        eos = self.eos_token_id
        return self._extra_eos_ids | ({eos} if eos is not None else set())

    @property
    def bos_token_id(self) -> int | None:
        """The beginning-of-sequence id, if any."""
        return self.hf.bos_token_id

    @property
    def pad_token_id(self) -> int | None:
        """The padding id, if any."""
        return self.hf.pad_token_id

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (`len` of the HF tokenizer)."""
        return len(self.hf)

    @property
    def all_special_ids(self) -> frozenset[int]:
        """Ids of all special tokens (those `skip_special_tokens` drops)."""
        return frozenset(int(i) for i in self.hf.all_special_ids)

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template (the 'default' one if there are several), or None."""
        template = getattr(self.hf, "chat_template", None)
        if isinstance(template, dict):
            template = template.get("default")
        return template or None


def load_tokenizer(path: str, *, extra_eos_ids: Iterable[int] = ()) -> Tokenizer | None:
    """`Tokenizer.from_pretrained(path)`, or None if `path` has no tokenizer files."""
    if not has_tokenizer_files(path):
        return None
    return Tokenizer.from_pretrained(path, extra_eos_ids=extra_eos_ids)


def _check_messages(messages: Any) -> None:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError(
            f"messages must be a list of {{'role': str, 'content': str}} dicts, "
            f"got {type(messages).__name__}"
        )
    if not messages:
        raise ValueError("messages is empty")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be a dict, got {type(m).__name__}")
        for key in ("role", "content"):
            if key not in m:
                raise ValueError(f"messages[{i}] has no {key!r}")
            if not isinstance(m[key], str):
                raise ValueError(
                    f"messages[{i}][{key!r}] must be a str, got {type(m[key]).__name__}"
                )
