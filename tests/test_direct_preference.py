"""Direct preference training: docs/theory.md §9.2 invariant 4 (second half) against scipy's BT-MLE,
pessimistic DPO's Gamma shift, IPO's closed form, linear DPO = BT logistic regression, value
improvement on a linear BT instance, masking, vmap == loop, jit == eager, validation."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import minimize

import bandits as b
from algorithms.core import direct_preference as dp
from tests.helpers import random_log_policy

LBFGS = optax.lbfgs()
SGD = optax.sgd(0.5)
ADAM_COS = optax.adam(optax.cosine_decay_schedule(0.1, 1000))  # Adam annealed to lr 0: converges
STEPS = 40
ETA = 0.5
# (context, a, b, #a preferred, #b preferred) on K = 5 actions; action 4 never compared.
CYCLES = [(0, 0, 1, 3, 1), (0, 1, 2, 2, 2), (0, 0, 2, 4, 1), (0, 2, 3, 1, 3),
          (1, 0, 1, 1, 2), (1, 1, 2, 3, 2), (1, 2, 3, 2, 1), (1, 3, 0, 1, 4)]
# a forest of pairs (no cycles), one pair seen with a single outcome (separable)
TREE = [(0, 0, 1, 3, 1), (0, 1, 2, 2, 0), (0, 2, 3, 1, 4), (1, 0, 2, 2, 3), (1, 2, 4, 5, 1)]


def _data(spec, total=40, seed=0):
    """Rows for each (x, a, b, wins_a, wins_b), b's wins alternately as y=0 and as swapped y=1 rows,
    then masked rows of random garbage up to ``total`` rows (one shape: one compilation)."""
    rows = []
    for x, a, bb, wa, wb in spec:
        rows += [(x, a, bb, 1)] * wa
        rows += [(x, a, bb, 0) if j % 2 else (x, bb, a, 1) for j in range(wb)]
    rng = np.random.default_rng(seed)
    pad = total - len(rows)
    rows += [tuple(rng.integers(0, 2, 1)) + tuple(rng.integers(0, 5, 2)) + (1,) for _ in range(pad)]
    x, a1, a2, y = (jnp.asarray(c, jnp.int32) for c in zip(*rows))
    return b.PreferenceData(x, a1, a2, y, jnp.arange(len(rows)) < len(rows) - pad)


def _log_pi0(seed=0, shape=(2, 5)):
    return jnp.asarray(random_log_policy(np.random.default_rng(seed), *shape, scale=1.0))


def _tabular_bt_mle(data, n_x, k, lam=0.0):
    """Brute-force BT-MLE over a free reward table: mean NLL + lam/2 ||r||^2, BFGS with the exact gradient."""
    x, a1, a2, y, mask = (np.asarray(f) for f in data)

    def fun(flat):
        r, g, total = flat.reshape(n_x, k), np.zeros((n_x, k)), 0.0
        for i in np.flatnonzero(mask):
            s = 1.0 if y[i] == 1 else -1.0
            u = s * (r[x[i], a1[i]] - r[x[i], a2[i]])
            total += np.logaddexp(0.0, -u)
            d = -s / (1.0 + np.exp(u))
            g[x[i], a1[i]] += d
            g[x[i], a2[i]] -= d
        m = mask.sum()
        return total / m + 0.5 * lam * flat @ flat, g.ravel() / m + lam * flat

    res = minimize(fun, np.zeros(n_x * k), jac=True, method="BFGS", options={"gtol": 1e-13})
    assert np.abs(fun(res.x)[1]).max() < 1e-9
    return res.x.reshape(n_x, k)


def _pair_differences(table, spec):
    table = np.asarray(table)
    return np.array([table[x, a] - table[x, bb] for x, a, bb, *_ in spec])


@pytest.mark.parametrize("optimizer,steps", [(LBFGS, 100), (ADAM_COS, 1000)],
                         ids=["lbfgs", "adam-cosine"])
def test_invariant4_tabular_dpo_implicit_reward_is_bt_mle(optimizer, steps):
    """Every covered pair has both outcomes (the MLE is finite) and pairs form cycles (no closed form)."""
    data, log_pi0 = _data(CYCLES), _log_pi0()
    r_mle = _tabular_bt_mle(data, 2, 5)
    fit = dp.train_tabular(data, log_pi0, ETA, steps=steps, optimizer=optimizer)
    implicit = dp.implicit_reward(fit.log_pi, log_pi0, ETA)
    np.testing.assert_allclose(_pair_differences(implicit, CYCLES), _pair_differences(r_mle, CYCLES),
                               rtol=0, atol=1e-8)
    # the never-compared action keeps its pi0 logit (its gradient is exactly zero)
    np.testing.assert_allclose(fit.params[:, 4], log_pi0[:, 4], rtol=0, atol=1e-12)
    # a wrong target is rejected: the MLE of the swapped labels is far away
    flipped = _tabular_bt_mle(data._replace(y=1 - data.y), 2, 5)
    assert np.abs(_pair_differences(implicit, CYCLES) - _pair_differences(flipped, CYCLES)).max() > 0.5


def test_pessimistic_dpo_implicit_reward_is_mle_minus_gamma():
    """Minimiser of DPO with margin Gamma(a_w) - Gamma(a_l): eta log(pi/pi0) = r_MLE - Gamma + c(x)."""
    data, log_pi0 = _data(CYCLES), _log_pi0()
    gamma = jnp.asarray(np.random.default_rng(5).uniform(0.0, 1.0, (2, 5)))
    r_mle = _tabular_bt_mle(data, 2, 5)
    fit = dp.train_tabular(data, log_pi0, ETA, "pessimistic_dpo", gamma=gamma, steps=1000, optimizer=ADAM_COS)
    implicit = np.asarray(dp.implicit_reward(fit.log_pi, log_pi0, ETA))
    np.testing.assert_allclose(_pair_differences(implicit, CYCLES),
                               _pair_differences(r_mle - np.asarray(gamma), CYCLES), rtol=0, atol=1e-8)
    assert np.abs(_pair_differences(gamma, CYCLES)).max() > 0.3   # the shift is not trivially zero


def test_weight_decay_matches_ridge_bt_mle_on_separable_data():
    """weight_decay/2 ||logits - log pi0||^2 is the ridge penalty lam = weight_decay / kl_coef^2 on r."""
    data, log_pi0, wd = _data(TREE), _log_pi0(1), 0.01
    r_ridge = _tabular_bt_mle(data, 2, 5, lam=wd / ETA ** 2)
    fit = dp.train_tabular(data, log_pi0, ETA, steps=1000, weight_decay=wd, optimizer=ADAM_COS)
    np.testing.assert_allclose(ETA * (fit.params - log_pi0), r_ridge, rtol=0, atol=1e-8)
    assert np.all(np.isfinite(np.asarray(fit.log_pi)))


def test_ipo_reaches_its_closed_form_on_a_forest_of_pairs():
    """IPO's per-pair optimum h = (p_hat - 1/2) / tau, finite also for the separable pair."""
    data, log_pi0, tau = _data(TREE), _log_pi0(2), 0.25
    fit = dp.train_tabular(data, log_pi0, tau, "ipo", steps=1000, optimizer=ADAM_COS)
    h = _pair_differences(fit.log_pi - log_pi0, TREE)
    p_hat = np.array([wa / (wa + wb) for *_, wa, wb in TREE])
    np.testing.assert_allclose(h, (p_hat - 0.5) / tau, rtol=0, atol=1e-8)


_sample = jax.jit(b.sample_preference_data, static_argnums=(4,))


@functools.lru_cache(maxsize=None)
def _linear_problem(seed, n=300, flip=False):
    """A linear BT instance (theta* of norm 2, unit features, non-uniform pi0) and data from pi0 x pi0."""
    rng = np.random.default_rng(seed)
    phi = rng.standard_normal((32, 8, 4))
    phi /= np.linalg.norm(phi, axis=-1, keepdims=True)
    theta = rng.standard_normal(4)
    theta *= 2.0 / np.linalg.norm(theta)
    inst = b.instance_from_arrays(phi, random_log_policy(rng, 32, 8, scale=1.0), phi @ theta, ETA,
                                  params=b.LinearReward(jnp.asarray(theta)))
    data = _sample(jax.random.key(seed), inst, inst.log_pi0, inst.log_pi0, n)
    return inst, data._replace(y=1 - data.y) if flip else data


def test_linear_dpo_is_bt_logistic_regression():
    """log Z cancels in h, so kl_coef * w_DPO = theta_MLE (logistic regression on z, no intercept)."""
    inst, data = _linear_problem(0)
    z = np.asarray(b.feature_differences(inst, data))
    s = 2.0 * np.asarray(data.y) - 1.0

    def fun(theta):
        u = s * (z @ theta)
        return np.mean(np.logaddexp(0.0, -u)), z.T @ (-s / (1.0 + np.exp(u))) / len(u)

    theta = minimize(fun, np.zeros(4), jac=True, method="BFGS", options={"gtol": 1e-13}).x
    fit = dp.train_linear(data, inst.phi, inst.log_pi0, inst.kl_coef, steps=1000, optimizer=ADAM_COS)
    np.testing.assert_allclose(ETA * fit.params, theta, rtol=0, atol=1e-7)
    np.testing.assert_allclose(fit.loss, fun(theta)[0], rtol=1e-12)


def test_linear_dpo_improves_value_and_flipped_labels_hurt():
    """J(pi_DPO) recovers > 90% of J(pi*) - J(pi0) on 3 seeds; swapped labels make J worse than J(pi0)."""
    for seed in range(3):
        for flip in (False, True):
            inst, data = _linear_problem(seed, 2000, flip)
            fit = dp.train_linear(data, inst.phi, inst.log_pi0, inst.kl_coef)
            j, j0, j_star = (float(t) for t in (b.value(inst, fit.log_pi), b.value(inst, inst.log_pi0),
                                                b.optimal_value(inst)))
            if flip:
                assert j < j0 - 0.5 * (j_star - j0), (seed, j, j0, j_star)
            else:
                assert j_star - j < 0.1 * (j_star - j0), (seed, j, j0, j_star)


@pytest.mark.parametrize("policy", ["tabular", "linear"])
def test_pessimistic_dpo_with_zero_gamma_equals_dpo(policy):
    inst, data = _linear_problem(1)
    zeros = jnp.zeros_like(inst.log_pi0)
    if policy == "tabular":
        fits = [dp.train_tabular(data, inst.log_pi0, inst.kl_coef, m, gamma=g, steps=STEPS)
                for m, g in (("dpo", None), ("pessimistic_dpo", zeros))]
    else:
        fits = [dp.train_linear(data, inst.phi, inst.log_pi0, inst.kl_coef, m, gamma=g, steps=STEPS)
                for m, g in (("dpo", None), ("pessimistic_dpo", zeros))]
    for a, bb in zip(*fits):
        np.testing.assert_array_equal(a, bb)
    gamma = jnp.asarray(np.random.default_rng(0).uniform(0.0, 1.0, inst.log_pi0.shape))
    moved = dp.train_tabular(data, inst.log_pi0, inst.kl_coef, "pessimistic_dpo", gamma=gamma, steps=STEPS)
    assert np.abs(np.asarray(moved.log_pi - fits[0].log_pi)).max() > 1e-3


def test_masked_rows_are_ignored():
    """Garbage rows behind the mask change neither the loss nor its gradient, nor the trained policy."""
    data, padded = _data(CYCLES, total=33), _data(CYCLES, total=40, seed=3)
    log_pi0 = _log_pi0()
    log_pi = jnp.asarray(random_log_policy(np.random.default_rng(4), 2, 5))
    gamma = jnp.asarray(np.random.default_rng(1).uniform(0.0, 1.0, (2, 5)))
    for method, g in (("dpo", None), ("ipo", None), ("pessimistic_dpo", gamma)):
        loss = jax.value_and_grad(lambda lp, d: dp.direct_preference_loss(lp, log_pi0, d, ETA, method, g))
        (v1, g1), (v2, g2) = loss(log_pi, data), loss(log_pi, padded)
        np.testing.assert_allclose(v1, v2, rtol=1e-13)
        np.testing.assert_allclose(g1, g2, rtol=1e-12, atol=1e-15)
    a = dp.train_tabular(data, log_pi0, ETA, steps=1000, optimizer=ADAM_COS)
    c = dp.train_tabular(padded, log_pi0, ETA, steps=1000, optimizer=ADAM_COS)
    np.testing.assert_allclose(a.log_pi, c.log_pi, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("policy", ["tabular", "linear"])
def test_vmap_over_seeds_equals_loop(policy):
    inst, _ = _linear_problem(2)
    keys = jax.random.split(jax.random.key(9), 3)
    sample = functools.partial(_sample, instance=inst, log_pi1=inst.log_pi0, log_pi2=inst.log_pi0, n=300)
    if policy == "tabular":
        def train(data):
            return dp.train_tabular(data, inst.log_pi0, inst.kl_coef, steps=STEPS)
    else:
        def train(data):
            return dp.train_linear(data, inst.phi, inst.log_pi0, inst.kl_coef, steps=STEPS)
    batched = jax.vmap(lambda k: train(sample(k)))(keys)
    for i in range(3):
        for a, bb in zip(batched, train(sample(keys[i]))):
            np.testing.assert_allclose(a[i], bb, rtol=1e-10, atol=1e-12)
    assert np.abs(np.asarray(batched.log_pi[0] - batched.log_pi[1])).max() > 1e-3


def test_vmap_over_kl_coef_grid_equals_loop():
    inst, data = _linear_problem(1)
    grid = jnp.array([0.2, 1.0])
    batched = jax.vmap(lambda e: dp.train_linear(data, inst.phi, inst.log_pi0, e, steps=STEPS).log_pi)(grid)
    for i, eta in enumerate(grid):
        single = dp.train_linear(data, inst.phi, inst.log_pi0, float(eta), steps=STEPS).log_pi
        np.testing.assert_allclose(batched[i], single, rtol=1e-10, atol=1e-12)


def test_jit_equals_eager():
    inst, data = _linear_problem(1)
    gamma = 0.3 * jnp.ones_like(inst.log_pi0).at[:, 0].set(0.0)
    for method, g, optimizer in (("pessimistic_dpo", gamma, SGD), ("ipo", None, SGD), ("dpo", None, None)):
        def run(d):
            return dp.train_tabular(d, inst.log_pi0, inst.kl_coef, method, gamma=g, steps=5,
                                    optimizer=optimizer)
        jitted = run(data)
        with jax.disable_jit():
            eager = run(data)
        for a, bb in zip(jitted, eager):
            np.testing.assert_allclose(a, bb, rtol=1e-10, atol=1e-12)
        assert np.abs(np.asarray(jitted.log_pi - inst.log_pi0)).max() > 1e-2


def test_warm_start_is_used():
    inst, data = _linear_problem(1)
    w0 = jnp.array([1.0, -2.0, 0.5, 3.0])
    fit = dp.train_linear(data, inst.phi, inst.log_pi0, inst.kl_coef, init_w=w0, steps=STEPS,
                          learning_rate=1e-12)
    np.testing.assert_allclose(fit.params, w0, atol=1e-8)
    np.testing.assert_allclose(fit.log_pi, dp.linear_softmax_policy(w0, inst.phi, inst.log_pi0), atol=1e-8)
    logits = inst.log_pi0 + 1.0
    fit = dp.train_tabular(data, inst.log_pi0, inst.kl_coef, init_logits=logits, steps=STEPS,
                           learning_rate=1e-12)
    np.testing.assert_allclose(fit.params, logits, atol=1e-8)


def test_validation_errors_name_field_value_and_allowed():
    inst, data = _linear_problem(5)
    lp0, phi, eta = inst.log_pi0, inst.phi, inst.kl_coef
    cases = [
        (lambda: dp.train_tabular(data, lp0, eta, "ppo"),
         r"method='ppo' is not allowed: method must be one of 'dpo'"),
        (lambda: dp.train_tabular(data, lp0, 0.0),
         r"kl_coef=0\.0 is not allowed: kl_coef must be a finite number in \(0"),
        (lambda: dp.train_linear(data, phi, lp0, -1.0), r"kl_coef=-1\.0 is not allowed"),
        (lambda: dp.train_tabular(data, lp0, eta, steps=0),
         r"steps=0 is not allowed: steps must be an integer >= 1"),
        (lambda: dp.train_tabular(data, lp0, eta, steps=2.5), r"steps=2\.5 is not allowed"),
        (lambda: dp.train_linear(data, phi, lp0, eta, learning_rate=0.0), r"learning_rate=0\.0 is not allowed"),
        (lambda: dp.train_tabular(data, lp0, eta, weight_decay=-0.1), r"weight_decay=-0\.1 is not allowed"),
        (lambda: dp.train_tabular(data, lp0, eta, "pessimistic_dpo"), r"gamma=None is not allowed"),
        (lambda: dp.train_tabular(data, lp0, eta, "pessimistic_dpo", gamma=jnp.zeros(3)),
         r"gamma has shape \(3,\)"),
        (lambda: dp.train_tabular(data, lp0, eta, "dpo", gamma=jnp.zeros_like(lp0)), r"gamma=.* used only by"),
        (lambda: dp.train_linear(data, phi[..., 0], lp0, eta), r"phi has shape"),
        (lambda: dp.train_linear(data, phi, lp0, eta, init_w=jnp.zeros(2)), r"init_w has shape \(2,\)"),
        (lambda: dp.train_tabular(data, lp0, eta, init_logits=lp0[0]), r"init_logits has shape"),
        (lambda: dp.train_tabular(data, lp0, eta, optimizer="adam"), r"optimizer='str' is not allowed"),
        (lambda: dp.train_tabular(tuple(data), lp0, eta), r"data='tuple' is not allowed"),
        (lambda: dp.train_tabular(data._replace(mask=data.mask[:5]), lp0, eta), r"data\.mask has shape \(5,\)"),
        (lambda: dp.direct_preference_loss(lp0, lp0, data, eta, "slic"), r"method='slic' is not allowed"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
