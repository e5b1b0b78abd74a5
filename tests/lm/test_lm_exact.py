"""The exact JAX core of the LLM bridge (docs/llm_bridge.md §5.4 tests 1-5 and 7; docs/theory.md §1.3, §9.2).

Tiny LMs (a causal transformer and the prefix-tree TreeLM) over enumerable response spaces become
ordinary bandit instances, so the existing evaluators, Gibbs oracle, rejection samplers and DPO loss
run on them unchanged. Exact quantities are checked against brute-force NumPy references; samplers
against exact laws with pooled chi-square tests at fixed seeds (a correct sampler fails one such gate
with probability ~ALPHA per gate and seed), each paired with a wrong law that the same data reject.
"""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import bandits as b
from algorithms.offline import rejection_sampling as rs
from algorithms.core.preference_losses import dpo_loss
from bandits.lm import exact, tiny, tree
from bandits.lm.space import ResponseSpace, enumerate_responses, response_index

ALPHA = 1e-3      # chi-square / binomial gate for a correct sampler (docs/llm_bridge.md §5.4)
POWER = 1e-6      # a wrong law must be rejected at least this strongly
ETA = 0.5
N_SMALL = 20_000  # draws per prompt in the small-space sampler tests
N_LARGE = 16_384  # draws per prompt from the FIXED-space transformer (best-of-n and candidate sets share them)

# Spaces: small ones for sampler tests (few cells), |A| = 1296 and 781 for the exact-instance tests.
SMALL_FIXED = ResponseSpace(3, 4)                                  # 81 responses
SMALL_EOS = ResponseSpace(3, 4, eos_id=0, pad_id=0)                # 31 responses, pad == eos
FIXED = ResponseSpace(6, 4)                                        # 1296 responses
EOS = ResponseSpace(6, 4, eos_id=5, pad_id=0)                      # 781 responses
SPACES = [SMALL_FIXED, SMALL_EOS, FIXED, EOS]

PROMPTS = jnp.array([[1, 2], [0, 3], [2, 2]], jnp.int32)          # n_x = 3, P = 2
TINY = {v: tiny.TinyLMConfig(vocab_size=v, d_model=16, n_heads=2, n_layers=1, max_len=8, d_ff=32)
        for v in (3, 6)}
TREE = {(v, L): tree.TreeConfig(vocab_size=v, length=L, prompt_len=2, prompt_vocab_size=4)
        for v, L in ((3, 4), (6, 4))}

# Jitted entry points (configs, spaces, model functions and sample counts are static).
log_policy = jax.jit(exact.enumerated_log_policy, static_argnums=(0, 1, 4))
token_lps = {m: jax.jit(m.enumerated_token_logprobs, static_argnums=(0, 3)) for m in (tiny, tree)}
samplers = {m: jax.jit(m.sample, static_argnums=(1, 4, 5)) for m in (tiny, tree)}
index_of = jax.jit(response_index, static_argnums=0)
tiny_init = jax.jit(tiny.init, static_argnums=1)
tree_from_law = jax.jit(tree.params_from_log_probs, static_argnums=(0, 1))
bon_split = jax.jit(exact.best_of_n_law_split_ties)
rs_bon = jax.jit(rs.best_of_n_law)
rs_accepted = jax.jit(rs.accepted_law, static_argnames="max_reward")
rs_multistep = jax.jit(rs.multistep_law)
rs_rate = jax.jit(rs.exact_acceptance_rate)
tiny_token_lp = jax.jit(tiny.token_logprobs, static_argnums=0)
tiny_seq_lp = jax.jit(tiny.sequence_logprob, static_argnums=0)


def _seed(space):
    return 1000 * space.vocab_size + 10 * space.length + (0 if space.eos_id is None else 2 + space.eos_id)


@functools.lru_cache(maxsize=None)
def model(kind, space):
    """(module, cfg, params) of a random LM of ``kind`` for ``space`` (fixed seeds)."""
    if kind == "tiny":
        cfg = TINY[space.vocab_size]
        return tiny, cfg, tiny_init(jax.random.key(_seed(space)), cfg)
    cfg = TREE[(space.vocab_size, space.length)]
    return tree, cfg, tree.init(jax.random.key(_seed(space) + 1), cfg)


def pooled_chisquare_p(counts, probs, min_expected=5.0):
    """Pearson chi-square p-value of ``counts`` against ``probs``, cells of expected count < 5 pooled."""
    counts, probs = np.asarray(counts, float), np.asarray(probs, float)
    expected = counts.sum() * probs / probs.sum()
    small = expected < min_expected
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] < min_expected:       # fold a too-small pool into the smallest regular cell
        j = int(np.argmin(exp[:-1]))
        obs[j] += obs[-1]
        exp[j] += exp[-1]
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp).pvalue


def binned_chisquare_p(counts, probs, key, n_bins=20):
    """Chi-square p-value on ``n_bins`` groups of cells of about equal expected mass, cells ordered by
    ``key`` (e.g. the reward: a tilted law differs most along it). Valid for any fixed partition."""
    order = np.argsort(key, kind="stable")
    probs = np.asarray(probs, float)[order] / np.sum(probs)
    group = np.minimum((np.cumsum(probs) - probs) * n_bins, n_bins - 1).astype(int)
    obs = np.bincount(group, weights=np.asarray(counts, float)[order], minlength=n_bins)
    exp = np.bincount(group, weights=probs, minlength=n_bins) * np.sum(counts)
    keep = exp > 0
    return stats.chisquare(obs[keep], exp[keep]).pvalue


def np_tree_log_prob(table, tokens, mask, V):
    """Brute force: walk the prefix tree with a dict of prefixes (levels in order, base-V within a level)."""
    node_of = {}
    for t in range(len(tokens)):
        for prefix in itertools.product(range(V), repeat=t):
            node_of[prefix] = len(node_of)
    total = 0.0
    for t in range(len(tokens)):
        if mask[t]:
            logits = table[node_of[tuple(int(y) for y in tokens[:t])]]
            total += logits[tokens[t]] - np.log(np.exp(logits).sum())
    return total


# ---------------------------------------------------------------------------------------------
# Spaces


def test_enumeration_matches_definition():
    """Fixed: all V^L sequences. EOS: sequences ending at their first EOS plus the truncated ones,
    masks from lengths (pad == eos in SMALL_EOS), and response_index inverts the enumeration."""
    for space in SPACES:
        tokens, mask = (np.asarray(a) for a in enumerate_responses(space))
        assert tokens.dtype == np.int32 and mask.dtype == bool and tokens.shape == (space.n_responses, space.length)
        want = set()
        for seq in itertools.product(range(space.vocab_size), repeat=space.length):
            if space.eos_id is not None and space.eos_id in seq:
                seq = seq[:seq.index(space.eos_id) + 1]
            want.add(seq)
        got = {tuple(t[m]) for t, m in zip(tokens, mask)}
        assert got == want and len(want) == space.n_responses
        lengths = mask.sum(1)
        np.testing.assert_array_equal(mask, np.arange(space.length)[None, :] < lengths[:, None])
        assert np.all(tokens[~mask] == space.pad_id)
        np.testing.assert_array_equal(index_of(space, tokens, mask), np.arange(space.n_responses))
    assert EOS.n_responses == 1 + 5 + 25 + 125 + 625
    # Outside the space: EOS inside the mask, early stop without EOS, a mask with a hole.
    bad_tokens = jnp.array([[5, 1, 0, 0], [1, 2, 0, 0], [1, 2, 3, 4]], jnp.int32)
    bad_mask = jnp.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 1, 1]], bool)
    np.testing.assert_array_equal(index_of(EOS, bad_tokens, bad_mask), [-1, -1, -1])


def test_space_validation_names_the_field():
    with pytest.raises(ValueError, match="eos_id=6"):
        ResponseSpace(6, 4, eos_id=6)
    with pytest.raises(ValueError, match="pad_id=-1"):
        ResponseSpace(6, 4, pad_id=-1)
    with pytest.raises(ValueError, match="vocab_size\\*\\*length"):
        enumerate_responses(ResponseSpace(10, 7))
    with pytest.raises(ValueError, match="max_len=8"):
        tiny.token_logprobs(TINY[6], model("tiny", FIXED)[2], jnp.zeros(6, jnp.int32),
                            jnp.zeros(4, jnp.int32), jnp.ones(4, bool))


# ---------------------------------------------------------------------------------------------
# Test 1: the enumerated sequence log-probabilities are a distribution, for both LMs and spaces


@pytest.mark.parametrize("kind", ["tiny", "tree"])
def test_1_enumerated_logprobs_sum_to_one(kind):
    for space in SPACES:
        m, cfg, params = model(kind, space)
        small = space in (SMALL_FIXED, SMALL_EOS)
        for temperature in (1.0, 0.7):
            if small:      # per prompt and per token (the compiled function of the sampler tests)
                per_token = np.stack([token_lps[m](cfg, params, p, space, temperature) for p in PROMPTS])
                _, mask = enumerate_responses(space)
                assert np.all(per_token[:, ~np.asarray(mask)] == 0.0) and np.all(per_token <= 0.0)
                lps = per_token.sum(-1)
            else:
                lps = log_policy(m.enumerated_token_logprobs, cfg, params, PROMPTS, space, temperature)
            assert lps.shape == (3, space.n_responses)
            np.testing.assert_allclose(jax.nn.logsumexp(lps, axis=-1), 0.0, atol=1e-12)


def test_1_tree_logprobs_match_brute_force_walk():
    for space in (SMALL_FIXED, SMALL_EOS):
        _, cfg, params = model("tree", space)
        tokens, mask = (np.asarray(a) for a in enumerate_responses(space))
        for i, prompt in enumerate(np.asarray(PROMPTS)):
            got = np.asarray(token_lps[tree](cfg, params, PROMPTS[i], space, 1.0).sum(-1))
            table = np.asarray(params["logits"])[prompt[0] * 4 + prompt[1]]
            for a in range(0, space.n_responses, 7):
                np.testing.assert_allclose(got[a], np_tree_log_prob(table, tokens[a], mask[a], space.vocab_size),
                                           atol=1e-12)


def test_1_tiny_lm_is_causal_and_ignores_padding():
    """Changing y_{t+1:} leaves log pi(y_s | y_<s) for s <= t unchanged; pad contents are irrelevant;
    vmap over prompts and over params equals the loop; sequence_logprob is the masked sum."""
    _, cfg, params = model("tiny", FIXED)
    ones = jnp.ones(4, bool)
    y = jnp.array([1, 4, 2, 3], jnp.int32)
    full = tiny_token_lp(cfg, params, PROMPTS[0], y, ones)
    for t in range(4):
        changed = y.at[t + 1:].set(5 - y[t + 1:])
        np.testing.assert_allclose(tiny_token_lp(cfg, params, PROMPTS[0], changed, ones)[:t + 1], full[:t + 1],
                                   atol=1e-14)
    short = jnp.array([1, 4, 0, 0], jnp.int32), jnp.array([1, 1, 0, 0], bool)
    other_pad = jnp.array([1, 4, 3, 5], jnp.int32)
    lp = tiny_token_lp(cfg, params, PROMPTS[0], *short)
    np.testing.assert_array_equal(lp, tiny_token_lp(cfg, params, PROMPTS[0], other_pad, short[1]))
    np.testing.assert_allclose(lp[:2], full[:2], atol=1e-14)
    np.testing.assert_allclose(tiny_seq_lp(cfg, params, PROMPTS[0], *short), lp.sum(), atol=1e-14)
    # vmap over (params, prompt) pairs equals the loop.
    other = model("tiny", EOS)[2]
    stacked = jax.tree_util.tree_map(lambda a, c: jnp.stack([a, c]), params, other)
    batched = jax.jit(jax.vmap(tiny.sequence_logprob, in_axes=(None, 0, 0, None, None)), static_argnums=0)(
        cfg, stacked, PROMPTS[:2], y, ones)
    for i, p in enumerate((params, other)):
        np.testing.assert_allclose(batched[i], tiny_seq_lp(cfg, p, PROMPTS[i], y, ones), atol=1e-14)
    assert batched[0] != batched[1]


# ---------------------------------------------------------------------------------------------
# Test 2: the lax.scan sampler's law equals exp(logprob)


@pytest.mark.parametrize("kind", ["tiny", "tree"])
def test_2_sampler_law_matches_enumeration(kind):
    """Pooled chi-square of 20,000 draws against exp(logprob) at T = 1 and T = 1.5 (p > ALPHA), and
    against the other temperature's law (p < POWER). Every draw is in the space (the EOS support is
    the enumeration's)."""
    n = N_SMALL
    for s, space in enumerate((SMALL_FIXED, SMALL_EOS)):
        m, cfg, params = model(kind, space)
        laws = {t: np.exp(np.asarray(token_lps[m](cfg, params, PROMPTS[0], space, t).sum(-1)))
                for t in (1.0, 1.5)}
        for temperature, other in ((1.0, 1.5), (1.5, 1.0)):
            tokens, mask = samplers[m](jax.random.key(10 * s + int(2 * temperature)), cfg, params, PROMPTS[0],
                                       space, n, temperature)
            assert tokens.shape == mask.shape == (n, space.length) and tokens.dtype == jnp.int32
            idx = np.asarray(index_of(space, tokens, mask))
            assert np.all(idx >= 0)
            assert np.all(np.asarray(tokens)[~np.asarray(mask)] == space.pad_id)
            counts = np.bincount(idx, minlength=space.n_responses)
            p_good = pooled_chisquare_p(counts, laws[temperature])
            p_bad = pooled_chisquare_p(counts, laws[other])
            print(f"{kind} {space} T={temperature}: chi2 p = {p_good:.3g} (wrong T: {p_bad:.2g})")
            assert p_good > ALPHA and p_bad < POWER


@pytest.mark.parametrize("kind", ["tiny", "tree"])
def test_2_vmap_over_keys_equals_loop(kind):
    m, cfg, params = model(kind, SMALL_EOS)
    keys = jax.random.split(jax.random.key(3), 2)
    batched = jax.jit(jax.vmap(lambda k: m.sample(k, cfg, params, PROMPTS[0], SMALL_EOS, N_SMALL)))(keys)
    for i in range(2):
        tokens, mask = samplers[m](keys[i], cfg, params, PROMPTS[0], SMALL_EOS, N_SMALL, 1.0)
        np.testing.assert_array_equal(batched[0][i], tokens)
        np.testing.assert_array_equal(batched[1][i], mask)


# ---------------------------------------------------------------------------------------------
# Shared exact instances (FIXED space, 3 prompts): the transformer as pi0


def _features(seed, n_x, a, d=4):
    rng = np.random.default_rng(seed)
    phi = rng.standard_normal((n_x, a, d))
    return phi / np.linalg.norm(phi, axis=-1, keepdims=True), 2.0 * rng.standard_normal(d) / np.sqrt(d)


def _lm_instance(space=FIXED, reward=None, seed=0):
    _, cfg, params = model("tiny", space)
    log_pi0 = log_policy(tiny.enumerated_token_logprobs, cfg, params, PROMPTS, space, 1.0)
    if reward is None:
        phi, theta = _features(seed, 3, space.n_responses)
        return exact.exact_instance(log_pi0, phi=phi, theta=theta, kl_coef=ETA)
    return exact.exact_instance(log_pi0, reward, kl_coef=ETA)


def _count_reward(space, weights):
    """Integer-valued reward (many ties): sum over response tokens of ``weights[token]``."""
    tokens, mask = (np.asarray(a) for a in enumerate_responses(space))
    r = np.where(mask, np.asarray(weights)[tokens], 0).sum(1).astype(float)
    return np.tile(r, (3, 1))


# ---------------------------------------------------------------------------------------------
# Test 3: exact_instance plugs into the existing evaluators (docs/theory.md §9.2 invariants 1, 2, 10)


def test_3_exact_instance_wraps_the_lm():
    inst = _lm_instance()
    phi, theta = _features(0, 3, FIXED.n_responses)
    np.testing.assert_allclose(inst.reward, phi @ theta, atol=1e-14)
    np.testing.assert_allclose(inst.theta_star, theta)
    assert inst.n_actions == 1296 and inst.n_contexts == 3
    r_only = exact.exact_instance(inst.log_pi0, inst.reward, kl_coef=ETA)
    np.testing.assert_array_equal(r_only.phi[..., 0], inst.reward)
    np.testing.assert_array_equal(r_only.theta_star, [1.0])
    with pytest.raises(ValueError, match="theta"):
        exact.exact_instance(inst.log_pi0, inst.reward, phi=phi, theta=theta, kl_coef=ETA)
    with pytest.raises(ValueError, match="kl_coef"):
        exact.exact_instance(inst.log_pi0, inst.reward, kl_coef=0.0)
    with pytest.raises(ValueError, match="log_pi0"):
        exact.exact_instance(inst.log_pi0 + 0.1, inst.reward, kl_coef=ETA)


@pytest.mark.parametrize("space", [FIXED, EOS], ids=["fixed", "eos"])
def test_3_gibbs_over_sequences_invariants_1_and_2(space):
    """J(pi*) = eta E log Z against a NumPy reference; for other LMs' sequence laws pi (a TreeLM and a
    second transformer): J(pi) <= J(pi*) and J(pi*) - J(pi) = eta E KL(pi || pi*), to 1e-10."""
    inst = _lm_instance(space)
    star = b.optimal_policy(inst)
    pi0, r, d0 = (np.asarray(a) for a in (jnp.exp(inst.log_pi0), inst.reward, inst.d0))
    w = pi0 * np.exp(r / ETA)
    gibbs = w / w.sum(1, keepdims=True)
    np.testing.assert_allclose(np.exp(star), gibbs, rtol=1e-10, atol=1e-15)
    np_j = sum(d0[x] * (gibbs[x] @ r[x] - ETA * np.sum(gibbs[x] * np.log(gibbs[x] / pi0[x]))) for x in range(3))
    np.testing.assert_allclose(b.value(inst, star), ETA * np.sum(d0 * np.log(w.sum(1))), atol=1e-10)
    np.testing.assert_allclose(b.optimal_value(inst), np_j, atol=1e-10)
    tree_m, tree_cfg, tree_params = model("tree", space)
    other_cfg = TINY[space.vocab_size]
    others = [log_policy(tree.enumerated_token_logprobs, tree_cfg, tree_params, PROMPTS, space, 1.0),
              log_policy(tiny.enumerated_token_logprobs, other_cfg, tiny_init(jax.random.key(99), other_cfg),
                         PROMPTS, space, 1.0),
              inst.log_pi0]
    for log_pi in others:
        gap = b.optimal_value(inst) - b.value(inst, log_pi)
        assert gap >= 0
        np.testing.assert_allclose(gap, ETA * b.expected_kl(inst, log_pi, star), atol=1e-10)


def test_3_gibbs_limits_and_monotonicity_invariant_10():
    """eta -> inf: pi_r -> pi0; eta -> 0: pi_r -> pi0 restricted to argmax r (an integer reward with
    ties); E_{pi_r} r and KL(pi_r || pi0) non-increasing in eta."""
    inst = _lm_instance(reward=_count_reward(FIXED, [1, 1, 0, 0, 0, 0]))
    far = inst._replace(kl_coef=jnp.asarray(1e6))
    assert np.all(np.asarray(b.kl_divergence(b.optimal_policy(far), inst.log_pi0)) < 1e-10)
    cold = inst._replace(kl_coef=jnp.asarray(1e-3))
    r, pi0 = np.asarray(inst.reward), np.exp(np.asarray(inst.log_pi0))
    top = r == r.max(1, keepdims=True)
    assert np.all(top.sum(1) > 1)                          # the argmax is a tie of several responses
    want = np.where(top, pi0, 0.0) / np.where(top, pi0, 0.0).sum(1, keepdims=True)
    np.testing.assert_allclose(np.exp(b.optimal_policy(cold)), want, atol=1e-10)
    etas = np.geomspace(0.05, 20.0, 12)
    rewards, kls = [], []
    for eta in etas:
        at = inst._replace(kl_coef=jnp.asarray(eta))
        star = b.optimal_policy(at)
        rewards.append(float(b.expected_reward(at, star)))
        kls.append(float(b.kl_to_reference(at, star)))
    assert np.all(np.diff(rewards) <= 1e-12) and np.all(np.diff(kls) <= 1e-12)
    assert rewards[0] > rewards[-1] + 0.5 and kls[0] > kls[-1] + 0.5


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), space=st.sampled_from([FIXED, EOS]), zeros=st.booleans())
def test_3_tree_realizes_any_law(seed, space, zeros):
    """TreeLM is realizable: params_from_log_probs reproduces an arbitrary law (with or without zero
    masses) to 1e-12, e.g. the Gibbs policy over sequences."""
    rng = np.random.default_rng(seed)
    logits = 3.0 * rng.standard_normal((3, space.n_responses))
    if zeros:
        logits[rng.random(logits.shape) < 0.5] = -np.inf
        logits[:, 0] = 0.0
    target = jax.nn.log_softmax(jnp.asarray(logits), axis=-1)
    _, cfg, base = model("tree", space)
    params = tree_from_law(cfg, space, PROMPTS, target, base)
    got = log_policy(tree.enumerated_token_logprobs, cfg, params, PROMPTS, space, 1.0)
    finite = np.isfinite(np.asarray(target))
    np.testing.assert_allclose(np.asarray(got)[finite], np.asarray(target)[finite], atol=1e-12)
    assert np.all(np.isneginf(np.asarray(got)[~finite]))
    # Other prompts keep the base parameters.
    untouched = jnp.array([[3, 3]], jnp.int32)
    np.testing.assert_array_equal(
        log_policy(tree.enumerated_token_logprobs, cfg, params, untouched, space, 1.0),
        log_policy(tree.enumerated_token_logprobs, cfg, base, untouched, space, 1.0))


# ---------------------------------------------------------------------------------------------
# Test 4: rejection sampling and best-of-n on the LM instance (the existing RS code, unchanged)


RS_REWARD = 0.4 * np.random.default_rng(4).standard_normal((3, FIXED.n_responses))


def test_4_accept_reject_matches_gibbs():
    """One-step RS with the exact envelope M = max r (algorithms.offline.rejection_sampling, unchanged) on the
    exact LM instance: accepted responses follow Gibbs (pooled chi-square, p > ALPHA; pi0 rejected by
    a chi-square on 20 reward-ordered bins, p < POWER) and
    the acceptance count is binomial with rate E_{pi0} exp((r - M)/eta)."""
    inst = _lm_instance(reward=RS_REWARD)
    reps, n = 100, 64
    s = jax.jit(rs.rejection_sample, static_argnums=(4,))(
        jax.random.key(4), jnp.tile(inst.log_pi0, (reps, 1)), jnp.tile(inst.reward, (reps, 1)), ETA, n)
    gibbs = np.exp(np.asarray(b.optimal_policy(inst)))
    rate = np.asarray(rs_rate(inst.log_pi0, inst.reward, ETA))
    actions, accepted = np.asarray(s.actions), np.asarray(s.accepted)
    for x in range(3):
        counts = np.bincount(actions[x::3][accepted[x::3]], minlength=FIXED.n_responses)
        p_gibbs = pooled_chisquare_p(counts, gibbs[x])
        p_pi0 = binned_chisquare_p(counts, np.exp(inst.log_pi0[x]), inst.reward[x])
        p_rate = stats.binomtest(int(accepted[x::3].sum()), reps * n, rate[x]).pvalue
        print(f"RS prompt {x}: {counts.sum()} accepted, rate {rate[x]:.4f}, chi2 p vs Gibbs = {p_gibbs:.3g}, "
              f"vs pi0 (reward-binned) = {p_pi0:.2g}, binomial p = {p_rate:.3g}")
        assert p_gibbs > ALPHA and p_pi0 < POWER and p_rate > ALPHA


def test_4_multistep_telescoping_and_rso_bias():
    """Invariant 12 on the LM instance (exact laws): stage rates multiply to the one-step rate, each is at
    least it, the last stage is Gibbs. RSO's per-batch maximum is biased towards low rewards: at n = 8 its
    exact accepted law is far from Gibbs (TV > 0.05) with a lower mean reward, and the bias shrinks
    with n (docs/llm_bridge.md §5.4 test 4 documents it; measured there TV 0.106)."""
    inst = _lm_instance(reward=RS_REWARD)
    multi = rs_multistep(inst.log_pi0, inst.reward, jnp.array([2.0, 1.0, ETA]))
    one = rs_rate(inst.log_pi0, inst.reward, ETA)
    np.testing.assert_allclose(jnp.prod(multi.acceptance_rate, axis=0), one, rtol=1e-12)
    assert np.all(np.asarray(multi.acceptance_rate) >= np.asarray(one)[None, :] * (1 - 1e-12))
    np.testing.assert_allclose(multi.log_law[-1], b.optimal_policy(inst), atol=1e-12)
    gibbs = np.exp(np.asarray(b.optimal_policy(inst)))
    tv, mean_r = [], []
    for n in (8, 64, 512):
        law = np.exp(np.asarray(rs_accepted(inst.log_pi0, inst.reward, ETA, max_reward="empirical",
                                            n_candidates=n).log_law))
        tv.append(0.5 * np.abs(law - gibbs).sum(1))
        mean_r.append((law * np.asarray(inst.reward)).sum(1))
    print(f"RSO empirical-M TV to Gibbs at n = 8, 64, 512: {np.round(tv, 4).tolist()}")
    assert np.all(tv[0] > 0.05) and np.all(tv[0] > tv[1]) and np.all(tv[1] > tv[2])
    assert np.all(mean_r[0] < (gibbs * np.asarray(inst.reward)).sum(1))


def np_best_of_n_split(pi0, r, n):
    """Brute force over all n-tuples: the first draw of maximal reward wins."""
    law = np.zeros(len(pi0))
    for tup in itertools.product(range(len(pi0)), repeat=n):
        rewards = [r[a] for a in tup]
        law[tup[int(np.argmax(rewards))]] += np.prod([pi0[a] for a in tup])
    return law


def test_4_best_of_n_law_formula():
    """The tie-split law against brute force (with ties and a zero-mass action); it equals the existing
    lowest-index law when rewards have no ties, and has the same mass on every reward level."""
    pi0 = np.array([[0.1, 0.3, 0.2, 0.4], [0.25, 0.0, 0.5, 0.25]])
    r = np.array([[1.0, 2.0, 2.0, 0.0], [3.0, 3.0, 1.0, 3.0]])
    with np.errstate(divide="ignore"):
        log_pi0 = jnp.log(jnp.asarray(pi0))
    for n in (1, 2, 3):
        got = np.exp(np.asarray(bon_split(log_pi0, jnp.asarray(r), n)))
        for x in range(2):
            np.testing.assert_allclose(got[x], np_best_of_n_split(pi0[x], r[x], n), atol=1e-14)
    inst = _lm_instance()                                  # continuous rewards: no ties
    for n in (1, 8):
        np.testing.assert_allclose(bon_split(inst.log_pi0, inst.reward, n),
                                   rs_bon(inst.log_pi0, inst.reward, n), atol=1e-12)
    tied = _lm_instance(reward=_count_reward(FIXED, [1, 1, 0, 0, 0, 0]))
    split = np.exp(np.asarray(bon_split(tied.log_pi0, tied.reward, 8)))
    lowest = np.exp(np.asarray(rs_bon(tied.log_pi0, tied.reward, 8)))
    for level in np.unique(tied.reward):
        on = np.asarray(tied.reward) == level
        np.testing.assert_allclose(np.where(on, split, 0).sum(1), np.where(on, lowest, 0).sum(1), atol=1e-12)


def test_4_best_of_n_sampling_matches_law_and_kl_bound():
    """Best-of-8 by actually sampling 8 responses from the transformer (lax.scan sampler) and keeping the
    first of maximal reward: matches the tie-split law (p > ALPHA) and not the lowest-index one (p <
    POWER). KL(BoN || pi0) <= log n - (n - 1)/n, with and without ties."""
    n, draws = 8, N_LARGE // 8
    weights = [1, 1, 0, 0, 0, 0]
    tied = _lm_instance(reward=_count_reward(FIXED, weights))
    law = np.exp(np.asarray(bon_split(tied.log_pi0, tied.reward, n)))
    lowest = np.exp(np.asarray(rs_bon(tied.log_pi0, tied.reward, n)))
    _, cfg, params = model("tiny", FIXED)
    for x in range(2):
        tokens, mask = samplers[tiny](jax.random.key(40 + x), cfg, params, PROMPTS[x], FIXED, N_LARGE, 1.0)
        idx = np.asarray(index_of(FIXED, tokens, mask)).reshape(draws, n)
        best = idx[np.arange(draws), np.argmax(np.asarray(tied.reward)[x][idx], axis=1)]
        counts = np.bincount(best, minlength=FIXED.n_responses)
        p_split, p_lowest = pooled_chisquare_p(counts, law[x]), pooled_chisquare_p(counts, lowest[x])
        print(f"BoN prompt {x}: chi2 p vs tie-split law = {p_split:.3g}, vs lowest-index law = {p_lowest:.2g}")
        assert p_split > ALPHA and p_lowest < POWER
    bound = np.log(n) - (n - 1) / n
    for inst in (_lm_instance(), tied):
        kl = np.asarray(b.kl_divergence(bon_split(inst.log_pi0, inst.reward, n), inst.log_pi0))
        print(f"KL(BoN || pi0) = {kl} <= {bound:.4f}")
        assert np.all(kl <= bound)


# ---------------------------------------------------------------------------------------------
# Test 5: population DPO on TreeLM recovers the Gibbs policy


def population_dpo_loss(log_pi, log_pi0, reward, d0, kl_coef):
    """E_{x~d0} E_{(y, y') ~ pi0 x pi0} E_{label ~ BT(r)} [DPO loss], with the existing ``dpo_loss`` per
    ordered pair (y chosen over y' with probability sigmoid(r_y - r_y'))."""
    n_x, a = log_pi.shape
    per_pair = jax.vmap(dpo_loss, in_axes=(0, 0, 0, 0, None))
    chosen = jnp.broadcast_to(log_pi[:, :, None], (n_x, a, a)).reshape(-1)
    rejected = jnp.broadcast_to(log_pi[:, None, :], (n_x, a, a)).reshape(-1)
    ref_chosen = jnp.broadcast_to(log_pi0[:, :, None], (n_x, a, a)).reshape(-1)
    ref_rejected = jnp.broadcast_to(log_pi0[:, None, :], (n_x, a, a)).reshape(-1)
    losses = per_pair(chosen, rejected, ref_chosen, ref_rejected, kl_coef).reshape(n_x, a, a)
    weights = (jnp.exp(log_pi0[:, :, None] + log_pi0[:, None, :])
               * jax.nn.sigmoid(reward[:, :, None] - reward[:, None, :]))
    return jnp.sum(d0 * jnp.sum(weights * losses, axis=(1, 2)))


def test_5_population_dpo_on_tree_recovers_gibbs():
    """Population DPO (kl_coef = eta, warm start at pi0) on the realizable TreeLM, 400 steps of optax L-BFGS,
    in a fixed-length space (V = 3, L = 4, 81 responses) and an EOS space (V = 3, L = 4, 31 responses):
    the trained sequence law is the Gibbs policy, KL(pi_DPO || pi*) < 1e-10 per prompt (docs/theory.md §9.2
    invariant 4 at sequence level). The two problems are independent; one L-BFGS run on their summed
    objective (one compilation) minimises both. pi0 has logits N(0, 0.5^2): a more peaked pi0 leaves
    rare responses' directions ill-conditioned and L-BFGS slower (scale 1 needed ~2000 steps here). With
    V = 4 (256 responses, as in docs/llm_bridge.md) the same run reached KL ~3e-13 but costs ~5x the time."""
    spaces = (ResponseSpace(3, 4), ResponseSpace(3, 4, eos_id=2))
    cfgs = tuple(tree.TreeConfig(vocab_size=sp.vocab_size, length=4, prompt_len=1, prompt_vocab_size=2)
                 for sp in spaces)
    prompts = jnp.array([[0], [1]], jnp.int32)
    params0 = [tree.init(jax.random.key(5 + i), cfg, scale=0.5) for i, cfg in enumerate(cfgs)]
    insts = []
    for i, (sp, cfg) in enumerate(zip(spaces, cfgs)):
        log_pi0 = log_policy(tree.enumerated_token_logprobs, cfg, params0[i], prompts, sp, 1.0)
        reward = np.random.default_rng(5 + i).standard_normal((2, sp.n_responses))
        insts.append(exact.exact_instance(log_pi0, reward, kl_coef=ETA))

    def policies(params):
        return [exact.enumerated_log_policy(tree.enumerated_token_logprobs, cfg, p, prompts, sp)
                for cfg, p, sp in zip(cfgs, params, spaces)]

    def objective(params):
        return sum(population_dpo_loss(log_pi, inst.log_pi0, inst.reward, inst.d0, ETA)
                   for log_pi, inst in zip(policies(params), insts))

    opt = optax.lbfgs()

    @jax.jit
    def fit_and_evaluate(params):
        def step(carry, _):
            params, state = carry
            value, grad = optax.value_and_grad_from_state(objective)(params, state=state)
            updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=objective)
            return (optax.apply_updates(params, updates), state), None
        params = jax.lax.scan(step, (params, opt.init(params)), length=400)[0][0]
        out = []
        for log_pi, inst in zip(policies(params), insts):
            star = b.optimal_policy(inst)
            loss = lambda lp: population_dpo_loss(lp, inst.log_pi0, inst.reward, inst.d0, ETA)  # noqa: E731
            out.append((b.kl_divergence(log_pi, star), b.kl_divergence(inst.log_pi0, star), loss(log_pi), loss(star)))
        return out

    for sp, (kl, kl0, loss, loss_star) in zip(spaces, fit_and_evaluate(params0)):
        print(f"population DPO on TreeLM ({sp}): KL(pi_DPO || pi*) = {kl}, KL(pi0 || pi*) = {kl0}")
        assert np.all(kl < 1e-10) and np.all(kl0 > 0.1)
        # The minimum is the BT cross-entropy at the Gibbs policy (log Z cancels in h).
        np.testing.assert_allclose(loss, loss_star, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Test 7: candidate-set instances (empirical reference measure)


def test_7_candidate_instance_is_snis():
    """The candidate Gibbs policy, lifted with duplicates merged by count, equals the SNIS formula
    (c(y)/K) exp(r/eta) / sum_j (1/K) exp(r(a_j)/eta) computed by hand; the candidate instance runs the
    existing evaluators (invariant 2 on the slot instance)."""
    inst = _lm_instance()
    indices = jnp.array([[5, 5, 17, 900, 5, 3], [0, 1, 2, 3, 4, 4], [7, 7, 7, 7, 7, 8]], jnp.int32)
    cand = jax.jit(exact.candidates_from_exact)(inst, indices)
    np.testing.assert_allclose(jnp.exp(cand.log_pi0), 1 / 6)
    np.testing.assert_array_equal(cand.reward, jnp.take_along_axis(inst.reward, indices, axis=1))
    np.testing.assert_array_equal(cand.theta_star, inst.theta_star)
    lifted = np.exp(np.asarray(jax.jit(exact.candidate_gibbs_policy)(inst, indices)))
    r = np.asarray(inst.reward)
    for x in range(3):
        counts = np.bincount(np.asarray(indices[x]), minlength=FIXED.n_responses)
        w = counts / 6 * np.exp(r[x] / ETA)
        np.testing.assert_allclose(lifted[x], w / w.sum(), rtol=1e-12, atol=1e-300)
    star = b.optimal_policy(cand)
    np.testing.assert_allclose(b.optimal_value(cand) - b.value(cand, cand.log_pi0),
                               ETA * b.expected_kl(cand, cand.log_pi0, star), atol=1e-12)
    with pytest.raises(ValueError, match="indices"):
        exact.candidates_from_exact(inst, indices.at[0, 0].set(-1))


def test_7_candidate_gibbs_kl_decreases_in_k_and_gap_is_eta_kl():
    """16 seeds of K = 4 ... 1024 draws per prompt from the transformer (nested: the first K of 1024): the
    seed-mean KL(candidate-Gibbs || Gibbs) decreases strictly in K, and J(pi*) - J(pi_K) = eta E_x KL
    exactly (docs/theory.md invariant 2 through the existing evaluators)."""
    inst = _lm_instance(reward=np.random.default_rng(7).standard_normal((3, FIXED.n_responses)))
    _, cfg, params = model("tiny", FIXED)
    ks, k_max = (4, 16, 64, 256, 1024), 1024
    seeds = N_LARGE // k_max
    indices = []
    for x in range(3):
        tokens, mask = samplers[tiny](jax.random.key(70 + x), cfg, params, PROMPTS[x], FIXED, N_LARGE, 1.0)
        indices.append(np.asarray(index_of(FIXED, tokens, mask)).reshape(seeds, k_max))
    indices = jnp.asarray(np.stack(indices, axis=1))             # [seeds, n_x, k_max]
    assert np.all(np.asarray(indices) >= 0)

    @jax.jit
    def kl_and_gap(idx):
        out = []
        for k in ks:
            lifted = exact.candidate_gibbs_policy(inst, idx[:, :k])
            out.append((b.expected_kl(inst, lifted, b.optimal_policy(inst)), b.suboptimality(inst, lifted),
                        exact.candidate_gibbs_kl(inst, idx[:, :k])))
        return out

    means = []
    for kl, gap, per_prompt in jax.vmap(kl_and_gap)(indices):
        np.testing.assert_allclose(gap, ETA * kl, atol=1e-10)
        np.testing.assert_allclose(kl, jnp.sum(inst.d0[None, :] * per_prompt, axis=1), atol=1e-12)
        means.append(float(jnp.mean(kl)))
    print("mean KL(candidate-Gibbs || Gibbs) by K", dict(zip(ks, np.round(means, 4))))
    assert np.all(np.diff(means) < 0)
