"""E9's quantities below the Bayes ceiling (issue 17 item 6): the exact population metrics of
``algorithms.onepass.evaluation`` against NumPy brute force over every (x, a, a'), the anisotropic features of
``p3_common``, and the ``e9_regime`` preset of active-vs-random at a tiny size (paired summaries, cost counts)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bandits as b
from algorithms.onepass import estimators, evaluation
from experiments.catalogue import active_vs_random as e9
from experiments.catalogue import p3_common as p3
from experiments.engine import registry
from experiments.engine.config import replace
from experiments.engine.results import as_results
from experiments.engine.runner import Progress


# one jitted program per shape (the tests share the shapes below): cheaper than op-by-op dispatch
population_metrics = jax.jit(evaluation.population_metrics)


def _instance(seed, n_x=3, k=4, d=3, bnorm=2.0, condition=1.0, temperature=0.0):
    cfg = b.InstanceConfig(n_contexts=n_x, n_actions=k, dim=d, temperature=temperature)
    inst = evaluation.scaled_instance(jax.random.PRNGKey(seed), cfg, bnorm)
    return inst if condition == 1.0 else p3.anisotropic_instance(inst, condition)


def _brute_force(inst, theta):
    """Expected BT log-loss, accuracy and the design E[z z^T] by a loop over every (x, a, a') weighted by
    d0(x) pi0(a|x) pi0(a'|x), the label probability from theta* (NumPy, float64)."""
    phi, ts = np.asarray(inst.phi), np.asarray(inst.theta_star)
    pi0 = np.exp(np.asarray(inst.log_pi0))
    pi0 /= pi0.sum(-1, keepdims=True)
    d0 = np.asarray(inst.d0)
    loss = {"theta": 0.0, "star": 0.0}
    acc = {"theta": 0.0, "star": 0.0}
    sigma = np.zeros((phi.shape[-1],) * 2)
    for x in range(phi.shape[0]):
        for a in range(phi.shape[1]):
            for c in range(phi.shape[1]):
                w = d0[x] * pi0[x, a] * pi0[x, c]
                z = phi[x, a] - phi[x, c]
                p = 1.0 / (1.0 + np.exp(-(z @ ts)))
                sigma += w * np.outer(z, z)
                for name, th in (("theta", theta), ("star", ts)):
                    u = z @ th
                    loss[name] += w * (p * np.logaddexp(0.0, -u) + (1 - p) * np.logaddexp(0.0, u))
                    acc[name] += w * (0.5 if u == 0 else (p if u > 0 else 1 - p))
    return loss["theta"] - loss["star"], acc["theta"], acc["star"], sigma


@settings(max_examples=8)
@given(st.integers(0, 10**6), st.sampled_from([1.0, 30.0]), st.sampled_from([0.0, 1.0]))
def test_population_metrics_match_brute_force(seed, condition, temperature):
    """Excess log-loss, accuracy, its ceiling and the Sigma-norm error against the loop above, on an
    isotropic or anisotropic instance with a uniform or a non-uniform pi0 (the weights must follow pi0)."""
    inst = _instance(seed % 1000, condition=condition, temperature=temperature)
    theta = np.random.default_rng(seed).normal(size=inst.dim) * 1.5
    got = population_metrics(inst, jnp.asarray(theta))
    excess, acc, bayes, sigma = _brute_force(inst, theta)
    np.testing.assert_allclose(float(got["excess_logloss"]), excess, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(float(got["accuracy"]), acc, rtol=1e-12)
    np.testing.assert_allclose(float(got["bayes_accuracy"]), bayes, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(evaluation.difference_covariance(inst)), sigma, rtol=1e-10, atol=1e-14)
    err = theta - np.asarray(inst.theta_star)
    np.testing.assert_allclose(float(got["estimation_error_sigma"]), np.sqrt(err @ sigma @ err), rtol=1e-10)
    assert excess > 0 and float(got["excess_logloss"]) > 0
    assert acc <= bayes + 1e-12


@settings(max_examples=10)
@given(st.integers(0, 10**6), st.floats(0.0, 3.0))
def test_excess_logloss_nonnegative_and_zero_at_theta_star(seed, scale):
    """``excess_logloss >= 0`` everywhere, 0 at theta* (where the accuracy is its ceiling and the Sigma-norm
    error vanishes); ``bayes_accuracy`` does not depend on theta and bounds ``accuracy``."""
    inst = _instance(seed % 1000, condition=10.0)
    rng = np.random.default_rng(seed)
    theta = inst.theta_star + scale * jnp.asarray(rng.normal(size=inst.dim))
    got = population_metrics(inst, theta)
    at_star = population_metrics(inst, inst.theta_star)
    assert float(got["excess_logloss"]) >= 0.0
    assert float(at_star["excess_logloss"]) == 0.0
    assert float(at_star["estimation_error_sigma"]) == 0.0
    assert float(at_star["accuracy"]) == float(at_star["bayes_accuracy"]) == float(got["bayes_accuracy"])
    assert float(got["accuracy"]) <= float(got["bayes_accuracy"]) + 1e-12
    # a theta* of the opposite sign gets the complement of the ceiling (identical pairs stay at 1/2)
    flipped = population_metrics(inst, -inst.theta_star)
    w = np.asarray(evaluation.logging_pair_weights(inst))
    ties = float(np.sum(w * np.eye(inst.n_actions)[None]))
    np.testing.assert_allclose(float(flipped["accuracy"]), 1.0 - float(got["bayes_accuracy"]), atol=1e-12)
    assert 0.0 < ties < 1.0


def test_anisotropic_features():
    """Unit rows, the reward recomputed from theta*, the spectrum's ratio is the condition, and the realised
    Sigma is anisotropic (condition number well above the isotropic instance's)."""
    s = np.asarray(p3.feature_spectrum(5, 16.0))
    np.testing.assert_allclose(s, 16.0 ** (-np.arange(5) / 8.0), rtol=1e-14)
    assert s[0] ** 2 / s[-1] ** 2 == pytest.approx(16.0)
    np.testing.assert_array_equal(np.asarray(p3.feature_spectrum(1, 16.0)), [1.0])
    iso = _instance(3, n_x=16, k=8, d=6)
    aniso = p3.anisotropic_instance(iso, 100.0)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(aniso.phi), axis=-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(aniso.reward), np.asarray(aniso.phi) @ np.asarray(iso.theta_star),
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(np.asarray(aniso.log_pi0), np.asarray(iso.log_pi0))
    cond = lambda inst: np.linalg.cond(np.asarray(evaluation.difference_covariance(inst)))
    assert cond(aniso) > 5 * cond(iso)
    with pytest.raises(ValueError, match="feature_condition=0.5"):
        p3.feature_spectrum(4, 0.5)
    with pytest.raises(ValueError, match="feature_condition=0.5"):
        replace(registry.get("active-vs-random").presets["quick"], feature_condition=0.5)


TINY_REGIME = dict(n_contexts=4, n_actions=4, dim=3, pool=48, budget=12, batch=8, checkpoints=(6, 12), heldout=16,
                   selections=("random", "active"), estimators=("omd", "mle_sgd"), timing_rounds=(6,),
                   timing_repeats=1)


@functools.lru_cache(maxsize=None)
def _regime_run():
    cfg = replace(registry.get("active-vs-random").presets["e9_regime"], **TINY_REGIME)
    return cfg, as_results(registry.get("active-vs-random").run(cfg, 3, Progress()))


def test_e9_regime_preset_shape():
    cfg = registry.get("active-vs-random").presets["e9_regime"]
    d = cfg.instance.dim
    assert d >= 64 and cfg.feature_condition > 1.0
    assert cfg.checkpoints == tuple(k * d for k in (2, 4, 6, 8)) and cfg.budget == 8 * d
    assert "active_batch" in cfg.selections and cfg.pool >= 4 * cfg.budget
    assert "e9_regime" in registry.get("active-vs-random").seeds


def test_e9_regime_runs_tiny_with_ceilings_costs_and_paired_entries(tmp_path):
    cfg, res = _regime_run()
    t, summary = res.table, res.summary
    for col in ("estimation_error", "estimation_error_sigma", "excess_logloss", "accuracy", "bayes_accuracy",
                "heldout_accuracy", "heldout_bayes_accuracy", "grad_evals"):
        assert np.all(np.isfinite(t[col])), col
    assert np.all(t["excess_logloss"] >= 0.0)
    assert np.all(t["accuracy"] <= t["bayes_accuracy"] + 1e-12)
    # row by row the expected accuracy of any theta is at most max(p, 1 - p), theta*'s
    assert np.all(t["heldout_accuracy"] <= t["heldout_bayes_accuracy"] + 1e-12)
    omd = np.char.endswith(t["algorithm"].astype(str), "-omd")
    np.testing.assert_array_equal(t["grad_evals"][omd], 2.0 * t["t"][omd])
    # the paired entries are the seed-mean of the per-seed differences in the table
    for m in e9.PAIRED:
        for ck in cfg.checkpoints:
            key = f"active-omd/minus_random/{m}/t{ck}"
            rows = {a: (t["algorithm"] == a) & (t["t"] == ck) for a in ("active-omd", "random-omd")}
            diff = t[m][rows["active-omd"]] - t[m][rows["random-omd"]]
            assert summary[f"{key}/diff"] == pytest.approx(diff.mean(), abs=1e-12)
            assert summary[f"{key}/diff_low"] <= summary[f"{key}/diff"] <= summary[f"{key}/diff_high"]
            assert summary[f"{key}/below_frac"] == pytest.approx(np.mean(diff < 0))
    assert 0.5 <= summary["bayes_accuracy"] <= 1.0 and summary["sigma_condition"] >= 1.0
    assert summary["random-omd/grad_evals_budget"] == 2.0 * cfg.budget
    sgd = np.char.endswith(t["algorithm"].astype(str), "-mle_sgd")   # sgd_epochs t per round, cumulative
    epochs = cfg.onepass.sgd_epochs
    np.testing.assert_array_equal(t["grad_evals"][sgd], epochs * t["t"][sgd] * (t["t"][sgd] + 1) / 2)
    assert registry.get("active-vs-random").plot(t, cfg, tmp_path)


def test_round_grad_evals():
    """Per round: the MLE's Newton iterations times the rows refitted, the SGD MLE's epochs times the rows; the
    fixed counts of the one-pass estimators; NaN for an estimator that states none (a plugin's default)."""
    rng = np.random.default_rng(0)
    mle, sgd = (estimators.make_estimator(n, 2, capacity=4) for n in ("mle", "mle_sgd"))
    s_mle, s_sgd = mle.init(), sgd.init()
    for t in (1, 2, 3):
        z, y = jnp.asarray(rng.normal(size=2)), float(t % 2)
        s_mle, s_sgd = mle.update(s_mle, z, y), sgd.update(s_sgd, z, y)
        got = float(mle.grad_evals(s_mle))
        assert got == float(s_mle.iterations) * t and got >= t
        assert float(sgd.grad_evals(s_sgd)) == estimators.OnePassOptions().sgd_epochs * t
    fixed = {n: float(estimators.make_estimator(n, 2, radius=1.0).grad_evals(None)) for n in ("omd", "ogd", "hvp")}
    assert fixed == {"omd": 2.0, "ogd": 1.0, "hvp": 4.0}
    plugin = estimators.Estimator(mle.init, mle.update)
    assert np.isnan(float(plugin.grad_evals(s_mle)))
