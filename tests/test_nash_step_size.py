"""The step-size condition of the Nash dynamics (algorithms.nash.dynamics, module docstring; docs/theory.md §6
"General-preference and Nash methods"): INPO's one-step KL contraction, Nash-MD's reduction to INPO on its
mixture, convergence at the largest allowed step on a logit game, SPPO's average-iterate bound, and what
the stable rule does beyond the bound (the fixed step there does not converge)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bandits as b
from algorithms.nash import dynamics as nd
from algorithms.nash import offline as no
from tests.helpers import random_instance, random_log_policy, seeds

payoffs = st.sampled_from(b.PAYOFFS)
small_shapes = st.sampled_from([(3, 5, 3)])   # one of tests/test_nash_algorithms.py's shapes (compiled once)


def _kl_rows(log_p, log_q):
    return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)


@settings(max_examples=6)
@given(seeds, small_shapes, st.floats(0.05, 1.0), payoffs, st.floats(0.05, 1.0))
def test_inpo_kl_contraction_below_the_bound(seed, shape, eta, payoff, fraction):
    """Per context KL(pi*||pi_{t+1}) <= rho KL(pi*||pi_t) for any pi_t at any step <= max_stable_step, with
    rho = 1 - eta tau + eta^2 R^2 / (4 (1 - eta tau)) <= 1."""
    inst = random_instance(seed, shape, eta, skew_strength=3.0)
    g = b.payoff_matrices(inst, payoff)
    r = float(nd.payoff_range(g))
    np.testing.assert_allclose(r, np.max(np.ptp(np.asarray(g), axis=-1)), rtol=1e-12)
    step = fraction * float(nd.max_stable_step("inpo", eta, r))
    rho = float(nd.contraction_factor(step, eta, r))
    assert rho <= 1.0 + 1e-12
    star = np.asarray(no.solve_game(g, inst.log_pi0, inst.d0, eta, tol=1e-14).log_p)
    pi = jnp.asarray(random_log_policy(np.random.default_rng(seed), shape[0], shape[1], scale=2.0))
    nxt = np.asarray(nd.inpo_step(g, pi, inst.log_pi0, step, eta))
    assert np.all(_kl_rows(star, nxt) <= rho * _kl_rows(star, np.asarray(pi)) + 1e-10)


@settings(max_examples=6)
@given(seeds, small_shapes, st.floats(0.05, 1.0), payoffs, st.floats(0.05, 0.95))
def test_nash_md_mixture_is_inpo_and_contracts(seed, shape, eta, payoff, fraction):
    """Nash-MD's mixture m_t follows INPO with step eta (1 - eta tau) at tau / (1 - eta tau) exactly; below
    Nash-MD's bound it contracts towards m~ (the equilibrium at tau / (1 - eta tau)), and pi~ is a fixed
    point of Nash-MD."""
    inst = random_instance(seed, shape, eta, skew_strength=3.0)
    g = b.payoff_matrices(inst, payoff)
    r = float(nd.payoff_range(g))
    step = fraction * float(nd.max_stable_step("nash_md", eta, r))
    w = step * eta
    pi = jnp.asarray(random_log_policy(np.random.default_rng(seed), shape[0], shape[1], scale=2.0))
    mix = nd.geometric_mixture(pi, inst.log_pi0, w)
    nxt_mix = nd.geometric_mixture(nd.nash_md_step(g, pi, inst.log_pi0, step, eta), inst.log_pi0, w)
    step_m, tau_m = step * (1 - w), eta / (1 - w)
    np.testing.assert_allclose(nxt_mix, nd.inpo_step(g, mix, inst.log_pi0, step_m, tau_m), atol=1e-11)
    fixed_mix = np.asarray(no.solve_game(g, inst.log_pi0, inst.d0, tau_m, tol=1e-14).log_p)
    rho = float(nd.contraction_factor(step_m, tau_m, r))
    assert rho <= 1.0 + 1e-12
    assert np.all(_kl_rows(fixed_mix, np.asarray(nxt_mix)) <= rho * _kl_rows(fixed_mix, np.asarray(mix)) + 1e-10)
    fixed = nd.nash_md_fixed_point(g, inst.log_pi0, inst.d0, step, eta, tol=1e-14)
    np.testing.assert_allclose(np.exp(nd.nash_md_step(g, fixed, inst.log_pi0, step, eta)), np.exp(fixed), atol=1e-8)


def _rps_logit(margin=3.0):
    """Rock-paper-scissors with logit payoff +-margin (R = 2 margin), one context, non-uniform reference."""
    cyc = np.array([[0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [1.0, -1.0, 0.0]])
    log_ref = np.log(np.array([[0.5, 0.3, 0.2]]))
    return jnp.asarray(margin * cyc[None]), jnp.asarray(log_ref), jnp.ones(1)


TAU = 0.5
# one compiled trajectory per (method, rule): the step is traced
_run = jax.jit(nd.run_exact, static_argnums=(0, 5), static_argnames=("step_rule",))


def test_inpo_and_nash_md_converge_at_the_largest_allowed_step_on_a_logit_game():
    g, log_ref, d0 = _rps_logit()
    r = float(nd.payoff_range(g))
    assert r == 6.0
    star = no.solve_game(g, log_ref, d0, TAU, tol=1e-14).log_p
    for method, target in (("inpo", star), ("nash_md", None)):
        top = float(nd.max_stable_step(method, TAU, r))
        if target is None:
            target = nd.nash_md_fixed_point(g, log_ref, d0, top, TAU, tol=1e-14)
        traj = _run(method, g, log_ref, top, TAU, 1500, step_rule="fixed")
        assert np.max(np.abs(traj[-1] - target)) < 1e-6, method
        # the fixed step 1.0 (eta tau = 1/2, refused by nothing before) cycles instead ...
        wild = _run(method, g, log_ref, 1.0, TAU, 1500, step_rule="fixed")
        assert np.max(np.abs(wild[-100:] - star[None])) > 0.1, method
        # ... and the stable rule replaces it by the largest allowed step
        np.testing.assert_allclose(_run(method, g, log_ref, 1.0, TAU, 1500), traj, rtol=0, atol=1e-12)
    np.testing.assert_allclose(nd.max_stable_step("inpo", TAU, r), 4 * TAU / (r**2 + 4 * TAU**2), rtol=1e-14)
    eta_md = float(nd.max_stable_step("nash_md", TAU, r))
    np.testing.assert_allclose(eta_md * r**2 * (1 - eta_md * TAU), 4 * TAU, rtol=1e-12)   # the boundary
    assert float(nd.max_stable_step("nash_md", 2.0, r)) == 0.5   # R <= 4 tau: every step <= 1/tau
    assert float(nd.max_stable_step("sppo", TAU, r)) == np.inf
    assert float(nd.max_stable_step("inpo", 0.0, r)) == np.inf   # tau = 0: INPO is SPPO
    with pytest.raises(ValueError, match=r"step=3.0 is not allowed: step must be <= 1 / kl_coef = 2"):
        nd.run_exact("inpo", g, log_ref, 3.0, TAU, 5)
    with pytest.raises(ValueError, match="step_rule='adaptive' is not allowed: step_rule must be one of 'stable', 'fixed'"):
        nd.run_exact("inpo", g, log_ref, 0.1, TAU, 5, step_rule="adaptive")


def test_sppo_average_iterate_meets_hedge_bound_and_last_iterate_cycles():
    """SPPO: max_a G(a, pi_bar_T) - c/2 <= max_a log(1/pi_0(a)) / (eta T) + eta (max G - min G)^2 / 8, tested at
    the step that minimises the bound (not vacuous: about 0.1 for a payoff of range 6); the last iterate stays
    far from the equilibrium."""
    g, log_ref, _ = _rps_logit()
    steps, spread = 2000, float(jnp.max(g) - jnp.min(g))
    eta = float(np.sqrt(8 * np.log(5.0) / (steps * spread**2)))
    traj = nd.run_exact("sppo", g, log_ref, eta, 0.0, steps)
    played = np.exp(np.concatenate([np.asarray(log_ref)[None], np.asarray(traj[:-1])]))   # pi_0 .. pi_{T-1}
    average = played.mean(0)
    exploit = np.max(np.einsum("xab,xb->xa", np.asarray(g), average))   # c/2 = 0 for the logit payoff
    bound = np.max(-np.asarray(log_ref)) / (eta * steps) + eta * spread**2 / 8
    assert 0.0 <= exploit <= bound < 0.25, (exploit, bound)
    assert np.max(np.abs(np.exp(traj[-1]) - 1 / 3)) > 0.1   # the unregularized equilibrium is uniform
