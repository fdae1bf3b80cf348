import json

import numpy as np
import pytest

from tests.fixtures_tokenizer import (  # noqa: F401  (pytest fixtures)
    MULTILINGUAL,
    byte_bpe_tokenizer,
    llama_sp_tokenizer,
    metaspace_tokenizer,
    smol_tokenizer,
)
from workbench.tokenizer import Tokenizer, has_tokenizer_files, load_tokenizer

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hi 😀"},
]


@pytest.mark.parametrize("name", ["smol_tokenizer", "byte_bpe_tokenizer"])
def test_encode_decode_round_trip_byte_level(request, name):
    tok: Tokenizer = request.getfixturevalue(name)
    ids = tok.encode(MULTILINGUAL, add_special_tokens=False)
    assert ids and all(type(i) is int for i in ids)
    assert tok.decode(ids) == MULTILINGUAL
    assert tok.decode(np.asarray(ids)) == MULTILINGUAL  # any iterable of ints


def test_encode_decode_round_trip_sentencepiece(llama_sp_tokenizer):
    text = "Hello world! 日本語 Ça déjà vu 👩‍👩‍👧"
    assert llama_sp_tokenizer.decode(llama_sp_tokenizer.encode(text)) == text


def test_special_tokens(smol_tokenizer):
    tok = smol_tokenizer
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == tok.bos_token_id == 1
    assert ids[-1] == tok.eos_token_id == 2
    assert tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>"
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"
    assert {tok.bos_token_id, tok.eos_token_id} <= tok.all_special_ids
    assert isinstance(tok.all_special_ids, frozenset)


def test_properties(smol_tokenizer, byte_bpe_tokenizer):
    assert smol_tokenizer.vocab_size == len(smol_tokenizer.hf) == 49152
    assert smol_tokenizer.eos_token_ids == frozenset({2})
    assert smol_tokenizer.pad_token_id == 2
    assert "<|im_start|>" in smol_tokenizer.chat_template
    assert byte_bpe_tokenizer.chat_template is None
    # The tiny tokenizers pass <|im_end|> as an extra eos id.
    im_end = byte_bpe_tokenizer.hf.convert_tokens_to_ids("<|im_end|>")
    assert byte_bpe_tokenizer.eos_token_ids == {byte_bpe_tokenizer.eos_token_id, im_end}
    extra = Tokenizer(smol_tokenizer.hf, extra_eos_ids=[7, np.int64(9)])
    assert extra.eos_token_ids == frozenset({2, 7, 9})
    assert "vocab_size=49152" in repr(smol_tokenizer)


def test_chat_template(smol_tokenizer):
    tok = smol_tokenizer
    text = tok.apply_chat_template(CHAT)
    assert isinstance(text, str)
    assert text.startswith("<|im_start|>system\nYou are terse.<|im_end|>\n")
    assert text.endswith("<|im_start|>assistant\n")
    no_prompt = tok.apply_chat_template(CHAT, add_generation_prompt=False)
    assert not no_prompt.endswith("<|im_start|>assistant\n")
    assert text.startswith(no_prompt)
    ids = tok.apply_chat_template(CHAT, tokenize=True)
    assert isinstance(ids, list) and all(type(i) is int for i in ids)
    assert ids == tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ("hello", "list of"),
        ({"role": "user", "content": "hi"}, "list of"),
        ([], "empty"),
        ([{"role": "user", "content": "hi"}, "hi"], r"messages\[1\] must be a dict"),
        ([{"content": "hi"}], r"messages\[0\] has no 'role'"),
        ([{"role": "user"}], r"messages\[0\] has no 'content'"),
        ([CHAT[0], {"role": "user", "content": None}], r"messages\[1\]\['content'\] must be a str"),
        ([{"role": 1, "content": "x"}], r"messages\[0\]\['role'\] must be a str"),
    ],
)
def test_chat_template_bad_messages(smol_tokenizer, messages, match):
    with pytest.raises(ValueError, match=match):
        smol_tokenizer.apply_chat_template(messages)


def test_chat_template_missing(byte_bpe_tokenizer):
    with pytest.raises(ValueError, match="no chat template"):
        byte_bpe_tokenizer.apply_chat_template(CHAT)


def test_from_pretrained_and_load_tokenizer(tmp_path, byte_bpe_tokenizer):
    byte_bpe_tokenizer.hf.save_pretrained(tmp_path)
    assert has_tokenizer_files(str(tmp_path))
    for tok in (Tokenizer.from_pretrained(str(tmp_path)), load_tokenizer(str(tmp_path))):
        assert isinstance(tok, Tokenizer)
        assert tok.encode("Hello world!") == byte_bpe_tokenizer.encode("Hello world!")
        assert tok.eos_token_id == byte_bpe_tokenizer.eos_token_id
    loaded = load_tokenizer(str(tmp_path), extra_eos_ids=[5])
    assert 5 in loaded.eos_token_ids


def test_missing_tokenizer_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert load_tokenizer(str(tmp_path)) is None
    with pytest.raises(ValueError, match="no tokenizer files") as e:
        Tokenizer.from_pretrained(str(tmp_path))
    assert str(tmp_path) in str(e.value)
    missing = tmp_path / "nope"
    assert load_tokenizer(str(missing)) is None
    with pytest.raises(ValueError, match="does not exist") as e:
        Tokenizer.from_pretrained(str(missing))
    assert str(missing) in str(e.value)
