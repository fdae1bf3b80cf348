"""Per-request sampling parameters (OpenAI / vLLM semantics), validated on construction."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from workbench.text_input import check_text

# The limits of one request, in one place (the server's 400s quote them). Integers that reach the
# device travel as int32, so every count and id is at most MAX_INT32.
MAX_INT32 = 2**31 - 1
MAX_N = 128  # completions per prompt
MAX_STOP_STRINGS = 16
MAX_STOP_LEN = 256  # characters per stop string
MAX_STOP_TOKEN_IDS = 64
MAX_LOGIT_BIAS = 300  # entries (OpenAI's limit)
MAX_TOP_LOGPROBS = 20
MAX_SEED = 2**64  # exclusive
MAX_ABS_LOGIT_BIAS = 100.0
MAX_ABS_PENALTY = 2.0
GREEDY_TEMPERATURE = 1e-5  # a temperature below this is greedy (vLLM's _SAMPLING_EPS)


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return int(value)


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def _token_id(name: str, value: Any) -> int:
    """A non-negative int token id; digit strings ("50256", as OpenAI JSON sends) are converted."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or not 0 <= value <= MAX_INT32):
        raise ValueError(f"{name} must be non-negative int token ids (at most 2**31-1), got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample one request. Fields follow the OpenAI API, with vLLM's extensions.

    Attributes:
        max_tokens: maximum number of tokens to generate, in [1, 2**31-1] (an engine also
            bounds prompt + max_tokens by its `max_model_len`).
        min_tokens: (vLLM) EOS and `stop_token_ids` are masked out until this many tokens have
            been generated (0 <= min_tokens <= max_tokens). Stop strings are not affected.
        temperature: softmax temperature (>= 0). 0 means greedy (argmax), and so does any
            temperature below 1e-5 (as in vLLM: dividing by it overflows float32).
        top_k: (vLLM) keep only the k most likely tokens, in [-1, 2**31-1]; -1 or 0 disables
            it, and so does any k >= the model's vocabulary size (every token is kept). 1 is
            greedy.
        top_p: nucleus sampling: keep the smallest set of most likely tokens whose cumulative
            probability is >= top_p, in (0, 1]. 1 disables it.
        min_p: (vLLM) drop tokens whose probability is < min_p * (probability of the most
            likely token), in [0, 1]. 0 disables it.
        presence_penalty: subtracted once from the logit of every token already generated, in
            [-2, 2] (OpenAI). Counts generated tokens only, not the prompt.
        frequency_penalty: subtracted from a token's logit once per time it was generated, in
            [-2, 2] (OpenAI). Counts generated tokens only, not the prompt.
        repetition_penalty: (vLLM / HF) for tokens in the prompt or generated so far, positive
            logits are divided by it and negative logits multiplied by it; > 0, 1 disables it.
        logit_bias: token id -> bias in [-100, 100] added to the raw logit (OpenAI), at most 300
            entries. String keys of digits, as OpenAI's JSON sends them, are converted to ints.
        seed: makes sampling reproducible, int in [0, 2**64) (a server maps OpenAI's signed
            64-bit seed into it). Token p of a request depends only on (seed, p, logits), never
            on the batch it runs in. None: the engine picks a seed.
        stop: stop strings (at most 16, each 1 to 256 characters of encodable text); generation
            ends when the text contains one. A single string is accepted; normalised to a tuple.
        stop_token_ids: (vLLM) at most 64 extra token ids that end generation like EOS;
            normalised to a tuple.
        ignore_eos: (vLLM) keep generating past EOS: the EOS ids are masked for the whole
            generation (stop_token_ids still stop).
        n: number of completions to generate for the prompt, in [1, 128]. With temperature 0 (or
            top_k 1) the n completions are identical copies.
        logprobs: return the log-probability of each chosen token.
        top_logprobs: also return this many most likely alternatives per position, in [0, 20];
            > 0 requires logprobs=True.
        skip_special_tokens: (vLLM) leave special tokens out of the decoded text.

    `logprobs` / `top_logprobs` are the log-softmax of the RAW model logits, before logit_bias,
    penalties, temperature and top-k/top-p/min-p filtering, as OpenAI and vLLM return them.
    """

    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = dataclasses.field(default=None, hash=False)
    seed: int | None = None
    stop: str | Sequence[str] | None = None  # normalised to tuple[str, ...]
    stop_token_ids: Sequence[int] | None = None  # normalised to tuple[int, ...]
    ignore_eos: bool = False
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        max_tokens = _int("max_tokens", self.max_tokens)
        if not 1 <= max_tokens <= MAX_INT32:
            raise ValueError(f"max_tokens must be >= 1 and at most 2**31-1, got {max_tokens!r}")
        min_tokens = _int("min_tokens", self.min_tokens)
        if not 0 <= min_tokens <= max_tokens:
            raise ValueError(
                f"min_tokens must be in [0, max_tokens={max_tokens}], got {min_tokens!r}"
            )
        temperature = _float("temperature", self.temperature)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        top_k = _int("top_k", self.top_k)
        if not -1 <= top_k <= MAX_INT32:
            raise ValueError(f"top_k must be >= -1 and at most 2**31-1 (-1, 0 or a k >= the "
                             f"vocabulary size keep every token), got {top_k!r}")
        top_p = _float("top_p", self.top_p)
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        min_p = _float("min_p", self.min_p)
        if not 0 <= min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {min_p!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = _float(name, getattr(self, name))
            if not -MAX_ABS_PENALTY <= value <= MAX_ABS_PENALTY:
                raise ValueError(f"{name} must be in [-2, 2], got {value!r}")
            put(name, value)
        repetition_penalty = _float("repetition_penalty", self.repetition_penalty)
        if repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty!r}")
        n = _int("n", self.n)
        if not 1 <= n <= MAX_N:
            raise ValueError(f"n must be >= 1 and at most {MAX_N}, got {n!r}")
        top_logprobs = _int("top_logprobs", self.top_logprobs)
        if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be in [0, 20], got {top_logprobs!r}")
        for name in ("ignore_eos", "logprobs", "skip_special_tokens"):
            _bool(name, getattr(self, name))
        if top_logprobs > 0 and not self.logprobs:
            raise ValueError(f"top_logprobs > 0 requires logprobs=True, got {top_logprobs!r}")
        if self.seed is not None:
            seed = _int("seed", self.seed)
            if not 0 <= seed < MAX_SEED:
                raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
            put("seed", seed)

        put("max_tokens", max_tokens)
        put("min_tokens", min_tokens)
        put("temperature", temperature)
        put("top_k", top_k)
        put("top_p", top_p)
        put("min_p", min_p)
        put("repetition_penalty", repetition_penalty)
        put("n", n)
        put("top_logprobs", top_logprobs)
        put("logit_bias", self._normalise_logit_bias(self.logit_bias))
        put("stop", self._normalise_stop(self.stop))
        put("stop_token_ids", self._normalise_stop_token_ids(self.stop_token_ids))

    @staticmethod
    def _normalise_logit_bias(logit_bias: Any) -> dict[int, float] | None:
        if logit_bias is None:
            return None
        if not isinstance(logit_bias, Mapping):
            raise ValueError(f"logit_bias must be a dict of token id -> bias, got {logit_bias!r}")
        if len(logit_bias) > MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias must have at most {MAX_LOGIT_BIAS} entries, "
                             f"got {len(logit_bias)}")
        out: dict[int, float] = {}
        for key, value in logit_bias.items():
            token = _token_id("logit_bias keys", key)
            bias = _float("logit_bias values", value)
            if not -MAX_ABS_LOGIT_BIAS <= bias <= MAX_ABS_LOGIT_BIAS:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {value!r}")
            out[token] = bias
        return out

    @staticmethod
    def _normalise_stop(stop: Any) -> tuple[str, ...]:
        if stop is None:
            return ()
        if isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, (list, tuple)):
            raise ValueError(f"stop must be a string or a list of strings, got {stop!r}")
        if len(stop) > MAX_STOP_STRINGS:
            raise ValueError(f"stop must have at most {MAX_STOP_STRINGS} entries, got {len(stop)}")
        for s in stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop entries must be non-empty strings, got {s!r}")
            if len(s) > MAX_STOP_LEN:
                raise ValueError(f"stop entries must be at most {MAX_STOP_LEN} characters, "
                                 f"got {len(s)}")
            check_text("stop", s)
        return tuple(stop)

    @staticmethod
    def _normalise_stop_token_ids(ids: Any) -> tuple[int, ...]:
        if ids is None:
            return ()
        if not isinstance(ids, (list, tuple)):
            raise ValueError(f"stop_token_ids must be a list of ints, got {ids!r}")
        if len(ids) > MAX_STOP_TOKEN_IDS:
            raise ValueError(f"stop_token_ids must have at most {MAX_STOP_TOKEN_IDS} entries, "
                             f"got {len(ids)}")
        out = []
        for i in ids:
            if (isinstance(i, bool) or not isinstance(i, numbers.Integral)
                    or not 0 <= i <= MAX_INT32):
                raise ValueError(f"stop_token_ids entries must be non-negative ints (at most 2**31-1), "
                                 f"got {i!r}")
            out.append(int(i))
        return tuple(out)

    @property
    def is_greedy(self) -> bool:
        """True when sampling reduces to argmax (temperature below 1e-5, or top_k 1)."""
        return self.temperature < GREEDY_TEMPERATURE or self.top_k == 1

    def with_seed(self, seed: int | None) -> SamplingParams:
        """A copy with `seed` replaced (validated)."""
        return dataclasses.replace(self, seed=seed)

    def validate_vocab(self, vocab_size: int) -> None:
        """Raise ValueError if a logit_bias key or stop_token_id is not a token id < vocab_size."""
        for token in self.logit_bias or {}:
            if token >= vocab_size:
                raise ValueError(
                    f"logit_bias keys must be < vocab_size={vocab_size}, got {token}"
                )
        for token in self.stop_token_ids or ():
            if token >= vocab_size:
                raise ValueError(
                    f"stop_token_ids entries must be < vocab_size={vocab_size}, got {token}"
                )
