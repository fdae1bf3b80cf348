import random

import pytest

from tests.fixtures_tokenizer import (  # noqa: F401  (pytest fixtures)
    MULTILINGUAL,
    TOKENIZER_FIXTURES,
    byte_bpe_tokenizer,
    llama_sp_tokenizer,
    metaspace_tokenizer,
    smol_tokenizer,
)
from workbench.detokenizer import IncrementalDetokenizer
from workbench.tokenizer import Tokenizer

FFFD = "\ufffd"
TEXTS = [
    "Family 👩‍👩‍👧 🇫🇷 and 😀🎉!",
    "日本語のテキスト、中文",
    "Ça déjà vu, naïve façade",
    "  two  spaces\n\n\ttab\r\nCRLF   trailing  ",
    " leading space, then 👍🏽 and ✓",
    "<|im_start|>user\nHi 😀<|im_end|>\n<|im_start|>assistant\n日本 Ça<|im_end|><s> word</s>",
]


def stream(tok: Tokenizer, ids: list[int], skip: bool, prompt_ids=None) -> tuple[list[str], str]:
    det = IncrementalDetokenizer(tok, skip_special_tokens=skip, prompt_ids=prompt_ids)
    deltas = [det.add(i) for i in ids]
    tail = det.flush()
    assert det.text == "".join(deltas) + tail
    assert det.token_ids == list(ids)
    return deltas, tail


def check(tok: Tokenizer, ids: list[int], skip: bool) -> str:
    """Stream `ids` one at a time and check the invariants; return the full decode."""
    full = tok.decode(ids, skip_special_tokens=skip)
    deltas, tail = stream(tok, ids, skip)
    assert "".join(deltas) + tail == full
    if FFFD not in full:
        assert not any(FFFD in d for d in deltas), deltas
        assert tail == ""
    return full


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("name", TOKENIZER_FIXTURES)
def test_stream_equals_decode(request, name, text, skip):
    tok: Tokenizer = request.getfixturevalue(name)
    full = check(tok, tok.encode(text), skip)
    if skip:
        assert "<|im_start|>" not in full


@pytest.mark.parametrize("skip", [False, True])
def test_chat_template_output(smol_tokenizer, skip):
    tok = smol_tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi! 👩‍👩‍👧 🇫🇷"}], tokenize=True)
    reply = tok.encode("日本語のテキスト、中文 — Ça déjà vu 😀<|im_end|>", add_special_tokens=False)
    full = check(tok, prompt + reply, skip)
    assert ("<|im_start|>" in full) is not skip


def test_multi_byte_characters_are_held_back(smol_tokenizer):
    tok = smol_tokenizer
    ids = tok.encode("👩‍👩‍👧", add_special_tokens=False)
    assert len(ids) > 3  # split over byte-level tokens
    det = IncrementalDetokenizer(tok)
    deltas = [det.add(i) for i in ids]
    assert "" in deltas  # some tokens complete no character yet
    assert "".join(deltas) == "👩‍👩‍👧" and det.flush() == ""


@pytest.mark.parametrize("name", TOKENIZER_FIXTURES)
def test_truncated_character_at_the_end(request, name):
    tok: Tokenizer = request.getfixturevalue(name)
    ids = tok.encode("ok 日本語😀", add_special_tokens=False)
    for cut in range(1, len(ids) + 1):
        full = tok.decode(ids[:cut])
        det = IncrementalDetokenizer(tok)
        streamed = det.add_many(ids[:cut])
        assert FFFD not in streamed
        if name == "llama_sp_tokenizer" and FFFD in full:
            # Byte fallback decodes the whole cut-off byte run to U+FFFDs; the stream keeps
            # the characters it completed and shows one U+FFFD per dangling byte.
            done = max(j for j in range(cut) if FFFD not in tok.decode(ids[:j]))
            assert streamed == tok.decode(ids[:done])
            full = streamed + FFFD * (cut - done)
        assert streamed + det.flush() == full


def test_skipped_special_tokens_keep_metaspace_spaces(llama_sp_tokenizer, metaspace_tokenizer):
    for tok in (llama_sp_tokenizer, metaspace_tokenizer):
        s, e = tok.bos_token_id, tok.eos_token_id
        hi = tok.encode("Hi", False)
        there = tok.encode("Hi there", False)[len(hi):]  # starts with a "▁" token
        assert tok.decode(hi + there) == "Hi there"
        for ids in ([s] + there, hi + [s, e, s] + there, [s, s] + hi + [e] + there + [e]):
            check(tok, ids, skip=True)
            check(tok, ids, skip=False)


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("name", TOKENIZER_FIXTURES)
def test_prompt_ids(request, name, skip):
    tok: Tokenizer = request.getfixturevalue(name)
    im_start, im_end = (tok.hf.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>"))
    prompt = tok.encode("Hello there, how are", add_special_tokens=False)
    full_ids = tok.encode("Hello there, how are you 😀 today?", add_special_tokens=False)
    assert full_ids[: len(prompt)] == prompt
    gen = full_ids[len(prompt):]
    # Plain prompt, and one ending in many special tokens (skipped -> look further back).
    for p in (prompt, prompt + [im_end, im_start] * 4):
        deltas, tail = stream(tok, gen, skip, prompt_ids=p)
        before = tok.decode(p, skip_special_tokens=skip)
        expected = tok.decode(p + gen, skip_special_tokens=skip)
        assert expected.startswith(before)
        assert "".join(deltas) + tail == expected[len(before):]
        assert not any(FFFD in d for d in deltas)
    # The first generated token keeps its leading space, unlike a decode without context.
    joined = "".join(stream(tok, gen, skip, prompt_ids=prompt)[0])
    assert joined.startswith(" you")
    assert IncrementalDetokenizer(tok, prompt_ids=[]).add_many(gen) == tok.decode(gen)


@pytest.mark.parametrize("name", TOKENIZER_FIXTURES)
def test_prompt_ending_in_multi_byte_characters(request, name):
    """The prompt context must not start mid-character (it would garble a byte run)."""
    tok: Tokenizer = request.getfixturevalue(name)
    text = "日本語のテキスト😀中文 ok"
    ids = tok.encode(text, add_special_tokens=False)
    for cut in range(1, len(ids)):
        prompt, gen = ids[:cut], ids[cut:]
        before = tok.decode(prompt)
        if FFFD in before:
            continue  # the prompt itself ends mid-character
        deltas, tail = stream(tok, gen, False, prompt_ids=prompt)
        assert before + "".join(deltas) + tail == text


@pytest.mark.parametrize("name", TOKENIZER_FIXTURES)
def test_random_slices(request, name):
    """Property: any slice of a multilingual text (starting or ending mid-character) streams to
    exactly its full decode. SentencePiece byte fallback is exact whenever the slice's decode
    has no U+FFFD (see the module docstring for the invalid-bytes exception)."""
    tok: Tokenizer = request.getfixturevalue(name)
    byte_fallback = name == "llama_sp_tokenizer"
    ids = tok.encode("<|im_start|>" + MULTILINGUAL + "<|im_end|>" + MULTILINGUAL[::-1])
    rng = random.Random(name)
    exact = 0
    for _ in range(150):
        a = rng.randrange(len(ids))
        b = rng.randrange(a + 1, min(len(ids), a + 60) + 1)
        skip = rng.random() < 0.5
        sl = ids[a:b]
        full = tok.decode(sl, skip_special_tokens=skip)
        if byte_fallback and FFFD in full:
            deltas, tail = stream(tok, sl, skip)  # must not fail; text may differ
            continue
        check(tok, sl, skip)
        exact += 1
    assert exact > 50


def test_add_many_and_window_stays_small(smol_tokenizer):
    """`add_many` equals repeated `add`, and each step decodes only a few ids (O(1))."""
    tok = smol_tokenizer
    ids = tok.encode(MULTILINGUAL * 20, add_special_tokens=False)
    sizes: list[int] = []

    class Recording(Tokenizer):
        def decode(self, ids, skip_special_tokens=False):
            ids = list(ids)
            sizes.append(len(ids))
            return super().decode(ids, skip_special_tokens)

    det = IncrementalDetokenizer(Recording(tok.hf))
    assert det.add_many(ids) + det.flush() == tok.decode(ids)
    assert len(ids) > 1000 and max(sizes) <= 8
