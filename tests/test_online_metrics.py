"""The online loop's regrets of the queries made, its information diagnostics and the ``distinct`` modifier
(issue 16; ``algorithms.online.loop``, ``algorithms.online.strategies``; docs/theory.md §2.4), each against
an independent NumPy reference: enumeration of the joint pair law, the mean over drawn pairs, a replay of the
loop's data."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bandits as b
from algorithms.online import agents, strategies
from algorithms.online import loop as online
from algorithms.online.pairings import PAIRINGS, pairing_law
from experiments.catalogue import batch_size, bonus_compare, hybrid, online_explore
from experiments.engine.config import apply_overrides, config_from_dict, config_to_dict, replace
from tests.test_online import CFG, CONFIDENCE, OPTIONS, _instance, _loop

N_X, K = CFG.n_contexts, CFG.n_actions


# --- NumPy references -------------------------------------------------------------------------------

def _np(inst):
    return (np.asarray(inst.reward), np.asarray(inst.d0), np.asarray(inst.log_pi0), float(inst.kl_coef))


def _np_value(inst, p):
    """J(pi) = E_x [E_pi r - eta KL(pi || pi0)] for a probability table p [n_x, K]."""
    r, d0, lp0, eta = _np(inst)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * (np.log(p) - lp0), 0.0).sum(-1)
    return float(d0 @ ((p * r).sum(-1) - eta * kl))


def _np_pi_star(inst):
    r, d0, lp0, eta = _np(inst)
    logits = lp0 + r / eta
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(-1, keepdims=True)


def _np_subopt(inst, p):
    return _np_value(inst, _np_pi_star(inst)) - _np_value(inst, p)


def _np_subopt_kl(inst, p):
    _, d0, _, eta = _np(inst)
    star = _np_pi_star(inst)
    return _np_subopt(inst, p) + eta * float(d0 @ (star * (np.log(star) - np.log(p))).sum(-1))


def _np_costs(inst, joint, p_agent):
    """One query's costs by enumerating every (x, a1, a2) of the joint law ``joint [n_x, K, K]``."""
    r, d0, _, _ = _np(inst)
    p1, p2 = joint.sum(2), joint.sum(1)
    avg = weak = 0.0
    for x in range(joint.shape[0]):
        best = r[x].max()
        for a1 in range(joint.shape[1]):
            for a2 in range(joint.shape[2]):
                avg += d0[x] * joint[x, a1, a2] * (best - (r[x, a1] + r[x, a2]) / 2)
                weak += d0[x] * joint[x, a1, a2] * min(best - r[x, a1], best - r[x, a2])
    return {"agent_regret_kl": _np_subopt_kl(inst, p_agent),
            "query_regret": (_np_subopt(inst, p1) + _np_subopt(inst, p2)) / 2,
            "query_regret_kl": (_np_subopt_kl(inst, p1) + _np_subopt_kl(inst, p2)) / 2,
            "avg_regret": avg, "weak_regret": weak}


def _random_joint(rng, n_x=N_X, n_actions=K):
    return rng.dirichlet(np.full(n_actions * n_actions, 0.7), size=n_x).reshape(n_x, n_actions, n_actions)


INST = _instance(0)
_costs = jax.jit(online.query_costs)   # one compilation for every example of one shape
_distinct = jax.jit(strategies.distinct_law)
_pairing_law = jax.jit(pairing_law, static_argnums=(0, 3))


# --- the regrets of the queries made ----------------------------------------------------------------

@given(st.integers(0, 10_000))
@settings(max_examples=6, deadline=None)
def test_query_costs_match_enumeration_of_the_joint_law(seed):
    """The exact per-query costs of a (correlated) pair law equal the NumPy sum over every (x, a1, a2)."""
    rng = np.random.default_rng(seed)
    joint = _random_joint(rng)
    p_agent = rng.dirichlet(np.ones(K), size=N_X)
    got = _costs(INST, jnp.log(jnp.asarray(p_agent)), jnp.log(jnp.asarray(joint)))
    want = _np_costs(INST, joint, p_agent)
    for name, value in want.items():
        np.testing.assert_allclose(float(getattr(got, name)), value, rtol=1e-11, atol=1e-13, err_msg=name)
    assert float(got.weak_regret) <= float(got.avg_regret)


def test_query_costs_are_the_mean_cost_of_drawn_pairs():
    """Over pairs drawn by the loop's sampler, the realised costs average to the exact expectations (5 standard
    errors): r*(x, a*) - (r*(a1) + r*(a2))/2, r*(x, a*) - max(r*(a1), r*(a2)), and J(pi*) - (J^(a1) + J^(a2))/2
    with the one-draw estimate J^(a_i) = r*(x, a_i) - eta log(pi_i(a_i | x) / pi0(a_i | x))."""
    rng = np.random.default_rng(5)
    joint = _random_joint(rng)
    log_joint = jnp.log(jnp.asarray(joint))
    n = 8_000
    data = jax.jit(b.sample_joint_preference_data, static_argnums=3)(jax.random.key(6), INST, log_joint, n)
    x, a1, a2 = (np.asarray(f) for f in (data.x, data.a1, data.a2))
    r, _, lp0, eta = _np(INST)
    p1, p2 = joint.sum(2), joint.sum(1)
    best = r.max(-1)[x]
    j_star = _np_value(INST, _np_pi_star(INST))
    j1 = r[x, a1] - eta * (np.log(p1[x, a1]) - lp0[x, a1])
    j2 = r[x, a2] - eta * (np.log(p2[x, a2]) - lp0[x, a2])
    drawn = {"avg_regret": best - (r[x, a1] + r[x, a2]) / 2,
             "weak_regret": best - np.maximum(r[x, a1], r[x, a2]),
             "query_regret": j_star - (j1 + j2) / 2}
    exact = _costs(INST, INST.log_pi0, log_joint)
    for name, cost in drawn.items():
        se = cost.std(ddof=1) / np.sqrt(n)
        assert abs(cost.mean() - float(getattr(exact, name))) < 5 * se, name


def test_query_regret_of_a_product_law_reduces_to_the_agents_own():
    """Self-play charges pi_t twice (query_regret_kl = agent_regret_kl); (pi_t, uniform) charges the average."""
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(K), size=N_X)
    lp = jnp.log(jnp.asarray(p))
    self_play = _costs(INST, lp, strategies.independent(lp, lp).log_joint)
    np.testing.assert_allclose(float(self_play.query_regret_kl), float(self_play.agent_regret_kl), rtol=1e-12)
    np.testing.assert_allclose(float(self_play.query_regret), _np_subopt(INST, p), rtol=1e-11)
    u = b.uniform_policy(N_X, K, jnp.float64)
    mixed = _costs(INST, lp, strategies.independent(lp, u).log_joint)
    np.testing.assert_allclose(float(mixed.query_regret_kl),
                               (_np_subopt_kl(INST, p) + _np_subopt_kl(INST, np.full((N_X, K), 1 / K))) / 2,
                               rtol=1e-11)


@given(st.integers(0, 10_000), st.sampled_from(PAIRINGS))
@settings(max_examples=6, deadline=None)
def test_pairing_laws_keep_tiny_masses_to_relative_precision(seed, name):
    """With probabilities down to 1e-60 every pair keeps its positive mass to relative precision (so the
    marginals' KL(pi* || .) in the query regret stays finite): against enumerating all K^k draws (K = 3,
    k = 4), a sum of positive products that NumPy computes without cancellation."""
    rng = np.random.default_rng(seed)
    n_actions, k = 3, 4
    p = rng.dirichlet(np.ones(n_actions), size=2) * 10.0 ** -rng.integers(0, 60, size=(2, n_actions))
    p /= p.sum(-1, keepdims=True)
    score = rng.normal(size=(2, n_actions))
    got = np.asarray(_pairing_law(name, jnp.log(jnp.asarray(p)), jnp.asarray(score), k))
    want = np.zeros((2, n_actions, n_actions))
    for x in range(2):
        rank = np.argsort(np.argsort(score[x], kind="stable"), kind="stable")
        for draws in itertools.product(range(n_actions), repeat=k):
            srt = sorted(draws, key=lambda a: rank[a])
            pairs = {"max_min": [(srt[-1], srt[0])], "best_second": [(srt[-1], srt[-2])],
                     "best_quartile": [(srt[-1], srt[k // 4])]}.get(name, [(srt[-1], srt[j]) for j in range(k - 1)])
            for a1, a2 in pairs:
                want[x, a1, a2] += np.prod(p[x, list(draws)]) / len(pairs)
    positive = want > 0
    np.testing.assert_allclose(got[positive], np.log(want[positive]), rtol=1e-9, atol=1e-9)
    assert np.all(np.isneginf(got[~positive]))


# --- diagnostics --------------------------------------------------------------------------------------

def test_identical_mass_and_log_det_match_numpy():
    rng = np.random.default_rng(2)
    joint = _random_joint(rng)
    np.testing.assert_allclose(np.asarray(strategies.identical_mass(jnp.log(jnp.asarray(joint)))),
                               np.trace(joint, axis1=1, axis2=2), rtol=1e-12)
    z = rng.normal(size=(30, 3))
    gram = 0.5 * np.eye(3) + z.T @ z
    got = float(online.log_det(jnp.linalg.cholesky(jnp.asarray(gram))))
    np.testing.assert_allclose(got, np.linalg.slogdet(gram)[1], rtol=1e-12)


def test_loop_metrics_equal_a_numpy_replay_of_its_data():
    """``uniform+distinct`` has a known constant pair law (uniform off the diagonal), so the loop's data can be
    replayed with its own stream (batch t = comparisons t m .. t m + m - 1 of the data key): the cumulative
    regrets are t m times the NumPy costs of that law, no pair is identical, and log det of the Gram and of
    the Fisher information at theta* of the data of pi_t equal NumPy's on the replayed comparisons."""
    key = jax.random.key(11)
    tr = jax.tree.map(np.asarray, _loop(key, INST, "uniform+distinct"))
    m, n_iter = OPTIONS.batch_size, OPTIONS.iterations + 1
    law = (1.0 - np.eye(K))[None] / (K * (K - 1)) * np.ones((N_X, 1, 1))
    costs = _np_costs(INST, law, np.full((N_X, K), 1 / K))
    for name in ("query_regret", "query_regret_kl", "avg_regret", "weak_regret"):
        np.testing.assert_allclose(getattr(tr, name), m * np.arange(n_iter) * costs[name], rtol=1e-10, err_msg=name)
    np.testing.assert_allclose(tr.identical_pairs, 0.0, atol=1e-300)
    k_data = jax.random.split(key, 3)[0]
    data = b.sample_joint_preference_data(k_data, INST, jnp.log(jnp.asarray(law)), n_iter * m)
    phi, theta = np.asarray(INST.phi), np.asarray(INST.theta_star)
    x, a1, a2 = (np.asarray(f) for f in (data.x, data.a1, data.a2))
    assert np.all(a1 != a2)
    z = phi[x, a1] - phi[x, a2]
    slope = 1.0 / (2.0 + 2.0 * np.cosh(z @ theta))   # sigma'(u) = sigma(u) (1 - sigma(u))
    lam = CONFIDENCE.lam
    for t in range(n_iter):
        zt, st_ = z[: t * m], slope[: t * m]
        gram = lam * np.eye(CFG.dim) + zt.T @ zt
        fisher = lam * np.eye(CFG.dim) + (zt * st_[:, None]).T @ zt
        np.testing.assert_allclose(tr.log_det_gram[t], np.linalg.slogdet(gram)[1], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(tr.log_det_fisher[t], np.linalg.slogdet(fisher)[1], rtol=1e-10, atol=1e-12)


# --- the distinct modifier ----------------------------------------------------------------------------

@given(st.integers(0, 10_000), st.integers(0, N_X - 1))
@settings(max_examples=10, deadline=None)
def test_distinct_law_is_the_law_conditioned_on_distinct_actions(seed, degenerate):
    """Zero diagonal mass; off the diagonal P(a1, a2) / P(a1 != a2), exact even for an off-diagonal mass of
    1e-200; a context whose law sits on the diagonal keeps a1's law and draws a2 uniformly among the others."""
    rng = np.random.default_rng(seed)
    joint = _random_joint(rng)
    log_joint = np.log(joint)
    off = ~np.eye(K, dtype=bool)
    tiny = (degenerate + 1) % N_X
    log_joint[tiny][off] -= 460.0                       # off-diagonal mass about 1e-200
    diag_only = rng.dirichlet(np.ones(K))
    log_joint[degenerate] = -np.inf
    log_joint[degenerate][np.diag_indices(K)] = np.log(diag_only)
    got = np.exp(np.asarray(_distinct(jnp.asarray(log_joint))))
    np.testing.assert_allclose(got.sum((1, 2)), 1.0, rtol=1e-12)
    assert np.all(np.diagonal(got, axis1=1, axis2=2) == 0.0)
    for x in range(N_X):
        if x == degenerate:
            want = np.where(off, diag_only[:, None] / (K - 1), 0.0)
        else:
            p = np.where(off, joint[x], 0.0)
            want = p / p.sum()
        np.testing.assert_allclose(got[x], want, rtol=1e-11, atol=1e-300, err_msg=f"context {x}")


def test_distinct_law_with_one_action_is_unchanged_and_strategies_take_the_suffix():
    one = jnp.zeros((3, 1, 1))
    np.testing.assert_array_equal(np.asarray(strategies.distinct_law(one)), 0.0)
    algorithm = agents.get("xpo+distinct")
    assert (algorithm.strategy, algorithm.agent, dict(algorithm.options)) == ("calibration+distinct", "dpo",
                                                                              {"bonus": "xpo"})
    assert agents.get("pi_uniform+distinct").strategy == "pi_uniform+distinct"
    assert "uniform+distinct" not in agents.names() and "pi_uniform" in agents.names()
    for bad in ("uniform+other", "no_such+distinct", "+distinct"):
        with pytest.raises(ValueError, match="optionally with the suffix '\\+distinct'"):
            agents.check_name("algorithms", bad)
    with pytest.raises(ValueError, match="strategy='no_such\\+distinct' is not allowed"):
        strategies.get("no_such+distinct")


def test_pi_uniform_pairs_the_main_agent_with_uniform():
    """``(pi_t, uniform)``: the first marginal is pi_t, the second uniform, independently (a product law)."""
    log_pi = jnp.log(jnp.asarray(np.random.default_rng(3).dirichlet(np.ones(K), size=N_X)))
    view = strategies.StrategyView(b.public_view(INST), None, None, None, log_pi, None, None, None, None,
                                   jnp.asarray(0), None, strategies.StrategyOptions())
    joint = np.exp(np.asarray(strategies.get("pi_uniform")(view).log_joint))
    np.testing.assert_allclose(joint, np.exp(np.asarray(log_pi))[:, :, None] / K * np.ones((1, 1, K)), rtol=1e-12)


# --- configs ------------------------------------------------------------------------------------------

def test_rank_by_is_validated_and_old_records_read_under_the_new_name():
    quick = bonus_compare.presets["quick"]
    assert quick.rank_by == "subopt"
    assert apply_overrides(quick, ["rank_by=weak_regret"]).rank_by == "weak_regret"
    with pytest.raises(ValueError, match="rank_by='log_det_gram' is not allowed"):
        replace(quick, rank_by="log_det_gram")
    record = {k: v for k, v in config_to_dict(quick).items() if k != "rank_by"}
    old = config_from_dict(bonus_compare.Config, {**record, "metric": "regret_kl"})
    assert old.rank_by == "agent_regret_kl"
    assert replace(hybrid.presets["quick"], strategy="pi0+distinct").strategy == "pi0+distinct"
    assert replace(online_explore.presets["quick"], algorithms=("uniform+distinct",)).algorithms == (
        "uniform+distinct",)
    with pytest.raises(ValueError, match="algorithms=.*is not allowed"):
        replace(online_explore.presets["quick"], algorithms=("uniform+distinct", "uniform+distinct"))


def test_regime_presets_pair_the_simple_strategies_with_and_without_distinct():
    """Issue 16 item 6: where exploration should matter (K >= 256, small kl_coef, poor coverage) and where not."""
    explore, plain = bonus_compare.presets["regime_explore"], bonus_compare.presets["regime_plain"]
    assert explore.instance.n_actions >= 256 and explore.instance.kl_coef < plain.instance.kl_coef
    assert (explore.settings, plain.settings) == (("hard",), ("easy",)) and explore.baseline == "enhancer"
    want = {f"{a}{s}" for a in ("enhancer", "uniform", "pi_uniform", "pi0", "self_play") for s in ("", "+distinct")}
    assert set(explore.algorithm_names) == set(plain.algorithm_names) == want
    assert min(bonus_compare.seeds["regime_explore"], bonus_compare.seeds["regime_plain"]) >= 256


def test_online_paper_presets_run_at_least_256_seeds():
    """Issue 16: P1's online claims are restated from paper presets of at least 256 seeds."""
    for module in (online_explore, batch_size, hybrid, bonus_compare):
        assert module.seeds["paper"] >= 256, module.__name__


# --- factored pairs and the data-dependent radius -----------------------------------------------------

def test_a_factored_pair_is_priced_marginalised_and_sampled_as_its_joint_table():
    """``independent`` keeps its factors; costs, marginals and identical mass from them equal those of the
    bare ``[n_x, K, K]`` table (1e-12), and sampling from the factors draws the same contexts and, up to
    rounding at CDF boundaries, the same actions as sampling from the table."""
    rng = np.random.default_rng(8)
    lp1, lp2 = (jnp.log(jnp.asarray(rng.dirichlet(np.ones(K), size=N_X))) for _ in range(2))
    pair = strategies.independent(lp1, lp2)
    table = strategies.Pair(pair.log_joint, pair.info)
    assert pair.factored and not table.factored
    got, want = _costs(INST, lp1, pair), _costs(INST, lp1, table)
    for name in online.Regrets._fields:
        np.testing.assert_allclose(float(getattr(got, name)), float(getattr(want, name)), rtol=1e-12, atol=1e-15)
    for f in (strategies.first_marginal, strategies.second_marginal, strategies.pair_identical_mass):
        np.testing.assert_allclose(np.asarray(f(pair)), np.asarray(f(table)), rtol=1e-12, atol=1e-15)
    n = 4000
    from_factors = b.sample_preference_data(jax.random.key(3), INST, lp1, lp2, n)
    from_table = b.sample_joint_preference_data(jax.random.key(3), INST, pair.log_joint, n)
    np.testing.assert_array_equal(from_factors.x, from_table.x)
    np.testing.assert_array_equal(from_factors.a1, from_table.a1)
    assert np.mean(np.asarray(from_factors.a2 == from_table.a2)) > 0.999


def test_the_loop_reads_the_laplace_radius_from_its_data():
    """``beta_mode=laplace`` in the loop: before any data (Sigma = H = lam I) the radius is
    ``sqrt(chi2_{d, 1-delta}) + B sqrt(lam) d^(1/64)`` (scipy's quantile; ``d^(1/64)``: the eigenvalue bound
    ``tr(A^32)^(1/32)`` of ``A = I / lam`` is ``d^(1/32) / lam``), so round 0's width is that over sqrt_d's ``sqrt(d)``
    times sqrt_d's width; afterwards it follows the data (finite, positive, different from sqrt_d's)."""
    from scipy import stats as sps
    from algorithms.core import confidence as conf
    key, inst = jax.random.key(4), _instance(3)
    laplace = conf.ConfidenceConfig(beta_mode="laplace")
    tr_l = _loop(key, inst, "optimism", confidence=laplace)
    tr_s = _loop(key, inst, "optimism", confidence=conf.ConfidenceConfig(beta_mode="sqrt_d"))
    beta0 = np.sqrt(sps.chi2.ppf(1 - laplace.delta, CFG.dim)) + CFG.reward_norm * np.sqrt(laplace.lam) * CFG.dim ** (1 / 64)
    np.testing.assert_allclose(float(tr_l.confidence_width[0]),
                               float(tr_s.confidence_width[0]) * beta0 / np.sqrt(CFG.dim), rtol=1e-8)
    width = np.asarray(tr_l.confidence_width)
    assert np.all(np.isfinite(width)) and np.all(width > 0)
    assert not np.allclose(width[1:], np.asarray(tr_s.confidence_width)[1:])


def test_select_mixes_factored_and_joint_strategies_in_one_program():
    """``strategies.select`` runs ``branches[index]`` for a traced index; when product and joint laws are mixed,
    every pair carries factors (a table's: its marginals) and a traced ``product`` flag, so the loop's metrics
    equal those of each branch run alone (self-play still sampled from its factors, the table from the table)."""
    key, inst = jax.random.key(2), _instance(5)
    tr_self = _loop(key, inst, "self_play")
    names = ("self_play", "uniform+distinct")
    group = [strategies.get(n) for n in names]
    for i, name in enumerate(names):
        mixed = jax.jit(lambda k, j: _loop(k, inst, strategies.select(j, group)))(key, i)
        alone = _loop(key, inst, name)
        for field in ("subopt", "query_regret", "identical_pairs", "log_det_gram"):
            np.testing.assert_allclose(np.asarray(getattr(mixed, field)), np.asarray(getattr(alone, field)),
                                       rtol=1e-9, atol=1e-12, err_msg=f"{name} {field}")
    assert float(tr_self.identical_pairs[-1]) > 0.0
