"""P1's enhancer: the most uncertain plausibly-better policy (Xiong et al., ICML 2024; docs/theory.md §2.4).

With the main agent ``pi1 = pi1_t``, ``phi_bar(pi) = E_{x~d0} E_{a~pi} phi(x, a)``, ``w(pi') = phi_bar(pi') -
phi_bar(pi1)`` and

    Gamma_t(pi1, pi') = beta_t || w(pi') ||_{Sigma_t^{-1}},
    Pi_t = { pi' : eta E_{x~d0} KL(pi'(.|x) || pi1(.|x)) <= Gamma_t(pi1, pi') },

the enhancer is ``pi2_t = argmax_{pi' in Pi_t} Gamma_t(pi1, pi')``. ``Pi_t`` is not convex and the
objective is a norm, so there is no closed form. Two searches (option ``enhancer_search``), both over the
tilts ``pi_{v,s}(.|x) ∝ pi1(.|x) exp(s <v, phi(x, .)>)`` (``|v| = 1``, ``s >= 0``):

``ascent`` (default): a fixed-point ascent over directions with, per direction, bisection on the scale.

- *Ray.* For a direction ``v`` write ``t(x, a) = <v, phi(x, a)>``, ``c_v = beta / ||v||_{Sigma}`` and
  ``g_v(s) = c_v <v, w(pi_{v,s})> - eta E_x KL(pi_{v,s} || pi1)``. By Cauchy-Schwarz
  ``Gamma(pi_{v,s}) >= c_v <v, w(pi_{v,s})>``, so ``g_v(s) >= 0`` implies ``pi_{v,s} in Pi_t``.
  ``g_v'(s) = E_x Var_{pi_{v,s}}(t) (c_v - eta s)``, so ``g_v`` rises from ``g_v(0) = 0`` up to
  ``s = c_v / eta`` (where ``g_v > 0`` unless ``t`` is constant under ``pi1``). Because
  ``pi_{v,s}`` maximises ``<v, phi_bar(pi')>`` over ``{eta KL(pi' || pi1) <= r(s)}`` with ``r(s) = eta
  KL(pi_{v,s} || pi1)`` increasing (Lagrange duality, one multiplier ``1/s`` for all contexts), ``g_v =
  h_v(r(s))`` with ``h_v(r) = c_v psi_v(r) - r`` concave (``psi_v``, the value of a concave program in
  its constraint level, is concave) and ``h_v(0) = 0``: ``{s : g_v(s) >= 0} = [0, s*_v]``. Bisection in
  ``log s`` on ``[c_v / eta, enhancer_scale_cap]`` keeps a feasible left end and returns it
  (``enhancer_root_steps`` halvings), or the cap when ``g_v(cap) >= 0``.
- *Ascent.* ``v <- Sigma^{-1} w(pi_{v,s*_v}) / |.|`` (``enhancer_ascent_steps`` rounds). With ``R(v) =
  c_v <v, w(pi_{v,s*_v})>`` (``= eta KL`` there unless the cap binds) one round gives ``R(v_new) >=
  Gamma(pi_{v,s*_v}) >= R(v)``: for ``v_new``, ``c <v_new, w> = Gamma(pi_{v,s*_v})``, and the tilt along
  ``v_new`` with the same KL has at least that linear value, so it lies in ``[0, s*_{v_new}]``; the ascent
  is monotone (up to the cap).
- *Starts.* ``± eigenvectors of Sigma_t`` and ``± enhancer_random_directions`` random unit vectors; the
  feasible iterate with the largest ``Gamma_t`` wins.

Why this reaches the optimum. *Proven:* (i) the optimum is a tilt: if ``pi*`` is optimal with ``w* =
w(pi*) != 0`` and ``u = Sigma^{-1} w*``, the tilt along ``u`` with ``KL = KL(pi*)`` has ``<u, w> >= <u, w*>``,
hence ``Gamma >= Gamma(pi*) >= eta KL`` (feasible and optimal), and Cauchy-Schwarz equality forces
``u ∝ Sigma^{-1} w`` at the optimum: the optimum is a fixed point of the ascent, and its constraint is
active (``eta KL = Gamma``) unless the cap binds; (ii) ``max_v R(v) = max_{Pi_t} Gamma`` (each
``pi_{v,s*_v}`` is feasible with ``Gamma >= R(v)``, and ``R(u) >= Gamma(pi*)`` by (i)), up to the cap;
(iii) each round is monotone and every candidate returned is checked to be in ``Pi_t``. *Not proven:*
that a fixed point reached from the starts is the global one (the problem is nonconvex);
*demonstrated:* within 1% of a brute-force optimum (SciPy SLSQP with random restarts over the simplex,
and a dense simplex grid) on small instances (``tests/test_enhancer.py``).

``grid``: the earlier search, kept as a variant: ``± eigenvectors`` and ``± random`` directions at
``enhancer_scales`` scales log-spaced up to ``enhancer_max_scale``; the feasible candidate with the
largest ``Gamma_t`` wins (exact along a direction only up to the grid).

Fallback (option ``enhancer_fallback``). ``pi1`` itself (``Gamma = KL = 0``) is always in ``Pi_t``
(docs/theory.md §9.2 invariant 11), so P1's argmax exists; when no member with ``Gamma_t >
enhancer_min_gamma`` is found (``beta_t = 0``, or ``<v, phi>`` constant under ``pi1``), ``pi0``
(default: the exploration policy of P1's hybrid analysis) or ``main`` (``pi1``: P1's argmax then, i.e.
self-play; the earlier default). ``pi0`` is in ``Pi_t`` only when ``eta E KL(pi0 || pi1) <= Gamma_t(pi1,
pi0)``, in general not: the ``pi0`` fallback is a departure from the argmax over ``Pi_t``. The second
output is 1 when a member with ``Gamma_t > enhancer_min_gamma`` was found and returned, else 0 (the
fallback was used); the loop records it as ``strategy_info``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from algorithms.core import spd_solve
from algorithms.core.confidence import dual_norm, expected_feature
from bandits import context_mean, kl_divergence

SEARCHES = ("ascent", "grid")
FALLBACKS = ("pi0", "main")


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


def start_directions(view) -> jax.Array:
    """``± eigenvectors of Sigma_t`` and ``± enhancer_random_directions`` random unit vectors, ``[n, d]``."""
    dtype = view.log_pi.dtype
    _, eigvecs = jnp.linalg.eigh(view.confidence.gram)
    dirs = [eigvecs.T]
    if view.options.enhancer_random_directions:
        rand = jax.random.normal(view.key, (view.options.enhancer_random_directions, eigvecs.shape[0]), dtype)
        dirs.append(rand / jnp.linalg.norm(rand, axis=-1, keepdims=True))
    dirs = jnp.concatenate(dirs)
    return jnp.concatenate([dirs, -dirs])


def grid_search(view) -> tuple[jax.Array, jax.Array]:
    """``(log pi', Gamma_t)`` of the best feasible grid candidate (``-inf`` Gamma when none is feasible)."""
    opts = view.options
    scales = jnp.geomspace(opts.enhancer_max_scale * 1e-3, opts.enhancer_max_scale,
                           opts.enhancer_scales).astype(view.log_pi.dtype)
    candidates = tilted_candidates(view, start_directions(view), scales)
    gamma, kl = enhancer_objective(view, candidates)
    score = jnp.where(kl <= gamma, gamma, -jnp.inf)
    best = jnp.argmax(score)
    return candidates[best], score[best]


def ray_gap(view, tilt: jax.Array, c, s) -> jax.Array:
    """``g_v(s) = c_v E_x[E_{pi_{v,s}} t - E_{pi1} t] - eta E_x KL(pi_{v,s} || pi1)`` for ``t = <v, phi>``."""
    inst = view.instance
    log_p = jax.nn.log_softmax(view.log_pi + s * tilt, axis=-1)
    lin = context_mean(inst, jnp.sum((jnp.exp(log_p) - jnp.exp(view.log_pi)) * tilt, axis=-1))
    return c * lin - inst.kl_coef * context_mean(inst, kl_divergence(log_p, view.log_pi))


def boundary_scale(view, tilt: jax.Array, c) -> jax.Array:
    """The right end ``s*_v`` of ``{s : g_v(s) >= 0} = [0, s*_v]`` (a feasible lower estimate), by bisection
    in ``log s`` on ``[c_v / eta, cap]``; ``cap`` if ``g_v(cap) >= 0``; 0 if ``g_v <= 0`` already at ``c_v / eta``."""
    opts = view.options
    dtype = view.log_pi.dtype
    cap = jnp.asarray(opts.enhancer_scale_cap, dtype)
    tiny = jnp.finfo(dtype).tiny
    lo = jnp.clip(c / view.instance.kl_coef, tiny, cap)

    def halve(_, bracket):
        log_lo, log_hi = bracket
        mid = 0.5 * (log_lo + log_hi)
        ok = ray_gap(view, tilt, c, jnp.exp(mid)) >= 0
        return jnp.where(ok, mid, log_lo), jnp.where(ok, log_hi, mid)

    log_lo, _ = jax.lax.fori_loop(0, opts.enhancer_root_steps, halve, (jnp.log(lo), jnp.log(cap)))
    s = jnp.where(ray_gap(view, tilt, c, cap) >= 0, cap, jnp.exp(log_lo))
    return jnp.where((c > 0) & (ray_gap(view, tilt, c, lo) > 0), s, 0.0)


def ascent_search(view) -> tuple[jax.Array, jax.Array]:
    """``(log pi', Gamma_t)`` of the best feasible iterate of the fixed-point ascent from every start
    (module docstring); Gamma ``-inf`` when no iterate is feasible."""
    inst, cs = view.instance, view.confidence
    dtype = view.log_pi.dtype
    chol_inv = spd_solve.lower_inverse(cs.chol)
    base = expected_feature(inst, view.log_pi)
    neg_inf = jnp.asarray(-jnp.inf, dtype)

    def candidate(v):
        c = cs.beta / jnp.linalg.norm(cs.chol.T @ v)
        tilt = inst.phi @ v
        log_p = jax.nn.log_softmax(view.log_pi + boundary_scale(view, tilt, c) * tilt, axis=-1)
        w = expected_feature(inst, log_p) - base
        gamma = cs.beta * jnp.linalg.norm(chol_inv @ w)
        kl = inst.kl_coef * context_mean(inst, kl_divergence(log_p, view.log_pi))
        return log_p, jnp.where(kl <= gamma, gamma, neg_inf), chol_inv.T @ (chol_inv @ w)

    def one_start(v0):
        def round_(_, carry):
            v, best_lp, best_gamma = carry
            log_p, gamma, step = candidate(v)
            better = gamma > best_gamma
            norm = jnp.linalg.norm(step)
            v = jnp.where(norm > 0, step / jnp.where(norm > 0, norm, 1.0), v)
            return v, jnp.where(better, log_p, best_lp), jnp.where(better, gamma, best_gamma)

        _, lp, gamma = jax.lax.fori_loop(0, view.options.enhancer_ascent_steps, round_,
                                         (v0, view.log_pi, neg_inf))
        return lp, gamma

    lps, gammas = jax.vmap(one_start)(start_directions(view))
    best = jnp.argmax(gammas)
    return lps[best], gammas[best]


def enhancer_policy(view) -> tuple[jax.Array, jax.Array]:
    """``(log pi2_t, nontrivial)``: the search's best member of ``Pi_t`` when its ``Gamma_t >
    enhancer_min_gamma`` (``nontrivial = 1``), else the fallback (``nontrivial = 0``; module docstring)."""
    # jitted with the options static, so that eager callers compile the nested loops once per shape
    return _enhancer_policy(view.options, view._replace(options=None))


@functools.partial(jax.jit, static_argnums=0)
def _enhancer_policy(opts, view) -> tuple[jax.Array, jax.Array]:
    view = view._replace(options=opts)
    search = grid_search if opts.enhancer_search == "grid" else ascent_search
    log_p, gamma = search(view)
    nontrivial = gamma > jnp.maximum(opts.enhancer_min_gamma, 0.0)
    fallback = view.instance.log_pi0 if opts.enhancer_fallback == "pi0" else view.log_pi
    return jnp.where(nontrivial, log_p, fallback), nontrivial.astype(view.log_pi.dtype)
