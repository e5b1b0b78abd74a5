"""Direct preference optimisation of tabular and linear-softmax policies on ``PreferenceData``.

Two policy classes over a finite instance, both returning log-probabilities ``[n_x, K]``:

- tabular:        ``log pi = log_softmax(logits)``, ``logits [n_x, K]`` (default start: ``log_pi0``);
- linear-softmax: ``log pi(a|x) = log_softmax_a(log pi0(a|x) + <w, phi(x,a)>)``, ``w [d]`` (default 0).

Methods (losses from ``algorithms.core.preference_losses``, their ``kl_coef`` and IPO's ``tau`` both ``kl_coef``):

- ``'dpo'``  (Rafailov et al. 2023): ``-log sigmoid(kl_coef h)``;
- ``'ipo'``  (Azar et al. 2023): ``(h - 1/(2 kl_coef))^2``;
- ``'pessimistic_dpo'`` (P1 = Xiong et al. ICML 2024, docs/theory.md §2.3): DPO with the margin
  ``Gamma(x, a_w) - Gamma(x, a_l)`` for a caller-supplied pointwise uncertainty table ``Gamma [n_x, K]``
  in reward units (confidence radius included, e.g. ``beta ||phi(x,a) - nu||_{Sigma^{-1}}``). Option II's
  Gibbs policy satisfies ``r_MLE = kl_coef log(pi / pi0) + Gamma + c(x)``; substituting into the BT
  likelihood gives this loss, whose minimiser has implicit reward ``r_MLE - Gamma`` (up to ``c(x)``).

Training: full batch, a fixed number of optimiser steps (optax, Adam by default) in one
``lax.scan`` under ``jit``; one data set per call, ``vmap`` over seeds outside. Tabular DPO's optimum
is at infinite logits when the data are separable (finite iff, in each context, the graph of wins
on the compared actions is strongly connected; e.g. a pair seen with one outcome and no cycle
through it diverges), and actions absent from the data keep their ``pi0`` logit exactly
(docs/theory.md §9.1 item 13): use ``weight_decay`` (the
penalty ``weight_decay/2 ||logits - log_pi0||^2``, i.e. an L2 penalty ``weight_decay / (2 kl_coef^2)``
on the implicit reward; ``||w||^2`` for the linear policy) or few ``steps`` (early stopping). The
reported ``loss`` is the minimised objective, penalty included, at the returned parameters.
Constant-step Adam keeps jittering around the optimum (measured: up to ~1e-3 in implicit-reward
differences long after convergence); for the optimum itself anneal the step
(``optax.adam(optax.cosine_decay_schedule(0.1, steps))``) or pass ``optax.lbfgs()``.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from algorithms.core.preference_losses import dpo_loss, ipo_loss
from bandits import validation as v
from bandits.data import PreferenceData

METHODS = ("dpo", "ipo", "pessimistic_dpo")


class DirectPreferenceFit(NamedTuple):
    log_pi: jax.Array   # [n_x, K] trained policy
    loss: jax.Array     # objective (loss + penalty) at the returned parameters
    params: jax.Array   # logits [n_x, K] (tabular) or w [d] (linear); warm start for the next call


def implicit_reward(log_pi: jax.Array, log_pi0: jax.Array, kl_coef) -> jax.Array:
    """DPO's implicit reward ``kl_coef * (log pi - log pi0)`` (defined up to a per-context constant)."""
    return kl_coef * (log_pi - log_pi0)


def chosen_and_rejected(data: PreferenceData) -> tuple[jax.Array, jax.Array]:
    """Preferred and dispreferred actions ``(a_w, a_l)``: ``a_w = a1`` where ``y = 1``, else ``a2``."""
    first = data.y == 1
    return jnp.where(first, data.a1, data.a2), jnp.where(first, data.a2, data.a1)


def comparison_log_probs(log_pi: jax.Array, data: PreferenceData) -> tuple[jax.Array, jax.Array]:
    """``(log pi(a_w|x_i), log pi(a_l|x_i))`` per comparison, shapes ``[n]``."""
    a_w, a_l = chosen_and_rejected(data)
    return log_pi[data.x, a_w], log_pi[data.x, a_l]


def linear_softmax_policy(w: jax.Array, phi: jax.Array, log_pi0: jax.Array) -> jax.Array:
    """``log_softmax(log pi0 + phi @ w)`` along actions, shape ``[n_x, K]``."""
    return jax.nn.log_softmax(log_pi0 + phi @ w, axis=-1)


def direct_preference_loss(log_pi: jax.Array, log_pi0: jax.Array, data: PreferenceData, kl_coef,
                           method: str = "dpo", gamma: jax.Array | None = None) -> jax.Array:
    """The ``method`` loss of the policy ``log_pi`` on ``data`` (mean over valid rows), reference ``log_pi0``.

    Only within-context differences of ``log_pi`` enter, so unnormalised logits give the same value.
    """
    _check_method_and_gamma(method, gamma, log_pi0)
    chosen, rejected = comparison_log_probs(log_pi, data)
    ref_chosen, ref_rejected = comparison_log_probs(log_pi0, data)
    if method == "ipo":
        return ipo_loss(chosen, rejected, ref_chosen, ref_rejected, kl_coef, mask=data.mask)
    margin = None
    if method == "pessimistic_dpo":
        gamma_w, gamma_l = comparison_log_probs(gamma, data)
        margin = gamma_w - gamma_l
    return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, kl_coef, margin=margin, mask=data.mask)


def train_tabular(data: PreferenceData, log_pi0: jax.Array, kl_coef, method: str = "dpo", *,
                  gamma: jax.Array | None = None, init_logits: jax.Array | None = None, steps: int = 500,
                  learning_rate=0.05, weight_decay=0.0,
                  optimizer: optax.GradientTransformation | None = None) -> DirectPreferenceFit:
    """Train a tabular softmax policy (logits ``[n_x, K]``, warm start ``init_logits``, default ``log_pi0``).

    ``optimizer`` (optional) replaces ``optax.adam(learning_rate)``; it is a static argument of the
    compiled loop, so build it once and reuse it (each new object recompiles). Optimisers that need
    the objective (e.g. ``optax.lbfgs()``) get ``value``, ``grad`` and ``value_fn``.
    """
    _check_common(data, log_pi0, kl_coef, method, gamma, steps, learning_rate, weight_decay, optimizer)
    init = log_pi0 if init_logits is None else jnp.asarray(init_logits, log_pi0.dtype)
    v.check_shape("init_logits", init, log_pi0.shape)
    return _fit("tabular", method, steps, optimizer, init, log_pi0, data, log_pi0, None, kl_coef, gamma,
                learning_rate, weight_decay)


def train_linear(data: PreferenceData, phi: jax.Array, log_pi0: jax.Array, kl_coef, method: str = "dpo", *,
                 gamma: jax.Array | None = None, init_w: jax.Array | None = None, steps: int = 500,
                 learning_rate=0.05, weight_decay=0.0,
                 optimizer: optax.GradientTransformation | None = None) -> DirectPreferenceFit:
    """Train a linear-softmax policy ``log_softmax(log pi0 + phi @ w)`` (warm start ``init_w``, default 0).

    DPO's ``log Z`` cancels in ``h``, so linear DPO is BT logistic regression on ``z = phi(a_w) - phi(a_l)``
    with ``theta = kl_coef * w``. ``optimizer`` as in ``train_tabular``.
    """
    _check_common(data, log_pi0, kl_coef, method, gamma, steps, learning_rate, weight_decay, optimizer)
    if jnp.ndim(phi) != 3 or tuple(jnp.shape(phi)[:2]) != tuple(log_pi0.shape):
        raise ValueError(f"phi has shape {tuple(jnp.shape(phi))}, which is not allowed: phi must have shape "
                         f"[n_x, K, d] with [n_x, K] = {tuple(log_pi0.shape)} (the shape of log_pi0).")
    init = jnp.zeros(phi.shape[-1], log_pi0.dtype) if init_w is None else jnp.asarray(init_w, log_pi0.dtype)
    v.check_shape("init_w", init, (phi.shape[-1],))
    return _fit("linear", method, steps, optimizer, init, jnp.zeros_like(init), data, log_pi0, phi, kl_coef,
                gamma, learning_rate, weight_decay)


def _logits(kind, params, log_pi0, phi):
    return params if kind == "tabular" else log_pi0 + phi @ params


@partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _fit(kind, method, steps, optimizer, init, anchor, data, log_pi0, phi, kl_coef, gamma, learning_rate,
         weight_decay):
    dtype = init.dtype
    kl_coef = jnp.asarray(kl_coef, dtype)
    weight_decay = jnp.asarray(weight_decay, dtype)

    if kind == "linear":
        # h_i = z_i . w with z_i = phi(x_i, a_w) - phi(x_i, a_l): log pi0 and log Z cancel (train_linear), so the
        # features are gathered once instead of gathering and scattering [n_x, K] logits at every step.
        a_w, a_l = chosen_and_rejected(data)
        z = phi[data.x, a_w] - phi[data.x, a_l]
        margin = None if gamma is None else gamma[data.x, a_w] - gamma[data.x, a_l]
        zero = jnp.zeros(z.shape[0], dtype)

        def loss_of(params):
            h = z @ params
            if method == "ipo":
                return ipo_loss(h, zero, zero, zero, kl_coef, mask=data.mask)
            return dpo_loss(h, zero, zero, zero, kl_coef, margin=margin, mask=data.mask)
    else:
        def loss_of(params):
            # All METHODS depend on log pi only through within-context differences, so the unnormalised
            # logits give the same loss and exactly zero gradient on actions absent from the data.
            return direct_preference_loss(params, log_pi0, data, kl_coef, method, gamma)

    def objective(params):
        return loss_of(params) + 0.5 * weight_decay * jnp.sum((params - anchor) ** 2)

    opt = optax.adam(jnp.asarray(learning_rate, dtype)) if optimizer is None else optimizer
    if not isinstance(opt, optax.GradientTransformationExtraArgs):
        opt = optax.with_extra_args_support(opt)

    def step(carry, _):
        params, state = carry
        value, grad = jax.value_and_grad(objective)(params)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=objective)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (init, opt.init(init)), length=steps)
    log_pi = jax.nn.log_softmax(_logits(kind, params, log_pi0, phi), axis=-1)
    return DirectPreferenceFit(log_pi, objective(params), params)


def _check_method_and_gamma(method, gamma, log_pi0) -> None:
    v.check_choice("method", method, METHODS)
    if method == "pessimistic_dpo":
        if gamma is None:
            v.fail("gamma", gamma, "an uncertainty table of shape [n_x, K] for method='pessimistic_dpo'")
        v.check_shape("gamma", gamma, tuple(jnp.shape(log_pi0)))
    elif gamma is not None:
        v.fail("gamma", "<array>", f"None for method={method!r} (it is used only by 'pessimistic_dpo')")


def _check_common(data, log_pi0, kl_coef, method, gamma, steps, learning_rate, weight_decay, optimizer) -> None:
    if not isinstance(data, PreferenceData):
        v.fail("data", type(data).__name__, "a bandits.PreferenceData")
    n = tuple(jnp.shape(data.x))
    if len(n) != 1:
        raise ValueError(f"data.x has shape {n}, which is not allowed: data fields must have shape [n] "
                         "(one data set per call; vmap over seeds outside).")
    for field in PreferenceData._fields[1:]:
        v.check_shape(f"data.{field}", getattr(data, field), n)
    if jnp.ndim(log_pi0) != 2:
        raise ValueError(f"log_pi0 has shape {tuple(jnp.shape(log_pi0))}, which is not allowed: log_pi0 must "
                         "have shape [n_x, K].")
    _check_method_and_gamma(method, gamma, log_pi0)
    if v.is_concrete(kl_coef):
        v.check_float("kl_coef", kl_coef, low=0.0, low_open=True)
    v.check_int("steps", steps, 1)
    if v.is_concrete(learning_rate):
        v.check_float("learning_rate", learning_rate, low=0.0, low_open=True)
    if v.is_concrete(weight_decay):
        v.check_float("weight_decay", weight_decay, low=0.0)
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        v.fail("optimizer", type(optimizer).__name__, "None (Adam) or an optax.GradientTransformation")
