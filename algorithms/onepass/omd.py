"""One-pass reward estimator of P3: online mirror descent with a local norm (docs/theory.md §4.2, §9.1 item 7).

Li, Qian, Zhao, Zhou (arXiv 2502.07193). Per-sample BT loss, gradient and Hessian with
``z_t = phi(x_t, a_t) - phi(x_t, a'_t)``:

    l_t(theta) = -y_t log sigma(<theta, z_t>) - (1 - y_t) log sigma(-<theta, z_t>)
    g_t(theta) = (sigma(<theta, z_t>) - y_t) z_t,    H_t(theta) = sigma'(<theta, z_t>) z_t z_t^T.

One round (``omd_step``), from ``theta_t`` and the cumulative local design ``cH_t`` (``cH_1 = lam I``):

    tH_t        = cH_t + eta H_t(theta_t)                           (current-sample curvature)
    theta'      = theta_t - eta tH_t^{-1} g_t(theta_t)              (closed form of the OMD step)
    theta_{t+1} = Proj^{tH_t}_Theta(theta') = argmin_{||theta|| <= B} ||theta - theta'||_{tH_t}
    cH_{t+1}    = cH_t + H_t(theta_{t+1})                           (look-ahead Hessian)

Equivalently ``theta_{t+1} = argmin_{theta in Theta} <g_t(theta_t), theta> + ||theta - theta_t||^2_{tH_t} / (2 eta)``
(docs/theory.md §4.2; §9.2 invariant 15 is its first-order condition). Both inverses ``tH_t^{-1}`` and
``cH_{t+1}^{-1}`` are rank-one Sherman-Morrison updates of ``cH_t^{-1}``, so a round costs O(d^2) time
and storage, independent of t. Projection ``projection``: ``none`` (as in P3's code), ``euclid``
(``theta min(1, B / ||theta||)``) or ``local_norm`` (the paper's ``tH_t``-norm projection,
``theta(mu) = (tH + mu I)^{-1} tH theta'`` with ``||theta(mu)|| = B`` found by bisection on ``mu`` in the
eigenbasis of ``tH``; this needs an eigendecomposition, O(d^3), and under ``vmap`` it is computed every
round). The constants: ``eta = Theta(B)`` and ``lam = Theta(d eta)`` in the paper's analysis [M];
``default_step_size`` is the ``(1/2) log 2 + B + 1`` form of docs/theory.md §4.2, both are tunables here.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bandits import validation as v

PROJECTIONS = ("none", "euclid", "local_norm")


class OMDState(NamedTuple):
    theta: jax.Array      # theta_t, [d]
    hess: jax.Array       # cH_t = lam I + sum_{i<t} H_i(theta_{i+1}), [d, d]
    hess_inv: jax.Array   # cH_t^{-1} (Sherman-Morrison), [d, d]
    count: jax.Array      # rounds done


def default_step_size(radius):
    """``eta = (1/2) log 2 + B + 1`` (docs/theory.md §4.2 [M]; a tunable). ``radius`` may be traced."""
    return 0.5 * math.log(2.0) + radius + 1.0


def sigmoid_slope(u: jax.Array) -> jax.Array:
    """``sigma'(u) = sigma(u) sigma(-u)`` computed stably as ``exp(-softplus(-u) - softplus(u))``."""
    return jnp.exp(-jax.nn.softplus(-u) - jax.nn.softplus(u))


def logistic_gradient(theta: jax.Array, z: jax.Array, y) -> jax.Array:
    """``g_t(theta) = (sigma(<theta, z>) - y) z``."""
    return (jax.nn.sigmoid(z @ theta) - y) * z


def sherman_morrison(inverse: jax.Array, u: jax.Array) -> jax.Array:
    """``(A + u u^T)^{-1}`` from a symmetric ``A^{-1}``: ``A^{-1} - A^{-1} u u^T A^{-1} / (1 + u^T A^{-1} u)``.

    Re-symmetrised, which keeps rounding drift from accumulating asymmetrically (docs/theory.md §9.1 item 5).
    """
    w = inverse @ u
    out = inverse - jnp.outer(w, w) / (1.0 + u @ w)
    return 0.5 * (out + out.T)


def omd_init(dim: int, lam, dtype=None) -> OMDState:
    """``theta_1 = 0``, ``cH_1 = lam I``."""
    v.check_int("dim", dim, 1)
    if v.is_concrete(lam):
        v.check_float("lam", lam, low=0.0, low_open=True)
    dtype = dtype or jnp.result_type(float)
    eye = jnp.eye(dim, dtype=dtype)
    lam = jnp.asarray(lam, dtype)
    return OMDState(jnp.zeros(dim, dtype), lam * eye, eye / lam, jnp.asarray(0, jnp.int32))


def euclid_projection(theta: jax.Array, radius) -> jax.Array:
    """``theta min(1, B / ||theta||)``."""
    norm = jnp.linalg.norm(theta)
    return theta * jnp.minimum(1.0, radius / jnp.maximum(norm, jnp.finfo(theta.dtype).tiny))


def local_norm_projection(theta: jax.Array, matrix: jax.Array, radius, steps: int = 100) -> jax.Array:
    """``argmin_{||u|| <= B} ||u - theta||_M`` for SPD ``M`` (docs/theory.md §9.1 item 7).

    KKT: ``u(mu) = (M + mu I)^{-1} M theta`` with ``mu >= 0``; in the eigenbasis ``M = Q diag(l) Q^T``,
    ``u = Q (l c / (l + mu))`` with ``c = Q^T theta``, whose norm decreases in ``mu``. If
    ``||theta|| <= B`` the answer is ``theta``; otherwise ``mu`` is bisected on ``[0, l_max ||theta|| / B]``
    (at the upper end ``||u|| <= B``) to ``||u(mu)|| = B``; the returned point is on the feasible side.
    """
    evals, evecs = jnp.linalg.eigh(matrix)
    c = evecs.T @ theta

    def norm(mu):
        return jnp.linalg.norm(evals * c / (evals + mu))

    def halve(_, state):
        lo, hi = state
        mid = 0.5 * (lo + hi)
        outside = norm(mid) > radius
        return jnp.where(outside, mid, lo), jnp.where(outside, hi, mid)

    hi = evals[-1] * jnp.linalg.norm(theta) / radius
    _, mu = jax.lax.fori_loop(0, steps, halve, (jnp.zeros_like(hi), hi))
    projected = evecs @ (evals * c / (evals + mu))
    return jnp.where(jnp.linalg.norm(theta) > radius, projected, theta)


def project(theta: jax.Array, matrix: jax.Array, radius, projection: str) -> jax.Array:
    """Projection onto ``{||theta|| <= radius}`` of kind ``projection`` (module docstring)."""
    v.check_choice("projection", projection, PROJECTIONS)
    if projection == "none":
        return theta
    if projection == "euclid":
        return euclid_projection(theta, radius)
    return local_norm_projection(theta, matrix, radius)


def omd_step(state: OMDState, z: jax.Array, y, step_size, radius=None,
             projection: str = "none") -> OMDState:
    """One OMD round on the comparison ``(z, y)`` (module docstring); O(d^2) unless ``local_norm``."""
    v.check_choice("projection", projection, PROJECTIONS)
    if projection != "none" and radius is None:
        raise ValueError("radius=None is not allowed with projection="
                         f"{projection!r}: radius must be the bound B on ||theta*||.")
    if v.is_concrete(step_size):
        v.check_float("step_size", step_size, low=0.0, low_open=True)
    dtype = state.theta.dtype
    z = jnp.asarray(z, dtype)
    y = jnp.asarray(y, dtype)
    theta = state.theta
    curvature = sigmoid_slope(z @ theta)
    tilde_inv = sherman_morrison(state.hess_inv, jnp.sqrt(step_size * curvature) * z)
    theta_prime = theta - step_size * tilde_inv @ logistic_gradient(theta, z, y)
    if projection == "local_norm":
        tilde = state.hess + step_size * curvature * jnp.outer(z, z)
        theta_next = local_norm_projection(theta_prime, tilde, radius)
    else:
        theta_next = project(theta_prime, state.hess, radius, projection)
    ahead = sigmoid_slope(z @ theta_next)
    hess = state.hess + ahead * jnp.outer(z, z)
    hess_inv = sherman_morrison(state.hess_inv, jnp.sqrt(ahead) * z)
    return OMDState(theta_next, hess, hess_inv, state.count + 1)


def omd_fit(z: jax.Array, y: jax.Array, mask: jax.Array, lam, step_size, radius=None,
            projection: str = "none") -> OMDState:
    """One pass of ``omd_step`` over the rows of ``z [n, d]`` in order (masked rows are skipped)."""
    state = omd_init(z.shape[-1], lam, z.dtype)

    def body(s, row):
        zi, yi, mi = row
        new = omd_step(s, zi, yi, step_size, radius, projection)
        return jax.tree.map(lambda a, b: jnp.where(mi, a, b), new, s), None

    return jax.lax.scan(body, state, (z, y, mask))[0]
