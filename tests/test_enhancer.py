"""P1's enhancer solved to its optimum (algorithms.online.enhancer; docs/theory.md §2.4): the ascent's Gamma
against brute force (SciPy SLSQP over the simplex, a dense simplex grid), membership of Pi_t, the fallback."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

import bandits as b
from algorithms.core import confidence as conf
from algorithms.online import strategies
from algorithms.online.enhancer import enhancer_objective, enhancer_policy

SHAPES = ((1, 3, 2), (3, 4, 3))   # (n_x, K, d): one compile each


def _view(seed, shape, beta, eta, n=50, **options):
    """A view (built in NumPy) with features of norm <= 1, a random main agent and reference policy, a
    random Gram ``I + (n/d) A A^T`` and radius ``beta``."""
    n_x, n_actions, dim = shape
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(n_x, n_actions, dim))
    phi /= np.maximum(1.0, np.linalg.norm(phi, axis=-1, keepdims=True))
    log_softmax = lambda logits: jnp.asarray(logits - np.log(np.sum(np.exp(logits), -1, keepdims=True)))
    zeros = jnp.zeros((n_x, n_actions))
    inst = b.Instance(jnp.asarray(phi), log_softmax(rng.normal(size=(n_x, n_actions))), jnp.full((n_x,), 1.0 / n_x),
                      zeros, jnp.zeros((dim, dim)), jnp.asarray(eta), b.LinearReward(jnp.zeros(dim)))
    a = rng.normal(size=(dim, dim))
    gram = np.eye(dim) + n / dim * a @ a.T
    cs = conf.ConfidenceSet(jnp.zeros(dim), jnp.asarray(gram), jnp.asarray(np.linalg.cholesky(gram)), jnp.asarray(beta))
    return strategies.StrategyView(
        instance=inst, theta=jnp.zeros(dim), confidence=cs, nu=jnp.zeros((n_x, dim)),
        log_pi=log_softmax(1.5 * rng.normal(size=(n_x, n_actions))), log_pi_cal=inst.log_pi0, reward_hat=zeros,
        uncertainty=zeros, hessian=jnp.eye(dim), iteration=jnp.asarray(0), key=jax.random.key(seed),
        options=strategies.StrategyOptions(**options))


class _Problem:
    """NumPy ``Gamma^2(p)``, ``eta E KL(p || pi1)`` and their gradients in softmax logits (independent of the code)."""

    def __init__(self, view):
        self.phi, self.d0 = np.asarray(view.instance.phi), np.asarray(view.instance.d0)
        self.eta, self.beta = float(view.instance.kl_coef), float(view.confidence.beta)
        self.lp1 = np.asarray(view.log_pi)
        self.sinv = np.linalg.inv(np.asarray(view.confidence.gram))
        self.base = self.d0 @ np.einsum("xa,xad->xd", np.exp(self.lp1), self.phi)
        self._last = None

    def parts(self, z):
        if self._last is not None and np.array_equal(self._last[0], z):   # SLSQP asks 4 times per point
            return self._last[1]
        out = self._parts(z)
        self._last = (np.array(z), out)
        return out

    def _parts(self, z):
        logits = z.reshape(self.lp1.shape)
        lp = logits - logits.max(1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(1, keepdims=True))
        p = np.exp(lp)
        w = self.d0 @ np.einsum("xa,xad->xd", p, self.phi) - self.base
        g2 = self.beta**2 * w @ self.sinv @ w
        kl = self.eta * np.sum(self.d0 * np.sum(p * (lp - self.lp1), 1))
        dg2 = 2 * self.beta**2 * self.d0[:, None] * np.einsum("xad,d->xa", self.phi, self.sinv @ w)
        dkl = self.eta * self.d0[:, None] * (lp - self.lp1 + 1.0)
        chain = lambda g: (p * (g - np.sum(p * g, 1, keepdims=True))).ravel()   # softmax Jacobian
        return g2, kl, chain(dg2), chain(dkl)

    def gamma_kl(self, p):
        """``(Gamma, eta E KL)`` of a policy table ``p [..., n_x, K]``."""
        w = np.einsum("x,...xa,xad->...d", self.d0, p, self.phi) - self.base
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * (np.log(p) - self.lp1), 0.0)
        return self.beta * np.sqrt(np.einsum("...d,de,...e->...", w, self.sinv, w)), \
            self.eta * np.einsum("x,...xa->...", self.d0, terms)

    def slsqp(self, restarts, seed):
        """The best feasible ``Gamma`` over SLSQP runs maximising ``Gamma^2`` s.t. ``Gamma^2 >= (eta KL)^2``
        from random logits (``Gamma >= eta KL`` is that, as both are ``>= 0``)."""
        rng = np.random.default_rng(seed)
        best = 0.0
        cons = {"type": "ineq", "fun": lambda z: (lambda g2, kl, *_: g2 - kl**2)(*self.parts(z)),
                "jac": lambda z: (lambda g2, kl, dg2, dkl: dg2 - 2 * kl * dkl)(*self.parts(z))}
        for _ in range(restarts):
            z0 = self.lp1.ravel() + rng.normal(size=self.lp1.size) * rng.choice([0.01, 0.1, 0.3, 1.0, 3.0, 10.0])
            res = minimize(lambda z: -self.parts(z)[0], z0, jac=lambda z: -self.parts(z)[2], method="SLSQP",
                           constraints=[cons], options={"maxiter": 200, "ftol": 1e-14})
            logits = res.x.reshape(self.lp1.shape)
            p = np.exp(logits - logits.max(1, keepdims=True))
            gamma, kl = self.gamma_kl(p / p.sum(1, keepdims=True))
            if kl <= gamma * (1 + 1e-9):   # SLSQP ends on the boundary, up to rounding
                best = max(best, float(gamma))
        return best


def _reached(view):
    """``(Gamma, eta KL)`` of the enhancer recomputed in NumPy, and its ``nontrivial`` flag."""
    log_p, nontrivial = enhancer_policy(view)
    gamma, kl = _Problem(view).gamma_kl(np.exp(np.asarray(log_p)))
    return float(gamma), float(kl), float(nontrivial)


@pytest.mark.parametrize("shape", SHAPES)
def test_ascent_reaches_the_slsqp_optimum(shape):
    """Within 1% of the best of 24 SLSQP restarts over the simplex, on instances where the optimum is
    interior (the constraint active) or at the scale cap (a near-deterministic policy)."""
    for seed, (beta, eta) in enumerate([(0.3, 0.3), (1.0, 0.05), (3.0, 0.3)]):
        view = _view(seed, shape, beta, eta)
        gamma, kl, nontrivial = _reached(view)
        brute = _Problem(view).slsqp(24, seed)
        assert nontrivial == 1.0 and kl <= gamma + 1e-12
        assert 0.99 * brute <= gamma <= 1.01 * brute, (seed, gamma, brute)   # the second: SLSQP found it too


def test_ascent_reaches_the_dense_simplex_grid_optimum():
    """n_x = 1, K = 3: the best feasible point of the simplex grid of step 1/400 (80 601 points)."""
    n = 400
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = i + j <= n
    p = np.stack([i[keep], j[keep], n - i[keep] - j[keep]], -1)[:, None, :] / n
    for seed, (beta, eta) in enumerate([(0.3, 0.3), (1.0, 0.3), (0.5, 0.05)]):
        view = _view(10 + seed, SHAPES[0], beta, eta, n=20)
        problem = _Problem(view)
        g_all, kl_all = problem.gamma_kl(p)
        brute = float(np.max(np.where(kl_all <= g_all, g_all, 0.0)))
        gamma, kl, _ = _reached(view)
        assert kl <= gamma + 1e-12 and 0.99 * brute <= gamma <= 1.01 * brute, (seed, gamma, brute)


@given(st.integers(0, 10_000), st.sampled_from([0.05, 1.0, 5.0]), st.sampled_from([0.05, 0.5]),
       st.sampled_from([0, 500]))
@settings(max_examples=10)
def test_the_enhancer_is_always_in_the_plausible_set_and_the_ascent_beats_the_grid(seed, beta, eta, n):
    """Both searches report a non-trivial member with ``eta E KL(pi2 || pi1) <= Gamma(pi1, pi2)`` (NumPy
    check), and the ascent's Gamma is at least the grid's."""
    view = _view(seed, SHAPES[1], beta, eta, n=n)
    gamma, kl, nontrivial = _reached(view)
    grid, kl_grid, nontrivial_grid = _reached(view._replace(options=strategies.StrategyOptions(enhancer_search="grid")))
    assert nontrivial == 1.0 and kl <= gamma + 1e-12 and gamma > 0
    assert nontrivial_grid == 1.0 and kl_grid <= grid + 1e-12
    assert gamma >= grid * (1 - 1e-9), (gamma, grid)


def test_fallback_is_pi0_or_the_main_agent_and_is_reported():
    """beta = 0 leaves Pi_t = {pi1} (no member with Gamma > 0): the enhancer is pi0, reported 0; an
    unreachable ``enhancer_min_gamma`` with ``enhancer_fallback='main'`` gives pi1, reported 0."""
    none = _view(3, SHAPES[1], 0.0, 0.3)
    log_p, nontrivial = enhancer_policy(none)
    assert float(nontrivial) == 0.0
    np.testing.assert_allclose(log_p, none.instance.log_pi0, atol=1e-12)
    some = _view(3, SHAPES[1], 1.0, 0.3)
    assert _reached(some)[2] == 1.0
    main = some._replace(options=strategies.StrategyOptions(enhancer_min_gamma=1e9, enhancer_fallback="main"))
    log_p, nontrivial = enhancer_policy(main)
    assert float(nontrivial) == 0.0
    np.testing.assert_allclose(log_p, some.log_pi, atol=1e-12)


def test_the_strategy_reports_the_fallback_in_its_pair():
    """The ``enhancer`` strategy's Pair: ``info`` (recorded by the loop as ``strategy_info``) is 0 and the
    second action's law is pi0 when the fallback is used, 1 and the enhancer's law otherwise."""
    none, some = _view(3, SHAPES[1], 0.0, 0.3), _view(3, SHAPES[1], 1.0, 0.3)
    for view, info, second in ((none, 0.0, none.instance.log_pi0), (some, 1.0, enhancer_policy(some)[0])):
        pair = strategies.get("enhancer")(view)
        assert float(pair.info) == info
        np.testing.assert_allclose(strategies.second_marginal(pair), second, atol=1e-12)
        np.testing.assert_allclose(jax.scipy.special.logsumexp(pair.log_joint, axis=2), view.log_pi, atol=1e-12)


@pytest.mark.parametrize("field, value, allowed", [
    ("enhancer_search", "newton", "one of 'ascent', 'grid'"),
    ("enhancer_fallback", "self", "one of 'pi0', 'main'"),
    ("enhancer_ascent_steps", 0, "an integer >= 1"),
    ("enhancer_min_gamma", -1.0, "[0"),
    ("enhancer_scale_cap", 0.0, "(0"),
])
def test_bad_enhancer_options_fail_in_one_line(field, value, allowed):
    with pytest.raises(ValueError, match=field) as err:
        strategies.StrategyOptions(**{field: value})
    assert allowed in str(err.value) and "\n" not in str(err.value)
