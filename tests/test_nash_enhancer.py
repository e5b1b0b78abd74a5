"""P2's max-uncertainty enhancer (algorithms.nash.online.max_uncertainty_enhancer; docs/theory.md §3.3) against a
brute-force search in NumPy over a dense grid of the confidence ellipsoid (D = 3), and its reductions."""
import jax.numpy as jnp
import numpy as np
import pytest

import bandits as b
from algorithms.core import spd_solve
from algorithms.nash import online as non
from algorithms.nash import preference_model as gp
from tests.helpers import random_instance


def _ball(radii, n):
    theta, phi = np.meshgrid(np.linspace(0, np.pi, n), np.linspace(0, 2 * np.pi, 2 * n, endpoint=False))
    sphere = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1).reshape(-1, 3)
    return np.concatenate([r * sphere for r in radii])


def _np_psi(phi):
    """psi(x, a, b) for d = 2: [phi_a - phi_b ; phi_a1 phi_b2 - phi_a2 phi_b1], shape [n_x, K, K, 3]."""
    a, c = phi[:, :, None, :], phi[:, None, :, :]
    skew = a[..., 0] * c[..., 1] - a[..., 1] * c[..., 0]
    return np.concatenate([np.broadcast_to(a - c, skew.shape + (2,)), skew[..., None]], -1)


def _setup(payoff):
    inst = random_instance(11, (2, 3, 2), 0.3, skew_strength=2.0)
    inst = inst._replace(log_pi0=b.uniform_policy(2, 3))
    rng = np.random.default_rng(5)
    a = rng.standard_normal((3, 3))
    gram = a @ a.T / 3 + 0.5 * np.eye(3)
    theta = 0.7 * rng.standard_normal(3)
    main = b.nash_equilibrium(gp.model_instance(inst, jnp.asarray(theta)), payoff, tol=1e-14).log_pi
    return inst, gram, theta, main


@pytest.mark.parametrize("payoff", b.PAYOFFS)
def test_enhancer_is_the_most_uncertain_plausible_best_response(payoff):
    beta = 1.5
    inst, gram, theta, main = _setup(payoff)
    chol = jnp.linalg.cholesky(jnp.asarray(gram))
    log_q, value, u = non.max_uncertainty_enhancer(inst, jnp.asarray(theta), chol, beta, main, payoff)
    # brute force over the ellipsoid theta + beta L^{-T} u, ||u|| <= 1
    us = _ball(np.linspace(0.0, 1.0, 21), 60)
    l_np = np.linalg.cholesky(gram)
    worlds = theta[None] + beta * np.linalg.solve(l_np.T, us.T).T                       # [P, 3]
    psi = _np_psi(np.asarray(inst.phi))                                                  # [n_x, K, K, 3]
    margins = np.einsum("xabD,PD->Pxab", psi, worlds)
    g = 1 / (1 + np.exp(-margins)) if payoff == "identity" else margins
    p1 = np.exp(np.asarray(main))
    logits = np.log(np.exp(np.asarray(inst.log_pi0)))[None] - np.einsum("xa,Pxab->Pxb", p1, g) / 0.3
    q = np.exp(logits - logits.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)                                                        # [P, n_x, K]
    psi_bar = np.einsum("xa,xabD,Pxb->PxD", p1, psi, q)
    l_inv = np.linalg.inv(l_np)
    gamma = np.sqrt(np.einsum("PxD,ED,PxE->Px", psi_bar, l_inv, np.einsum("FD,PxD->PxF", l_inv, psi_bar)))
    brute = (gamma * np.asarray(inst.d0)[None]).sum(-1)
    assert float(value) >= brute.max() - 1e-6, (float(value), brute.max())
    assert float(value) <= brute.max() + 0.02   # the grid is fine: no larger value exists
    # what it returns is a plausible best response whose uncertainty is the value
    assert float(jnp.linalg.norm(u)) <= 1.0 + 1e-12
    np.testing.assert_allclose(log_q, non.plausible_best_response(inst, jnp.asarray(theta), chol, beta, main,
                                                                  payoff, u), atol=1e-12)
    np.testing.assert_allclose(non.pair_uncertainty_of(inst, spd_solve.lower_inverse(chol), main, log_q), value,
                               rtol=1e-9)
    # beta = 0: the estimated game's best response, which for its symmetric equilibrium is the main agent
    zero, _, _ = non.max_uncertainty_enhancer(inst, jnp.asarray(theta), chol, 0.0, main, payoff)
    np.testing.assert_allclose(np.exp(zero), np.exp(main), atol=1e-6)
    assert np.max(np.abs(np.exp(log_q) - np.exp(main))) > 1e-2
