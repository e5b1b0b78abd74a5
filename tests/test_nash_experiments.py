"""Smoke tests of the Nash experiments: each runs at a tiny config through the registry, returns the
required columns with sane values, and plots."""
import dataclasses

import numpy as np
import pytest

from experiments.engine import registry
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
EXTRA = {"nash-intransitive": ("skew_strength", "n"), "nash-offline": ("n", "design", "bound"),
         "nash-online": ("iteration", "queries"), "nash-kl-sweep": ("kl_coef", "n")}


@pytest.mark.parametrize("name", sorted(TINY))
def test_experiment_runs_through_registry(name, tmp_path):
    exp = registry.get(name)
    assert set(exp.presets) == {"quick", "paper"}
    config = dataclasses.replace(exp.presets["quick"], **TINY[name])
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
    paths = exp.plot(t, config, tmp_path)
    assert {p.suffix for p in paths} == {".png", ".svg"} and all(p.stat().st_size > 0 for p in paths)


@pytest.mark.parametrize("name, field, value, message", [
    ("nash-intransitive", "skew_strengths", (-1.0,), "skew_strengths=-1.0 is not allowed"),
    ("nash-intransitive", "step", 20.0, "step=20.0 is not allowed"),
    ("nash-intransitive", "payoff", "logit", "algorithms=.* is not allowed.*free of the sampled dynamics"),
    ("nash-offline", "designs", ("unilateral", "bogus"), "designs='bogus' is not allowed"),
    ("nash-offline", "sample_sizes", (64, 16), "sample_sizes=.* strictly increasing"),
    ("nash-online", "algorithms", ("enhancer", "ppo"), "algorithms='ppo' is not allowed"),
    ("nash-kl-sweep", "kl_coefs", (), r"kl_coefs=\(\) is not allowed"),
    ("nash-kl-sweep", "payoff", "logit", "payoff='logit' is not allowed"),
])
def test_config_validation(name, field, value, message):
    exp = registry.get(name)
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(exp.presets["quick"], **{field: value})
