"""P1's iterative DPO loop on the tiny LM (docs/llm_bridge.md §5.4 test 8; ``algorithms.lm.iterative``).

- the sample-level pair selectors have exactly the pair laws of ``algorithms.online.pairings`` (max_min: brute force
  over every k-tuple of draws; max_random: chi-square on draws);
- test 8: on TreeLM (V = 6, L = 4, 4 prompts, eta = 0.5) with a token-weight gold reward, 8 seeds, max_min of
  k = 4 draws from pi_t, BT labels, reference pi0, warm start: J(pi_T) > J(pi0) with the seed-mean
  difference's 95% t-interval above 0, E r* rises likewise, KL(pi_T || pi0) is finite (and reported against
  KL(pi* || pi0), not bounded);
- vmap over seeds equals a loop over seeds;
- the exact J, E r* and KL the loop reports equal a NumPy brute force over the enumerated space (walking the
  prefix tree of the trained TreeLM's logit table);
- the ``history`` option (all pairs so far) reproduces fresh data at iteration 1 and then departs from it.
"""
import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from algorithms.lm import iterative as it
from algorithms.online.pairings import pairing_law
from bandits.lm import tree
from bandits.lm.space import ResponseSpace, enumerate_responses
from experiments.catalogue import lm_iterative_dpo
from experiments.engine.config import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    replace,
)

ETA = 0.5
SPACE = ResponseSpace(6, 4)
N_X = 4
CFG = tree.TreeConfig(6, 4, prompt_len=1, prompt_vocab_size=N_X)
LM = it.LMSpec("tree", CFG, SPACE)
PROMPTS = jnp.arange(N_X, dtype=jnp.int32)[:, None]
OPTIONS = it.IterativeOptions(n_iterations=5, k=4, n_groups=32, n_steps=10, learning_rate=0.03)
N_SEEDS = 8


def _reward(key):
    """Token-weight gold reward ``1.5 sum_t w[x, y_t] / sqrt(L)``, ``w ~ N(0, 1)``."""
    tokens, mask = (np.asarray(a) for a in enumerate_responses(SPACE))
    w = np.asarray(jax.random.normal(key, (N_X, SPACE.vocab_size)))
    return 1.5 * np.stack([np.where(mask, w[x][tokens], 0.0).sum(1) for x in range(N_X)]) / 2.0


def _world(seed):
    k_lm, k_r, k_loop = jax.random.split(jax.random.key(seed), 3)
    params0 = tree.init(k_lm, CFG)
    return k_loop, params0, it.exact_lm_instance(LM, params0, PROMPTS, _reward(k_r), ETA)


def _loop(key, params0, instance):
    return it.iterative_dpo(key, params0, instance, PROMPTS, LM, OPTIONS)


@functools.lru_cache(maxsize=None)
def batched_run():
    worlds = [_world(s) for s in range(N_SEEDS)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *worlds)
    return worlds, jax.jit(jax.vmap(_loop))(*stacked)


# ---------------------------------------------------------------------------------------------
# Pair selectors


def test_max_min_selection_has_the_pairings_law():
    """Brute force over every k-tuple of i.i.d. draws (A = 5 responses with a tied score, k = 3): the law of
    the pair ``select_pair`` picks equals ``pairing_law('max_min')`` (ties broken by index as there)."""
    rng = np.random.default_rng(0)
    a, k = 5, 3
    p = rng.dirichlet(np.ones(a))
    score = np.array([0.3, -1.0, 0.3, 2.0, -1.0])
    ranks = np.asarray(it.response_ranks(jnp.asarray(score)))
    law = np.zeros((a, a))
    for draws in itertools.product(range(a), repeat=k):
        i1, i2 = it.select_pair(jax.random.key(0), "max_min", jnp.asarray(ranks[list(draws)]))
        law[draws[int(i1)], draws[int(i2)]] += np.prod(p[list(draws)])
    want = np.exp(np.asarray(pairing_law("max_min", jnp.log(p)[None], jnp.asarray(score)[None], k)[0]))
    np.testing.assert_allclose(law, want, atol=1e-14)


def test_max_random_and_self_play_selection_laws():
    """Draws of 4 from pi over A = 6 responses, 40,000 groups: the pairs of ``max_random`` follow
    ``pairing_law('max_random')`` and those of ``self_play`` follow ``pi x pi`` (pooled chi-square, p > 1e-3);
    ``max_min``'s law is rejected by the max_random pairs (p < 1e-6)."""
    a, k, n = 6, 4, 40_000
    rng = np.random.default_rng(1)
    p = rng.dirichlet(2 * np.ones(a))
    score = rng.standard_normal(a)
    ranks = it.response_ranks(jnp.asarray(score))
    draws = jax.random.categorical(jax.random.key(2), jnp.log(jnp.asarray(p)), shape=(n, k))

    @functools.partial(jax.jit, static_argnums=0)
    def pair_cells(selector, key, draws, ranks):
        i1, i2 = jax.vmap(lambda kk, d: it.select_pair(kk, selector, ranks[d]))(jax.random.split(key, n), draws)
        take = lambda i: jnp.take_along_axis(draws, i[:, None], 1)[:, 0]  # noqa: E731
        return take(i1) * a + take(i2)

    pairs = lambda selector: pair_cells(selector, jax.random.key(3), draws, ranks)  # noqa: E731

    def chisq(cells, probs):
        """Pooled chi-square p-value; 0 when a draw lands on a zero-probability pair."""
        counts = np.bincount(np.asarray(cells), minlength=a * a)
        keep = probs > 0
        if counts[~keep].sum():
            return 0.0
        expected = n * probs[keep]
        small = expected < 5
        obs, exp = counts[keep][~small], expected[~small]
        if small.any():
            obs, exp = np.append(obs, counts[keep][small].sum()), np.append(exp, expected[small].sum())
        return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue

    law = lambda name: np.exp(np.asarray(  # noqa: E731
        pairing_law(name, jnp.log(p)[None], jnp.asarray(score)[None], k)[0])).ravel()
    random_pairs = pairs("max_random")
    p_rand = chisq(random_pairs, law("max_random"))
    p_self = chisq(pairs("self_play"), np.outer(p, p).ravel())
    p_wrong = chisq(random_pairs, law("max_min"))
    print(f"max_random p = {p_rand:.3g}, self_play p = {p_self:.3g}, max_random vs max_min law p = {p_wrong:.3g}")
    assert p_rand > 1e-3 and p_self > 1e-3 and p_wrong < 1e-6


# ---------------------------------------------------------------------------------------------
# Test 8


def test_8_iterative_dpo_improves_exact_value():
    _, res = batched_run()
    value, reward, kl = (np.asarray(x) for x in (res.value, res.reward_mean, res.kl_to_ref))
    kl_star = np.asarray(res.kl_star_to_ref)
    t_crit = stats.t.ppf(0.975, N_SEEDS - 1)
    for name, series in (("J", value), ("E r*", reward)):
        d = series[:, -1] - series[:, 0]
        half = t_crit * d.std(ddof=1) / np.sqrt(N_SEEDS)
        print(f"{name}: {series[:, 0].mean():.4f} -> {series[:, -1].mean():.4f}, "
              f"difference {d.mean():.4f} +- {half:.4f}")
        assert d.mean() - half > 0
    print(f"J* = {np.mean(res.value_star):.4f}; KL(pi_T||pi0) = {kl[:, -1].mean():.4f}, "
          f"KL(pi*||pi0) = {kl_star.mean():.4f}, overshoot ratio {np.mean(kl[:, -1] / kl_star):.3f}")
    assert np.all(np.isfinite(kl)) and np.all(kl[:, 1:] > 0)
    assert np.all(value <= np.asarray(res.value_star)[:, None] + 1e-12)      # J(pi) <= J(pi*)


def test_vmap_over_seeds_equals_loop():
    worlds, res = batched_run()
    single = jax.jit(_loop)
    for s in (0, 5):
        one = single(*worlds[s])
        for field in ("value", "reward_mean", "kl_to_ref", "subopt_kl"):
            np.testing.assert_allclose(getattr(one, field), getattr(res, field)[s], rtol=1e-9, atol=1e-11)


def np_log_policy(table, tokens, mask, V):
    """Brute force: each response's log-probability by walking a dict of prefixes (levels in order)."""
    node_of = {}
    for t in range(tokens.shape[1]):
        for prefix in itertools.product(range(V), repeat=t):
            node_of[prefix] = len(node_of)
    log_softmax = table - np.log(np.exp(table).sum(-1, keepdims=True))
    out = np.zeros(len(tokens))
    for i, (y, m) in enumerate(zip(tokens, mask)):
        out[i] = sum(log_softmax[node_of[tuple(int(c) for c in y[:t])], y[t]] for t in range(len(y)) if m[t])
    return out


def test_exact_metrics_equal_numpy_brute_force():
    worlds, res = batched_run()
    tokens, mask = (np.asarray(a) for a in enumerate_responses(SPACE))
    s = 3
    _, params0, inst = worlds[s]
    params_T = jax.tree.map(lambda a: np.asarray(a)[s], res.params)
    r = np.asarray(inst.reward)
    lp0 = np.stack([np_log_policy(np.asarray(params0["logits"])[x], tokens, mask, 6) for x in range(N_X)])
    lp = np.stack([np_log_policy(params_T["logits"][x], tokens, mask, 6) for x in range(N_X)])
    pi = np.exp(lp)
    reward = np.mean((pi * r).sum(1))
    kl = np.mean((pi * (lp - lp0)).sum(1))
    log_z = np.log((np.exp(lp0) * np.exp(r / ETA)).sum(1))
    pi_star_lp = lp0 + r / ETA - log_z[:, None]
    print(f"brute force: J = {reward - ETA * kl:.6f}, E r* = {reward:.6f}, KL = {kl:.6f}")
    np.testing.assert_allclose(res.reward_mean[s, -1], reward, rtol=1e-10)
    np.testing.assert_allclose(res.kl_to_ref[s, -1], kl, rtol=1e-10)
    np.testing.assert_allclose(res.value[s, -1], reward - ETA * kl, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.value_star[s], ETA * log_z.mean(), rtol=1e-10)
    kl_star = np.mean((np.exp(pi_star_lp) * (pi_star_lp - lp0)).sum(1))
    np.testing.assert_allclose(res.kl_star_to_ref[s], kl_star, rtol=1e-10)
    # The trained policy actually moved (the check above is not a check of pi0).
    assert kl > 1e-2


def test_history_option_first_iteration_equals_fresh_data():
    """With ``history=True`` the buffer holds only iteration 1's pairs at iteration 1 (later rows masked), so
    pi_1 equals the fresh-data run's pi_1 (same key stream); from iteration 2 on the runs differ."""
    worlds, res = batched_run()
    options = dataclasses.replace(OPTIONS, n_iterations=2, history=True)
    hist = jax.jit(lambda k, p, i: it.iterative_dpo(k, p, i, PROMPTS, LM, options))(*worlds[0])
    np.testing.assert_allclose(hist.value[:2], res.value[0, :2], rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(hist.kl_to_ref[:2], res.kl_to_ref[0, :2], rtol=1e-9, atol=1e-11)
    assert abs(float(hist.value[2] - res.value[0, 2])) > 1e-6 and np.isfinite(hist.value[2])


def test_lm_iterative_dpo_config_nests_the_loop_options():
    """``lm-iterative-dpo`` nests ``loop: IterativeOptions`` (flat names still set it), refuses the selector and
    restart that its variants pick, reads old flat records, and its hf options nest the same loop options."""
    presets, Config = lm_iterative_dpo.presets, lm_iterative_dpo.Config
    config = apply_overrides(presets["quick"], ["n_iterations=3", "k=5", "learning_rate=0.1", "history=true"])
    assert config.loop == dataclasses.replace(Config().loop, n_iterations=3, k=5, learning_rate=0.1, history=True)
    for override, value in (("selector=max_random", "'max_random'"), ("restart=true", "True")):
        with pytest.raises(ValueError, match=rf"={value} is not allowed: each variant picks its selector and restart"):
            apply_overrides(presets["quick"], [override])
    # A complete record written before the nesting (every loop field flat, no selector or restart).
    flat = config_to_dict(Config())
    old = {**{k: val for k, val in flat.pop("loop").items() if k not in ("selector", "restart")}, **flat}
    old.update(n_iterations=3, k=5, kl_coef=0.3, variants=["max_min_warm"])
    assert config_from_dict(Config, old) == replace(Config(), n_iterations=3, k=5, kl_coef=0.3,
                                                    variants=("max_min_warm",))
    hf = presets["quick-hf"].hf_options("self_play", True)
    assert hf.loop == dataclasses.replace(presets["quick-hf"].loop, selector="self_play", restart=True)
    assert (hf.kl_coef, hf.n_eval, hf.n_examples) == (0.1, 6, 1)
