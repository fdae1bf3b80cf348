"""Helpers shared by the reliability tests (this module has no tests of its own): one tiny random
model with a real byte-level BPE tokenizer, and the three engines built small on it."""

from __future__ import annotations

import functools

from tests.fixtures_tokenizer import _byte_level_bpe
from workbench.engines.esurge import eSurge
from workbench.engines.vinference import vInference
from workbench.engines.vsurge import vSurge
from workbench.loading.loader import random_model
from workbench.models.config import ModelConfig

MAX_MODEL_LEN = 64


@functools.cache
def tiny_lm():
    tok = _byte_level_bpe()
    cfg = ModelConfig(architecture="LlamaForCausalLM", vocab_size=tok.vocab_size, hidden_size=32,
                      intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                      eos_token_ids=tuple(sorted(tok.eos_token_ids)))
    return random_model(cfg, seed=0, tokenizer=tok, name="tiny")


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@functools.cache
def tiny_chat_lm():
    """`tiny_lm`'s model with a ChatML chat template on its own tokenizer (for chat routes)."""
    tok = _byte_level_bpe.__wrapped__()
    tok.hf.chat_template = CHATML
    lm = tiny_lm()
    return random_model(lm.config, seed=0, tokenizer=tok, name="tiny-chat")


def build(kind: str, lm=None, **kwargs):
    """A small engine of `kind` ("vinference", "vsurge", "esurge") on the tiny model."""
    lm = lm or tiny_lm()
    if kind == "vinference":
        return vInference(lm, max_model_len=MAX_MODEL_LEN, prefill_buckets=(16, MAX_MODEL_LEN),
                          max_batch_size=4, **kwargs)
    if kind == "vsurge":
        return vSurge(lm, max_model_len=MAX_MODEL_LEN, prefill_buckets=(16, MAX_MODEL_LEN - 1),
                      max_concurrent_decodes=4, **kwargs)
    if kind == "esurge":
        return eSurge(lm, max_model_len=MAX_MODEL_LEN, num_pages=32, page_size=8,
                      max_num_seqs=4, max_num_batched_tokens=32, **kwargs)
    raise ValueError(kind)


ENGINES = ("vinference", "vsurge", "esurge")


def every_engine():
    """{kind: engine} for every kind in ENGINES on the tiny model, closed after: the body of a
    module fixture (`yield from every_engine()`)."""
    built = {kind: build(kind) for kind in ENGINES}
    try:
        yield built
    finally:
        for e in built.values():
            e.close()
