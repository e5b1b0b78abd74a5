"""KL estimators k1, k2, k3 on an enumerable response space: exact moments and exact expected gradients.

Everything here works on *per-token log-probability arrays* over the enumerated responses of one or
several prompts, ``logp [A, L]`` or ``[n_x, A, L]`` (0 where ``mask`` is False), so it serves the tiny
transformer, ``TreeLM`` and tabular policies alike (``L = 1``). docs/llm_bridge.md §4.

Estimators (Schulman, "Approximating KL divergence", 2020, joschu.net/blog/kl-approx.html). With the
per-token log-ratio ``d_t = log pi(y_t|x,y_<t) - log pi_ref(y_t|x,y_<t)`` and ``D = sum_t d_t``:

- ``k1 = sum_t d_t``, ``k2 = sum_t d_t^2 / 2``, ``k3 = sum_t (exp(-d_t) - 1 + d_t)`` (each term >= 0);
- sequence-level variants apply the formula to ``D``: ``k2_seq = D^2 / 2``, ``k3_seq = exp(-D) - 1 + D``
  (``k1_seq = D = k1``).

On policy, ``E[k1] = E[k3] = E[k3_seq] = KL(pi || pi_ref)`` exactly (chain rule of KL; ``k3`` adds the
zero-mean control variate ``pi_ref/pi - 1`` per token); ``k2`` and ``k2_seq`` are biased.

Sampling laws (``sampler_logp``): ``None`` is on-policy (``y ~ pi``); otherwise per-token log-probs
``[.., A, L]`` of the sampler (an old policy ``pi_old``, a tempered sampler, see
``tempered_token_logprobs``) or its sequence log-weights ``[.., A]``. ``weighting`` multiplies the
estimator by an importance weight of ``pi / sampler``:

- ``"none"``: no correction (a mismatched sampler, or ignoring the drift of ``pi_old``);
- ``"sequence"``: ``rho(y) = pi(y) / q(y)`` on the whole estimate (exact);
- ``"prefix"``: token term ``t`` times ``rho_{<=t} = prod_{s<=t} pi_s / q_s`` (exact for per-token
  estimators, whose term ``t`` depends on ``y_<=t`` only; lower variance than ``"sequence"``);
- ``"token"``: token term ``t`` times ``pi_t / q_t`` only, as TRL's GRPO ``use_bias_correction_kl``
  (exact for ``L = 1``, biased in general).

Expected gradients (Tang & Munos, "On a few pitfalls in KL divergence gradient estimation for RL",
arXiv 2506.09477; Shah et al., "A Comedy of Estimators", arXiv 2512.21852). Autodiff on samples held
fixed computes ``grad s(theta; y)`` of a per-sample surrogate ``s``; its expectation is

    g = grad_theta sum_y stop_gradient(q(y) w(y)) s(theta; y)

(``q`` the sampling law, ``w`` the importance weight), compared with the true ``grad KL(pi||pi_ref)``
and the forward-KL gradient ``grad KL(pi_ref||pi) = -sum_y pi_ref(y) grad log pi(y)``. Placements:

- ``"loss"``: ``s = k(theta; y)``. On policy: ``E grad k1 = 0``; ``E grad k2 = E sum_t d_t grad log pi_t``
  (only the partial gradient: the score term through the prefix distribution is missing);
  ``E grad k3 = -E sum_t sum_{v} pi_ref(v|y_<t) grad log pi(v|y_<t)`` (a per-token *forward* KL);
  ``grad k2_seq = D grad log pi(y)`` has mean ``grad KL`` exactly; ``grad k3_seq = (1 - pi_ref/pi)(y)
  grad log pi(y)`` has mean ``grad KL(pi_ref || pi)`` exactly.
- ``"loss_ratio"``: ``s = sum_t (pi_t / stop_gradient(q_t)) k_t`` with the gradient through the ratio
  (TRL GRPO ``use_bias_correction_kl``); on policy its mean equals per-token k2's partial gradient.
- ``"reward"``: REINFORCE with a detached return, ``s = stop_gradient(k(y)) log pi(y)``; with k1 its
  mean is ``grad KL`` exactly.
- ``"reward_to_go"``: ``s = sum_s stop_gradient(sum_{t>=s} k_t) log pi_s``; with k1, exact.

Expected gradients are computed as one vector-Jacobian product of ``params -> logp`` with the
cotangent ``d/d logp`` of the expected surrogate, which equals ``jax.grad`` of the expectation with
respect to ``params`` by the chain rule, and lets several configurations share one forward pass.

Every expectation is an exact sum over the enumerated responses, which must carry all the
probability (``logsumexp_y log pi(y) = 0`` per prompt; checked on concrete inputs).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bandits import validation as v

__all__ = ["CONFIGURATIONS", "ESTIMATORS", "GRANULARITIES", "PLACEMENTS", "VALUE_ESTIMATORS", "WEIGHTINGS",
           "Configuration", "Moments", "PrefixGroups", "compare", "exact_expected_grad", "exact_kl",
           "exact_moments", "expected_cotangents", "forward_kl", "importance_weights", "k1", "k2", "k2_seq",
           "k3", "k3_seq", "kl_cotangents", "kl_gradients", "log_ratio", "per_token", "prefix_groups",
           "pull_back", "sequence_logprob", "sequence_value", "tempered_token_logprobs", "value"]

ESTIMATORS = ("k1", "k2", "k3")
GRANULARITIES = ("token", "sequence")
PLACEMENTS = ("loss", "loss_ratio", "reward", "reward_to_go")
WEIGHTINGS = ("none", "sequence", "prefix", "token")
NORMALISATION_TOL = 1e-6


class Configuration(NamedTuple):
    """How a KL estimate enters training: ``estimator`` (k1/k2/k3), ``granularity`` (``"token"``: the
    per-token terms summed; ``"sequence"``: the formula on ``D = sum_t d_t``) and ``placement``."""

    estimator: str
    granularity: str
    placement: str


# The configurations of docs/llm_bridge.md §4.3 (and the libraries of §4.1 that use them).
CONFIGURATIONS: dict[str, Configuration] = {
    "k1_loss": Configuration("k1", "token", "loss"),
    "k2_loss": Configuration("k2", "token", "loss"),            # OpenRLHF/verl k2 ("mse") in the loss
    "k3_loss": Configuration("k3", "token", "loss"),            # TRL GRPO, verl "low_var_kl" in the loss
    "k3_ratio_loss": Configuration("k3", "token", "loss_ratio"),  # TRL GRPO use_bias_correction_kl
    "k2_seq_loss": Configuration("k2", "sequence", "loss"),
    "k3_seq_loss": Configuration("k3", "sequence", "loss"),
    "k1_reward": Configuration("k1", "token", "reward"),        # TRL PPO default: k1 in the reward
    "k3_reward": Configuration("k3", "token", "reward"),        # TRL PPO kl_estimator="k3"
    "k1_reward_to_go": Configuration("k1", "token", "reward_to_go"),
}

# Value estimators: name -> (estimator, granularity).
VALUE_ESTIMATORS: dict[str, tuple[str, str]] = {
    "k1": ("k1", "token"), "k2": ("k2", "token"), "k3": ("k3", "token"),
    "k2_seq": ("k2", "sequence"), "k3_seq": ("k3", "sequence"),
}


# ---------------------------------------------------------------------------------------------
# The estimators


def log_ratio(logp: jax.Array, ref_logp: jax.Array, mask: jax.Array) -> jax.Array:
    """``d_t = log pi_t - log pi_ref_t`` on response tokens, 0 elsewhere (safe under ``grad``)."""
    return jnp.where(mask, logp - ref_logp, 0.0)


def _terms(estimator: str, d: jax.Array) -> jax.Array:
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    return jnp.expm1(-d) + d  # k3, accurate for small d


def per_token(estimator: str, d: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-token terms ``[.., L]`` of ``estimator`` on log-ratios ``d``: ``d``, ``d^2/2`` or
    ``exp(-d) - 1 + d``; 0 off the response tokens."""
    v.check_choice("estimator", estimator, ESTIMATORS)
    d = jnp.where(mask, d, 0.0)
    return jnp.where(mask, _terms(estimator, d), 0.0)


def k1(d: jax.Array, mask: jax.Array) -> jax.Array:
    """``k1 = sum_t d_t`` over response tokens (Schulman's k1; unbiased on policy)."""
    return per_token("k1", d, mask).sum(-1)


def k2(d: jax.Array, mask: jax.Array) -> jax.Array:
    """``k2 = sum_t d_t^2 / 2`` (Schulman's k2; biased, second order in ``d``)."""
    return per_token("k2", d, mask).sum(-1)


def k3(d: jax.Array, mask: jax.Array) -> jax.Array:
    """``k3 = sum_t (exp(-d_t) - 1 + d_t) >= 0`` (Schulman's k3; unbiased on policy)."""
    return per_token("k3", d, mask).sum(-1)


def sequence_value(estimator: str, total: jax.Array) -> jax.Array:
    """The formula of ``estimator`` applied to the sequence log-ratio ``D``."""
    v.check_choice("estimator", estimator, ESTIMATORS)
    return _terms(estimator, total)


def k2_seq(d: jax.Array, mask: jax.Array) -> jax.Array:
    """``k2_seq = (sum_t d_t)^2 / 2``: its gradient ``D grad log pi(y)`` is unbiased for ``grad KL``."""
    return sequence_value("k2", jnp.where(mask, d, 0.0).sum(-1))


def k3_seq(d: jax.Array, mask: jax.Array) -> jax.Array:
    """``k3_seq = exp(-D) - 1 + D`` with ``D = sum_t d_t`` (unbiased on policy, higher variance)."""
    return sequence_value("k3", jnp.where(mask, d, 0.0).sum(-1))


def value(name: str, d: jax.Array, mask: jax.Array) -> jax.Array:
    """The value estimator ``name`` in ``VALUE_ESTIMATORS`` (k1, k2, k3, k2_seq, k3_seq) per response."""
    v.check_choice("name", name, tuple(VALUE_ESTIMATORS))
    estimator, granularity = VALUE_ESTIMATORS[name]
    if granularity == "token":
        return per_token(estimator, d, mask).sum(-1)
    return sequence_value(estimator, jnp.where(mask, d, 0.0).sum(-1))


# ---------------------------------------------------------------------------------------------
# Inputs, laws and importance weights


def sequence_logprob(token_logp: jax.Array, mask: jax.Array) -> jax.Array:
    """``log pi(y) = sum_t log pi(y_t | y_<t)`` over response tokens."""
    return jnp.where(mask, token_logp, 0.0).sum(-1)


def _prepare(logp, ref_logp, mask, prompt_weights):
    """Arrays as ``[n_x, A, L]`` (mask broadcast), prompt weights ``[n_x]`` (uniform by default)."""
    logp, ref_logp = jnp.asarray(logp), jnp.asarray(ref_logp)
    if logp.ndim not in (2, 3):
        raise ValueError(f"logp has shape {logp.shape}, which is not allowed: logp must be [A, L] or "
                         "[n_x, A, L] per-token log-probabilities of the enumerated responses.")
    if ref_logp.shape != logp.shape:
        v.check_shape("ref_logp", ref_logp, logp.shape)
    if logp.ndim == 2:
        logp, ref_logp = logp[None], ref_logp[None]
    mask = jnp.asarray(mask, bool)
    if mask.shape not in (logp.shape[1:], logp.shape):
        raise ValueError(f"mask has shape {mask.shape}, which is not allowed: mask must have shape "
                         f"{logp.shape[1:]} or {logp.shape}.")
    mask = jnp.broadcast_to(mask, logp.shape)
    n_x = logp.shape[0]
    if prompt_weights is None:
        pw = jnp.full((n_x,), 1.0 / n_x, dtype=logp.dtype)
    else:
        pw = jnp.asarray(prompt_weights, dtype=logp.dtype)
        v.check_shape("prompt_weights", pw, (n_x,))
        if v.is_concrete(pw) and (np.any(np.asarray(pw) < 0) or not np.isclose(float(np.sum(pw)), 1.0, atol=1e-9)):
            v.fail("prompt_weights", np.asarray(pw), "non-negative weights summing to 1")
    return logp, ref_logp, mask, pw


def _check_complete(field: str, seq_logp: jax.Array) -> None:
    if not v.is_concrete(seq_logp):
        return
    lse = np.asarray(jax.nn.logsumexp(seq_logp, axis=-1))
    if not np.all(np.abs(lse) <= NORMALISATION_TOL):
        worst = float(lse.reshape(-1)[np.argmax(np.abs(lse))])
        raise ValueError(f"{field}: the enumerated responses carry probability exp({worst:.3g}) != 1 for some "
                         f"prompt (tolerance {NORMALISATION_TOL:g} in log space), which is not allowed: exact "
                         "expectations need every response of the space (logsumexp_y log p(y) = 0).")


def _sampler(sampler_logp, logp, mask):
    """(per-token sampler log-probs or None, sequence log-law ``[n_x, A]``), both detached."""
    if sampler_logp is None:
        tok = jax.lax.stop_gradient(logp)
        return tok, sequence_logprob(tok, mask)
    s = jax.lax.stop_gradient(jnp.asarray(sampler_logp))
    n_x, a, length = logp.shape
    if s.shape in ((a, length), (n_x, a, length)):
        tok = jnp.broadcast_to(s, logp.shape)
        seq = sequence_logprob(tok, mask)
    elif s.shape in ((a,), (n_x, a)):
        tok, seq = None, jnp.broadcast_to(s, (n_x, a))
    else:
        raise ValueError(f"sampler_logp has shape {s.shape}, which is not allowed: it must be per-token "
                         f"log-probs {(n_x, a, length)} (or {(a, length)}) or sequence log-weights {(n_x, a)} "
                         f"(or {(a,)}).")
    _check_complete("sampler_logp", seq)
    return tok, seq


def importance_weights(logp: jax.Array, sampler_tok: jax.Array | None, sampler_seq: jax.Array,
                       mask: jax.Array, weighting: str) -> tuple[jax.Array, jax.Array | None]:
    """Detached weights ``(per-token [.., A, L], per-sequence [.., A] or None)`` of ``pi / q``.

    ``"none"``: 1. ``"sequence"``: ``rho(y) = pi(y)/q(y)`` everywhere. ``"prefix"``: ``rho_{<=t}`` per
    token, ``rho(y)`` per sequence. ``"token"``: ``pi_t/q_t`` per token, undefined (None) per sequence.
    """
    v.check_choice("weighting", weighting, WEIGHTINGS)
    logp = jax.lax.stop_gradient(logp)
    ones = jnp.ones(logp.shape, logp.dtype)
    if weighting == "none":
        return ones, ones[..., 0]
    rho = jnp.exp(sequence_logprob(logp, mask) - sampler_seq)
    if weighting == "sequence":
        return ones * rho[..., None], rho
    if sampler_tok is None:
        raise ValueError(f"weighting={weighting!r} is not allowed with a sequence-level sampler law: per-token "
                         "weights need the sampler's per-token log-probs [.., A, L].")
    r = jnp.where(mask, logp - sampler_tok, 0.0)
    if weighting == "prefix":
        return jnp.exp(jnp.cumsum(r, axis=-1)), rho
    return jnp.exp(r), None


def _expect(q_logp: jax.Array, values: jax.Array, pw: jax.Array) -> jax.Array:
    return jnp.sum(pw * jnp.sum(jnp.exp(q_logp) * values, axis=-1))


# ---------------------------------------------------------------------------------------------
# Exact values


def exact_kl(logp, ref_logp, mask, prompt_weights=None) -> jax.Array:
    """``sum_x w_x sum_y pi(y|x) (log pi(y|x) - log pi_ref(y|x))``, the exact reverse KL."""
    logp, ref_logp, mask, pw = _prepare(logp, ref_logp, mask, prompt_weights)
    s, s_ref = sequence_logprob(logp, mask), sequence_logprob(ref_logp, mask)
    _check_complete("logp", s)
    return _expect(s, s - s_ref, pw)


def forward_kl(logp, ref_logp, mask, prompt_weights=None) -> jax.Array:
    """``sum_x w_x sum_y pi_ref(y|x) (log pi_ref(y|x) - log pi(y|x))``, the exact forward KL."""
    logp, ref_logp, mask, pw = _prepare(logp, ref_logp, mask, prompt_weights)
    s, s_ref = sequence_logprob(logp, mask), sequence_logprob(ref_logp, mask)
    _check_complete("ref_logp", s_ref)
    return _expect(s_ref, s_ref - s, pw)


class Moments(NamedTuple):
    """Exact moments of one estimator under a sampling law: ``mean`` and per-sample ``var`` of
    ``w(y) k(y)``, ``y ~ q`` (prompts drawn with the prompt weights), and the exact ``kl``."""

    mean: jax.Array
    var: jax.Array
    kl: jax.Array

    @property
    def sd(self) -> jax.Array:
        return jnp.sqrt(self.var)

    @property
    def bias(self) -> jax.Array:
        return self.mean - self.kl


def exact_moments(logp, ref_logp, mask, *, sampler_logp=None, weighting: str = "none",
                  estimators: Sequence[str] = tuple(VALUE_ESTIMATORS),
                  prompt_weights=None) -> dict[str, Moments]:
    """Exact mean and variance of each value estimator, and the exact ``KL(pi || pi_ref)``.

    ``mean = sum_x w_x sum_y q(y|x) W(y) k(y)`` where ``W k`` is ``rho(y) k(y)`` (sequence weighting),
    ``sum_t w_t k_t`` (prefix / token weighting of per-token estimators) or ``k(y)`` (none), and
    ``var = E[(W k)^2] - mean^2``. On policy (``sampler_logp=None``) every weight is 1.
    ``"token"`` weighting is undefined for the sequence-level estimators (k2_seq, k3_seq).
    """
    logp, ref_logp, mask, pw = _prepare(logp, ref_logp, mask, prompt_weights)
    _check_complete("logp", sequence_logprob(logp, mask))
    tok, q = _sampler(sampler_logp, logp, mask)
    token_w, seq_w = importance_weights(logp, tok, q, mask, weighting)
    d = log_ratio(logp, ref_logp, mask)
    kl = exact_kl(logp, ref_logp, mask, pw)
    out = {}
    for name in estimators:
        v.check_choice("estimators", name, tuple(VALUE_ESTIMATORS))
        estimator, granularity = VALUE_ESTIMATORS[name]
        if granularity == "token":
            sample = jnp.sum(token_w * per_token(estimator, d, mask), axis=-1)
        else:
            if seq_w is None:
                raise ValueError(f"weighting={weighting!r} is not allowed for the sequence-level estimator "
                                 f"{name!r}: use 'none', 'sequence' or 'prefix'.")
            sample = seq_w * sequence_value(estimator, d.sum(-1))
        mean = _expect(q, sample, pw)
        out[name] = Moments(mean, _expect(q, (sample - mean) ** 2, pw), kl)
    return out


# ---------------------------------------------------------------------------------------------
# Exact expected gradients


def _check_configuration(name: str, c: Configuration, weighting: str, sampler_tok) -> None:
    v.check_choice(f"{name}.estimator", c.estimator, ESTIMATORS)
    v.check_choice(f"{name}.granularity", c.granularity, GRANULARITIES)
    v.check_choice(f"{name}.placement", c.placement, PLACEMENTS)
    if c.granularity == "sequence" and c.placement in ("loss_ratio", "reward_to_go"):
        v.fail(f"{name}.granularity", c.granularity, f"'token' with placement {c.placement!r}")
    if c.granularity == "sequence" and c.placement == "loss" and weighting == "token":
        v.fail("weighting", weighting, f"'none', 'sequence' or 'prefix' for the sequence-level loss {name!r}")
    if c.placement == "loss_ratio":
        if weighting != "none":
            v.fail("weighting", weighting, f"'none' for {name!r} (placement 'loss_ratio' carries its own "
                   "per-token ratio)")
        if sampler_tok is None:
            raise ValueError(f"{name!r} (placement 'loss_ratio') needs the sampler's per-token log-probs.")


def _surrogate(c: Configuration, logp, ref_logp, mask, sampler_tok, token_w, seq_w) -> jax.Array:
    """Weighted per-sample surrogate ``[n_x, A]`` whose gradient autodiff would take (weights detached)."""
    d = log_ratio(logp, ref_logp, mask)
    if c.placement == "loss":
        if c.granularity == "token":
            return jnp.sum(token_w * per_token(c.estimator, d, mask), axis=-1)
        return seq_w * sequence_value(c.estimator, d.sum(-1))
    if c.placement == "loss_ratio":
        ratio = jnp.exp(jnp.where(mask, logp - sampler_tok, 0.0))
        return jnp.sum(ratio * per_token(c.estimator, d, mask), axis=-1)
    lp = jnp.where(mask, logp, 0.0)
    d_fixed = jax.lax.stop_gradient(d)
    if c.placement == "reward":
        if c.granularity == "token":
            ret = per_token(c.estimator, d_fixed, mask).sum(-1)
        else:
            ret = sequence_value(c.estimator, d_fixed.sum(-1))
        return jnp.sum(token_w * ret[..., None] * lp, axis=-1)
    terms = per_token(c.estimator, d_fixed, mask)
    to_go = jnp.flip(jnp.cumsum(jnp.flip(terms, -1), axis=-1), -1)  # sum_{t >= s} k_t
    return jnp.sum(token_w * jnp.where(mask, to_go, 0.0) * lp, axis=-1)


def _configurations(configurations) -> dict[str, Configuration]:
    if configurations is None:
        return dict(CONFIGURATIONS)
    if isinstance(configurations, Mapping):
        return {str(k): Configuration(*c) for k, c in configurations.items()}
    out = {}
    for name in configurations:
        if name not in CONFIGURATIONS:
            v.fail("configurations", name, "names from CONFIGURATIONS (" + ", ".join(CONFIGURATIONS) + ") or a "
                   "mapping name -> Configuration")
        out[name] = CONFIGURATIONS[name]
    return out


def expected_cotangents(logp, ref_logp, mask, configurations=None, *, sampler_logp=None,
                        weighting: str = "none", prompt_weights=None) -> dict[str, jax.Array]:
    """``d/d logp`` of ``sum_x w_x sum_y stop_gradient(q(y) W(y)) s(logp; y)`` for each configuration.

    Returned arrays have the shape of ``logp``; pulled back through ``params -> logp`` (a VJP) they
    give the expected gradient in parameter space (``exact_expected_grad``).
    """
    squeeze = jnp.ndim(logp) == 2
    logp, ref_logp, mask, pw = _prepare(logp, ref_logp, mask, prompt_weights)
    tok, q = _sampler(sampler_logp, logp, mask)
    token_w, seq_w = importance_weights(logp, tok, q, mask, weighting)
    out = {}
    for name, c in _configurations(configurations).items():
        _check_configuration(name, c, weighting, tok)
        objective = lambda lp, c=c: _expect(q, _surrogate(c, lp, ref_logp, mask, tok, token_w, seq_w), pw)
        cot = jax.grad(objective)(logp)
        out[name] = cot[0] if squeeze else cot
    return out


def kl_cotangents(logp, ref_logp, mask, prompt_weights=None) -> tuple[jax.Array, jax.Array]:
    """``d/d logp`` of the exact reverse and forward KL (pulled back: ``grad KL(pi||pi_ref)`` and
    ``grad KL(pi_ref||pi)``)."""
    squeeze = jnp.ndim(logp) == 2
    logp, ref_logp, mask, pw = _prepare(logp, ref_logp, mask, prompt_weights)
    rev = jax.grad(lambda lp: exact_kl(lp, ref_logp, mask, pw))(logp)
    fwd = jax.grad(lambda lp: forward_kl(lp, ref_logp, mask, pw))(logp)
    return (rev[0], fwd[0]) if squeeze else (rev, fwd)


def pull_back(logp_fn: Callable[[Any], jax.Array], params: Any, cotangents: Mapping[str, jax.Array],
              batch_size: int | None = None) -> dict[str, Any]:
    """``{name: J^T c}`` with ``J = d logp_fn / d params`` at ``params``: one forward pass (``jax.vjp``),
    then one backward pass per cotangent (``lax.map``; ``batch_size`` vmaps them in batches)."""
    _, vjp = jax.vjp(logp_fn, params)
    stacked = jnp.stack([jnp.asarray(c) for c in cotangents.values()])
    grads = jax.lax.map(lambda c: vjp(c)[0], stacked, batch_size=batch_size)
    return {name: jax.tree.map(lambda g, i=i: g[i], grads) for i, name in enumerate(cotangents)}


def exact_expected_grad(logp_fn: Callable[[Any], jax.Array], params: Any, ref_logp, mask,
                        configurations=None, *, sampler_logp=None, weighting: str = "none",
                        prompt_weights=None, with_kl: bool = False,
                        batch_size: int | None = None) -> dict[str, Any]:
    """Exact expected gradient (a pytree like ``params``) of each configuration.

    ``g = grad_params sum_x w_x sum_y stop_gradient(q(y) W(y)) s(params; y)`` with ``logp_fn(params)``
    the per-token log-probs ``[A, L]`` or ``[n_x, A, L]`` of the enumerated responses (0 off ``mask``)
    and ``s`` the configuration's surrogate (module docstring). The sampler and ``ref_logp`` are fixed;
    on policy (``sampler_logp=None``) ``q = stop_gradient(pi)``. ``configurations``: names from
    ``CONFIGURATIONS`` or a mapping ``name -> Configuration`` (default: all). ``with_kl`` adds
    ``"kl_reverse"`` (``grad KL(pi||pi_ref)``) and ``"kl_forward"`` (``grad KL(pi_ref||pi)``) from the same
    forward pass. ``batch_size``: see ``pull_back``.
    """
    logp = jax.lax.stop_gradient(logp_fn(params))
    cots = expected_cotangents(logp, ref_logp, mask, configurations, sampler_logp=sampler_logp,
                               weighting=weighting, prompt_weights=prompt_weights)
    if with_kl:
        overlap = {"kl_reverse", "kl_forward"} & set(cots)
        if overlap:
            raise ValueError(f"configuration names {sorted(overlap)} are reserved when with_kl=True.")
        cots["kl_reverse"], cots["kl_forward"] = kl_cotangents(logp, ref_logp, mask, prompt_weights)
    return pull_back(logp_fn, params, cots, batch_size)


def kl_gradients(logp_fn: Callable[[Any], jax.Array], params: Any, ref_logp, mask,
                 prompt_weights=None) -> tuple[Any, Any]:
    """``(grad KL(pi_params || pi_ref), grad KL(pi_ref || pi_params))`` with respect to ``params``."""
    logp = jax.lax.stop_gradient(logp_fn(params))
    rev, fwd = kl_cotangents(logp, ref_logp, mask, prompt_weights)
    out = pull_back(logp_fn, params, {"kl_reverse": rev, "kl_forward": fwd})
    return out["kl_reverse"], out["kl_forward"]


def compare(grad: Any, target: Any) -> tuple[jax.Array, jax.Array]:
    """``(cos(g, t), ||g - t|| / ||t||)`` over all leaves of two pytrees (flattened together)."""
    g = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(grad)])
    t = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(target)])
    if g.shape != t.shape:
        raise ValueError(f"compare: gradients have {g.size} and {t.size} entries; they must match.")
    gn, tn = jnp.linalg.norm(g), jnp.linalg.norm(t)
    return jnp.dot(g, t) / (gn * tn), jnp.linalg.norm(g - t) / tn


# ---------------------------------------------------------------------------------------------
# Mismatched samplers: the exact law of token-level temperature sampling


class PrefixGroups(NamedTuple):
    """Prefix structure of an enumerated response space (NumPy, static).

    ``group[a, t]``: id of the prefix ``y_<t`` of response ``a`` (ids are distinct across positions;
    ``n_groups`` for padding). ``first[a, t]``: response ``a`` is the first one enumerated with its
    ``y_<=t``, i.e. it represents the child token ``y_t`` of that prefix exactly once.
    """

    group: np.ndarray
    first: np.ndarray
    n_groups: int


def prefix_groups(tokens, mask) -> PrefixGroups:
    """The ``PrefixGroups`` of responses ``tokens [A, L]`` with ``mask [A, L]`` (response tokens True,
    a prefix of each row). The space must be complete: every child of every prefix enumerated."""
    tokens, mask = np.asarray(tokens), np.asarray(mask, bool)
    if tokens.ndim != 2 or mask.shape != tokens.shape:
        raise ValueError(f"tokens {tokens.shape} and mask {mask.shape} must be two [A, L] arrays of one shape.")
    if np.any(mask[:, 1:] & ~mask[:, :-1]):
        raise ValueError("mask is not allowed: each row must be True on a prefix (response tokens, then padding).")
    a, length = tokens.shape
    group = np.zeros((a, length), np.int64)
    first = np.zeros((a, length), bool)
    offset = 0
    for t in range(length):
        rows = np.flatnonzero(mask[:, t])
        _, g = np.unique(tokens[rows, :t], axis=0, return_inverse=True)
        g = g.reshape(-1)
        _, idx = np.unique(tokens[rows, : t + 1], axis=0, return_index=True)
        group[:, t] = -1
        group[rows, t] = g + offset
        first[rows[idx], t] = True
        offset += int(g.max()) + 1 if rows.size else 0
    group[group < 0] = offset
    return PrefixGroups(group, first, offset)


def tempered_token_logprobs(token_logp, groups: PrefixGroups, temperature) -> jax.Array:
    """Per-token log-probs of the token-level tempered sampler ``softmax(logits / T)``.

    ``log pi_T(y_t | y_<t) = log pi(y_t|y_<t) / T - logsumexp_v log pi(v|y_<t) / T``, the normaliser
    taken over the enumerated children ``v`` of each prefix (``groups``). ``token_logp``: ``[A, L]`` or
    ``[n_x, A, L]``; 0 off the response tokens. ``temperature`` may be traced.
    """
    token_logp = jnp.asarray(token_logp)
    if v.is_concrete(temperature):
        v.check_float("temperature", temperature, low=0.0, low_open=True)
    if token_logp.ndim == 3:
        return jax.vmap(lambda lp: tempered_token_logprobs(lp, groups, temperature))(token_logp)
    v.check_shape("token_logp", token_logp, groups.group.shape)
    group, first = jnp.asarray(groups.group), jnp.asarray(groups.first)
    n = groups.n_groups + 1
    z = token_logp / temperature
    rep = jnp.where(first, z, -jnp.inf)
    peak = jax.ops.segment_max(rep.reshape(-1), group.reshape(-1), num_segments=n)
    peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
    total = jax.ops.segment_sum(jnp.where(first, jnp.exp(z - peak[group]), 0.0).reshape(-1),
                                group.reshape(-1), num_segments=n)
    log_norm = peak + jnp.log(jnp.where(total > 0, total, 1.0))
    return jnp.where(group < groups.n_groups, z - log_norm[group], 0.0)
