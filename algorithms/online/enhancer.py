"""P1's enhancer: the most uncertain plausibly-better policy (Xiong et al., ICML 2024; docs/theory.md §2.4).

With the main agent ``pi1_t = Gibbs(theta_t)``, ``phi_bar(pi) = E_{x~d0} E_{a~pi} phi(x, a)`` and

    Gamma_t(pi, pi') = beta_t || phi_bar(pi) - phi_bar(pi') ||_{Sigma_t^{-1}},
    Pi_t = { pi' : eta E_{x~d0} KL(pi'(.|x) || pi1_t(.|x)) <= Gamma_t(pi1_t, pi') },

the enhancer is ``pi2_t = argmax_{pi' in Pi_t} Gamma_t(pi1_t, pi')``. ``Pi_t`` is not convex and the
objective is a norm, so there is no closed form; we use the tilted-family search of docs/theory.md
§2.4(a): candidates ``pi'_{v,s}(.|x) ∝ pi1_t(.|x) exp(s <v, phi(x, .)>)`` for directions ``v`` in
{± eigenvectors of Sigma_t} ∪ {± random unit vectors} and scales ``s`` on a log-grid up to
``enhancer_max_scale``; the feasible candidate with the largest ``Gamma_t`` wins. Tilts maximise
``<v, phi_bar(pi')> - c KL(pi' || pi1_t)``, so along each direction the search is exact up to the
grid. ``pi1_t`` itself (``Gamma = KL = 0``) is always feasible (docs/theory.md §9.2 invariant 11), so the
result is always in ``Pi_t``; the second output is 1 when a candidate with ``Gamma_t > 0`` was
feasible ("a non-trivial member was found"), else 0 (the enhancer then equals the main agent).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from algorithms.core.confidence import dual_norm, expected_feature
from bandits import context_mean, kl_divergence


def tilted_candidates(view, directions: jax.Array, scales: jax.Array) -> jax.Array:
    """``log pi'_{v,s}`` for every direction and scale, ``[n_dir * n_scale, n_x, K]``."""
    phi = view.instance.phi
    tilt = jnp.einsum("vd,xad->vxa", directions, phi)
    logits = view.log_pi[None, None] + scales[None, :, None, None] * tilt[:, None]
    return jax.nn.log_softmax(logits, axis=-1).reshape((-1,) + view.log_pi.shape)


def enhancer_objective(view, log_candidates: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(Gamma_t(pi1_t, pi'), eta E_x KL(pi' || pi1_t))`` per candidate."""
    inst = view.instance
    base = expected_feature(inst, view.log_pi)
    feats = jax.vmap(lambda lp: expected_feature(inst, lp))(log_candidates)
    gamma = view.confidence.beta * dual_norm(view.confidence.chol, feats - base[None, :])
    kl = jax.vmap(lambda lp: context_mean(inst, kl_divergence(lp, view.log_pi)))(log_candidates)
    return gamma, inst.kl_coef * kl


def enhancer_policy(view) -> tuple[jax.Array, jax.Array]:
    """``(log pi2_t, nontrivial)`` (module docstring)."""
    opts = view.options
    dtype = view.log_pi.dtype
    _, eigvecs = jnp.linalg.eigh(view.confidence.gram)
    dirs = [eigvecs.T]
    if opts.enhancer_random_directions:
        rand = jax.random.normal(view.key, (opts.enhancer_random_directions, eigvecs.shape[0]), dtype)
        dirs.append(rand / jnp.linalg.norm(rand, axis=-1, keepdims=True))
    dirs = jnp.concatenate(dirs)
    dirs = jnp.concatenate([dirs, -dirs])
    scales = jnp.geomspace(opts.enhancer_max_scale * 1e-3, opts.enhancer_max_scale, opts.enhancer_scales).astype(dtype)
    candidates = tilted_candidates(view, dirs, scales)
    gamma, kl = enhancer_objective(view, candidates)
    feasible = kl <= gamma
    score = jnp.where(feasible, gamma, -jnp.inf)
    best = jnp.argmax(score)
    nontrivial = feasible[best] & (gamma[best] > 0)
    log_pi2 = jnp.where(nontrivial, candidates[best], view.log_pi)
    return log_pi2, nontrivial.astype(dtype)
