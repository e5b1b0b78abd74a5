"""TinyTransformerLM: a small causal transformer language model in plain JAX pytrees (docs/llm_bridge.md §2(b)).

The realistic, *misspecified* policy class of the bridge: finite capacity, autoregressive, like a real
LLM, yet small enough that every response of a tiny ``ResponseSpace`` can be scored exactly.

Model (pre-norm, as GPT-2/Llama): the input sequence is ``[BOS, x_1..x_P, y_1..y_{L-1}]`` (a learned BOS
vector, then token embeddings plus learned positions), ``n_layers`` blocks
``h += Attn(RMSNorm(h)); h += MLP(RMSNorm(h))`` with causal multi-head attention and a GELU MLP, a final
RMSNorm and an untied unembedding. Position ``P + t`` (0-based, BOS at 0) gives the logits of ``y_t``:

    log pi(y_t | x, y_<t) = log_softmax(logits_{P+t} / T)[y_t]          (T = 1: the policy itself)

Parameters are a dict of arrays (a pytree): ``vmap`` over params, prompts or responses works, and
``jax.grad`` of any function of the log-probs trains it. Prompts are int32 ``[P]`` token ids in the
same vocabulary (``P >= 0``); ``P + L <= max_len``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from bandits import validation as v
from bandits.lm.space import (ResponseSpace, ancestral_sample, check_response, check_space, enumerated_logprobs,
                              masked_token_logprobs)


@dataclasses.dataclass(frozen=True)
class TinyLMConfig:
    """vocab_size ``V``; d_model (divisible by n_heads); n_heads; n_layers; max_len: longest
    ``P + L``; d_ff: MLP width; logit_std: the standard deviation of the initial logits (controls how
    far the random initial policy is from uniform). Frozen and hashable (a static ``jit`` argument)."""

    vocab_size: int
    d_model: int = 32
    n_heads: int = 2
    n_layers: int = 1
    max_len: int = 16
    d_ff: int = 64
    logit_std: float = 1.0

    def __post_init__(self):
        v.check_int("vocab_size", self.vocab_size, 1)
        v.check_int("d_model", self.d_model, 1)
        v.check_int("n_heads", self.n_heads, 1)
        if self.d_model % self.n_heads:
            v.fail("n_heads", self.n_heads, f"a divisor of d_model={self.d_model}")
        v.check_int("n_layers", self.n_layers, 0)
        v.check_int("max_len", self.max_len, 1)
        v.check_int("d_ff", self.d_ff, 1)
        v.check_float("logit_std", self.logit_std, low=0.0)


def init(key: jax.Array, cfg: TinyLMConfig, dtype=None) -> dict:
    """Random parameters: unit-variance embeddings, fan-in scaled weights ``N(0, 1/fan_in)``, zero
    biases, unit RMSNorm gains, unembedding ``N(0, logit_std^2 / d_model)`` (so the initial logits have
    standard deviation about ``logit_std``)."""
    dtype = dtype or jnp.result_type(float)
    d, f = cfg.d_model, cfg.d_ff
    shapes = {"embed": (cfg.vocab_size, d), "bos": (d,), "pos": (cfg.max_len, d),
              "unembed": (d, cfg.vocab_size)}
    for i in range(cfg.n_layers):
        shapes.update({(i, "wq"): (d, d), (i, "wk"): (d, d), (i, "wv"): (d, d), (i, "wo"): (d, d),
                       (i, "w1"): (d, f), (i, "w2"): (f, d)})
    stds = {"embed": 1.0, "bos": 1.0, "pos": 1.0, "unembed": cfg.logit_std * d**-0.5}
    # One flat draw, sliced: XLA:CPU compiles one 1-D threefry far faster than one call per shape.
    sizes = [int(np.prod(shape)) for shape in shapes.values()]
    flat = jax.random.normal(key, (sum(sizes),), dtype)
    draws, start = {}, 0
    for (name, shape), size in zip(shapes.items(), sizes):
        std = stds.get(name, (f if name[1] == "w2" else d) ** -0.5)
        draws[name] = std * flat[start:start + size].reshape(shape)
        start += size
    layers = [{"norm1": jnp.ones((d,), dtype), "wq": draws[(i, "wq")], "wk": draws[(i, "wk")],
               "wv": draws[(i, "wv")], "wo": draws[(i, "wo")], "norm2": jnp.ones((d,), dtype),
               "w1": draws[(i, "w1")], "b1": jnp.zeros((f,), dtype), "w2": draws[(i, "w2")],
               "b2": jnp.zeros((d,), dtype)} for i in range(cfg.n_layers)]
    return {"embed": draws["embed"], "bos": draws["bos"], "pos": draws["pos"], "layers": layers,
            "norm_f": jnp.ones((d,), dtype), "unembed": draws["unembed"]}


def _rms_norm(h, gain):
    return h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-6) * gain[None, :]


def _attention(cfg: TinyLMConfig, layer: dict, h: jax.Array) -> jax.Array:
    s, d = h.shape
    heads, dh = cfg.n_heads, d // cfg.n_heads
    q, k, val = ((h @ layer[w]).reshape(s, heads, dh) for w in ("wq", "wk", "wv"))
    scores = jnp.einsum("qhd,khd->hqk", q, k) / np.sqrt(dh)
    causal = jnp.tril(jnp.ones((s, s), bool))
    weights = jax.nn.softmax(jnp.where(causal[None, :, :], scores, -jnp.inf), axis=-1)
    return jnp.einsum("hqk,khd->qhd", weights, val).reshape(s, d) @ layer["wo"]


def _logits(cfg: TinyLMConfig, params: dict, prompt: jax.Array, tokens: jax.Array) -> jax.Array:
    """Next-token logits ``[L, V]`` of the response positions (row ``t`` conditioned on ``x, y_<t``)."""
    P, L = prompt.shape[0], tokens.shape[0]
    if P + L > cfg.max_len:
        v.fail("prompt length + response length", P + L, f"<= max_len={cfg.max_len} (TinyLMConfig)")
    ids = jnp.concatenate([prompt, tokens[:-1]]).astype(jnp.int32)
    return _final_hidden(cfg, params, ids)[P:] @ params["unembed"]


def _final_hidden(cfg: TinyLMConfig, params: dict, ids: jax.Array) -> jax.Array:
    """Final-norm hidden states ``[1 + S, d]`` of the input ``[BOS, ids_1..ids_S]`` (row 0: BOS)."""
    h = jnp.concatenate([params["bos"][None, :], params["embed"][ids]], axis=0) + params["pos"][:ids.shape[0] + 1]
    for layer in params["layers"]:
        h = h + _attention(cfg, layer, _rms_norm(h, layer["norm1"]))
        z = _rms_norm(h, layer["norm2"])
        h = h + jax.nn.gelu(z @ layer["w1"] + layer["b1"][None, :]) @ layer["w2"] + layer["b2"][None, :]
    return _rms_norm(h, params["norm_f"])


POOLINGS = ("mean", "last")


def features(cfg: TinyLMConfig, params: dict, prompt: jax.Array, tokens: jax.Array, mask: jax.Array,
             pooling: str = "mean") -> jax.Array:
    """A frozen feature ``phi(x, y)`` ``[d_model]`` of one response: final-norm hidden states of the LM
    reading ``[BOS, x, y_1..y_L]`` at the positions of the response's own tokens (``mask``).

    ``pooling="mean"``: ``sum_t mask_t h_{P+t} / sum_t mask_t`` (positions ``P+1..P+L``, 1-based ``t``);
    ``"last"``: ``h`` at the response's last token, the LLM reward-head feature of P3 (docs/theory.md §4.7),
    as ``HFPolicy.features`` reads it. Causal attention makes ``h_{P+t}`` depend on ``x, y_1..y_t`` only,
    so padding after the response's end does not change it. An empty response (no mask) gets the
    hidden state at the prompt's last position. Needs ``P + L + 1 <= max_len``.
    """
    check_response(tokens, mask, prompt)
    v.check_choice("pooling", pooling, POOLINGS)
    P, L = prompt.shape[0], tokens.shape[0]
    if P + L + 1 > cfg.max_len:
        v.fail("prompt length + response length + 1", P + L + 1, f"<= max_len={cfg.max_len} (TinyLMConfig)")
    ids = jnp.concatenate([prompt, tokens]).astype(jnp.int32)
    h = _final_hidden(cfg, params, ids)[P:]            # row 0: the prompt's last position; row t: y_t
    weights = jnp.concatenate([jnp.zeros((1,), h.dtype), mask.astype(h.dtype)])
    if pooling == "last":
        weights = jax.nn.one_hot(jnp.sum(mask), L + 1, dtype=h.dtype)
    else:
        weights = jnp.where(jnp.any(mask), weights, jax.nn.one_hot(0, L + 1, dtype=h.dtype))
        weights = weights / jnp.sum(weights)
    return weights @ h


def token_logprobs(cfg: TinyLMConfig, params: dict, prompt: jax.Array, tokens: jax.Array, mask: jax.Array,
                   temperature=1.0) -> jax.Array:
    """Per-token ``log pi_T(y_t | x, y_<t)`` on the mask, 0 off it, shape ``[L]`` (one prompt, one response).

    ``pi_T`` is the per-token ``softmax(logits / temperature)``; ``temperature=1`` is the policy.
    """
    check_response(tokens, mask, prompt)
    return masked_token_logprobs(_logits(cfg, params, prompt, tokens), tokens, mask, temperature)


def sequence_logprob(cfg: TinyLMConfig, params: dict, prompt: jax.Array, tokens: jax.Array, mask: jax.Array,
                     temperature=1.0) -> jax.Array:
    """``log pi(y | x) = sum_t mask_t log pi(y_t | x, y_<t)`` (scalar)."""
    return jnp.sum(token_logprobs(cfg, params, prompt, tokens, mask, temperature))


def enumerated_token_logprobs(cfg: TinyLMConfig, params: dict, prompt: jax.Array, space: ResponseSpace,
                              temperature=1.0) -> jax.Array:
    """``token_logprobs`` of every response of ``enumerate_responses(space)``, shape ``[A, L]``.

    Their row sums are the exact sequence log-probabilities; ``logsumexp`` of those is 0.
    """
    check_space(space, cfg.vocab_size)
    return enumerated_logprobs(lambda y, m: token_logprobs(cfg, params, prompt, y, m, temperature), space)


def sample(key: jax.Array, cfg: TinyLMConfig, params: dict, prompt: jax.Array, space: ResponseSpace, n: int,
           temperature=1.0) -> tuple[jax.Array, jax.Array]:
    """``n`` i.i.d. responses ``(tokens int32 [n, L], mask bool [n, L])`` by ancestral sampling from
    ``softmax(logits / temperature)`` per token (``bandits.lm.space.ancestral_sample``)."""
    check_space(space, cfg.vocab_size)
    if jnp.ndim(prompt) != 1:
        v.fail("prompt shape", tuple(jnp.shape(prompt)), "int32 [P] (one prompt; vmap for batches)")
    return ancestral_sample(key, lambda tokens, t: _logits(cfg, params, prompt, tokens)[t], space, n, temperature)

