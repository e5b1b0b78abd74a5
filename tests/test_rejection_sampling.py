"""Best-of-n, RSO and P1's multi-step rejection sampling (docs/theory.md §2.5 item 2, §6, §9.2 invariant 12).

Exact laws are checked against brute-force enumeration of every candidate tuple; samplers against the
exact laws with chi-square / binomial tests on fixed seeds (each also shown to reject a wrong law).
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import bandits as b
from algorithms.offline import rejection_sampling as rs
from tests.helpers import kl_coefs, random_instance, random_log_policy, seeds, shapes

ALPHA = 1e-3      # a correct sampler fails a fixed-seed test with probability ~ALPHA
POWER = 1e-6      # a wrong law must be rejected at least this strongly

# Two contexts, K = 3: context 1 has a reward tie between actions 1 and 2.
PI0 = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
REWARD = np.array([[0.0, 1.0, 2.0], [1.0, 2.0, 2.0]])
LOG_PI0, R = jnp.log(jnp.asarray(PI0)), jnp.asarray(REWARD)
ETA = 0.5

# Property tests call jitted laws: one compile per shape instead of one per primitive and shape.
best_of_n_law = jax.jit(rs.best_of_n_law)
accepted_law = jax.jit(rs.accepted_law, static_argnames="max_reward")
multistep_law = jax.jit(rs.multistep_law, static_argnames=("max_reward", "n_candidates"))
exact_acceptance_rate = jax.jit(rs.exact_acceptance_rate)


# ---- brute-force NumPy references: enumerate all n-tuples of candidates ----

def np_best_of_n(pi0_row, r_row, n):
    law = np.zeros(len(pi0_row))
    for tup in itertools.product(range(len(pi0_row)), repeat=n):
        best = max(r_row[a] for a in tup)
        law[min(a for a in tup if r_row[a] == best)] += np.prod([pi0_row[a] for a in tup])
    return law


def np_rso_empirical(pi0_row, r_row, eta, n):
    """Pooled accepted law ``E[N_a] / E[N]`` and per-candidate rate ``E[N] / n``, empirical M."""
    expected_counts = np.zeros(len(pi0_row))
    for tup in itertools.product(range(len(pi0_row)), repeat=n):
        p = np.prod([pi0_row[a] for a in tup])
        m = max(r_row[a] for a in tup)
        for a in tup:
            expected_counts[a] += p * np.exp((r_row[a] - m) / eta)
    return expected_counts / expected_counts.sum(), expected_counts.sum() / n


def tiled(reps):
    """``reps`` independent copies of the two fixed contexts: rows ``2i`` and ``2i+1``."""
    return jnp.tile(LOG_PI0, (reps, 1)), jnp.tile(R, (reps, 1))


def counts_per_context(actions, mask, k=3):
    actions, mask = np.asarray(actions), np.asarray(mask)
    return [np.bincount(actions[c::2][mask[c::2]], minlength=k) for c in range(2)]


def chisquare_p(counts, law):
    return stats.chisquare(counts, counts.sum() * np.asarray(law)).pvalue


@st.composite
def small_tables(draw):
    """Small instances with frequent reward ties (integer rewards) and random pi0."""
    k = draw(st.integers(2, 4))
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    reward = rng.integers(0, 3, size=(2, k)).astype(float)
    return jnp.asarray(random_log_policy(rng, 2, k)), jnp.asarray(reward)


@st.composite
def schedules(draw):
    """Strictly decreasing ``(eta_1 > ... > eta_N)``, N in 1..4."""
    n_stages = draw(st.integers(1, 4))
    etas = [draw(kl_coefs)]
    for _ in range(n_stages - 1):
        etas.append(etas[-1] * draw(st.floats(1.05, 5.0)))
    return tuple(reversed(etas))


# ---- best-of-n ----

def test_best_of_n_law_fixed_case_with_tie():
    for n in (1, 2, 3):
        got = np.exp(np.asarray(rs.best_of_n_law(LOG_PI0, R, n)))
        for x in range(2):
            np.testing.assert_allclose(got[x], np_best_of_n(PI0[x], REWARD[x], n), rtol=0, atol=1e-14)
    # Tie between actions 1 and 2 in context 1: the lower index takes the tied top mass.
    np.testing.assert_allclose(np.exp(rs.best_of_n_law(LOG_PI0, R, 2))[1], [0.04, 0.75, 0.21], atol=1e-14)
    np.testing.assert_allclose(rs.best_of_n_law(LOG_PI0, R, 1), LOG_PI0, atol=1e-14)


@given(small_tables(), st.integers(1, 4))
def test_best_of_n_law_matches_enumeration(table, n):
    log_pi0, reward = table
    got = np.exp(np.asarray(best_of_n_law(log_pi0, reward, n)))
    for x in range(2):
        np.testing.assert_allclose(got[x], np_best_of_n(np.exp(np.asarray(log_pi0[x])),
                                                        np.asarray(reward[x]), n), rtol=1e-12, atol=1e-14)


def test_best_of_n_law_zero_mass_action_and_large_n():
    log_pi0 = jnp.log(jnp.array([[0.5, 0.0, 0.5]]))
    reward = jnp.array([[0.0, 5.0, 1.0]])
    law = rs.best_of_n_law(log_pi0, reward, 3)
    assert np.isneginf(law[0, 1])
    np.testing.assert_allclose(np.exp(law[0]), [0.125, 0.0, 0.875], atol=1e-15)
    # n = 1000: the best action's mass is 1 - 0.5^1000; the worst one's log mass is 1000 log 0.5.
    big = rs.best_of_n_law(log_pi0, reward, 1000)
    np.testing.assert_allclose(big[0, 0], 1000 * np.log(0.5), rtol=1e-13)
    np.testing.assert_allclose(big[0, 2], 0.0, atol=1e-15)


def test_sample_best_of_n_frequencies_match_law():
    reps, n = 10000, 3
    actions = rs.sample_best_of_n(jax.random.key(0), *tiled(reps), n)
    assert actions.shape == (2 * reps,) and actions.dtype == jnp.int32
    law = np.exp(np.asarray(rs.best_of_n_law(LOG_PI0, R, n)))
    counts = counts_per_context(actions, np.ones(2 * reps, bool))
    for x in range(2):
        assert chisquare_p(counts[x], law[x]) > ALPHA
        assert chisquare_p(counts[x], PI0[x]) < POWER
    # Power against the other tie rule (highest index wins) in context 1.
    assert chisquare_p(counts[1], [0.04, 0.21, 0.75]) < POWER


# ---- one-step RSO ----

def test_rso_exact_max_accepts_gibbs_at_the_exact_rate():
    reps, n = 5000, 8
    s = rs.rejection_sample(jax.random.key(1), *tiled(reps), ETA, n)
    assert s.actions.shape == s.accepted.shape == (2 * reps, n)
    assert int(s.n_proposals) == 2 * reps * n
    np.testing.assert_array_equal(s.max_reward, np.tile([2.0, 2.0], reps))
    np.testing.assert_allclose(s.acceptance_rate, np.asarray(s.accepted).mean(-1))
    gibbs = np.exp(np.asarray(b.gibbs_policy(LOG_PI0, R, ETA)))
    rate = np.asarray(rs.exact_acceptance_rate(LOG_PI0, R, ETA))
    np.testing.assert_allclose(rate, (PI0 * np.exp((REWARD - 2.0) / ETA)).sum(-1), rtol=1e-13)
    counts = counts_per_context(s.actions, s.accepted)
    accepted = np.asarray(s.accepted)
    for x in range(2):
        assert chisquare_p(counts[x], gibbs[x]) > ALPHA
        assert chisquare_p(counts[x], PI0[x]) < POWER
        assert stats.binomtest(int(accepted[x::2].sum()), reps * n, rate[x]).pvalue > ALPHA


@given(small_tables(), kl_coefs, st.integers(1, 3))
def test_empirical_max_law_matches_enumeration(table, eta, n):
    log_pi0, reward = table
    law = accepted_law(log_pi0, reward, eta, max_reward="empirical", n_candidates=n)
    for x in range(2):
        want_law, want_rate = np_rso_empirical(np.exp(np.asarray(log_pi0[x])), np.asarray(reward[x]), eta, n)
        np.testing.assert_allclose(np.exp(law.log_law[x]), want_law, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(law.acceptance_rate[x], want_rate, rtol=1e-10)


@given(seeds, shapes, kl_coefs, st.integers(1, 6))
def test_empirical_max_bias_direction(seed, shape, eta, n):
    """The empirical-M law is Gibbs reweighted towards low rewards: expected reward <= Gibbs's; it
    accepts at least as often as exact M; at n = 1 it is pi0; the exact-M law is Gibbs."""
    inst = random_instance(seed, shape, eta)
    emp = accepted_law(inst.log_pi0, inst.reward, eta, max_reward="empirical", n_candidates=n)
    exact = accepted_law(inst.log_pi0, inst.reward, eta)
    np.testing.assert_allclose(exact.log_law, b.gibbs_policy(inst.log_pi0, inst.reward, eta), atol=1e-12)
    np.testing.assert_allclose(exact.acceptance_rate, exact_acceptance_rate(inst.log_pi0, inst.reward, eta),
                               rtol=1e-13)
    mean_r = lambda log_law: np.sum(np.exp(np.asarray(log_law)) * np.asarray(inst.reward), -1)
    assert np.all(mean_r(emp.log_law) <= mean_r(exact.log_law) + 1e-12)
    assert np.all(np.asarray(emp.acceptance_rate) >= np.asarray(exact.acceptance_rate) * (1 - 1e-12))
    if n == 1:
        np.testing.assert_allclose(emp.log_law, inst.log_pi0, atol=1e-12)
        np.testing.assert_allclose(emp.acceptance_rate, 1.0, rtol=1e-14)


def test_empirical_max_bias_on_small_case():
    """RSO's empirical M on (pi0, r) = ((.6,.3,.1), (0,1,2)), eta = .5: with 2 candidates the accepted
    law puts ~0.51 on the worst action where Gibbs puts ~0.07; it converges to Gibbs as n grows."""
    gibbs = np.exp(np.asarray(b.gibbs_policy(LOG_PI0, R, ETA)))[0]
    tv = lambda n: 0.5 * np.abs(np.exp(np.asarray(rs.accepted_law(
        LOG_PI0, R, ETA, max_reward="empirical", n_candidates=n).log_law[0])) - gibbs).sum()
    law2 = np_rso_empirical(PI0[0], REWARD[0], ETA, 2)[0]
    assert law2[0] > 0.5 and gibbs[0] < 0.08
    np.testing.assert_allclose(tv(2), 0.5 * np.abs(law2 - gibbs).sum(), rtol=1e-12)
    assert tv(2) > 0.4
    assert tv(2) > tv(5) > tv(20) > tv(200) and tv(200) < 1e-6


def test_empirical_max_sampler_matches_its_law_not_gibbs():
    """Statistically: the first candidate of each replicate, when accepted, follows the empirical-M
    law (replicates are independent; candidates within one are not), which Gibbs fails."""
    reps, n = 10000, 2
    s = rs.rejection_sample(jax.random.key(2), *tiled(reps), ETA, n, max_reward="empirical")
    actions, accepted = np.asarray(s.actions), np.asarray(s.accepted)
    assert np.all(accepted.any(-1))                     # the empirical maximum is always accepted
    np.testing.assert_array_equal(s.max_reward, np.take_along_axis(np.tile(REWARD, (reps, 1)), actions, -1).max(-1))
    law = rs.accepted_law(LOG_PI0, R, ETA, max_reward="empirical", n_candidates=n)
    gibbs = np.exp(np.asarray(b.gibbs_policy(LOG_PI0, R, ETA)))
    counts = counts_per_context(actions[:, 0], accepted[:, 0])
    for x in range(2):
        assert chisquare_p(counts[x], np.exp(law.log_law[x])) > ALPHA
        assert chisquare_p(counts[x], gibbs[x]) < POWER
        assert stats.binomtest(int(accepted[x::2, 0].sum()), reps, float(law.acceptance_rate[x])).pvalue > ALPHA


# ---- multi-step RS (P1 §2.5), invariant 12 ----

@given(seeds, shapes, schedules())
def test_invariant12_telescoping(seed, shape, etas):
    inst = random_instance(seed, shape, etas[-1])
    ms = multistep_law(inst.log_pi0, inst.reward, jnp.asarray(etas))
    one = np.asarray(exact_acceptance_rate(inst.log_pi0, inst.reward, etas[-1]))
    rates = np.asarray(ms.acceptance_rate)
    assert rates.shape == (len(etas), shape[0])
    np.testing.assert_allclose(np.prod(rates, 0), one, rtol=1e-12, atol=0)
    np.testing.assert_allclose(np.log(rates).sum(0), np.log(one), rtol=1e-12, atol=1e-12)
    assert np.all(rates >= one * (1 - 1e-12))
    assert np.all(rates <= 1.0)
    for k, eta in enumerate(etas):
        np.testing.assert_allclose(ms.log_law[k], b.gibbs_policy(inst.log_pi0, inst.reward, eta),
                                   rtol=0, atol=1e-12)


def test_single_stage_is_one_step():
    for mode, n in (("exact", None), ("empirical", 3)):
        ms = rs.multistep_law(LOG_PI0, R, (ETA,), max_reward=mode, n_candidates=n)
        one = rs.accepted_law(LOG_PI0, R, ETA, max_reward=mode, n_candidates=n)
        np.testing.assert_allclose(ms.log_law[0], one.log_law, atol=1e-14)
        np.testing.assert_allclose(ms.acceptance_rate[0], one.acceptance_rate, rtol=1e-14)


def test_multistep_sampler_last_stage_is_gibbs_and_rates_match():
    reps, etas, counts = 4000, (2.0, 1.0, ETA), (4, 4, 8)
    s = rs.multistep_rejection_sample(jax.random.key(3), *tiled(reps), jnp.asarray(etas), counts)
    assert s.actions.shape == (2 * reps, 8) and s.stage_acceptance_rate.shape == (3, 2 * reps)
    assert int(s.n_proposals) == 2 * reps * 16
    law = rs.multistep_law(LOG_PI0, R, etas)
    np.testing.assert_allclose(s.stage_expected_acceptance_rate, np.tile(law.acceptance_rate, (1, reps)),
                               rtol=1e-14)
    gibbs = np.exp(np.asarray(b.gibbs_policy(LOG_PI0, R, ETA)))
    last = counts_per_context(s.actions, s.accepted)
    for x in range(2):
        assert chisquare_p(last[x], gibbs[x]) > ALPHA
        assert chisquare_p(last[x], np.exp(np.asarray(b.gibbs_policy(LOG_PI0, R, 1.0)))[x]) < POWER
        for k, n in enumerate(counts):
            accepted = int(round(float(np.asarray(s.stage_acceptance_rate[k, x::2]).sum()) * n))
            assert stats.binomtest(accepted, reps * n, float(law.acceptance_rate[k, x])).pvalue > ALPHA


def test_multistep_empirical_max_last_stage_matches_compounded_law():
    reps, etas, n = 10000, (1.0, ETA), 2
    s = rs.multistep_rejection_sample(jax.random.key(4), *tiled(reps), etas, n, max_reward="empirical")
    law = rs.multistep_law(LOG_PI0, R, etas, max_reward="empirical", n_candidates=n)
    one_step = np.exp(np.asarray(rs.accepted_law(LOG_PI0, R, ETA, max_reward="empirical",
                                                 n_candidates=n).log_law))
    counts = counts_per_context(np.asarray(s.actions)[:, 0], np.asarray(s.accepted)[:, 0])
    for x in range(2):
        assert chisquare_p(counts[x], np.exp(law.log_law[-1, x])) > ALPHA
        assert chisquare_p(counts[x], one_step[x]) < POWER


def test_budget_split_and_equal_budget_comparison():
    assert rs.split_budget(10, 3) == (3, 3, 4)
    assert rs.split_budget(3, 3) == (1, 1, 1)
    assert rs.split_budget(7, 1) == (7,)
    etas = (2.0, 1.0, ETA)
    one, multi = rs.equal_budget_comparison(jax.random.key(5), LOG_PI0, R, etas, 10)
    assert int(one.n_proposals) == int(multi.n_proposals) == 2 * 10
    assert one.actions.shape == (2, 10) and multi.actions.shape == (2, 4)
    np.testing.assert_allclose(np.prod(multi.stage_expected_acceptance_rate, 0),
                               rs.exact_acceptance_rate(LOG_PI0, R, ETA), rtol=1e-12)


# ---- batching and compilation ----

def _assert_trees_equal(got, want):
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-13, atol=0)


def test_vmap_over_keys_equals_loop_and_jit_equals_eager():
    etas = jnp.array([1.0, ETA])
    keys = jax.random.split(jax.random.key(8), 3)
    samplers = {
        "bon": lambda k: rs.sample_best_of_n(k, LOG_PI0, R, 3),
        "rso": lambda k: rs.rejection_sample(k, LOG_PI0, R, ETA, 5),
        "rso_emp": lambda k: rs.rejection_sample(k, LOG_PI0, R, ETA, 5, max_reward="empirical"),
        "multi": lambda k: rs.multistep_rejection_sample(k, LOG_PI0, R, etas, (2, 5)),
        "multi_emp": lambda k: rs.multistep_rejection_sample(k, LOG_PI0, R, etas, 5, max_reward="empirical"),
    }
    for name, f in samplers.items():
        jitted = jax.jit(f)
        batched = jax.jit(jax.vmap(f))(keys)
        for i, k in enumerate(keys):
            _assert_trees_equal(jax.tree_util.tree_map(lambda a: a[i], batched), jitted(k))
        _assert_trees_equal(jitted(keys[0]), f(keys[0]))


def test_traced_schedule_and_counts_compile_once():
    traces = []

    def run(key, kl_coefs, n):
        traces.append(None)
        return (rs.multistep_rejection_sample(key, LOG_PI0, R, kl_coefs, 4),
                rs.best_of_n_law(LOG_PI0, R, n),
                rs.accepted_law(LOG_PI0, R, kl_coefs[-1], max_reward="empirical", n_candidates=n))

    jitted = jax.jit(run)
    for etas, n in (((2.0, 1.0, ETA), 2), ((5.0, 0.3, 0.1), 3)):
        got = jitted(jax.random.key(9), jnp.asarray(etas), jnp.asarray(n))
        _assert_trees_equal(got, run(jax.random.key(9), etas, n))
    assert len(traces) == 3          # one jit trace plus the two eager reference calls
    # vmap over schedules of equal length equals a loop.
    grid = jnp.array([[2.0, 1.0, ETA], [5.0, 0.3, 0.1]])
    batched = jax.vmap(lambda e: rs.multistep_law(LOG_PI0, R, e))(grid)
    for i in range(2):
        _assert_trees_equal(jax.tree_util.tree_map(lambda a: a[i], batched), rs.multistep_law(LOG_PI0, R, grid[i]))


# ---- validation ----

@pytest.mark.parametrize("call, field", [
    (lambda: rs.best_of_n_law(LOG_PI0, R, 0), "n=0"),
    (lambda: rs.best_of_n_law(LOG_PI0, R, 1.5), "n=1.5"),
    (lambda: rs.best_of_n_law(LOG_PI0, R, jnp.asarray(0)), "n="),
    (lambda: rs.sample_best_of_n(jax.random.key(0), LOG_PI0, R, True), "n=True"),
    (lambda: rs.sample_best_of_n(jax.random.key(0), LOG_PI0, R, jnp.asarray(3)), "n="),
    (lambda: rs.rejection_sample(jax.random.key(0), LOG_PI0, R, 0.0, 4), "kl_coef=0.0"),
    (lambda: rs.rejection_sample(jax.random.key(0), LOG_PI0, R, float("nan"), 4), "kl_coef=nan"),
    (lambda: rs.rejection_sample(jax.random.key(0), LOG_PI0, R, -1.0, 4), "kl_coef=-1.0"),
    (lambda: rs.rejection_sample(jax.random.key(0), LOG_PI0, R, 1.0, 0), "n_candidates=0"),
    (lambda: rs.rejection_sample(jax.random.key(0), LOG_PI0, R, 1.0, 4, "max"), "max_reward='max'"),
    (lambda: rs.exact_acceptance_rate(LOG_PI0, R, jnp.array([1.0, 2.0])), "kl_coef="),
    (lambda: rs.accepted_law(LOG_PI0, R, 1.0, max_reward="empirical"), "n_candidates=None"),
    (lambda: rs.multistep_law(LOG_PI0, R, (1.0, 1.0)), r"kl_coefs=\(1.0, 1.0\)"),
    (lambda: rs.multistep_law(LOG_PI0, R, (0.5, 1.0)), "kl_coefs="),
    (lambda: rs.multistep_law(LOG_PI0, R, (1.0, 0.0)), "kl_coefs="),
    (lambda: rs.multistep_law(LOG_PI0, R, ()), "kl_coefs="),
    (lambda: rs.multistep_law(LOG_PI0, R, [[1.0]]), "kl_coefs="),
    (lambda: rs.multistep_rejection_sample(jax.random.key(0), LOG_PI0, R, (2.0, 1.0), (3,)),
     r"n_candidates=\(3,\)"),
    (lambda: rs.multistep_rejection_sample(jax.random.key(0), LOG_PI0, R, (2.0, 1.0), (3, 0)), "n_candidates=0"),
    (lambda: rs.split_budget(2, 3), "total_proposals=2"),
    (lambda: rs.split_budget(5, 0), "n_stages=0"),
    (lambda: rs.best_of_n_law(LOG_PI0, R[:, :2], 2), "reward has shape"),
    (lambda: rs.best_of_n_law(LOG_PI0[0], R[0], 2), "log_pi0 has shape"),
    (lambda: rs.best_of_n_law(LOG_PI0 + 0.1, R, 2), r"log_pi0\[\d\] sums to"),
    (lambda: rs.best_of_n_law(LOG_PI0, R.at[0, 0].set(jnp.nan), 2), "reward contains non-finite"),
])
def test_validation_errors(call, field):
    with pytest.raises(ValueError, match=field):
        call()


def test_validation_message_says_what_is_allowed():
    with pytest.raises(ValueError, match="strictly decreasing"):
        rs.multistep_rejection_sample(jax.random.key(0), LOG_PI0, R, (1.0, 2.0), 3)
    with pytest.raises(ValueError, match="a Python integer >= 1"):
        rs.sample_best_of_n(jax.random.key(0), LOG_PI0, R, 0)
    with pytest.raises(ValueError, match=r"\(0, inf\]"):
        rs.exact_acceptance_rate(LOG_PI0, R, 0.0)
