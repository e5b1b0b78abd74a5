"""P3's one-pass estimators (docs/theory.md §4.2, §9.2 invariants 15-16): OMD step vs scipy on its per-round
objective, Sherman-Morrison vs direct solves, the local-design order and sandwich, OGD / HVP-CG / MLE-refit
against NumPy references; the registry, its metadata and ``OnePassOptions``."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from algorithms.onepass import estimators, hvp_cg, mle_refit, ogd, omd
from algorithms.core.bt_mle import fit_bt_mle
from algorithms.onepass.estimators import BUILTIN_ESTIMATORS, OnePassOptions, make_estimator

D = 3


def _stream(seed, n, d=D, scale=1.0):
    """Unit-norm features, differences of two of them, BT labels from a random theta* (||theta*|| = 2)."""
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((n, 2, d))
    f /= np.linalg.norm(f, axis=-1, keepdims=True)
    z = scale * (f[:, 0] - f[:, 1])
    theta_star = rng.standard_normal(d)
    theta_star *= 2.0 / np.linalg.norm(theta_star)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-z @ theta_star))).astype(float)
    return z, y


def _np_sigmoid_slope(u):
    s = 1 / (1 + np.exp(-u))
    return s * (1 - s)


_STEP = jax.jit(omd.omd_step, static_argnames=("projection",))


def _run(z, y, lam, eta, radius=None, projection="none"):
    """All OMD states along the stream (Python loop over omd_step: the thing under test)."""
    state = omd.omd_init(z.shape[1], lam, jnp.float64)
    states = [state]
    for zi, yi in zip(z, y):
        state = _STEP(state, jnp.asarray(zi), yi, eta, radius, projection)
        states.append(state)
    return states


def _per_round_objective(state, z, y, eta):
    """``<g, theta> + ||theta - theta_t||^2_{tH} / (2 eta)`` with ``tH`` formed densely in NumPy."""
    theta_t = np.asarray(state.theta)
    u = z @ theta_t
    g = (1 / (1 + np.exp(-u)) - y) * z
    tilde = np.asarray(state.hess) + eta * _np_sigmoid_slope(u) * np.outer(z, z)

    def f(t):
        diff = t - theta_t
        return g @ t + diff @ tilde @ diff / (2 * eta)

    def grad(t):
        return g + tilde @ (t - theta_t) / eta
    return f, grad, g, tilde


@settings(max_examples=12)
@given(st.integers(0, 10**6), st.floats(0.2, 5.0), st.floats(0.1, 10.0), st.integers(0, 6))
def test_invariant15_omd_step_solves_its_per_round_objective(seed, eta, lam, warm):
    """Unconstrained: theta_{t+1} is the scipy minimiser and satisfies g + tH (theta' - theta_t)/eta = 0."""
    z, y = _stream(seed, warm + 1)
    state = _run(z[:warm], y[:warm], lam, eta)[-1]
    new = omd.omd_step(state, jnp.asarray(z[-1]), y[-1], eta)
    f, grad, g, tilde = _per_round_objective(state, z[-1], y[-1], eta)
    ref = minimize(f, np.asarray(state.theta), jac=grad, method="BFGS", options={"gtol": 1e-13})
    np.testing.assert_allclose(new.theta, ref.x, atol=1e-7)
    residual = g + tilde @ (np.asarray(new.theta) - np.asarray(state.theta)) / eta
    np.testing.assert_allclose(residual, 0.0, atol=1e-10)


@settings(max_examples=10)
@given(st.integers(0, 10**6), st.floats(0.5, 5.0), st.floats(0.05, 0.6), st.integers(0, 6))
def test_local_norm_projection_solves_the_constrained_per_round_problem(seed, eta, radius, warm):
    """``projection='local_norm'``: argmin over ||theta|| <= B of the per-round objective (scipy SLSQP)."""
    z, y = _stream(seed, warm + 1, scale=3.0)
    state = _run(z[:warm], y[:warm], 0.5, eta, radius, "local_norm")[-1]
    new = omd.omd_step(state, jnp.asarray(z[-1]), y[-1], eta, radius, "local_norm")
    f, grad, _, _ = _per_round_objective(state, z[-1], y[-1], eta)
    cons = {"type": "ineq", "fun": lambda t: radius**2 - t @ t, "jac": lambda t: -2 * t}
    ref = minimize(f, np.zeros(D), jac=grad, constraints=[cons], method="SLSQP",
                   options={"ftol": 1e-15, "maxiter": 500})
    assert np.linalg.norm(new.theta) <= radius * (1 + 1e-9)
    # 1e-8: the projection's bisection stops at ~1e-9 of the objective, and SLSQP's own value is not certified
    assert f(np.asarray(new.theta)) <= ref.fun + 1e-8
    np.testing.assert_allclose(new.theta, ref.x, atol=1e-5)


def test_euclid_projection_and_none():
    z, y = _stream(5, 1, scale=3.0)
    state = omd.omd_init(D, 0.2, jnp.float64)
    free = omd.omd_step(state, jnp.asarray(z[0]), y[0], 5.0)
    ball = omd.omd_step(state, jnp.asarray(z[0]), y[0], 5.0, 0.1, "euclid")
    assert np.linalg.norm(free.theta) > 0.1
    np.testing.assert_allclose(ball.theta, 0.1 * free.theta / np.linalg.norm(free.theta), atol=1e-12)


@settings(max_examples=15)
@given(st.integers(0, 10**6), st.floats(0.05, 10.0))
def test_sherman_morrison_matches_direct_inverse(seed, scale):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((D, D))
    spd = a @ a.T + 0.1 * np.eye(D)
    u = scale * rng.standard_normal(D)
    out = omd.sherman_morrison(jnp.asarray(np.linalg.inv(spd)), jnp.asarray(u))
    direct = np.linalg.solve(spd + np.outer(u, u), np.eye(D))
    np.testing.assert_allclose(out, direct, rtol=1e-9, atol=1e-12)


def test_sherman_morrison_inverse_after_a_long_stream():
    """After 1500 rank-one updates (two per round) the maintained inverse still matches a direct solve,
    and cH equals lam I + sum_i sigma'(<theta_{i+1}, z_i>) z_i z_i^T recomputed from the trajectory."""
    z, y = _stream(11, 750)
    lam, eta = 0.5, 2.0
    final = omd.omd_fit(jnp.asarray(z), jnp.asarray(y), jnp.ones(len(y), bool), lam, eta)
    hess = np.asarray(final.hess)
    direct = np.linalg.solve(hess, np.eye(D))
    np.testing.assert_allclose(final.hess_inv, direct, rtol=1e-8, atol=1e-12)
    states = _run(z[:40], y[:40], lam, eta)
    rebuilt = lam * np.eye(D)
    for i, s in enumerate(states[1:]):
        rebuilt += _np_sigmoid_slope(z[i] @ np.asarray(s.theta)) * np.outer(z[i], z[i])
    np.testing.assert_allclose(states[-1].hess, rebuilt, rtol=1e-12, atol=1e-12)


def test_omd_fit_equals_loop_and_skips_masked_rows():
    z, y = _stream(3, 30)
    loop = _run(z[:20], y[:20], 1.0, 1.5)[-1]
    mask = np.arange(30) < 20
    fit = omd.omd_fit(jnp.asarray(z), jnp.asarray(y), jnp.asarray(mask), 1.0, 1.5)
    np.testing.assert_allclose(fit.theta, loop.theta, atol=1e-13)
    np.testing.assert_allclose(fit.hess_inv, loop.hess_inv, atol=1e-13)
    assert int(fit.count) == 20


def _min_eig(m):
    return np.linalg.eigvalsh(0.5 * (m + m.T)).min()


@settings(max_examples=10)
@given(st.integers(0, 10**6), st.floats(0.1, 4.0), st.floats(0.5, 4.0), st.sampled_from(["euclid", "local_norm"]))
def test_invariants15_16_local_design_order_and_sandwich(seed, lam, radius, projection):
    """cH_t >= lam I, non-decreasing, <= lam I + sum z z^T / 4; with iterates in Theta_B,
    gamma V_t <= cH_t <= V_t and ||v||_{V^-1} <= ||v||_{cH^-1} <= sqrt(kappa) ||v||_{V^-1}."""
    z, y = _stream(seed, 25, scale=1.0)
    states = _run(z, y, lam, omd.default_step_size(radius), radius, projection)
    gamma = 1.0 / (2.0 + np.exp(2 * 2.0 * radius) + np.exp(-2 * 2.0 * radius))  # ||z|| <= L = 2
    gram = lam * np.eye(D)
    rng = np.random.default_rng(seed)
    for t, (prev, cur) in enumerate(zip(states[:-1], states[1:])):
        h_prev, h = np.asarray(prev.hess), np.asarray(cur.hess)
        gram = gram + np.outer(z[t], z[t])
        assert np.linalg.norm(cur.theta) <= radius * (1 + 1e-9)
        assert _min_eig(h - h_prev) >= -1e-12
        assert _min_eig(h - lam * np.eye(D)) >= -1e-12
        assert _min_eig(lam * np.eye(D) + 0.25 * (gram - lam * np.eye(D)) - h) >= -1e-12
        assert _min_eig(h - gamma * gram) >= -1e-12
        assert _min_eig(gram - h) >= -1e-12
        vec = rng.standard_normal(D)
        v_norm = np.sqrt(vec @ np.linalg.solve(gram, vec))
        h_norm = np.sqrt(vec @ np.asarray(cur.hess_inv) @ vec)
        assert v_norm <= h_norm * (1 + 1e-9)
        assert h_norm <= v_norm / np.sqrt(gamma) * (1 + 1e-9)


@settings(max_examples=8)
@given(st.integers(0, 10**6), st.floats(0.1, 3.0), st.floats(0.3, 2.0))
def test_ogd_step_matches_numpy(seed, lr, radius):
    z, y = _stream(seed, 6, scale=2.0)
    state = ogd.ogd_init(D, 1.0, jnp.float64)
    theta = np.zeros(D)
    for t in range(6):
        state = ogd.ogd_step(state, jnp.asarray(z[t]), y[t], lr, radius)
        theta = theta - lr / np.sqrt(t + 1) * (1 / (1 + np.exp(-z[t] @ theta)) - y[t]) * z[t]
        theta *= min(1.0, radius / np.linalg.norm(theta))
    np.testing.assert_allclose(state.theta, theta, atol=1e-12)
    np.testing.assert_allclose(state.gram_inv, np.linalg.inv(np.eye(D) + z.T @ z), atol=1e-10)


@pytest.mark.parametrize("state_type", [ogd.OGDState, hvp_cg.HVPState])
def test_projected_step_shared_by_ogd_and_hvp(state_type):
    """theta <- Proj_B(theta - step d), V^{-1} <- (V + sum_i z_i z_i^T)^{-1} over the batch rows, count + 1,
    for both first-order states; hvp_step with a radius is exactly that step along its direction."""
    z, y = _stream(6, 3, scale=2.0)
    state = ogd.first_order_init(state_type, D, 0.5, jnp.float64)._replace(theta=jnp.asarray([0.4, -0.3, 0.2]))
    direction = np.array([2.0, 1.0, -3.0])
    out = ogd.projected_step(state, jnp.asarray(direction), 0.7, jnp.asarray(z[:2]), radius=0.5)
    free = np.asarray(state.theta) - 0.7 * direction
    assert type(out) is state_type and int(out.count) == 1
    np.testing.assert_allclose(out.theta, free * 0.5 / np.linalg.norm(free), atol=1e-12)
    np.testing.assert_allclose(out.gram_inv, np.linalg.inv(0.5 * np.eye(D) + z[:2].T @ z[:2]), atol=1e-10)
    inside = ogd.projected_step(state, jnp.asarray(direction), 1e-3, jnp.asarray(z[:1]), radius=10.0)
    np.testing.assert_allclose(inside.theta, np.asarray(state.theta) - 1e-3 * direction, atol=1e-12)
    if state_type is hvp_cg.HVPState:
        late = state._replace(count=jnp.asarray(10, jnp.int32))       # schedule done: plain gradient
        got = hvp_cg.hvp_step(late, jnp.asarray(z[:2]), jnp.asarray(y[:2]), 0.9, growth_steps=10, radius=0.3)
        g = np.asarray(jax.grad(hvp_cg.batch_loss)(late.theta, jnp.asarray(z[:2]), jnp.asarray(y[:2])))
        free = np.asarray(late.theta) - 0.9 * g
        np.testing.assert_allclose(got.theta, free * min(1.0, 0.3 / np.linalg.norm(free)), atol=1e-12)
        np.testing.assert_allclose(got.gram_inv, out.gram_inv, atol=1e-12)


def _np_hessian(theta, z, y):
    s = _np_sigmoid_slope(z @ theta)
    return (z * s[:, None]).T @ z / len(y)


def test_conjugate_gradient_solves_damped_hessian_system():
    z, y = _stream(2, 4, d=5)
    theta = np.random.default_rng(0).standard_normal(5)
    loss = lambda t: hvp_cg.batch_loss(t, jnp.asarray(z), jnp.asarray(y))
    g = np.asarray(jax.grad(loss)(jnp.asarray(theta)))
    a = _np_hessian(theta, z, y) + 0.3 * np.eye(5)
    matvec = lambda vec: jax.jvp(jax.grad(loss), (jnp.asarray(theta),), (vec,))[1] + 0.3 * vec
    np.testing.assert_allclose(matvec(jnp.ones(5)), a @ np.ones(5), atol=1e-12)
    x = hvp_cg.conjugate_gradient(matvec, jnp.asarray(g), 5)          # textbook CG: exact in d steps
    np.testing.assert_allclose(x, np.linalg.solve(a, g), atol=1e-7)
    quirk = hvp_cg.conjugate_gradient(matvec, jnp.asarray(g), 3, quirk=True)
    r0 = g
    alpha0 = (r0 @ r0) / (r0 @ a @ r0 + 1e-8)                        # first step is the same for both
    x1, r1 = alpha0 * r0, r0 - alpha0 * (a @ r0)
    p1 = r1 + 1.0 * r0
    alpha1 = (r1 @ r1) / (p1 @ a @ p1 + 1e-8)
    x2, r2 = x1 + alpha1 * p1, r1 - alpha1 * (a @ p1)
    p2 = r2 + 1.0 * p1
    alpha2 = (r2 @ r2) / (p2 @ a @ p2 + 1e-8)
    np.testing.assert_allclose(quirk, x2 + alpha2 * p2, atol=1e-12)


def test_hvp_step_direction_and_damping_schedule():
    z, y = _stream(4, 3, d=D, scale=2.0)
    state = hvp_cg.hvp_init(D, 1.0, jnp.float64)._replace(theta=jnp.asarray([0.3, -0.2, 0.1]))
    theta = np.asarray(state.theta)
    new = hvp_cg.hvp_step(state, jnp.asarray(z[:2]), jnp.asarray(y[:2]), 0.5, damping=0.8, growth_steps=10,
                          cg_steps=3)
    loss = lambda t: hvp_cg.batch_loss(t, jnp.asarray(z[:2]), jnp.asarray(y[:2]))
    g = np.asarray(jax.grad(loss)(jnp.asarray(theta)))
    matvec = lambda vec: jnp.asarray(_np_hessian(theta, z[:2], y[:2]) + 0.8 * np.eye(D)) @ vec
    x = np.asarray(hvp_cg.conjugate_gradient(matvec, jnp.asarray(g), 3, quirk=True))
    np.testing.assert_allclose(new.theta, theta - 0.5 * (0.8 * g + 0.2 * x), atol=1e-12)
    late = hvp_cg.hvp_step(state._replace(count=jnp.asarray(10, jnp.int32)), jnp.asarray(z[:2]),
                           jnp.asarray(y[:2]), 0.5, damping=0.8, growth_steps=10)
    np.testing.assert_allclose(late.theta, theta - 0.5 * g, atol=1e-12)     # schedule reached 1: plain gradient


def test_mle_refit_equals_cold_fit_on_the_prefix():
    z, y = _stream(9, 40)
    state = mle_refit.mle_init(64, D, 1.0, jnp.float64)
    step = jax.jit(mle_refit.mle_step)
    for t in range(40):
        state = step(state, jnp.asarray(z[t]), y[t], 1.0)
        if t in (0, 9, 39):
            cold = fit_bt_mle(jnp.asarray(z[:t + 1]), jnp.asarray(y[:t + 1]), jnp.ones(t + 1, bool), 1.0)
            np.testing.assert_allclose(state.theta, cold.theta, atol=1e-9)
    assert int(state.count) == 40
    np.testing.assert_allclose(state.gram_inv, np.linalg.inv(np.eye(D) + z.T @ z), atol=1e-10)


@pytest.mark.parametrize("name", BUILTIN_ESTIMATORS)
def test_estimator_bundles_run_under_jit_scan(name):
    z, y = _stream(1, 50)
    est = make_estimator(name, D, OnePassOptions(lam=1.0), radius=2.0, capacity=50, dtype=jnp.float64)
    assert est.name == name

    @jax.jit
    def run(zs, ys):
        return jax.lax.scan(lambda s, row: (est.update(s, *row), None), est.init(), (zs, ys))[0]

    state = run(jnp.asarray(z), jnp.asarray(y))
    theta = np.asarray(est.theta(state))
    assert np.all(np.isfinite(theta)) and np.linalg.norm(theta) > 0
    inv = np.asarray(est.inverse_design(state))
    assert inv.shape == (D, D) and _min_eig(inv) > 0


def test_bad_inputs_are_refused():
    state = omd.omd_init(D, 1.0, jnp.float64)
    with pytest.raises(ValueError, match="projection='ball'"):
        omd.omd_step(state, jnp.ones(D), 1.0, 1.0, 1.0, "ball")
    with pytest.raises(ValueError, match="radius=None"):
        omd.omd_step(state, jnp.ones(D), 1.0, 1.0, None, "euclid")
    with pytest.raises(ValueError, match="lam=0"):
        omd.omd_init(D, 0.0)
    with pytest.raises(ValueError, match="step_size=-1"):
        omd.omd_step(state, jnp.ones(D), 1.0, -1.0)
    with pytest.raises(ValueError, match="estimator='sgd'"):
        make_estimator("sgd", D)
    with pytest.raises(ValueError, match="c_beta=-0.1"):
        OnePassOptions(c_beta=-0.1)
    with pytest.raises(ValueError, match="omd_step_size='big'"):
        OnePassOptions(omd_step_size="big")
    with pytest.raises(ValueError, match="projection='ball'"):
        OnePassOptions(projection="ball")


def test_builds_use_the_options_and_bound():
    """Each built-in bundle is its module's step with the options' values (``omd_lam`` over ``lam`` for OMD's
    ``cH_1``; ``theory`` and ``none`` give ``default_step_size(B)``; ``hvp`` has no projection)."""
    z, y, radius = jnp.asarray([0.9, -0.4, 0.3]), 1.0, 0.2
    opts = OnePassOptions(lam=2.0, omd_lam=3.0, omd_step_size="theory", projection="euclid", ogd_lr=0.5, hvp_lr=0.05)
    want = {"omd": omd.omd_step(omd.omd_init(D, 3.0), z, y, omd.default_step_size(radius), radius, "euclid"),
            "mle": mle_refit.mle_step(mle_refit.mle_init(4, D, 2.0), z, y, 2.0),
            "ogd": ogd.ogd_step(ogd.ogd_init(D, 2.0), z, y, 0.5, radius),
            "hvp": hvp_cg.hvp_step(hvp_cg.hvp_init(D, 2.0), z, y, 0.05)}
    for name, ref in want.items():
        est = make_estimator(name, D, opts, radius=radius, capacity=4)
        got = est.update(est.init(), z, y)
        assert type(got) is type(ref)
        np.testing.assert_allclose(est.theta(got), ref.theta, atol=1e-14)
        inverse = ref.hess_inv if estimators.get(name).design == "H_t" else ref.gram_inv
        np.testing.assert_allclose(est.inverse_design(got), inverse, atol=1e-14)
    for step in ("theory", None):
        assert OnePassOptions(omd_step_size=step).step_size(radius) == omd.default_step_size(radius)
    assert OnePassOptions(omd_step_size="theory").step_size(None) == 1.0
    assert OnePassOptions(omd_step_size=0.3).step_size(radius) == 0.3
    # beta_t = c_beta sqrt(d log(1 + t)); c_beta = 0 (no bonus) is allowed
    np.testing.assert_allclose(OnePassOptions(c_beta=0.5).beta(8, 15), 0.5 * np.sqrt(8 * np.log(16.0)), rtol=1e-15)
    assert float(OnePassOptions(c_beta=0.0).beta(8, 15)) == 0.0


def test_registry_metadata_and_refusals():
    meta = {n: (e.design, e.first_order, e.stores_data) for n, e in estimators.ESTIMATORS.items()
            if n in BUILTIN_ESTIMATORS}
    assert meta == {"omd": ("H_t", False, False), "mle": ("V_t", False, True), "mle_sgd": ("V_t", True, True),
                    "ogd": ("V_t", True, False), "hvp": ("V_t", False, False)}
    assert all(estimators.get(n).label for n in BUILTIN_ESTIMATORS)
    assert estimators.unread_options(("mle",)) == ("omd_lam", "omd_step_size", "projection", "ogd_lr", "hvp_lr",
                                                   "sgd_epochs", "sgd_lr", "sgd_batch")
    assert estimators.unread_options(BUILTIN_ESTIMATORS) == ()
    entry = estimators.get("ogd")
    with pytest.raises(ValueError, match="estimator name='omd' is not allowed"):
        estimators.register("omd", entry)
    with pytest.raises(ValueError, match="estimator name='my-ogd' is not allowed"):
        estimators.register("my-ogd", entry)
    with pytest.raises(ValueError, match="design='W_t' is not allowed"):
        estimators.register("x", entry._replace(design="W_t"))
    with pytest.raises(ValueError, match="reads='lr' is not allowed"):
        estimators.register("x", entry._replace(reads=("lr",)))
    with pytest.raises(ValueError, match="estimator 'x'="):
        estimators.register("x", lambda spec: None)
    assert "x" not in estimators.ESTIMATORS
    try:
        got = estimators.register("x", entry._replace(label=""))
        assert got.label == "x" and estimators.names()[-1] == "x"
        est = make_estimator("x", D, radius=1.0)
        assert est.name == "x" and type(est.init()) is ogd.OGDState
    finally:
        estimators.ESTIMATORS.pop("x", None)
