"""The Llama-family decoder in Flax NNX: Llama 2/3.x, SmolLM, Mistral, Qwen2, Qwen3.

One module covers the family; the differences are config flags: `attention_bias` (Qwen2),
`qk_norm` (Qwen3), `sliding_window` (Mistral), `tie_word_embeddings`, rope scaling (Llama 3.x).
Module and parameter names follow transformers, so checkpoint names map 1:1 (see `weights.py`).

Layers are stored and looped over one of two ways (`layer_loop.py`): "scan" (stacked parameters with
a leading `[L]` axis, the layer body under `lax.scan`: compile time does not grow with depth) or
"unrolled" (one array per layer, a Python loop: no per-step copies of the weights).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from workbench.models.attention import attend
from workbench.models.config import ModelConfig
from workbench.models.kv_cache import KVCache, fresh_key_positions
from workbench.models.layer_loop import check_layer_loop, default_layer_loop
from workbench.models.rope import apply_rope, inv_frequencies, rope_cos_sin


class RMSNorm(nnx.Module):
    """RMSNorm computed in float32, cast back before the scale (as transformers does)."""

    def __init__(self, dim: int, eps: float, *, param_dtype, rngs: nnx.Rngs | None = None):
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x):
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * xf.astype(x.dtype)


def _linear(cfg_in, cfg_out, bias, dtype, rngs):
    return nnx.Linear(cfg_in, cfg_out, use_bias=bias, dtype=dtype, param_dtype=dtype, rngs=rngs)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = _linear(cfg.hidden_size, H * D, cfg.attention_bias, dtype, rngs)
        self.k_proj = _linear(cfg.hidden_size, Hkv * D, cfg.attention_bias, dtype, rngs)
        self.v_proj = _linear(cfg.hidden_size, Hkv * D, cfg.attention_bias, dtype, rngs)
        self.o_proj = _linear(H * D, cfg.hidden_size, False, dtype, rngs)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(D, cfg.rms_norm_eps, param_dtype=dtype)
            self.k_norm = RMSNorm(D, cfg.rms_norm_eps, param_dtype=dtype)
        self.shape = (H, Hkv, D)
        self.qk_norm = cfg.qk_norm
        self.sliding_window = cfg.sliding_window

    def __call__(self, x, positions, cos, sin, cache, layer, *, attend_cache, backend):
        """Returns the attention output `[B, T, D]` and this chunk's (k, v) `[B, T, Hkv, D]`;
        the caller writes them to the cache once for all layers."""
        B, T, _ = x.shape
        H, Hkv, D = self.shape
        q = self.q_proj(x).reshape(B, T, H, D)
        k = self.k_proj(x).reshape(B, T, Hkv, D)
        v = self.v_proj(x).reshape(B, T, Hkv, D)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # the current chunk, head-major like the contiguous cache: [B, Hkv, T, D]
        fresh = (k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), fresh_key_positions(positions))
        if cache is not None and attend_cache:  # the past, by the cache's own reads
            out = cache.attend(layer, q, positions, fresh, backend=backend,
                               sliding_window=self.sliding_window)
        else:
            out = attend(backend, q, [fresh], positions, sliding_window=self.sliding_window)
        return self.o_proj(out.reshape(B, T, H * D)), (k, v)  # [B, T, D], new keys/values


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        self.gate_proj = _linear(cfg.hidden_size, cfg.intermediate_size, False, dtype, rngs)
        self.up_proj = _linear(cfg.hidden_size, cfg.intermediate_size, False, dtype, rngs)
        self.down_proj = _linear(cfg.intermediate_size, cfg.hidden_size, False, dtype, rngs)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=dtype)
        self.self_attn = Attention(cfg, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=dtype)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x, positions, cos, sin, cache, layer, *, attend_cache, backend):
        h, kv = self.self_attn(
            self.input_layernorm(x), positions, cos, sin, cache, layer,
            attend_cache=attend_cache, backend=backend,
        )
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, kv


class CausalLM(nnx.Module):
    """Decoder-only LM. `__call__` returns hidden states; `logits` applies the LM head."""

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs,
                 layer_loop: str | None = None):
        self.config = cfg
        self.dtype = dtype
        self.layer_loop = check_layer_loop(layer_loop or default_layer_loop(cfg.num_hidden_layers))
        self.embed_tokens = nnx.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=dtype, rngs=rngs
        )

        if self.layer_loop == "unrolled":  # one module (own arrays) per layer
            self.layers = nnx.List([DecoderLayer(cfg, dtype=dtype, rngs=rngs)
                                    for _ in range(cfg.num_hidden_layers)])
        else:
            @nnx.split_rngs(splits=cfg.num_hidden_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make_layers(rngs):
                return DecoderLayer(cfg, dtype=dtype, rngs=rngs)

            self.layers = make_layers(rngs)  # every parameter has a leading [L] axis
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = _linear(cfg.hidden_size, cfg.vocab_size, False, dtype, rngs)
        self.inv_freq = nnx.Variable(jnp.asarray(inv_frequencies(cfg)))  # [D/2], not a Param

    def __call__(
        self,
        input_ids: jnp.ndarray,  # [B, T]
        positions: jnp.ndarray,  # [B, T]; -1 marks pads
        cache: KVCache | None = None,
        *,
        attend_cache: bool = True,
        backend: str = "xla",
    ) -> tuple[jnp.ndarray, KVCache | None]:
        """Hidden states `[B, T, D]` after the final norm, and the updated cache."""
        x = self.embed_tokens(input_ids)  # [B, T, D]
        cos, sin = rope_cos_sin(positions, self.inv_freq[...], self.dtype)
        if cache is not None and attend_cache:
            cache = cache.plan(positions)  # ragged reads: which cached blocks each row sees
        kw = dict(attend_cache=attend_cache, backend=backend)
        if self.layer_loop == "unrolled":
            kvs = []
            for i, layer in enumerate(self.layers):
                x, kv = layer(x, positions, cos, sin, cache, i, **kw)
                kvs.append(kv)
            ks, vs = jnp.stack([k for k, _ in kvs]), jnp.stack([v for _, v in kvs])
        else:
            layer_def, layer_state = nnx.split(self.layers)

            def body(x, xs):
                state, layer = xs
                return nnx.merge(layer_def, state)(x, positions, cos, sin, cache, layer, **kw)

            L = self.config.num_hidden_layers
            x, (ks, vs) = jax.lax.scan(body, x, (layer_state, jnp.arange(L)))
        # ks, vs: [L, B, T, Hkv, D], written to the cache once for all layers
        if cache is not None:
            cache = cache.write(ks, vs, positions)
        return self.norm(x), cache

    def logits(self, hidden: jnp.ndarray) -> jnp.ndarray:
        """LM head: `[..., D] -> [..., V]` in float32."""
        if self.config.tie_word_embeddings:
            out = self.embed_tokens.attend(hidden)
        else:
            out = self.lm_head(hidden)
        return out.astype(jnp.float32)
