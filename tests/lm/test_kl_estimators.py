"""KL estimators with exact ground truth (docs/llm_bridge.md §4, §5.4 test 6).

Exact moments and expected gradients of k1/k2/k3 configurations over enumerated responses, checked
against: the identities of §4.1 on the tiny transformer (|A| = 1000), brute-force NumPy sums and
NumPy Monte Carlo (ancestral sampling from the TreeLM logit table, CLT tolerances, fixed seeds),
finite differences of a NumPy KL, and literal ``jax.grad`` of hand-written surrogates.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandits.lm import kl_estimators as kl
from bandits.lm import tiny, tree
from bandits.lm.space import ResponseSpace, enumerate_responses

Z = 4.5                         # CLT gate for Monte Carlo checks (two-sided p ~ 7e-6 per check)
VALUE_NAMES = tuple(kl.VALUE_ESTIMATORS)


# ---------------------------------------------------------------------------------------------
# Brute-force NumPy references on the TreeLM logit table (layout documented in bandits.lm.tree)


def np_node(prefix, V):
    code = 0
    for y in prefix:
        code = code * V + int(y)
    return sum(V**s for s in range(len(prefix))) + code


def np_next(table, prefix, T=1.0):
    z = np.asarray(table[np_node(prefix, table.shape[-1])], float) / T
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def np_responses(V, L, eos):
    out = []

    def grow(prefix):
        if len(prefix) == L:
            out.append(tuple(prefix))
            return
        for y in range(V):
            if eos is not None and y == eos:
                out.append(tuple(prefix) + (y,))
            else:
                grow(prefix + [y])

    grow([])
    return out


def np_token_lps(table, y, T=1.0):
    return np.array([np_next(table, y[:t], T)[y[t]] for t in range(len(y))])


def np_draw(rng, table, n, L, eos, T=1.0):
    """Ancestral sampling in NumPy: a list of ``n`` responses (tuples)."""
    cdfs = {}
    out = []
    for u in rng.random((n, L)):
        y = ()
        while len(y) < L:
            if y not in cdfs:
                cdfs[y] = np.cumsum(np.exp(np_next(table, y, T)))
            cdf = cdfs[y]
            y = y + (min(int(np.searchsorted(cdf, u[len(y)] * cdf[-1])), len(cdf) - 1),)
            if eos is not None and y[-1] == eos:
                break
        out.append(y)
    return out


def np_value_and_weight(y, tab_pi, tab_ref, tab_q, weighting, T_q=1.0):
    """NumPy per-sample ``W(y) k(y)`` for every value estimator."""
    lp, lr = np_token_lps(tab_pi, y), np_token_lps(tab_ref, y)
    lq = np_token_lps(tab_q, y, T_q)
    d = lp - lr
    D = d.sum()
    terms = {"k1": d, "k2": 0.5 * d**2, "k3": np.exp(-d) - 1.0 + d}
    if weighting == "none":
        w_tok, w_seq = np.ones_like(d), 1.0
    elif weighting == "sequence":
        w_tok = np.full_like(d, np.exp((lp - lq).sum()))
        w_seq = w_tok[0]
    elif weighting == "prefix":
        w_tok, w_seq = np.exp(np.cumsum(lp - lq)), np.exp((lp - lq).sum())
    else:
        w_tok, w_seq = np.exp(lp - lq), np.nan
    out = {k: float((w_tok * terms[k]).sum()) for k in terms}
    out["k2_seq"] = w_seq * 0.5 * D**2
    out["k3_seq"] = w_seq * (np.exp(-D) - 1.0 + D)
    return out


# ---------------------------------------------------------------------------------------------
# A small TreeLM (EOS space) with pi, pi_ref and pi_old


TREE_SPACE = ResponseSpace(3, 3, eos_id=0, pad_id=0)          # 15 responses
TREE_CFG = tree.TreeConfig(vocab_size=3, length=3, prompt_len=1, prompt_vocab_size=2)
PROMPTS = jnp.array([[0], [1]], jnp.int32)


@functools.partial(jax.jit, static_argnames=("space", "cfg"))
def tree_logp(params, space=TREE_SPACE, cfg=TREE_CFG, temperature=1.0):
    return jax.vmap(lambda x: tree.enumerated_token_logprobs(cfg, params, x, space, temperature))(PROMPTS)


def jit_grad(configurations=None, **kwargs):
    """``kl.exact_expected_grad`` on the tree LM, jitted (configurations static)."""
    return jax.jit(lambda params, lr, mask, sampler=None: kl.exact_expected_grad(
        tree_logp, params, lr, mask, configurations, sampler_logp=sampler, **kwargs))


@pytest.fixture(scope="module")
def tree_world():
    rng = np.random.default_rng(7)
    shape = (TREE_CFG.n_prompts, TREE_CFG.n_nodes, TREE_CFG.vocab_size)
    ref = {"logits": jnp.asarray(rng.standard_normal(shape))}
    pi = {"logits": ref["logits"] + 0.8 * rng.standard_normal(shape)}
    old = {"logits": pi["logits"] + 0.4 * rng.standard_normal(shape)}
    tokens, mask = enumerate_responses(TREE_SPACE)
    return dict(ref=ref, pi=pi, old=old, tokens=np.asarray(tokens), mask=np.asarray(mask),
                lp=tree_logp(pi), lr=tree_logp(ref), lo=tree_logp(old))


def jax_rows(tokens, mask):
    return {tuple(int(t) for t, m in zip(row, mrow) if m): i for i, (row, mrow) in enumerate(zip(tokens, mask))}


# ---------------------------------------------------------------------------------------------
# docs/llm_bridge.md §5.4 test 6: the tiny transformer, V = 10, L = 3 (|A| = 1000)


def perturb(seed, params, scale):
    """Every leaf moved by ``scale * sd(leaf) * N(0, 1)`` (sd 1 for constant leaves; NumPy noise)."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree.flatten(params)
    return jax.tree.unflatten(treedef, [x + scale * (np.std(x) if np.std(x) > 0 else 1.0)
                                        * rng.standard_normal(x.shape) for x in leaves])


@pytest.fixture(scope="module")
def tiny_world():
    space = ResponseSpace(10, 3)
    cfg = tiny.TinyLMConfig(vocab_size=10)
    prompt = jnp.array([1, 2, 3], jnp.int32)
    ref = tiny.init(jax.random.key(0), cfg)
    theta = perturb(1, ref, 0.3)
    _, mask = enumerate_responses(space)

    def logp_fn(p):
        return tiny.enumerated_token_logprobs(cfg, p, prompt, space)

    @jax.jit
    def everything(theta, ref):
        lr = logp_fn(ref)
        moments = kl.exact_moments(logp_fn(theta), lr, mask)
        grads = kl.exact_expected_grad(logp_fn, theta, lr, mask, with_kl=True)
        return moments, grads

    moments, grads = everything(theta, ref)
    return moments, grads


def test_tiny_values_k1_k3_unbiased_k2_biased_up(tiny_world):
    moments, _ = tiny_world
    kl_exact = float(moments["k1"].kl)
    assert kl_exact > 0.05
    for name in ("k1", "k3", "k3_seq"):
        assert abs(float(moments[name].mean) - kl_exact) < 1e-12, name
    assert float(moments["k2"].mean) > kl_exact + 1e-3
    assert float(moments["k3"].sd) < float(moments["k1"].sd)     # k3's control variate lowers the variance


def _flat(tree_):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree_)])


def test_tiny_expected_gradients(tiny_world):
    _, grads = tiny_world
    rev, fwd = grads["kl_reverse"], grads["kl_forward"]
    assert np.linalg.norm(_flat(rev)) > 0.1
    assert np.linalg.norm(_flat(grads["k1_loss"])) < 1e-10                 # k1 in the loss: no gradient
    for name in ("k1_reward", "k1_reward_to_go", "k2_seq_loss"):           # exact configurations
        assert float(kl.compare(grads[name], rev)[1]) < 1e-10, name
    for name in ("k2_loss", "k3_loss"):                                     # the documented biases
        assert float(kl.compare(grads[name], rev)[1]) > 1e-2, name
    assert float(kl.compare(grads["k3_loss"], fwd)[0]) > 0.95
    # Identities of the module docstring: k3_seq in the loss descends the forward KL exactly, and
    # TRL's ratio-corrected k3 has per-token k2's partial gradient on policy.
    assert float(kl.compare(grads["k3_seq_loss"], fwd)[1]) < 1e-10
    assert float(kl.compare(grads["k3_ratio_loss"], grads["k2_loss"])[1]) < 1e-10


# ---------------------------------------------------------------------------------------------
# Independent references on the TreeLM


def test_exact_kl_and_moments_match_numpy_sums(tree_world):
    w = tree_world
    rows = jax_rows(w["tokens"], w["mask"])
    ys = np_responses(3, 3, 0)
    assert sorted(rows) == sorted(ys)
    tables = {k: np.asarray(w[k]["logits"]) for k in ("pi", "ref", "old")}
    kls, means = [], {n: [] for n in VALUE_NAMES}
    second = {n: [] for n in VALUE_NAMES}
    for x in range(2):
        tp, tr = tables["pi"][x], tables["ref"][x]
        p = np.array([np.exp(np_token_lps(tp, y).sum()) for y in ys])
        assert abs(p.sum() - 1) < 1e-12
        kls.append(sum(pi * (np_token_lps(tp, y).sum() - np_token_lps(tr, y).sum()) for pi, y in zip(p, ys)))
        vals = [np_value_and_weight(y, tp, tr, tp, "none") for y in ys]
        for n in VALUE_NAMES:
            means[n].append(sum(pi * v_[n] for pi, v_ in zip(p, vals)))
            second[n].append(sum(pi * v_[n] ** 2 for pi, v_ in zip(p, vals)))
    assert abs(float(kl.exact_kl(w["lp"], w["lr"], w["mask"])) - np.mean(kls)) < 1e-12
    fwd = np.mean([sum(np.exp(np_token_lps(tables["ref"][x], y).sum())
                       * (np_token_lps(tables["ref"][x], y).sum() - np_token_lps(tables["pi"][x], y).sum())
                       for y in ys) for x in range(2)])
    assert abs(float(kl.forward_kl(w["lp"], w["lr"], w["mask"])) - fwd) < 1e-12
    m = kl.exact_moments(w["lp"], w["lr"], w["mask"])
    for n in VALUE_NAMES:
        mean = np.mean(means[n])
        assert abs(float(m[n].mean) - mean) < 1e-12, n
        assert abs(float(m[n].var) - (np.mean(second[n]) - mean**2)) < 1e-10, n


SAMPLERS = [("on", "none"), ("old", "none"), ("old", "sequence"), ("old", "prefix"), ("old", "token"),
            ("temp", "none")]


@pytest.mark.parametrize("sampler,weighting", SAMPLERS)
def test_exact_moments_match_numpy_monte_carlo(tree_world, sampler, weighting):
    """Exact mean and variance vs a NumPy Monte Carlo of 20000 draws per prompt (CLT gates)."""
    w = tree_world
    T = 0.6
    n = 20000
    rng = np.random.default_rng(123)
    tables = {k: np.asarray(w[k]["logits"]) for k in ("pi", "ref", "old")}
    if sampler == "on":
        sampler_logp, q_table, Tq = None, tables["pi"], 1.0
    elif sampler == "old":
        sampler_logp, q_table, Tq = w["lo"], tables["old"], 1.0
    else:
        sampler_logp = kl.tempered_token_logprobs(w["lp"], kl.prefix_groups(w["tokens"], w["mask"]), T)
        q_table, Tq = tables["pi"], T
    names = [nm for nm in VALUE_NAMES if not (weighting == "token" and nm.endswith("_seq"))]
    exact = kl.exact_moments(w["lp"], w["lr"], w["mask"], sampler_logp=sampler_logp, weighting=weighting,
                             estimators=names)
    samples = {nm: [] for nm in names}
    for x in range(2):            # prompts have weight 1/2 each: equal draws per prompt, pooled
        cache = {}
        for y in np_draw(rng, q_table[x], n, 3, 0, Tq):
            if y not in cache:
                cache[y] = np_value_and_weight(y, tables["pi"][x], tables["ref"][x], q_table[x], weighting, Tq)
            for nm in names:
                samples[nm].append(cache[y][nm])
    for nm in names:
        s = np.asarray(samples[nm])
        mean, var = float(exact[nm].mean), float(exact[nm].var)
        # Stratified by prompt: the variance of the pooled mean uses within-prompt variances.
        within = np.mean([s[i * n:(i + 1) * n].var() for i in range(2)])
        assert abs(s.mean() - mean) < Z * np.sqrt(within / (2 * n)), (nm, s.mean(), mean)
        fourth = np.mean((s - mean) ** 4)
        assert abs(np.mean((s - mean) ** 2) - var) < Z * np.sqrt((fourth - var**2) / (2 * n)) + 1e-12, nm


def test_importance_weighting_exactness(tree_world):
    """Off policy, sequence and prefix weights recover the on-policy means exactly; no correction and
    TRL's per-token ratio do not (here)."""
    w = tree_world
    on = kl.exact_moments(w["lp"], w["lr"], w["mask"])
    for weighting in ("sequence", "prefix"):
        off = kl.exact_moments(w["lp"], w["lr"], w["mask"], sampler_logp=w["lo"], weighting=weighting)
        for n in VALUE_NAMES:
            assert abs(float(off[n].mean) - float(on[n].mean)) < 1e-12, (weighting, n)
    naive = kl.exact_moments(w["lp"], w["lr"], w["mask"], sampler_logp=w["lo"])
    token = kl.exact_moments(w["lp"], w["lr"], w["mask"], sampler_logp=w["lo"], weighting="token",
                             estimators=("k1", "k3"))
    for n in ("k1", "k3"):
        assert abs(float(naive[n].mean) - float(on[n].mean)) > 1e-3
        assert abs(float(token[n].mean) - float(on[n].mean)) > 1e-4
    # A sequence-level sampler law gives the same answer as its per-token log-probs.
    seq_law = kl.sequence_logprob(w["lo"], w["mask"])
    via_seq = kl.exact_moments(w["lp"], w["lr"], w["mask"], sampler_logp=seq_law, weighting="sequence")
    assert abs(float(via_seq["k3_seq"].var) - float(kl.exact_moments(
        w["lp"], w["lr"], w["mask"], sampler_logp=w["lo"], weighting="sequence")["k3_seq"].var)) < 1e-12


def test_k3_is_nonnegative_and_matches_formula():
    d = jnp.asarray(np.concatenate([np.linspace(-30, 30, 601), [-1e-9, 0.0, 1e-9]]))[None, :]
    mask = jnp.ones(d.shape, bool)
    terms = np.asarray(kl.per_token("k3", d, mask))
    assert np.all(terms >= 0)
    small = np.abs(d[0]) < 5
    ref = np.exp(-np.asarray(d[0])) - 1 + np.asarray(d[0])
    np.testing.assert_allclose(terms[0][small], ref[small], rtol=1e-12, atol=1e-15)
    rng = np.random.default_rng(0)
    dd = jnp.asarray(rng.normal(0, 3, (200, 4)))
    mm = jnp.asarray(rng.random((200, 4)) < 0.7)
    assert np.all(np.asarray(kl.k3(dd, mm)) >= 0) and np.all(np.asarray(kl.k3_seq(dd, mm)) >= 0)
    np.testing.assert_allclose(np.asarray(kl.k2_seq(dd, mm)), 0.5 * np.where(mm, dd, 0).sum(-1) ** 2, rtol=1e-13)
    np.testing.assert_allclose(np.asarray(kl.k1(dd, mm)), np.where(mm, dd, 0).sum(-1), rtol=1e-13)


@pytest.mark.parametrize("space", [ResponseSpace(3, 3), TREE_SPACE])
def test_tempered_law_matches_model_temperature(space):
    cfg = TREE_CFG
    params = {"logits": jnp.asarray(1.5 * np.random.default_rng(3).standard_normal(
        (cfg.n_prompts, cfg.n_nodes, cfg.vocab_size)))}
    tokens, mask = enumerate_responses(space)
    groups = kl.prefix_groups(tokens, mask)
    lp = tree_logp(params, space)
    np.testing.assert_allclose(np.asarray(kl.tempered_token_logprobs(lp, groups, 1.0)), np.asarray(lp), atol=1e-13)
    for T in (0.5, 1.7):
        mine = kl.tempered_token_logprobs(lp, groups, T)
        np.testing.assert_allclose(np.asarray(mine), np.asarray(tree_logp(params, space, temperature=T)),
                                   atol=1e-12)
        total = jax.nn.logsumexp(kl.sequence_logprob(mine, mask), axis=-1)
        np.testing.assert_allclose(np.asarray(total), 0.0, atol=1e-12)


def _literal_objective(name, lp, lr, mask, q_tok=None, weighting="none"):
    """Hand-written sum_y stop_gradient(q W) s(y), mean over prompts (the §4.3 recipe, written out)."""
    sg = jax.lax.stop_gradient
    lp0 = sg(lp)
    q_tok = lp0 if q_tok is None else q_tok
    q = jnp.exp(jnp.where(mask, q_tok, 0).sum(-1))
    w = jnp.exp(jnp.where(mask, lp0 - q_tok, 0).sum(-1)) if weighting == "sequence" else 1.0
    d = jnp.where(mask, lp - lr, 0.0)
    lpm = jnp.where(mask, lp, 0.0)
    k3t = jnp.where(mask, jnp.exp(-d) - 1 + d, 0.0)
    D = d.sum(-1)
    if name == "k1_loss":
        s = D
    elif name == "k2_loss":
        s = (0.5 * d**2).sum(-1)
    elif name == "k3_loss":
        s = k3t.sum(-1)
    elif name == "k3_ratio_loss":
        s = (jnp.exp(jnp.where(mask, lp - q_tok, 0)) * k3t).sum(-1)
    elif name == "k2_seq_loss":
        s = 0.5 * D**2
    elif name == "k3_seq_loss":
        s = jnp.exp(-D) - 1 + D
    elif name == "k1_reward":
        s = sg(D) * lpm.sum(-1)
    elif name == "k3_reward":
        s = sg(k3t.sum(-1)) * lpm.sum(-1)
    else:  # k1_reward_to_go
        L = d.shape[-1]
        s = sum(sg(d[..., t:].sum(-1)) * lpm[..., t] for t in range(L))
    return jnp.mean(jnp.sum(q * w * s, axis=-1))


def test_expected_gradients_equal_literal_jax_grad(tree_world):
    w = tree_world
    mask = jnp.asarray(w["mask"])
    mine = jit_grad(with_kl=True)(w["pi"], w["lr"], mask)
    literal = jax.jit(lambda p: {name: jax.grad(lambda q: _literal_objective(name, tree_logp(q), w["lr"], mask))(p)
                                 for name in kl.CONFIGURATIONS})(w["pi"])
    for name in kl.CONFIGURATIONS:
        np.testing.assert_allclose(mine[name]["logits"], literal[name]["logits"], atol=1e-12, err_msg=name)
    off = jit_grad(("k3_loss", "k1_reward"), weighting="sequence")(w["pi"], w["lr"], mask, w["lo"])
    for name in ("k3_loss", "k1_reward"):
        lit = jax.grad(lambda p: _literal_objective(name, tree_logp(p), w["lr"], mask, w["lo"], "sequence"))(w["pi"])
        np.testing.assert_allclose(off[name]["logits"], lit["logits"], atol=1e-12, err_msg=name)
        # Exact sequence importance weights turn the off-policy expectation into the on-policy one.
        np.testing.assert_allclose(off[name]["logits"], mine[name]["logits"], atol=1e-12, err_msg=name)
    # TRL's ratio-corrected k3 off policy, against the literal surrogate.
    ratio = jit_grad(("k3_ratio_loss",))(w["pi"], w["lr"], mask, w["lo"])
    lit = jax.grad(lambda p: _literal_objective("k3_ratio_loss", tree_logp(p), w["lr"], mask, w["lo"]))(w["pi"])
    np.testing.assert_allclose(ratio["k3_ratio_loss"]["logits"], lit["logits"], atol=1e-12)


def test_kl_gradient_matches_numpy_finite_differences(tree_world):
    w = tree_world
    ys = np_responses(3, 3, 0)

    def np_kls(table_pi):
        rev = fwd = 0.0
        for x in range(2):
            for y in ys:
                sp_ = np_token_lps(table_pi[x], y).sum()
                sr = np_token_lps(np.asarray(w["ref"]["logits"])[x], y).sum()
                rev += 0.5 * np.exp(sp_) * (sp_ - sr)
                fwd += 0.5 * np.exp(sr) * (sr - sp_)
        return np.array([rev, fwd])

    rev, fwd = kl.kl_gradients(tree_logp, w["pi"], w["lr"], w["mask"])
    rng = np.random.default_rng(5)
    base = np.asarray(w["pi"]["logits"])
    for _ in range(2):
        u = rng.standard_normal(base.shape)
        h = 1e-5
        fd = (np_kls(base + h * u) - np_kls(base - h * u)) / (2 * h)
        assert abs(fd[0] - float(np.sum(np.asarray(rev["logits"]) * u))) < 1e-7
        assert abs(fd[1] - float(np.sum(np.asarray(fwd["logits"]) * u))) < 1e-7


# ---------------------------------------------------------------------------------------------
# Property test: random small TreeLMs


PROPERTY_SPACES = [ResponseSpace(2, 3), ResponseSpace(3, 2, eos_id=1, pad_id=0), ResponseSpace(4, 1)]


@functools.lru_cache(maxsize=None)
def property_check(space):
    """Jitted per space: (KL, on-policy means, off-policy IS means, gradient errors)."""
    cfg = tree.TreeConfig(vocab_size=space.vocab_size, length=space.length, prompt_len=1, prompt_vocab_size=2)
    fn = lambda p: tree_logp(p, space, cfg)                                   # noqa: E731
    _, mask = enumerate_responses(space)

    @jax.jit
    def run(ref, pi, old):
        lp, lr, lo = fn(pi), fn(ref), fn(old)
        on = kl.exact_moments(lp, lr, mask)
        off = {w: kl.exact_moments(lp, lr, mask, sampler_logp=lo, weighting=w, estimators=("k1", "k3"))
               for w in ("sequence", "prefix")}
        g = kl.exact_expected_grad(fn, pi, lr, mask, with_kl=True)
        flat = {n: jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(t)]) for n, t in g.items()}
        return kl.exact_kl(lp, lr, mask), on, off, flat

    return run


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), space=st.sampled_from(PROPERTY_SPACES),
       scale=st.floats(0.1, 2.0))
def test_property_unbiased_values_and_exact_gradients(seed, space, scale):
    rng = np.random.default_rng(seed)
    shape = (2, sum(space.vocab_size**t for t in range(space.length)), space.vocab_size)
    ref = rng.standard_normal(shape)
    pi = ref + scale * rng.standard_normal(shape)
    old = pi + 0.3 * rng.standard_normal(shape)
    truth, on, off, g = property_check(space)({"logits": ref}, {"logits": pi}, {"logits": old})
    truth = float(truth)
    tol = 1e-12 * max(1.0, truth)
    for n in ("k1", "k3", "k3_seq"):
        assert abs(float(on[n].mean) - truth) < tol
    for weighting in ("sequence", "prefix"):
        assert abs(float(off[weighting]["k1"].mean) - truth) < tol
        assert abs(float(off[weighting]["k3"].mean) - truth) < tol
    g = {n: np.asarray(x) for n, x in g.items()}
    rev_scale = max(1.0, np.linalg.norm(g["kl_reverse"]))
    for name in ("k1_reward", "k1_reward_to_go", "k2_seq_loss"):
        assert np.linalg.norm(g[name] - g["kl_reverse"]) <= 1e-10 * rev_scale
    assert np.linalg.norm(g["k1_loss"]) < 1e-10
    assert np.linalg.norm(g["k3_seq_loss"] - g["kl_forward"]) <= 1e-10 * max(1.0, np.linalg.norm(g["kl_forward"]))
    assert np.linalg.norm(g["k3_ratio_loss"] - g["k2_loss"]) <= 1e-10 * max(1.0, np.linalg.norm(g["k2_loss"]))
    if space.length == 1:   # one token: no prefix term, so per-token k2 is exact too
        assert np.linalg.norm(g["k2_loss"] - g["kl_reverse"]) <= 1e-10 * rev_scale


# ---------------------------------------------------------------------------------------------
# Several prompts and input validation


def test_prompt_weights(tree_world):
    w = tree_world
    per_prompt = [float(kl.exact_kl(w["lp"][i], w["lr"][i], w["mask"])) for i in range(2)]
    weights = np.array([0.3, 0.7])
    assert abs(float(kl.exact_kl(w["lp"], w["lr"], w["mask"], weights)) - weights @ per_prompt) < 1e-13
    m = kl.exact_moments(w["lp"], w["lr"], w["mask"], prompt_weights=weights, estimators=("k3",))
    assert abs(float(m["k3"].mean) - weights @ per_prompt) < 1e-12


def test_bad_inputs_raise_clear_errors(tree_world):
    w = tree_world
    lp, lr, mask = w["lp"], w["lr"], w["mask"]
    with pytest.raises(ValueError, match="weighting='bogus'"):
        kl.exact_moments(lp, lr, mask, sampler_logp=w["lo"], weighting="bogus")
    with pytest.raises(ValueError, match="sequence-level estimator .k2_seq."):
        kl.exact_moments(lp, lr, mask, sampler_logp=w["lo"], weighting="token")
    with pytest.raises(ValueError, match="carry probability"):
        kl.exact_moments(lp[:, :-1], lr[:, :-1], mask[:-1])
    with pytest.raises(ValueError, match="ref_logp has shape"):
        kl.exact_kl(lp, lr[0], mask)
    with pytest.raises(ValueError, match="loss_ratio"):
        kl.expected_cotangents(lp, lr, mask, ["k3_ratio_loss"], sampler_logp=w["lo"], weighting="sequence")
    with pytest.raises(ValueError, match="configurations='k4_loss'"):
        kl.expected_cotangents(lp, lr, mask, ["k4_loss"])
    with pytest.raises(ValueError, match="temperature"):
        kl.tempered_token_logprobs(lp, kl.prefix_groups(w["tokens"], w["mask"]), 0.0)
    with pytest.raises(ValueError, match="prefix"):
        kl.prefix_groups(np.zeros((2, 3), int), np.array([[True, False, True], [True, True, True]]))
