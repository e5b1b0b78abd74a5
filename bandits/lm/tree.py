"""TreeLM: the realizable prefix-tree tabular language model (docs/llm_bridge.md §2(b)).

One logit vector per (prompt, response prefix):

    log pi(y_t | x, y_<t) = log_softmax(logits[x, node(y_<t)] / T)[y_t]         (T = 1: the policy itself)

Every distribution over the responses of a ``ResponseSpace`` of length ``<= cfg.length`` is a TreeLM
(``params_from_log_probs`` builds it), so training a TreeLM towards a target (e.g. the Gibbs policy
by population DPO) must converge *exactly*: the policy class contains the target.

Nodes. The prefix ``y_<t`` (``t = 0..length-1``) is node ``(V^t - 1)/(V - 1) + sum_{s<t} y_s V^(t-1-s)``
(level offset plus its base-``V`` code; ``t`` for ``V = 1``), ``n_nodes = sum_{t<length} V^t``. Prefixes that
contain an EOS are never used in an EOS space. Prompts are int32 ``[prompt_len]`` token ids in
``[0, prompt_vocab_size)``; prompt ``x`` has the table row ``sum_i x_i prompt_vocab_size^(prompt_len-1-i)``
(``n_prompts = prompt_vocab_size^prompt_len``). Parameters: ``{"logits": [n_prompts, n_nodes, V]}``.

Same API as ``bandits.lm.tiny``: ``init``, ``token_logprobs``, ``sequence_logprob``,
``enumerated_token_logprobs``, ``sample``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from bandits import validation as v
from bandits.lm.exact import segment_logsumexp
from bandits.lm.space import (ResponseSpace, ancestral_sample, check_response, check_space, enumerate_responses,
                              enumerated_logprobs, masked_token_logprobs)

MAX_TABLE = 10**7   # entries of the logit table


@dataclasses.dataclass(frozen=True)
class TreeConfig:
    """vocab_size ``V``; length: deepest response (``>= space.length``); prompt_len ``P >= 0``;
    prompt_vocab_size (default ``V``): prompt ids lie in ``[0, prompt_vocab_size)``. Frozen, hashable."""

    vocab_size: int
    length: int
    prompt_len: int = 1
    prompt_vocab_size: int | None = None

    def __post_init__(self):
        v.check_int("vocab_size", self.vocab_size, 1)
        v.check_int("length", self.length, 1)
        v.check_int("prompt_len", self.prompt_len, 0)
        if self.prompt_vocab_size is not None:
            v.check_int("prompt_vocab_size", self.prompt_vocab_size, 1)
        size = self.n_prompts * self.n_nodes * self.vocab_size
        if size > MAX_TABLE:
            v.fail("TreeConfig", self, f"a table of at most {MAX_TABLE} logits (n_prompts * n_nodes * "
                   f"vocab_size = {size}); use fewer prompts (prompt_len, prompt_vocab_size) or a shorter length")

    @property
    def n_prompts(self) -> int:
        return (self.prompt_vocab_size or self.vocab_size) ** self.prompt_len

    @property
    def n_nodes(self) -> int:
        return sum(self.vocab_size**t for t in range(self.length))


def init(key: jax.Array, cfg: TreeConfig, scale=1.0, dtype=None) -> dict:
    """Logits i.i.d. ``N(0, scale^2)`` (``scale = 0``: the uniform policy)."""
    dtype = dtype or jnp.result_type(float)
    shape = (cfg.n_prompts, cfg.n_nodes, cfg.vocab_size)
    # A flat draw: XLA:CPU compiles 1-D threefry much faster than 3-D.
    return {"logits": scale * jax.random.normal(key, (int(np.prod(shape)),), dtype).reshape(shape)}


def prompt_row(cfg: TreeConfig, prompt: jax.Array) -> jax.Array:
    """The table row of a prompt ``[P]``: its base-``prompt_vocab_size`` code (int32 scalar)."""
    if jnp.ndim(prompt) != 1 or jnp.shape(prompt)[0] != cfg.prompt_len:
        raise ValueError(f"prompt has shape {tuple(jnp.shape(prompt))}, which is not allowed: prompt must be "
                         f"int32 [prompt_len] = [{cfg.prompt_len}] (one prompt; vmap for batches).")
    base = cfg.prompt_vocab_size or cfg.vocab_size
    if v.is_concrete(prompt) and np.size(prompt) and (np.min(prompt) < 0 or np.max(prompt) >= base):
        v.fail("prompt", np.asarray(prompt).tolist(), f"token ids in [0, prompt_vocab_size={base})")
    weights = jnp.asarray(base ** np.arange(cfg.prompt_len - 1, -1, -1), jnp.int32)
    return jnp.sum(jnp.asarray(prompt, jnp.int32) * weights)


def node_indices(cfg: TreeConfig, tokens: jax.Array) -> jax.Array:
    """``node(y_<t)`` for ``t = 0..L-1``, int32 ``[L]`` (module docstring)."""
    V, L = cfg.vocab_size, tokens.shape[-1]
    if L > cfg.length:
        v.fail("response length", L, f"<= TreeConfig.length={cfg.length}")
    offsets = jnp.asarray([sum(V**s for s in range(t)) for t in range(L)], jnp.int32)
    # code_t = sum_{s<t} y_s V^(t-1-s) by the recursion code_{t+1} = V code_t + y_t (L is small and static).
    codes = [jnp.zeros((), jnp.int32)]
    for t in range(L - 1):
        codes.append(V * codes[-1] + tokens[t].astype(jnp.int32))
    return offsets + jnp.stack(codes)


def _logits(cfg: TreeConfig, params: dict, prompt: jax.Array, tokens: jax.Array) -> jax.Array:
    return params["logits"][prompt_row(cfg, prompt)][node_indices(cfg, tokens)]


def token_logprobs(cfg: TreeConfig, params: dict, prompt: jax.Array, tokens: jax.Array, mask: jax.Array,
                   temperature=1.0) -> jax.Array:
    """Per-token ``log pi_T(y_t | x, y_<t)`` on the mask, 0 off it, shape ``[L]`` (one prompt, one response)."""
    check_response(tokens, mask)
    return masked_token_logprobs(_logits(cfg, params, prompt, tokens), tokens, mask, temperature)


def sequence_logprob(cfg: TreeConfig, params: dict, prompt: jax.Array, tokens: jax.Array, mask: jax.Array,
                     temperature=1.0) -> jax.Array:
    """``log pi(y | x) = sum_t mask_t log pi(y_t | x, y_<t)`` (scalar)."""
    return jnp.sum(token_logprobs(cfg, params, prompt, tokens, mask, temperature))


def enumerated_token_logprobs(cfg: TreeConfig, params: dict, prompt: jax.Array, space: ResponseSpace,
                              temperature=1.0) -> jax.Array:
    """``token_logprobs`` of every response of ``enumerate_responses(space)``, shape ``[A, L]``."""
    _check_space(cfg, space)
    return enumerated_logprobs(lambda y, m: token_logprobs(cfg, params, prompt, y, m, temperature), space)


def sample(key: jax.Array, cfg: TreeConfig, params: dict, prompt: jax.Array, space: ResponseSpace, n: int,
           temperature=1.0) -> tuple[jax.Array, jax.Array]:
    """``n`` i.i.d. responses ``(tokens int32 [n, L], mask bool [n, L])``, ancestral, per-token
    ``softmax(logits / temperature)`` (``bandits.lm.space.ancestral_sample``)."""
    _check_space(cfg, space)
    table = params["logits"][prompt_row(cfg, prompt)]
    return ancestral_sample(key, lambda tokens, t: table[node_indices(cfg, tokens)[t]], space, n, temperature)


def params_from_log_probs(cfg: TreeConfig, space: ResponseSpace, prompts: jax.Array, log_probs: jax.Array,
                          params: dict | None = None) -> dict:
    """TreeLM parameters whose law on prompt ``prompts[i]`` is ``exp(log_probs[i])`` over
    ``enumerate_responses(space)`` (any distribution, zeros allowed).

    ``prompts int32 [n_x, P]``, ``log_probs [n_x, A]`` (each row normalised). The logits of node ``u`` are
    the conditional ``log pi(v | u) = log m(u v) - log m(u)``, where ``m(w)`` is the total mass of the
    responses that start with the prefix ``w``. A node of zero mass (never reached) gets uniform logits;
    a zero-mass child of a reached node gets ``-inf``. Rows of prompts not in ``prompts`` are taken from
    ``params`` (uniform when None). Repeated prompts: the last row wins.
    """
    _check_space(cfg, space)
    tokens, mask = enumerate_responses(space)
    prompts, log_probs = jnp.asarray(prompts), jnp.asarray(log_probs)
    if prompts.ndim != 2:
        raise ValueError(f"prompts has shape {tuple(prompts.shape)}, which is not allowed: prompts must be "
                         "int32 [n_x, P].")
    v.check_shape("log_probs", log_probs, (prompts.shape[0], tokens.shape[0]))
    if v.is_concrete(log_probs):
        lp = np.asarray(log_probs)
        if np.any(np.isnan(lp)) or np.any(lp == np.inf):
            v.fail("log_probs", "<array with NaN or +inf>", "log-probabilities (-inf for zero mass)")
        v.check_normalized_rows("log_probs", lp)
    for prompt in (np.asarray(prompts) if v.is_concrete(prompts) else ()):
        prompt_row(cfg, prompt)                                                    # validates every prompt
    V, n_nodes = cfg.vocab_size, cfg.n_nodes
    nodes = jax.vmap(lambda y: node_indices(cfg, y))(tokens)                       # [A, L]
    slot = (nodes * V + tokens).reshape(-1)                                        # (node, child token)
    valid = mask.reshape(-1)

    def one_prompt(lp):
        values = jnp.where(valid, jnp.repeat(lp, space.length), -jnp.inf)
        log_mass = segment_logsumexp(values, slot, n_nodes * V)
        log_mass = log_mass.reshape(n_nodes, V)
        reached = jnp.any(log_mass > -jnp.inf, axis=-1, keepdims=True)
        return jnp.where(reached, log_mass - jax.nn.logsumexp(jnp.where(reached, log_mass, 0.0), axis=-1,
                                                                keepdims=True), 0.0)

    dtype = log_probs.dtype
    base = (jnp.zeros((cfg.n_prompts, n_nodes, V), dtype) if params is None
            else jnp.asarray(params["logits"], dtype))
    rows = jax.vmap(lambda p: prompt_row(cfg, p))(prompts)
    return {"logits": base.at[rows].set(jax.vmap(one_prompt)(log_probs))}


def _check_space(cfg: TreeConfig, space: ResponseSpace) -> None:
    check_space(space, cfg.vocab_size)
    if space.length > cfg.length:
        v.fail("space.length", space.length, f"<= TreeConfig.length={cfg.length}")
