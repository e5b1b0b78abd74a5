"""Smoke tests of the Nash experiments: each runs at a tiny config through the registry, returns the
required columns with sane values, and plots; their configs (nested instance / confidence / nash options,
short names, check_unused, old flat manifests) and the method registry's plugin path."""
import numpy as np
import pytest

from algorithms.nash import methods
from experiments.engine import registry
from experiments.engine.config import config_from_dict, replace
from experiments.engine.runner import Progress

COMMON = ("algorithm", "seed", "nash_gap", "win_rate_vs_ref", "win_rate_vs_nash", "kl_to_ref")
TINY = {
    "nash-intransitive": dict(n_contexts=3, n_actions=4, dim=2, skew_strengths=(0.0, 2.0), n=64, dpo_steps=5,
                              iterations=2, batch=16, algorithms=("bt_gibbs", "nash_mle", "inpo")),
    "nash-offline": dict(n_contexts=2, n_actions=4, dim=3, sample_sizes=(16, 64), designs=("unilateral", "diagonal"),
                         algorithms=("p2_pessimistic", "bt_gibbs")),
    "nash-online": dict(n_contexts=3, n_actions=4, dim=2, iterations=3, batch=8,
                        algorithms=("enhancer", "sppo")),
    "nash-kl-sweep": dict(n_contexts=3, n_actions=4, dim=2, kl_coefs=(0.2, 1.0), n=64, iterations=2, batch=16,
                          algorithms=("nash", "ipo", "online_ipo", "p2_online")),
}
EXTRA = {"nash-intransitive": ("skew_strength", "n"),
         "nash-offline": ("n", "design", "bound", "policy_bound", "policy_unilateral_coverage", "max_err_over_eta"),
         "nash-online": ("iteration", "queries", "pair_kl"), "nash-kl-sweep": ("kl_coef", "n")}
NAMES = sorted(TINY)


@pytest.mark.parametrize("name", NAMES)
def test_experiment_runs_through_registry(name, tmp_path):
    exp = registry.get(name)
    assert set(exp.presets) == {"quick", "paper"} | ({"p2_regime"} if name in ("nash-offline", "nash-online") else set())
    assert set(exp.seeds) == set(exp.presets)
    config = replace(exp.presets["quick"], **TINY[name])
    res = exp.run(config, 2, Progress())
    t = res.table
    for col in COMMON + EXTRA[name]:
        assert col in t, col
    assert set(np.unique(t["seed"])) == {0, 1}
    assert set(np.unique(t["algorithm"])) == set(config.algorithms)
    for col in COMMON[2:]:
        assert np.all(np.isfinite(t[col])), col
    assert np.all(t["nash_gap"] >= -1e-9) and np.all(t["kl_to_ref"] >= -1e-12)
    assert np.all((t["win_rate_vs_ref"] >= 0) & (t["win_rate_vs_ref"] <= 1))
    if name == "nash-kl-sweep":   # the 'nash' row is pi* itself
        rows = t["algorithm"] == "nash"
        np.testing.assert_allclose(t["win_rate_vs_nash"][rows], 0.5, atol=1e-12)
        assert np.all(t["nash_gap"][rows] <= 1e-9)
    if name == "nash-offline":   # the policy-level bound is at most the pointwise one (Jensen)
        assert np.all(t["policy_bound"] <= t["bound"] + 1e-12) and np.all(t["max_err_over_eta"] > 0)
    if name == "nash-online":   # pair KL: the online methods' only (the enhancer's is >= 0), NaN for dynamics
        online = t["algorithm"] == "enhancer"
        assert np.all(t["pair_kl"][online] >= -1e-12) and np.all(np.isnan(t["pair_kl"][~online]))
    if "n" in EXTRA[name] and name != "nash-offline":   # the registry's query counts
        for alg in config.algorithms:
            assert np.all(t["n"][t["algorithm"] == alg] == methods.queries(alg, config.nash, config.n))
    paths = exp.plot(t, config, tmp_path)
    assert {p.suffix for p in paths} == {".png", ".svg"} and all(p.stat().st_size > 0 for p in paths)


@pytest.mark.parametrize("name, field, value, message", [
    ("nash-intransitive", "skew_strengths", (-1.0,), "skew_strengths=-1.0 is not allowed"),
    ("nash-intransitive", "step", 20.0, "step=20.0 is not allowed"),
    ("nash-intransitive", "payoff", "logit",
     "algorithms=.* is not allowed.*free of nash_md, inpo, sppo when payoff='logit'.*binary labels"),
    ("nash-intransitive", "skew_strength", 2.0, "skew_strength=2.0 is not allowed: .*skew_strengths"),
    ("nash-intransitive", "reward", "neural", "reward='neural' is not allowed: .*linear reward"),
    ("nash-intransitive", "algorithms", ("nash",), "algorithms='nash' is not allowed"),   # exact: not a kind run
    ("nash-intransitive", "algorithms", ("dpo", "dpo"), "algorithms=.* without repeated names"),
    ("nash-intransitive", "reference_vector", "zero", "reference_vector='zero' is not allowed"),
    ("nash-offline", "designs", ("unilateral", "bogus"), "designs='bogus' is not allowed"),
    ("nash-offline", "sample_sizes", (64, 16), "sample_sizes=.* strictly increasing"),
    ("nash-offline", "algorithms", ("nash_mle", "inpo"), "algorithms='inpo' is not allowed"),
    ("nash-offline", "iterations", 8, "iterations=8 is not allowed: nash-offline runs offline methods only"),
    ("nash-online", "algorithms", ("enhancer", "ppo"), "algorithms='ppo' is not allowed"),
    ("nash-online", "algorithms", ("enhancer", "dpo"), "algorithms='dpo' is not allowed"),
    ("nash-online", "dpo_steps", 5, "dpo_steps=5 is not allowed"),
    ("nash-online", "c_beta", 2.0, "c_beta=2.0 is not allowed: nash-online builds no offline confidence set"),
    ("nash-online", "beta", -1.0, "beta=-1.0 is not allowed"),
    ("nash-kl-sweep", "kl_coefs", (), r"kl_coefs=\(\) is not allowed"),
    ("nash-kl-sweep", "payoff", "logit",
     "algorithms=.* is not allowed.*free of ipo, online_ipo, nash_md when payoff='logit'"),
    ("nash-kl-sweep", "kl_coef", 0.3, "kl_coef=0.3 is not allowed: nash-kl-sweep sweeps kl_coef over kl_coefs"),
    ("nash-kl-sweep", "step", 2.0, "step=2.0 is not allowed"),
])
def test_config_validation(name, field, value, message):
    exp = registry.get(name)
    with pytest.raises(ValueError, match=message):
        replace(exp.presets["quick"], **{field: value})


def test_configs_nest_instance_confidence_and_options():
    """One declaration per field: the quick presets' values live in the nested configs, settable by their
    short names; a method supporting the logit payoff is accepted by nash-kl-sweep with it."""
    quick = registry.get("nash-intransitive").presets["quick"]
    assert (quick.instance.n_contexts, quick.instance.dim, quick.confidence.c_beta, quick.nash.dpo_steps,
            quick.nash.batch) == (32, 4, 0.5, 100, 96)
    assert replace(quick, lam=2.0).confidence.lam == 2.0 and replace(quick, ridge=0.1).nash.ridge == 0.1
    sweep = registry.get("nash-kl-sweep").presets["quick"]
    logit = replace(sweep, payoff="logit", algorithms=("nash", "p2_online", "nash_mle", "p2_pessimistic", "dpo"))
    assert logit.payoff == "logit"
    online = registry.get("nash-online").presets["quick"]
    assert replace(online, algorithms=("enhancer", "nash_md_exact", "online_ipo")).algorithms[1] == "nash_md_exact"


# The flat configs of the quick presets as the manifests written before the configs were nested record them.
OLD_FLAT = {
    "nash-intransitive": {"n_contexts": 32, "n_actions": 8, "dim": 4, "reward_norm": 1.0, "kl_coef": 0.1,
                          "temperature": 0.0, "payoff": "identity", "skew_strengths": [0.0, 1.0, 2.0, 4.0, 8.0],
                          "n": 2048, "lam": 1.0, "beta_mode": "sqrt_d", "c_beta": 0.5, "dpo_steps": 100,
                          "dpo_learning_rate": 0.05, "iterations": 24, "batch": 96, "step": 1.0, "ridge": 0.001,
                          "algorithms": ["bt_gibbs", "dpo", "nash_mle", "p2_pessimistic", "nash_md", "inpo", "sppo"],
                          "seed": 0},
    "nash-offline": {"n_contexts": 4, "n_actions": 8, "dim": 8, "reward_norm": 2.0, "kl_coef": 0.05,
                     "temperature": 0.0, "skew_strength": 2.0, "payoff": "identity",
                     "sample_sizes": [64, 256, 1024, 4096], "designs": ["unilateral", "diagonal", "reference"],
                     "algorithms": ["nash_mle", "p2_pessimistic", "bt_gibbs"], "lam": 1.0, "beta_mode": "sqrt_d",
                     "c_beta": 1.0, "seed": 0},
    "nash-online": {"n_contexts": 16, "n_actions": 8, "dim": 6, "reward_norm": 2.0, "kl_coef": 0.1, "coverage": -0.5,
                    "temperature": 4.0, "skew_strength": 2.0, "payoff": "identity", "iterations": 24, "batch": 32,
                    "lam": 1.0, "beta": 1.0, "step": 1.0, "ridge": 0.001,
                    "algorithms": ["enhancer", "self_play", "uniform", "inpo"], "seed": 0},
    "nash-kl-sweep": {"n_contexts": 32, "n_actions": 8, "dim": 4, "reward_norm": 2.0, "coverage": 0.0,
                      "temperature": 2.0, "skew_strength": 2.0, "payoff": "identity", "kl_coefs": [0.1, 0.5, 1.0],
                      "n": 4096, "iterations": 16, "batch": 256, "step": 0.5, "ridge": 0.001, "lam": 1.0, "beta": 1.0,
                      "dpo_steps": 100, "dpo_learning_rate": 0.05,
                      "algorithms": ["nash", "ipo", "online_ipo", "p2_online", "nash_md", "bt_gibbs", "dpo"],
                      "seed": 0},
}


@pytest.mark.parametrize("name", NAMES)
def test_old_flat_manifest_reads_as_the_quick_preset(name):
    quick = registry.get(name).presets["quick"]
    assert config_from_dict(type(quick), OLD_FLAT[name]) == quick


def test_a_registered_method_runs_like_a_built_in(tmp_path):
    """The plugin path: a method registered at run time is accepted by --set algorithms=..., gets the view
    of its kind (here nash-intransitive's common key of the dynamics, so a copy of nash_md reproduces
    nash_md's rows exactly) and is labelled in the figure by its registry label."""
    methods.register("nash_md_copy", methods.get("nash_md")._replace(label="copy of Nash-MD", color=None))
    try:
        exp = registry.get("nash-intransitive")
        config = replace(exp.presets["quick"], **{**TINY["nash-intransitive"], "algorithms": ("nash_md", "nash_md_copy")})
        t = exp.run(config, 2, Progress()).table
        a, c = t["algorithm"] == "nash_md", t["algorithm"] == "nash_md_copy"
        for col in COMMON[2:] + ("n",):
            np.testing.assert_array_equal(t[col][a], t[col][c])
        assert exp.plot(t, config, tmp_path)
    finally:
        methods.METHODS.pop("nash_md_copy", None)
    with pytest.raises(ValueError, match="algorithms='nash_md_copy' is not allowed"):
        replace(exp.presets["quick"], algorithms=("nash_md_copy",))
