"""offline-rate: config validation, a tiny end-to-end run, the table's contents and the figure."""
import numpy as np
import pytest

from experiments.catalogue import offline_rate as e
from experiments.engine.config import replace
from experiments.engine.runner import Progress

TINY = replace(e.presets["quick"], n_contexts=8, n_actions=6, dim=3, sample_sizes=(16, 64),
               panel_coverages=(0.8,), dpo_steps=20)


@pytest.mark.parametrize("field,value,message", [
    ("sample_sizes", (64, 32), "sample_sizes=.* strictly increasing"),
    ("panel_coverages", (1.5,), "panel_coverages=1.5 is not allowed"),
    ("beta_mode", "huge", "beta_mode='huge' is not allowed"),
    ("algorithms", ("dpo", "ppo"), "algorithms='ppo' is not allowed"),
    ("algorithms", ("neural_gibbs",), "algorithms='neural_gibbs' is not allowed"),
    ("kl_coef", 0.0, "kl_coef=0.0 is not allowed"),
    ("ensemble_size", 1, "ensemble_size=1 is not allowed"),
    ("reward", "quadratic", "reward='quadratic' is not allowed"),
])
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        replace(TINY, **{field: value})


def test_tiny_run_table_and_plot(tmp_path):
    """At the covering ``laplace`` radius, so that the event theta* in C occurs on most rows."""
    res = e.run(replace(TINY, beta_mode="laplace"), 4, Progress())
    t = res.table
    for col in ("algorithm", "seed", "n", "coverage", "kl_coef", "subopt", "subopt_kl", "kl_to_ref", "bound",
                "bound_holds", "in_confidence_set", "setting"):
        assert col in t
    assert len(t["seed"]) == 4 * 2 * len(e.ALGORITHMS) * 2
    assert np.all(t["subopt"] >= -1e-12) and np.all(t["subopt_kl"] >= t["subopt"] - 1e-12)
    assert set(np.unique(t["setting"])) == {"canonical", "coverage+0.8"}
    pess = t["algorithm"] == "option_ii"
    assert np.all(np.isfinite(t["bound"][pess]))
    # the deterministic implication: inside the confidence set, the bound holds
    inside = pess & (t["in_confidence_set"] == 1.0)
    assert np.all(t["bound_holds"][inside] == 1.0)
    assert np.all(np.isnan(t["bound"][t["algorithm"] == "dpo"]))
    # the summary's bound-held fractions, overall and on the event theta* in C, from the table
    inside_all = t["in_confidence_set"] == 1.0
    for setting in ("canonical", "coverage+0.8"):
        assert res.summary[f"{setting}/in_confidence_set_frac"] == pytest.approx(
            np.mean(inside_all[(t["setting"] == setting) & (t["algorithm"] == "option_ii")]))
        for alg in ("option_i", "option_ii", "mle_gibbs"):
            rows = (t["setting"] == setting) & (t["algorithm"] == alg)
            assert res.summary[f"{setting}/{alg}/bound_holds_frac"] == pytest.approx(np.mean(t["bound_holds"][rows]))
            key = f"{setting}/{alg}/bound_holds_frac_in_set"
            assert (key in res.summary) == bool(np.any(rows & inside_all))
            if key in res.summary:
                assert res.summary[key] == pytest.approx(np.mean(t["bound_holds"][rows & inside_all]))
        assert res.summary[f"{setting}/option_ii/bound_holds_frac_in_set"] == 1.0
        assert f"{setting}/dpo/bound_holds_frac_in_set" not in res.summary
    assert np.mean(inside_all) >= 0.75
    paths = e.plot(t, TINY, tmp_path)
    assert {p.suffix for p in paths} == {".png", ".svg"} and all(p.stat().st_size > 0 for p in paths)


def test_neural_reward_runs_with_misspecified_linear_baseline():
    cfg = replace(TINY, reward="neural", hidden=4, panel_coverages=(), neural_steps=20,
                  algorithms=("mle_gibbs", "neural_gibbs"))
    t = e.run(cfg, 2, Progress()).table
    assert set(np.unique(t["algorithm"])) == {"mle_gibbs", "neural_gibbs"}
    assert np.all(np.isnan(t["in_confidence_set"]))
    assert np.all(np.isfinite(t["subopt"])) and np.all(t["subopt"] >= -1e-12)
