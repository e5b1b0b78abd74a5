"""Response spaces of the LLM bridge: fixed-length and EOS-terminated token sequences (docs/llm_bridge.md §1.2, §2(b)).

A response to one prompt is a padded token array ``tokens [L]`` (int32) with ``mask [L]`` (bool) True on
the response's own tokens, EOS included. Masks are always built from *lengths*, never from
``tokens != pad_id`` (``pad_id`` may equal ``eos_id``, as in many Hugging Face tokenizers).

- **Fixed-length space** (``eos_id=None``): all ``V^L`` sequences of length ``L``; every mask is all True.
- **EOS space**: every sequence that ends at its first EOS (length ``l <= L``, EOS at position ``l-1``)
  plus every length-``L`` sequence without EOS ("truncated" is an outcome of its own). Then
  ``|A| = sum_{l=1..L} (V-1)^(l-1) + (V-1)^L`` and an autoregressive policy that stops at EOS puts
  total probability exactly 1 on the space, with no renormalisation.

Enumeration order (``enumerate_responses``): ascending *canonical code*. The canonical completion of a
response fills every position after its end with ``eos_id`` (nothing to fill in a fixed-length space);
its code is the base-``V`` number ``sum_t c_t V^(L-1-t)``. Distinct responses have distinct codes, so
``response_index`` maps any response to its row in the enumeration (or -1 if it is not in the space).

``ancestral_sample`` and ``masked_token_logprobs`` are the two places where the EOS/pad/mask convention
meets a model; the tiny LMs share them, so their samplers and their log-probabilities describe the
same law over the same support (docs/llm_bridge.md §1.2, "sample").
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bandits import validation as v

MAX_ENUMERATED = 10**6   # V^L above this is not a "tiny" space: enumeration would not fit a test budget


@dataclasses.dataclass(frozen=True)
class ResponseSpace:
    """The set of responses: ``vocab_size`` tokens ``V`` (EOS included), at most ``length`` tokens ``L``.

    eos_id: the end-of-sequence token, or None for the fixed-length space ``V^L``;
    pad_id: the token written after a response's end (any id in ``[0, V)``, may equal ``eos_id``).
    Frozen and hashable, so it can be a static argument of ``jit``.
    """

    vocab_size: int
    length: int
    eos_id: int | None = None
    pad_id: int = 0

    def __post_init__(self):
        v.check_int("vocab_size", self.vocab_size, 2 if self.eos_id is not None else 1)
        v.check_int("length", self.length, 1)
        if self.eos_id is not None:
            v.check_int("eos_id", self.eos_id, 0)
            if self.eos_id >= self.vocab_size:
                v.fail("eos_id", self.eos_id, f"None or a token id in [0, vocab_size={self.vocab_size})")
        v.check_int("pad_id", self.pad_id, 0)
        if self.pad_id >= self.vocab_size:
            v.fail("pad_id", self.pad_id, f"a token id in [0, vocab_size={self.vocab_size})")

    @property
    def has_eos(self) -> bool:
        return self.eos_id is not None

    @property
    def n_responses(self) -> int:
        """``|A|``: ``V^L`` (fixed length) or ``sum_{l=1..L} (V-1)^(l-1) + (V-1)^L`` (EOS)."""
        V, L = self.vocab_size, self.length
        if self.eos_id is None:
            return V**L
        return sum((V - 1) ** (l - 1) for l in range(1, L + 1)) + (V - 1) ** L


def lengths_to_mask(lengths: jax.Array, length: int) -> jax.Array:
    """``mask[..., t] = t < lengths[...]``, shape ``lengths.shape + (length,)`` (bool)."""
    lengths = jnp.asarray(lengths)
    positions = jnp.arange(length).reshape((1,) * lengths.ndim + (length,))
    return positions < lengths[..., None]


def check_enumerable(space: ResponseSpace) -> None:
    """One line (``ValueError``) unless every response of ``space`` can be enumerated (``MAX_ENUMERATED``)."""
    if not isinstance(space, ResponseSpace):
        v.fail("space", type(space).__name__, "a bandits.lm.ResponseSpace")
    if space.vocab_size**space.length > MAX_ENUMERATED:
        v.fail("space", space, f"a space with vocab_size**length <= {MAX_ENUMERATED} to be enumerated "
               f"(here {space.vocab_size}**{space.length} = {space.vocab_size**space.length})")


@functools.lru_cache(maxsize=32)
def _enumeration(space: ResponseSpace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy ``(tokens [A, L], mask [A, L], codes [A])`` in ascending canonical code (cached per space)."""
    V, L = space.vocab_size, space.length
    codes = np.arange(V**L, dtype=np.int64)
    digits = (codes[:, None] // V ** np.arange(L - 1, -1, -1)[None, :]) % V      # [V^L, L], most significant first
    if space.eos_id is None:
        lengths = np.full(V**L, L)
        keep = np.ones(V**L, bool)
    else:
        is_eos = digits == space.eos_id
        first = np.where(is_eos.any(1), is_eos.argmax(1), L)                      # index of the first EOS (L: none)
        lengths = np.minimum(first + 1, L)
        after = np.arange(L)[None, :] > first[:, None]
        keep = np.all(~after | is_eos, axis=1)                                   # canonical: EOS after the end
    tokens, lengths, codes = digits[keep], lengths[keep], codes[keep]
    mask = np.arange(L)[None, :] < lengths[:, None]
    tokens = np.where(mask, tokens, space.pad_id).astype(np.int32)
    assert tokens.shape[0] == space.n_responses
    for array in (tokens, mask, codes):
        array.setflags(write=False)
    return tokens, mask, codes


def enumerate_responses(space: ResponseSpace) -> tuple[jax.Array, jax.Array]:
    """Every response of ``space``: ``tokens int32 [A, L]`` (``pad_id`` after the end) and ``mask bool [A, L]``.

    Rows are in ascending canonical code (module docstring); ``A = space.n_responses``. Requires
    ``V^L <= MAX_ENUMERATED``.
    """
    check_enumerable(space)
    tokens, mask, _ = _enumeration(space)
    return jnp.asarray(tokens), jnp.asarray(mask)


def canonical_code(space: ResponseSpace, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """``sum_t c_t V^(L-1-t)`` with ``c_t = tokens_t`` on the mask and ``eos_id`` after it (int32, ``[...]``)."""
    V, L = space.vocab_size, space.length
    if space.eos_id is not None:
        tokens = jnp.where(mask, tokens, space.eos_id)
    weights = jnp.asarray(V ** np.arange(L - 1, -1, -1), jnp.int32)
    return jnp.sum(tokens.astype(jnp.int32) * weights.reshape((1,) * (tokens.ndim - 1) + (L,)), axis=-1)


def response_index(space: ResponseSpace, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """The row of each response in ``enumerate_responses(space)``, int32 ``[...]``; -1 if not in the space.

    ``tokens``, ``mask``: ``[..., L]``. A response is outside the space when its mask is not a prefix
    of positions, it has an EOS before its last masked token, or it stops early without EOS.
    """
    check_enumerable(space)
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask, bool)
    if tokens.shape != mask.shape or tokens.shape[-1:] != (space.length,):
        raise ValueError(f"tokens {tuple(tokens.shape)} and mask {tuple(mask.shape)} are not allowed: both "
                         f"must have the same shape [..., L] with L = space.length = {space.length}.")
    _, mask_np, codes_np = _enumeration(space)
    codes = jnp.asarray(codes_np, jnp.int32)
    code = canonical_code(space, tokens, mask)
    index = jnp.clip(jnp.searchsorted(codes, code), 0, codes.shape[0] - 1).astype(jnp.int32)
    # The code alone cannot see the mask: it must also be the mask of the row found.
    valid = (codes[index] == code) & jnp.all(mask == jnp.asarray(mask_np)[index], axis=-1)
    return jnp.where(valid, index, -1)


def _check_temperature(temperature) -> None:
    if v.is_concrete(temperature):
        if np.ndim(temperature) != 0:
            v.fail("temperature", temperature, "a scalar > 0")
        v.check_float("temperature", temperature, low=0.0, low_open=True)


def check_response(tokens, mask, prompt=None) -> None:
    """One response: ``tokens`` and ``mask`` both of shape ``[L]`` (and ``prompt``, if given, ``[P]``); the LMs'
    functions take one prompt and one response, and are ``vmap``-ed for batches."""
    if prompt is not None and jnp.ndim(prompt) != 1:
        raise ValueError(f"prompt has shape {tuple(jnp.shape(prompt))}, which is not allowed: prompt must be "
                         "int32 [P] (one prompt; vmap for batches).")
    if jnp.ndim(tokens) != 1 or jnp.shape(tokens) != jnp.shape(mask):
        raise ValueError(f"tokens {tuple(jnp.shape(tokens))} and mask {tuple(jnp.shape(mask))} are not allowed: "
                         "both must have shape [L] (one response; vmap for batches).")


def check_space(space, vocab_size: int) -> None:
    """``space`` must be a ``ResponseSpace`` over the model's vocabulary of ``vocab_size`` tokens."""
    if not isinstance(space, ResponseSpace):
        v.fail("space", type(space).__name__, "a bandits.lm.ResponseSpace")
    if space.vocab_size != vocab_size:
        v.fail("space.vocab_size", space.vocab_size, f"the model's vocab_size={vocab_size}")


def enumerated_logprobs(token_logprobs: Callable[[jax.Array, jax.Array], jax.Array], space: ResponseSpace
                        ) -> jax.Array:
    """``token_logprobs(tokens [L], mask [L]) -> [L]`` of every response of ``enumerate_responses(space)``,
    shape ``[A, L]``: the row sums are the exact sequence log-probabilities (their ``logsumexp`` is 0)."""
    tokens, mask = enumerate_responses(space)
    return jax.vmap(token_logprobs)(tokens, mask)


def masked_token_logprobs(logits: jax.Array, tokens: jax.Array, mask: jax.Array, temperature=1.0) -> jax.Array:
    """``log softmax(logits_t / T)[y_t]`` on the mask and 0 off it, shape ``[L]``.

    ``logits [L, V]`` are the next-token logits of positions ``0..L-1`` (row ``t`` conditioned on ``y_<t``).
    """
    _check_temperature(temperature)
    log_p = jax.nn.log_softmax(logits / temperature, axis=-1)
    picked = jnp.take_along_axis(log_p, tokens.astype(jnp.int32)[:, None], axis=-1)[:, 0]
    return jnp.where(mask, picked, 0.0)


def ancestral_sample(key: jax.Array, next_token_logits: Callable[[jax.Array, jax.Array], jax.Array],
                     space: ResponseSpace, n: int, temperature=1.0) -> tuple[jax.Array, jax.Array]:
    """``n`` i.i.d. responses by ancestral sampling, ``(tokens int32 [n, L], mask bool [n, L])``.

    ``next_token_logits(tokens [L], t) -> [V]`` gives the logits of ``y_t`` and may only read
    ``tokens[:t]``. Each step draws ``y_t ~ softmax(logits / temperature)`` (pure sampling: no top-k,
    top-p or minimum length). In an EOS space a response ends at its first EOS (included in the mask);
    later positions are ``pad_id`` with mask False. ``lax.scan`` over positions; step ``t`` uses the
    ``t``-th key of ``split(key, L)``, so ``vmap`` over keys equals a loop over keys.
    """
    v.check_int("n", n, 1)
    _check_temperature(temperature)
    L, pad, eos = space.length, space.pad_id, space.eos_id

    def step(carry, inputs):
        tokens, alive = carry
        k, t = inputs
        logits = jax.vmap(next_token_logits, in_axes=(0, None))(tokens, t)
        draw = jax.random.categorical(k, logits / temperature, axis=-1).astype(jnp.int32)
        tokens = tokens.at[:, t].set(jnp.where(alive, draw, pad))
        still = alive if eos is None else alive & (draw != eos)
        return (tokens, still), alive

    init = (jnp.full((n, L), pad, jnp.int32), jnp.ones((n,), bool))
    (tokens, _), mask = jax.lax.scan(step, init, (jax.random.split(key, L), jnp.arange(L)))
    return tokens, mask.T
