"""reward-kl (E2): config validation, a tiny end-to-end run + plot, exact optimality of Gibbs(r*) at
every grid point, the RS panel tied to the exact laws of algorithms.offline.rejection_sampling, and a tiny
neural-reward run (``--set reward=neural``) through the registry and the override parser."""
import jax
import numpy as np
import pytest

import bandits as b
from algorithms.offline import rejection_sampling as rs
from experiments.engine import registry
from experiments.catalogue import reward_kl as rk
from experiments.engine.config import replace
from experiments.engine.runner import Progress, seed_keys

TINY = replace(rk.Config(), n_contexts=4, n_actions=6, dim=3, n=48, n_kl=4, kl_min=0.03, kl_max=3.0,
               rs_budgets=(4, 9), rs_stages=2, seed=3)
SEEDS = 3


@pytest.mark.parametrize("field, value, match", [
    ("n", 0, "n"),
    ("kl_min", 0.0, "kl_min"),
    ("kl_max", 0.01, "kl_max"),
    ("rs_budgets", (3,), "rs_budgets"),        # < 2 * rs_stages
    ("rs_budgets", (16, 8), "rs_budgets"),     # not increasing
    ("rs_budgets", (), "rs_budgets"),
    ("rs_stages", 0, "rs_stages"),
    ("rs_schedule", "cosine", "rs_schedule"),
    ("rs_geometric_ratio", 1.0, "rs_geometric_ratio"),
    ("coverage", 1.5, "coverage"),
    ("beta_mode", "nope", "beta_mode"),
    ("reward", "mlp", "reward"),
    ("hidden", 0, "hidden"),
    ("neural_steps", 0, "neural_steps"),
    ("neural_learning_rate", 0.0, "neural_learning_rate"),
    ("neural_beta", -0.5, "neural_beta"),
])
def test_config_validation(field, value, match):
    with pytest.raises(ValueError, match=match):
        replace(rk.Config(), **{field: value})


def test_registered_and_presets_valid():
    assert registry.get("reward-kl") is rk
    assert set(rk.presets) == {"quick", "paper"}
    assert len(rk.presets["paper"].kl_coefs) == 12


@pytest.fixture(scope="module")
def tiny():
    return rk.run(TINY, SEEDS, Progress())


def _rows(table, **where):
    mask = np.ones(len(table["seed"]), bool)
    for k, val in where.items():
        mask &= np.asarray(table[k]) == val
    return mask


def test_tiny_run_and_plot(tiny, tmp_path):
    t = tiny.table
    for col in ("panel", "algorithm", "seed", "kl_coef", "budget", "kl_to_ref", "true_reward", "value",
                "value_gap", "acceptance_rate", "overall_acceptance", "expected_accepted"):
        assert col in t, col
    n_front = SEEDS * TINY.n_kl * len(rk.FRONTIER)
    n_rs = SEEDS * TINY.n_kl * len(rk.RS) * len(TINY.rs_budgets)
    assert tiny.n_rows == n_front + n_rs
    assert _rows(t, panel="frontier").sum() == n_front
    rs_mask = _rows(t, panel="rs")
    assert np.all(np.isfinite(t["acceptance_rate"][rs_mask]))
    assert np.all((t["acceptance_rate"][rs_mask] > 0) & (t["acceptance_rate"][rs_mask] <= 1 + 1e-12))
    assert np.all(t["kl_to_ref"] >= -1e-12)
    assert "frontier/mle_gibbs/peak_true_reward" in tiny.summary
    # theta* in C per seed, recomputed from the fit, and the pessimism difference on that event
    from algorithms.core import confidence as conf
    def covered(key):
        inst, _, cs, _ = rk._fit_linear(key, TINY)
        return conf.contains(cs, inst.theta_star)

    inside = np.asarray(jax.jit(jax.vmap(covered))(seed_keys(TINY.seed, SEEDS)))
    assert tiny.summary["frontier/in_confidence_set_frac"] == pytest.approx(inside.mean())
    for a in ("option_i", "option_ii"):
        key = f"frontier/{a}_minus_mle/true_reward_at_kl_min_in_set"
        assert (key in tiny.summary) == bool(inside.any())
        if inside.any():
            at_min = _rows(t, panel="frontier", kl_coef=TINY.kl_coefs[0])
            diff = (t["true_reward"][at_min & _rows(t, algorithm=a)]
                    - t["true_reward"][at_min & _rows(t, algorithm="mle_gibbs")])
            assert tiny.summary[key] == pytest.approx(diff[inside].mean())
    paths = rk.plot(t, TINY, tmp_path)
    names = {p.name for p in paths}
    assert {"reward_kl_frontier.png", "reward_kl_rs_frontier.png", "reward_kl_rs_acceptance.png"} <= names
    assert all(p.stat().st_size > 1000 for p in paths)


def test_gibbs_true_maximizes_J_at_every_grid_point(tiny):
    """J_eta(pi) <= J_eta(pi*_eta) for every algorithm, seed, budget and kl_coef (exact identity
    J(pi*) - J(pi) = eta E KL(pi||pi*) >= 0; only float rounding is tolerated)."""
    t = tiny.table
    best = {}
    for i in np.flatnonzero(_rows(t, panel="frontier", algorithm="gibbs_true")):
        best[(t["seed"][i], t["kl_coef"][i])] = t["value"][i]
    assert len(best) == SEEDS * TINY.n_kl
    others = np.flatnonzero(~_rows(t, algorithm="gibbs_true"))
    star = np.array([best[(t["seed"][i], t["kl_coef"][i])] for i in others])
    excess = t["value"][others] - star
    assert np.all(excess <= 1e-10 * (1 + np.abs(star))), excess.max()
    np.testing.assert_allclose(t["value_gap"][others], star - t["value"][others], atol=1e-10)
    # A non-trivial check: the estimated policies are strictly worse somewhere.
    assert excess.min() < -1e-4


def test_rs_panel_matches_exact_laws(tiny):
    """Recompute seed 0's RS rows directly from algorithms.offline.rejection_sampling (own schedule)."""
    t = tiny.table
    key = seed_keys(TINY.seed, SEEDS)[0]
    inst0, theta, _ = rk.fit_offline(key, TINY)
    proxy = np.asarray(inst0.phi @ theta)
    log_pi0 = inst0.log_pi0
    n_stages = TINY.rs_stages
    for eta in TINY.kl_coefs:
        inst = inst0._replace(kl_coef=np.float64(eta))
        etas = np.array([n_stages * eta / k for k in range(1, n_stages + 1)])  # 1/eta_k = k/(N eta)
        for budget in TINY.rs_budgets:
            counts = rs.split_budget(budget, n_stages)
            expected = {}
            for mode in ("empirical", "exact"):
                one = rs.accepted_law(log_pi0, proxy, eta, max_reward=mode, n_candidates=budget)
                expected[f"rso_{mode}"] = (one.log_law, float(np.mean(one.acceptance_rate)),
                                           budget * float(np.mean(one.acceptance_rate)))
                multi = rs.multistep_law(log_pi0, proxy, etas, max_reward=mode, n_candidates=counts)
                last = float(np.mean(multi.acceptance_rate[-1]))
                expected[f"multistep_{mode}"] = (multi.log_law[-1], last, counts[-1] * last)
            for alg, (log_law, rate, accepted) in expected.items():
                i = np.flatnonzero(_rows(t, panel="rs", algorithm=alg, seed=0, budget=budget)
                                   & np.isclose(t["kl_coef"], eta, rtol=1e-12))
                assert len(i) == 1, (alg, budget, eta)
                i = i[0]
                np.testing.assert_allclose(t["true_reward"][i], float(b.expected_reward(inst, log_law)), rtol=1e-8)
                np.testing.assert_allclose(t["kl_to_ref"][i], float(b.kl_to_reference(inst, log_law)),
                                           rtol=1e-7, atol=1e-12)
                np.testing.assert_allclose(t["acceptance_rate"][i], rate, rtol=1e-8)
                np.testing.assert_allclose(t["expected_accepted"][i], accepted, rtol=1e-8)
            # Exact M: both samplers output Gibbs(r_hat) = MLE-Gibbs; the stage rates telescope.
            gibbs = np.flatnonzero(_rows(t, panel="frontier", algorithm="mle_gibbs", seed=0)
                                   & np.isclose(t["kl_coef"], eta, rtol=1e-12))[0]
            for alg in ("rso_exact", "multistep_exact"):
                i = np.flatnonzero(_rows(t, panel="rs", algorithm=alg, seed=0, budget=budget)
                                   & np.isclose(t["kl_coef"], eta, rtol=1e-12))[0]
                np.testing.assert_allclose(t["true_reward"][i], t["true_reward"][gibbs], rtol=1e-9)
            one = np.flatnonzero(_rows(t, panel="rs", algorithm="rso_exact", seed=0, budget=budget)
                                 & np.isclose(t["kl_coef"], eta, rtol=1e-12))[0]
            multi = np.flatnonzero(_rows(t, panel="rs", algorithm="multistep_exact", seed=0, budget=budget)
                                   & np.isclose(t["kl_coef"], eta, rtol=1e-12))[0]
            # Per context prod_k alpha_k = alpha_one; the table holds context means, so compare exactly
            # per context through the library and check the table's one-step mean.
            rates = rs.multistep_law(log_pi0, proxy, etas).acceptance_rate
            np.testing.assert_allclose(np.prod(np.asarray(rates), 0),
                                       np.asarray(rs.exact_acceptance_rate(log_pi0, proxy, eta)), rtol=1e-9)
            np.testing.assert_allclose(t["overall_acceptance"][multi], np.mean(np.prod(np.asarray(rates), 0)),
                                       rtol=1e-8)
            assert t["min_stage_acceptance"][multi] >= t["acceptance_rate"][one] - 1e-12


def test_rs_empirical_law_matches_monte_carlo_sampler():
    """The empirical-M one-step law the panel uses agrees with the simulated RSO sampler."""
    import jax
    key = seed_keys(TINY.seed, SEEDS)[1]
    inst0, theta, _ = rk.fit_offline(key, TINY)
    proxy = inst0.phi @ theta
    eta, budget = 0.3, 6
    law = np.exp(np.asarray(rs.accepted_law(inst0.log_pi0, proxy, eta, max_reward="empirical",
                                            n_candidates=budget).log_law))
    sample = jax.vmap(lambda k: rs.rejection_sample(k, inst0.log_pi0, proxy, eta, budget, "empirical"))(
        jax.random.split(jax.random.key(7), 4000))
    actions, accepted = np.asarray(sample.actions), np.asarray(sample.accepted)  # [draws, n_x, budget]
    for x in range(TINY.instance.n_contexts):
        counts = np.bincount(actions[:, x][accepted[:, x]], minlength=TINY.instance.n_actions)
        freq = counts / counts.sum()
        assert np.max(np.abs(freq - law[x])) < 0.03, (x, freq, law[x])


NEURAL_OVERRIDES = ["reward=neural", "hidden=6", "neural_steps=40", "n_contexts=4", "n_actions=6", "dim=3",
                    "n=48", "n_kl=3", "kl_min=0.03", "kl_max=3.0", "rs_budgets=4", "rs_stages=2", "seed=5"]


def test_tiny_neural_run_through_registry(tmp_path):
    """reward=neural: the neural frontier algorithms replace option_i, Gibbs(r*) has zero gap, every
    gap is >= 0, the rs panel's exact-M law is Gibbs(r_net) (= neural_gibbs), and the plot draws."""
    from experiments.engine.config import apply_overrides
    exp = registry.get("reward-kl")
    config = apply_overrides(registry.preset(exp, "reward-kl", "quick"), NEURAL_OVERRIDES)
    assert config.instance.reward == "neural"
    seeds = 2
    res = exp.run(config, seeds, Progress())
    t = res.table
    for col in ("panel", "algorithm", "seed", "kl_coef", "budget", "kl_to_ref", "true_reward", "value",
                "value_gap", "proxy_reward", "acceptance_rate"):
        assert col in t, col
    front = set(np.asarray(t["algorithm"])[_rows(t, panel="frontier")].tolist())
    assert front == set(rk.NEURAL_FRONTIER) and "option_i" not in front
    assert set(np.asarray(t["algorithm"])[_rows(t, panel="rs")].tolist()) == set(rk.RS)
    assert res.n_rows == seeds * config.n_kl * (len(rk.NEURAL_FRONTIER) + len(rk.RS))
    assert np.all(np.isfinite(t["value_gap"]))
    np.testing.assert_allclose(t["value_gap"][_rows(t, algorithm="gibbs_true")], 0.0, atol=1e-12)
    assert np.all(t["value_gap"] >= -1e-12), t["value_gap"].min()
    # The realizable neural estimator is not exact at n = 48: its policies have positive gaps.
    assert t["value_gap"][_rows(t, algorithm="neural_gibbs")].max() > 1e-4
    for mode_alg in ("rso_exact", "multistep_exact"):
        np.testing.assert_allclose(t["true_reward"][_rows(t, algorithm=mode_alg)],
                                   t["true_reward"][_rows(t, algorithm="neural_gibbs")], rtol=1e-9)
    for key in ("frontier/neural_gibbs/overoptimization_drop", "frontier/neural_gibbs/overoptimized_seed_frac",
                "frontier/mle_gibbs/overoptimization_drop",
                "frontier/neural_linear_pess_beats_neural_gibbs/true_reward_grid_frac",
                "frontier/option_ii_beats_mle/true_reward_grid_frac"):
        assert key in res.summary, key
    assert not any(k.startswith("frontier/option_i_") or k.startswith("frontier/option_i/") for k in res.summary)
    names = {p.name for p in exp.plot(t, config, tmp_path)}
    assert "reward_kl_frontier.png" in names
