"""P2's policy-level pessimistic max-min policy (algorithms.nash.pessimism; docs/theory.md §3.2) against a
brute-force max-min in NumPy: a dense grid over the max-player's simplex and, for the inner minimum, the
dual form min_q f(p, q) = -eta KL(p||pi0) + min_{||u|| = 1} -eta log E_{pi0} exp(-(G^T p - r B u) / eta) on a
dense grid over the sphere of R^D (D = 3), which shares no code with the solver."""
import jax.numpy as jnp
import numpy as np
import pytest

import bandits as b
from algorithms.core import confidence as conf
from algorithms.nash import offline as no
from algorithms.nash import pessimism as ps
from algorithms.nash import preference_model as gp
from tests.helpers import random_instance


def _simplex(k, m):
    if k == 2:
        t = (np.arange(m) + 0.5) / m
        return np.stack([t, 1 - t], 1)
    pts = np.asarray([(i, j, m - i - j) for i in range(m + 1) for j in range(m + 1 - i)], float)
    return (pts + 1 / 3) / (m + 1)


def _sphere(n):
    theta, phi = np.meshgrid(np.linspace(0, np.pi, n), np.linspace(0, 2 * np.pi, 2 * n, endpoint=False))
    return np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1).reshape(-1, 3)


def _psi(phi, a, c):
    """psi(a, c) for feature vectors (d = 2): [phi_a - phi_c ; phi_a1 phi_c2 - phi_a2 phi_c1]."""
    return np.concatenate([a - c, [a[0] * c[1] - a[1] * c[0]]])


def brute_h(p_grid, g, phi, pi0, chol_inv, r, eta, sphere):
    """h(p) = min_q f(p, q) for each row of p_grid, by the sphere grid (module docstring)."""
    out = []
    for p in p_grid:
        mean = p @ phi
        rows = np.stack([chol_inv @ _psi(phi, mean, phi[c]) for c in range(len(pi0))])   # [K, D]
        lin = g.T @ p                                                                 # [K]
        z = np.log(pi0)[None] - (lin[None] - r * sphere @ rows.T) / eta                   # [S, K]
        top = z.max(1, keepdims=True)
        inner = -eta * (np.log(np.exp(z - top).sum(1)) + top[:, 0])
        out.append(inner.min() - eta * np.sum(p * np.log(p / pi0)))
    return np.asarray(out)


@pytest.mark.parametrize("k, payoff, beta, kl, restart_every, warm_inner",
                         [(2, "logit", 1.5, 0.3, 25, 5), (3, "logit", 3.0, 0.1, 25, 5),
                          (3, "identity", 4.0, 0.05, 25, 5), (3, "identity", 4.0, 0.05, 10, 30),
                          (3, "identity", 4.0, 0.05, 1, 30)])
def test_policy_level_max_min_matches_brute_force(k, payoff, beta, kl, restart_every, warm_inner):
    """Every start at every step (``restart_every = 1``), or only at every 10th or 25th with 30 or 5 MM steps
    from the warm starts in between: the same max-min."""
    inst = random_instance(k, (1, k, 2), kl, skew_strength=2.0)
    rng = np.random.default_rng(k)
    a = rng.standard_normal((3, 3))
    gram = a @ a.T / 3 + 0.3 * np.eye(3)
    theta = jnp.asarray(2.0 * rng.standard_normal(3))
    cs = conf.confidence_set(theta, jnp.asarray(gram), beta)
    sol = ps.policy_pessimistic_policy(inst, cs, payoff, outer=300, inner=30, restart_every=restart_every,
                                       warm_inner=warm_inner)
    margins = np.asarray(gp.model_margins(inst, theta))[0]
    g = 1 / (1 + np.exp(-margins)) if payoff == "identity" else margins
    r = ps.LIPSCHITZ[payoff] * beta
    phi, pi0 = np.asarray(inst.phi)[0], np.exp(np.asarray(inst.log_pi0))[0]
    chol_inv = np.linalg.inv(np.linalg.cholesky(gram))
    p_hat = np.exp(np.asarray(sol.log_pi))[0]
    # the solver's inner minimum is global (as low as the fine sphere grid's) ...
    h_hat = brute_h(p_hat[None], g, phi, pi0, chol_inv, r, kl, _sphere(400))[0]
    assert abs(float(sol.value) - h_hat) < 2e-4, (float(sol.value), h_hat)
    # ... and no policy of a dense grid does better against its own worst case
    grid = _simplex(k, 2000 if k == 2 else 60)
    h_grid = brute_h(grid, g, phi, pi0, chol_inv, r, kl, _sphere(60))
    assert float(sol.value) >= h_grid.max() - 2e-4, (float(sol.value), h_grid.max())
    assert -1e-12 <= float(sol.certificate) < 1e-3   # a duality gap: >= 0 up to rounding
    # the min-player's returned minimiser attains the value
    np.testing.assert_allclose(ps.objective(jnp.asarray(g), jnp.asarray(phi), inst.log_pi0[0],
                                            jnp.asarray(chol_inv), r, kl, sol.log_pi[0], sol.log_q[0]),
                               sol.value, atol=1e-12)


def test_policy_level_reduces_to_plug_in_and_dominates_the_pointwise_box():
    """beta = 0: the plug-in equilibrium. Logit payoff: ||E psi|| <= E ||psi|| (Jensen), so the policy-level
    pessimistic value is at least the pointwise box's max-min value, and the policy-level uncertainty of
    pi against its worst opponent is at most the pointwise unilateral coverage."""
    inst = random_instance(3, (1, 3, 2), 0.2, skew_strength=2.0)   # the shape of the brute-force test
    inst = inst._replace(log_pi0=b.uniform_policy(1, 3))           # a mixed equilibrium
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 3))
    theta = jnp.asarray(0.5 * rng.standard_normal(3))
    cs = conf.confidence_set(theta, jnp.asarray(a @ a.T / 3 + 0.3 * np.eye(3)), 1.5)
    zero = ps.policy_pessimistic_policy(inst, cs._replace(beta=jnp.zeros_like(cs.beta)), "logit")
    plug = no.plug_in_nash(inst, theta, "logit", tol=1e-13).log_pi
    np.testing.assert_allclose(np.exp(zero.log_pi), np.exp(plug), atol=1e-6)
    pol = ps.policy_pessimistic_policy(inst, cs, "logit")
    box = no.pessimistic_policy(inst, cs, "logit", tol=1e-12)
    g_box = no.pessimistic_payoff(inst, theta, box.gamma, cs.beta, "logit")
    box_value = no.max_min_value_of(g_box, inst.log_pi0, inst.d0, inst.kl_coef, box.log_pi)
    assert float(pol.value) >= float(box_value) - 1e-9
    assert np.max(np.abs(np.exp(pol.log_pi) - np.exp(box.log_pi))) > 1e-3
    assert np.max(np.abs(np.exp(pol.log_pi) - np.exp(plug))) > 1e-3
    star = b.nash_equilibrium(inst, "logit").log_pi
    assert ps.policy_unilateral_coverage(inst, cs.chol, star) <= no.unilateral_coverage(inst, box.gamma, star) + 1e-12
