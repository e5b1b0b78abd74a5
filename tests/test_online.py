"""The online loop, its strategies, pairings, enhancer, agents and their registry (docs/theory.md §2.4-2.5, §6, §9.2)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bandits as b
from algorithms.core import confidence as conf
from algorithms.core.bt_mle import bt_hessian
from algorithms.offline.gshf import linear_gibbs
from algorithms.online import agents, iterative_dpo, strategies
from algorithms.online import loop as online
from algorithms.online.enhancer import enhancer_objective, enhancer_policy
from algorithms.online.pairings import PAIRINGS, pairing_law

CFG = b.InstanceConfig(n_contexts=6, n_actions=5, dim=3, reward_norm=2.0, kl_coef=0.3)
OPTIONS = online.OnlineOptions(iterations=5, batch_size=16, newton_steps=20, dpo_steps=20)
CONFIDENCE = conf.ConfidenceConfig()


def _loop(key, inst, strategy, options=OPTIONS, confidence=CONFIDENCE, agent="gibbs", hidden=CFG.hidden, **kwargs):
    """``run_online`` with a strategy (name or function) and an agent of the registry by name."""
    strategy = strategies.get(strategy) if isinstance(strategy, str) else strategy
    return online.run_online(key, inst, strategy, agents.AGENTS[agent], options, confidence,
                             reward_norm=CFG.reward_norm, hidden=hidden, **kwargs)


def _instance(seed, coverage=-0.8, temperature=4.0):
    return b.make_instance(jax.random.key(seed), CFG, jnp.float64, coverage=coverage, temperature=temperature)


@given(st.integers(0, 10_000), st.sampled_from(PAIRINGS))
@settings(max_examples=8)
def test_pairing_laws_match_brute_force_enumeration(seed, name):
    """Exact order-statistic laws against enumerating all K^k draws (K = 3, k = 4)."""
    rng = np.random.default_rng(seed)
    k, n_actions = 4, 3
    p = rng.dirichlet(np.ones(n_actions), size=2)
    score = rng.normal(size=(2, n_actions))
    got = np.exp(np.asarray(pairing_law(name, jnp.log(jnp.asarray(p)), jnp.asarray(score), k)))
    want = np.zeros((2, n_actions, n_actions))
    for x in range(2):
        rank = np.argsort(np.argsort(score[x], kind="stable"), kind="stable")
        for draws in itertools.product(range(n_actions), repeat=k):
            srt = sorted(draws, key=lambda a: rank[a])
            if name == "max_min":
                pairs = [(srt[-1], srt[0])]
            elif name == "best_second":
                pairs = [(srt[-1], srt[-2])]
            elif name == "best_quartile":
                pairs = [(srt[-1], srt[k // 4])]
            else:
                pairs = [(srt[-1], srt[j]) for j in range(k - 1)]
            for a1, a2 in pairs:
                want[x, a1, a2] += np.prod(p[x, list(draws)]) / len(pairs)
    np.testing.assert_allclose(got, want, atol=1e-13)


def test_joint_sampler_reproduces_independent_sampler():
    """A product law through the joint sampler gives the independent sampler's draws (same uniforms)."""
    inst = _instance(0)
    lp1 = inst.log_pi0
    lp2 = b.gibbs_policy(inst.log_pi0, inst.reward, inst.kl_coef)
    key = jax.random.key(3)
    ind = b.sample_preference_data(key, inst, lp1, lp2, 400)
    joint = b.sample_joint_preference_data(key, inst, strategies.independent(lp1, lp2).log_joint, 400)
    for f_ind, f_joint in zip(ind, joint):
        np.testing.assert_array_equal(f_ind, f_joint)


def _view(seed, n=40, beta=1.0):
    """A StrategyView after ``n`` random comparisons from pi0 (what the loop builds at one iteration)."""
    inst = _instance(seed)
    data = b.sample_preference_data(jax.random.key(seed + 1), inst, inst.log_pi0, inst.log_pi0, n)
    z = b.feature_differences(inst, data)
    from algorithms.core.bt_mle import fit_bt_mle
    theta = fit_bt_mle(z, data.y, data.mask, 1.0).theta
    cs = conf.confidence_set(theta, conf.gram_matrix(z, data.mask, 1.0), beta)
    nu = conf.reference_vector(inst, "pi0")
    return inst, strategies.StrategyView(
        instance=b.public_view(inst), theta=theta, confidence=cs, nu=nu,
        log_pi=linear_gibbs(inst, theta), log_pi_cal=inst.log_pi0, reward_hat=inst.phi @ theta,
        uncertainty=conf.pointwise_uncertainty(inst, cs.chol, nu), hessian=bt_hessian(theta, z, data.mask, 1.0),
        iteration=jnp.asarray(0), key=jax.random.key(seed + 2), options=strategies.StrategyOptions())


@given(st.integers(0, 10_000), st.sampled_from([0.1, 1.0, 5.0]))
@settings(max_examples=6)
def test_enhancer_is_always_in_the_plausible_set(seed, beta):
    """Invariant 11: pi1_t is in Pi_t (Gamma = KL = 0) and the enhancer's pick (non-trivial: beta > 0)
    satisfies the constraint."""
    inst, view = _view(seed % 50, beta=beta)
    log_pi2, nontrivial = enhancer_policy(view)
    assert float(nontrivial) == 1.0
    gamma, kl = enhancer_objective(view, jnp.stack([view.log_pi, log_pi2]))
    assert float(gamma[0]) == 0.0 and abs(float(kl[0])) < 1e-14
    assert float(kl[1]) <= float(gamma[1]) + 1e-12
    # independent check of Pi_t's definition with NumPy
    p1, p2 = np.exp(np.asarray(view.log_pi)), np.exp(np.asarray(log_pi2))
    d0, phi = np.asarray(inst.d0), np.asarray(inst.phi)
    kl_np = inst.kl_coef * np.sum(d0 * np.sum(p2 * (np.asarray(log_pi2) - np.log(p1)), -1))
    diff = d0 @ np.einsum("xa,xad->xd", p1 - p2, phi)
    gram = np.asarray(view.confidence.gram)
    gamma_np = beta * np.sqrt(diff @ np.linalg.solve(gram, diff))
    assert kl_np <= gamma_np + 1e-12
    if float(nontrivial):
        assert gamma_np > 0


def test_enhancer_beats_every_feasible_candidate_it_searched_and_grows_with_beta():
    _, view = _view(1, beta=1.0)
    _, big = _view(1, beta=10.0)
    g_small = enhancer_objective(view, enhancer_policy(view)[0][None])[0][0]
    g_big = enhancer_objective(big, enhancer_policy(big)[0][None])[0][0] / 10.0
    # a larger radius enlarges Pi_t, so the (radius-free) uncertainty reached cannot shrink much
    assert float(g_big) >= float(g_small) - 1e-9


def test_strategies_return_normalised_joint_laws_and_never_see_the_reward():
    inst, view = _view(2)
    for name in strategies.STRATEGIES:
        pair = strategies.get(name)(view)
        assert pair.log_joint.shape == (CFG.n_contexts, CFG.n_actions, CFG.n_actions)
        total = jax.scipy.special.logsumexp(pair.log_joint, axis=(1, 2))
        np.testing.assert_allclose(total, 0.0, atol=1e-12)
    assert float(jnp.abs(view.instance.reward).max()) == 0.0
    assert float(jnp.abs(inst.reward).max()) > 0.0


def test_register_validates_and_registers():
    with pytest.raises(ValueError, match="strategy name"):
        strategies.register("self_play", lambda view: None)
    with pytest.raises(ValueError, match="strategy name"):
        strategies.register("bad name!", lambda view: None)
    with pytest.raises(ValueError, match="strategy"):
        strategies.get("no_such_strategy")
    try:
        strategies.register_bonus("test_sq_bonus", lambda view: view.uncertainty ** 2)
        _, view = _view(3)
        pair = strategies.get("test_sq_bonus")(view)
        want = b.gibbs_policy(view.instance.log_pi0, view.reward_hat + view.uncertainty ** 2,
                              view.instance.kl_coef)
        np.testing.assert_allclose(strategies.second_marginal(pair), want, atol=1e-12)
    finally:
        strategies.STRATEGIES.pop("test_sq_bonus", None)


@pytest.mark.parametrize("bonus", ["xpo", "vpo", "selm"])
def test_likelihood_bonus_with_zero_coefficient_is_dpo(bonus):
    """Invariant 17: XPO/VPO/SELM with alpha = 0 equal DPO (same objective, same trained policy)."""
    inst = _instance(4)
    data = b.sample_preference_data(jax.random.key(5), inst, inst.log_pi0, inst.log_pi0, 60)
    prev = b.gibbs_policy(inst.log_pi0, inst.reward, inst.kl_coef)
    for policy in iterative_dpo.POLICY_CLASSES:
        init = iterative_dpo.initial_params(policy, inst)
        cal = iterative_dpo.calibration_policy(bonus, inst.log_pi0, prev)
        plain = iterative_dpo.train_dpo_agent(policy, init, inst, data, cal, "none", 0.0, 30, 0.1)
        zero = iterative_dpo.train_dpo_agent(policy, init, inst, data, cal, bonus, 0.0, 30, 0.1)
        np.testing.assert_array_equal(plain, zero)
        some = iterative_dpo.train_dpo_agent(policy, init, inst, data, cal, bonus, 0.5, 30, 0.1)
        assert float(jnp.abs(some - plain).max()) > 1e-6


def test_bonus_objective_matches_numpy():
    inst = _instance(6)
    data = b.sample_preference_data(jax.random.key(7), inst, inst.log_pi0, inst.log_pi0, 30)
    logits = jax.random.normal(jax.random.key(8), inst.log_pi0.shape, jnp.float64)
    log_pi = jax.nn.log_softmax(logits, -1)
    prev = jax.nn.log_softmax(jax.random.normal(jax.random.key(9), inst.log_pi0.shape, jnp.float64), -1)
    got = iterative_dpo.dpo_bonus_objective(log_pi, inst, data, prev, 0.7, 1.0)
    lp, l0, x = np.asarray(log_pi), np.asarray(inst.log_pi0), np.asarray(data.x)
    win = np.where(np.asarray(data.y) == 1, np.asarray(data.a1), np.asarray(data.a2))
    lose = np.where(np.asarray(data.y) == 1, np.asarray(data.a2), np.asarray(data.a1))
    h = (lp[x, win] - l0[x, win]) - (lp[x, lose] - l0[x, lose])
    dpo = np.mean(np.log1p(np.exp(-float(inst.kl_coef) * h)))
    bonus = np.sum(np.asarray(inst.d0) * np.sum(np.exp(np.asarray(prev)) * (lp - l0), -1))
    np.testing.assert_allclose(float(got), dpo + 0.7 * bonus, rtol=1e-12)


def _run(strategy="enhancer", options=OPTIONS, seed=0, confidence=CONFIDENCE):
    inst = _instance(seed)
    return inst, _loop(jax.random.key(seed + 10), inst, strategy, options, confidence)


def test_trace_invariants_on_every_strategy():
    """queries = m t; the main agent's regret equals the cumulative m subopt_kl; every cumulative regret is
    non-decreasing, weak <= average and query_regret <= query_regret_kl; subopt_kl >= subopt >= 0; the
    information (log det) never shrinks; the uncertainty of a fixed direction never grows (invariant 8); the
    bound holds on the event."""
    opts = online.OnlineOptions(iterations=5, batch_size=16, newton_steps=20)
    const = conf.ConfidenceConfig(beta_mode="const", c_beta=3.0)
    for name in ("enhancer", "pi0", "optimism", "thompson", "max_min", "uniform"):
        _, tr = _run(name, opts, confidence=const)
        tr = jax.tree.map(np.asarray, tr)
        np.testing.assert_array_equal(tr.queries, 16 * np.arange(6))
        np.testing.assert_allclose(tr.agent_regret_kl[1:], np.cumsum(16 * tr.subopt_kl)[:-1], rtol=1e-12)
        regrets = np.stack([tr.agent_regret_kl, tr.query_regret, tr.query_regret_kl, tr.avg_regret, tr.weak_regret])
        assert np.all(regrets[:, 0] == 0) and np.all(np.diff(regrets, axis=1) >= -1e-12)
        assert np.all(tr.weak_regret <= tr.avg_regret + 1e-12)
        assert np.all(tr.query_regret <= tr.query_regret_kl + 1e-12)
        assert np.all((tr.identical_pairs >= 0) & (tr.identical_pairs <= 1 + 1e-12))
        assert np.all(np.diff(tr.log_det_gram) >= -1e-12) and np.all(np.diff(tr.log_det_fisher) >= -1e-12)
        assert np.all(tr.log_det_fisher <= tr.log_det_gram + 1e-12)   # sigma' <= 1/4 < 1
        assert np.all(tr.subopt >= -1e-12) and np.all(tr.subopt_kl >= tr.subopt - 1e-12)
        assert np.all(np.diff(tr.confidence_width) <= 1e-12)
        on_event = tr.in_confidence_set == 1
        assert np.all(tr.subopt_kl[on_event] <= tr.bound[on_event] + 1e-12)
        assert np.all(tr.kl_to_ref >= -1e-12) and np.all(tr.kl_to_ref_explorer >= -1e-12)


def test_first_iteration_is_pi0_and_pi0_strategy_explorer_is_pi0():
    inst, tr = _run("pi0")
    assert abs(float(tr.kl_to_ref[0])) < 1e-12
    np.testing.assert_allclose(tr.kl_to_ref_explorer, 0.0, atol=1e-12)
    np.testing.assert_allclose(tr.subopt[0], b.suboptimality(inst, inst.log_pi0), rtol=1e-12)


def test_enhancer_reports_feasibility_and_loop_matches_offline_refit():
    """The loop's iteration-t policy equals Gibbs of the BT-MLE refitted from scratch on its data."""
    inst, tr = _run("enhancer")
    assert set(np.unique(np.asarray(tr.strategy_info)).tolist()) <= {0.0, 1.0}
    # hybrid: with offline data and one iteration, iteration 0 is offline MLE-Gibbs
    off = b.sample_preference_data(jax.random.key(99), inst, inst.log_pi0, inst.log_pi0, 50)
    one = online.OnlineOptions(iterations=1, batch_size=8, newton_steps=50)
    tr_h = _loop(jax.random.key(1), inst, "pi0", one, offline=off)
    from algorithms.core.bt_mle import fit_bt_mle
    theta = fit_bt_mle(b.feature_differences(inst, off), off.y, off.mask, 1.0).theta
    np.testing.assert_allclose(tr_h.subopt[0], b.suboptimality(inst, linear_gibbs(inst, theta)), rtol=1e-9)


def test_run_online_jit_and_vmap_agree_with_eager_loop():
    inst = _instance(0)
    fn = lambda k: _loop(k, inst, "thompson")
    keys = jax.random.split(jax.random.key(4), 2)
    batched = jax.vmap(fn)(keys)
    for i in range(2):
        single = jax.jit(fn)(keys[i])
        for f_b, f_s in zip(batched, single):
            np.testing.assert_allclose(f_b[i], f_s, rtol=1e-9, atol=1e-12)


def test_dpo_agent_runs_restart_and_warm_start_differ():
    opts = online.OnlineOptions(iterations=3, batch_size=16, dpo_steps=20)
    inst = _instance(0)
    run = lambda name: agents.run_algorithm(jax.random.key(10), inst, name, opts, CONFIDENCE,
                                            reward_norm=CFG.reward_norm)
    tw, tc = run("iterative_dpo"), run("iterative_dpo_restart")
    assert agents.get("iterative_dpo").strategy == agents.get("iterative_dpo_restart").strategy == "max_min"
    assert np.all(np.isnan(np.asarray(tw.bound)))
    np.testing.assert_allclose(tw.subopt[:2], tc.subopt[:2], rtol=1e-12)   # identical until a warm start exists
    assert abs(float(tw.subopt[-1] - tc.subopt[-1])) > 1e-9


def test_options_and_algorithm_validation():
    with pytest.raises(ValueError, match="batch_size"):
        online.OnlineOptions(batch_size=0)
    with pytest.raises(ValueError, match="learner"):
        online.OnlineOptions(learner="gaussian_process")
    with pytest.raises(ValueError, match="dpo_policy"):
        online.OnlineOptions(dpo_policy="transformer")
    # a likelihood bonus is an option of the DPO agent only, with a known name
    with pytest.raises(ValueError, match="options of agent 'gibbs'"):
        agents.register("test_bad", agents.OnlineAlgorithm("pi0", "gibbs", {"bonus": "xpo"}))
    with pytest.raises(ValueError, match="bonus"):
        agents.register("test_bad", agents.OnlineAlgorithm("calibration", "dpo", {"bonus": "ppo"}))
    with pytest.raises(ValueError, match="restart"):
        agents.register("test_bad", agents.OnlineAlgorithm("max_min", "dpo", {"restart": "yes"}))
    with pytest.raises(ValueError, match="agent"):
        agents.register("test_bad", agents.OnlineAlgorithm("pi0", "ppo"))
    with pytest.raises(ValueError, match="strategy"):
        agents.register("test_bad", agents.OnlineAlgorithm("no_such_strategy"))
    with pytest.raises(ValueError, match="online algorithm name"):
        agents.register("xpo", agents.OnlineAlgorithm("pi0"))
    with pytest.raises(ValueError, match="online algorithm name"):
        agents.register("bad name!", agents.OnlineAlgorithm("pi0"))
    with pytest.raises(ValueError, match="agent name"):
        agents.register_agent("dpo", online.Agent(lambda view, state, hyper: None))
    with pytest.raises(ValueError, match="agent 'test_bad'"):
        agents.register_agent("test_bad", lambda view, state, hyper: None)
    with pytest.raises(ValueError, match="reward learner name"):
        online.register_reward_learner("auto", online.REWARD_LEARNERS["linear"])
    with pytest.raises(ValueError, match="algorithms"):
        agents.get("no_such_algorithm")
    assert "test_bad" not in agents.names() and "test_bad" not in agents.AGENTS


def test_neural_learner_runs_on_last_layer_features():
    """Neural reward, neural learner: strategies see hidden-layer features; no exact bound or event."""
    cfg = b.InstanceConfig(n_contexts=6, n_actions=5, dim=3, reward_norm=2.0, kl_coef=0.3, reward="neural", hidden=4)
    inst = b.make_instance(jax.random.key(0), cfg, jnp.float64, coverage=-0.8, temperature=4.0)
    seen = []

    def spy(view):
        seen.append(view.instance.phi.shape)
        return strategies.get("enhancer")(view)

    neural = online.OnlineOptions(iterations=3, batch_size=16, learner="auto", neural_steps=10)
    assert neural.learner_name("neural") == "neural" and neural.learner_name("linear") == "linear"
    tr = jax.tree.map(np.asarray, _loop(jax.random.key(1), inst, spy, neural, hidden=4))
    assert seen[0] == (6, 5, 4)
    assert np.all(np.isnan(tr.bound)) and np.all(np.isnan(tr.in_confidence_set))
    assert np.all(np.isfinite(tr.subopt)) and np.all(np.isfinite(tr.confidence_width))
    linear = online.OnlineOptions(iterations=3, batch_size=16, learner="linear")
    tr_lin = jax.tree.map(np.asarray, _loop(jax.random.key(1), inst, "enhancer", linear, hidden=4))
    assert np.all(np.isnan(tr_lin.bound)) and np.all(np.isnan(tr_lin.in_confidence_set))  # misspecified


@given(st.integers(0, 10_000), st.sampled_from([0.1, 1.0, 4.0]), st.sampled_from([0.5, 1.0, 2.0]))
@settings(max_examples=10)
def test_elliptical_potential_lemma(seed, lam, norm):
    """Invariant 9 on the loop's primitives (gram_matrix over a growing prefix, dual_norm):
    sum_t min(1, ||z_t||^2_{Sigma_t^-1}) <= 2 log det(Sigma_{T+1}) / det(lam I) <= 2 d log(1 + T L^2 / (d lam))."""
    rng = np.random.default_rng(seed)
    n, d = 24, 3
    z = rng.normal(size=(n, d))
    z *= (norm * rng.uniform(0.2, 1.0, size=(n, 1))) / np.linalg.norm(z, axis=1, keepdims=True)
    zj = jnp.asarray(z)

    def width(t):
        gram = conf.gram_matrix(zj, jnp.arange(n) < t, lam)
        return conf.dual_norm(jnp.linalg.cholesky(gram), zj[t]) ** 2

    widths = np.asarray(jax.vmap(width)(jnp.arange(n)))
    total = np.minimum(1.0, widths).sum()
    full = np.asarray(conf.gram_matrix(zj, jnp.ones(n, bool), lam))
    log_ratio = np.linalg.slogdet(full)[1] - d * np.log(lam)
    assert total <= 2 * log_ratio + 1e-9
    assert 2 * log_ratio <= 2 * d * np.log1p(n * norm**2 / (d * lam)) + 1e-9
    # bonus monotonicity (invariant 8): widths of a fixed vector never grow as data is added
    v0 = jnp.asarray(rng.normal(size=d))
    fixed = [float(conf.dual_norm(jnp.linalg.cholesky(conf.gram_matrix(zj, jnp.arange(n) < t, lam)), v0))
             for t in (0, 8, 16, 24)]
    assert all(b <= a + 1e-12 for a, b in zip(fixed, fixed[1:]))


def test_traced_agent_params_equal_the_named_bonus():
    """The numeric AgentParams path (one program for every bonus: a static table of plain floats) equals
    the registered algorithm whose agent computes its numbers from the named bonus."""
    inst = _instance(5)
    key = jax.random.key(6)
    opts = online.OnlineOptions(iterations=3, batch_size=16, dpo_steps=10, bonus_coef=0.3)
    try:
        agents.register("test_xpo_restart", agents.OnlineAlgorithm("calibration", "dpo",
                                                                   {"bonus": "xpo", "restart": True}))
        for name, bonus, restart in (("selm", "selm", False), ("test_xpo_restart", "xpo", True)):
            a = agents.run_algorithm(key, inst, name, opts, CONFIDENCE, reward_norm=CFG.reward_norm)
            row = iterative_dpo.agent_params(bonus, 0.3, float(inst.kl_coef), restart)
            assert all(isinstance(x, float) for x in row)
            b_ = _loop(key, inst, "calibration", opts, agent="dpo", hyper=row)
            np.testing.assert_allclose(np.asarray(a.subopt), np.asarray(b_.subopt), rtol=1e-12, atol=1e-14)
            default = _loop(key, inst, "calibration", opts, agent="dpo")   # hyper of no options: plain DPO
            assert float(jnp.abs(default.subopt - a.subopt).max()) > 1e-9
    finally:
        agents.ALGORITHMS.pop("test_xpo_restart", None)


def test_a_registered_agent_runs_through_the_registry_with_its_metadata():
    """A plugin agent: Gibbs of the view's reward estimate is the built-in Gibbs agent, but without the
    plug-in bound its entry does not claim; a pessimistic one differs and is registered by name."""
    def gibbs_copy(view, state, hyper):
        return online.AgentPolicy(b.gibbs_policy(view.instance.log_pi0, view.reward_hat, view.instance.kl_coef)), state

    def pessimistic(view, state, hyper):
        reward = view.reward_hat - view.confidence.beta * view.uncertainty
        return online.AgentPolicy(b.gibbs_policy(view.instance.log_pi0, reward, view.instance.kl_coef)), state

    inst = _instance(7)
    key = jax.random.key(8)
    run = lambda name: jax.tree.map(np.asarray, agents.run_algorithm(key, inst, name, OPTIONS, CONFIDENCE,
                                                                     reward_norm=CFG.reward_norm))
    try:
        agents.register_agent("test_gibbs_copy", online.Agent(gibbs_copy))
        agents.register_agent("test_pessimistic", online.Agent(pessimistic, label="pessimistic", linestyle=":"))
        agents.register("test_copy_enhancer", agents.OnlineAlgorithm("enhancer", "test_gibbs_copy"))
        agents.register("test_pess_pi0", agents.OnlineAlgorithm("pi0", "test_pessimistic", label="pess (pi_t, pi0)"))
        assert {"test_copy_enhancer", "test_pess_pi0"} <= set(agents.names())
        assert agents.get("test_pess_pi0").label == "pess (pi_t, pi0)"
        assert agents.get("test_copy_enhancer").label == "test_copy_enhancer"
        assert agents.agent_of("test_pess_pi0").linestyle == ":" and agents.AGENTS["test_gibbs_copy"].label
        copy, builtin = run("test_copy_enhancer"), run("enhancer")
        np.testing.assert_allclose(copy.subopt, builtin.subopt, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(copy.confidence_width, builtin.confidence_width, rtol=1e-12)
        assert np.all(np.isnan(copy.bound)) and np.all(np.isfinite(builtin.bound))
        pess, pi0 = run("test_pess_pi0"), run("pi0")
        assert np.all(np.isnan(pess.bound))
        assert float(np.abs(pess.subopt - pi0.subopt).max()) > 1e-6
    finally:
        for name in ("test_copy_enhancer", "test_pess_pi0"):
            agents.ALGORITHMS.pop(name, None)
        for name in ("test_gibbs_copy", "test_pessimistic"):
            agents.AGENTS.pop(name, None)


def test_loop_state_and_learner_states_are_typed():
    """The reward learners' and agents' initial states are their NamedTuples (the scan's carry)."""
    inst = _instance(0)
    lin = online.REWARD_LEARNERS["linear"].init(jax.random.key(0), inst, 4)
    neu = online.REWARD_LEARNERS["neural"].init(jax.random.key(0), inst, 4)
    assert isinstance(lin, online.LinearLearnerState) and lin.theta.shape == (CFG.dim,)
    assert isinstance(neu, online.NeuralLearnerState) and neu.network.w2.shape == (4,)
    assert isinstance(agents.AGENTS["gibbs"].init(inst, OPTIONS), online.NoState)
    dpo = agents.AGENTS["dpo"].init(inst, OPTIONS)
    assert isinstance(dpo, agents.DPOState)
    np.testing.assert_array_equal(dpo.log_pi, inst.log_pi0)
    assert agents.AGENTS["gibbs"].plug_in_bound and not agents.AGENTS["dpo"].plug_in_bound
