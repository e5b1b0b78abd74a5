"""Smoke tests of the online experiments through the registry, their configs, a plugin agent, and a sharded
online run."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from experiments.catalogue import (
    batch_size,
    bonus_compare,
    hybrid,
    online_common,
    online_explore,
)
from experiments.engine.config import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    replace,
)
from experiments.engine.results import as_results
from experiments.engine.runner import Progress

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(n_contexts=6, n_actions=5, dim=3, dpo_steps=10, newton_steps=15)
TINY = dict(SMALL, iterations=3, batch_size=8)
COLUMNS = {"algorithm", "seed", "iteration", "queries", "subopt", "subopt_kl", "agent_regret_kl", "query_regret",
           "query_regret_kl", "avg_regret", "weak_regret", "identical_pairs", "log_det_gram", "log_det_fisher",
           "kl_to_ref", "kl_to_ref_explorer", "confidence_width"}


def _run(module, **fields):
    config = replace(module.presets["quick"], **fields)
    results = as_results(module.run(config, 3, Progress()))
    return config, results.table, results.summary


def test_online_explore_columns_crn_and_plot(tmp_path):
    config, table, summary = _run(online_explore, algorithms=("enhancer", "pi0", "iterative_dpo"), **TINY)
    assert COLUMNS <= set(table)
    assert set(np.unique(table["algorithm"])) == {"enhancer", "pi0", "iterative_dpo"}
    # common random numbers: every algorithm starts from the same instance and the same pi_0 = pi0
    first = table["iteration"] == 0
    for setting in ("hard", "easy"):
        sel = first & (table["setting"] == setting)
        by_alg = [table["subopt"][sel & (table["algorithm"] == a)] for a in ("enhancer", "pi0", "iterative_dpo")]
        np.testing.assert_allclose(by_alg[0], by_alg[1], rtol=1e-12)
        np.testing.assert_allclose(by_alg[0], by_alg[2], rtol=1e-12)
    assert "hard/enhancer/final_subopt" in summary and "hard/enhancer/nontrivial_frac" in summary
    hard = table["setting"] == "hard"
    in_set = hard & (table["in_confidence_set"] == 1.0) & ~np.isnan(table["bound_holds"])
    if in_set.any():   # the bound's frequency on the event theta* in C_t it assumes
        assert summary["hard/bound_holds_frac_in_set"] == pytest.approx(float(np.mean(table["bound_holds"][in_set])))
    else:
        assert "hard/bound_holds_frac_in_set" not in summary
    for key in ("final_agent_regret_kl", "final_query_regret_kl", "final_weak_regret", "identical_pairs",
                "final_log_det_fisher"):
        assert np.isfinite(summary[f"hard/enhancer/{key}"]), key
    # pi_0 = pi0 for every algorithm of a seed: the main agent's regret over the first batch is common
    second = table["iteration"] == 1
    np.testing.assert_allclose(table["agent_regret_kl"][second & (table["algorithm"] == "enhancer")],
                               table["agent_regret_kl"][second & (table["algorithm"] == "pi0")], rtol=1e-12)
    assert online_explore.plot(table, config, tmp_path)


def test_shared_program_equals_separate_programs():
    """Strategies in one lax.switch program give the same traces as each compiled alone."""
    config = replace(online_explore.presets["quick"], **TINY, settings=("hard",))
    from experiments.engine.runner import seed_keys
    keys = seed_keys(0, 2)
    together = online_common.run_algorithms(config, ("optimism", "max_min"), keys, Progress())
    alone = online_common.run_algorithms(config, ("max_min",), keys, Progress())
    np.testing.assert_allclose(together[1]["subopt"], alone[0]["subopt"], rtol=1e-12)


def test_batch_size_and_hybrid_and_bonus_compare(tmp_path):
    config, table, summary = _run(batch_size, **SMALL, total_queries=32, batch_sizes=(8, 16), algorithms=("pi0",))
    assert set(np.unique(table["batch_size"])) == {8, 16}
    assert table["queries"].max() == 32 and "hard/pi0/max_over_min_final_subopt" in summary
    assert summary["hard/pi0/m16/minus_m8/subopt/diff"] == pytest.approx(
        summary["hard/pi0/m16/final_subopt"] - summary["hard/pi0/m8/final_subopt"], abs=1e-12)
    assert batch_size.plot(table, config, tmp_path)
    config, table, summary = _run(hybrid, **SMALL, batch_size=8, budget=32, offline_fraction=0.5)
    assert set(np.unique(table["mode"])) == {"offline", "online", "hybrid"}
    for mode in ("offline", "online", "hybrid"):
        assert table["comparisons"][table["mode"] == mode].max() == 32
    for mode in ("offline", "online"):
        assert summary[f"hard/{mode}/minus_hybrid/subopt/diff"] == pytest.approx(
            summary[f"hard/{mode}/final_subopt"] - summary["hard/hybrid/final_subopt"], abs=1e-12)
    assert hybrid.plot(table, config, tmp_path)
    algs = ("enhancer", "pi0", "uniform+distinct")
    config, table, summary = _run(bonus_compare, **TINY, algorithms=algs, rank_by="query_regret_kl")
    ranks = sorted(summary[f"hard/{a}/rank"] for a in algs)
    assert ranks == [1, 2, 3] and summary["hard/enhancer/diff"] == 0.0 and summary["rank_by"] == "query_regret_kl"
    by_regret = sorted(algs, key=lambda a: summary[f"hard/{a}/final_query_regret_kl"])
    assert [summary[f"hard/{a}/rank"] for a in by_regret] == [1, 2, 3]
    assert summary["hard/uniform+distinct/identical_pairs"] == 0.0
    # the ranked metric's paired difference is the paired_final entry of that metric
    assert summary["hard/pi0/minus_enhancer/query_regret_kl/diff"] == pytest.approx(summary["hard/pi0/diff"])
    hard = table["setting"] == "hard"   # only the enhancer states P1's bound
    assert summary["hard/bound_holds_frac"] == pytest.approx(float(np.nanmean(table["bound_holds"][hard])))
    assert bonus_compare.plot(table, config, tmp_path)


def test_paired_final_pairs_by_seed_at_each_groups_last_iteration():
    # group b stops at iteration 1, group a at 2; rows are shuffled across seeds
    table = {"algorithm": np.array(["a", "a", "a", "a", "b", "b", "b", "b"]),
             "iteration": np.array([2, 0, 2, 0, 1, 1, 0, 0]), "seed": np.array([1, 0, 0, 1, 0, 1, 0, 1]),
             "subopt": np.array([5.0, 9.0, 1.0, 9.0, 2.0, 3.0, 9.0, 9.0])}
    got = online_common.paired_final(table, "algorithm", "b", "s", ("subopt",))
    diff = np.array([1.0 - 2.0, 5.0 - 3.0])   # seed 0, seed 1
    half = 12.706204736174694 * diff.std(ddof=1) / np.sqrt(2)   # t_{0.975, 1}
    assert got["s/a/minus_b/subopt/diff"] == pytest.approx(diff.mean())
    assert got["s/a/minus_b/subopt/diff_high"] == pytest.approx(diff.mean() + half)
    assert got["s/a/minus_b/subopt/below_frac"] == 0.5 and "s/b/minus_b/subopt/diff" not in got
    assert online_common.paired_final(table, "algorithm", "c", "s", ("subopt",)) == {}


def test_bound_summary_counts_rows_with_a_bound_and_the_event_theta_in_c():
    nan = np.nan
    table = {"bound_holds": np.array([1.0, 0.0, 1.0, nan, 1.0]),
             "in_confidence_set": np.array([1.0, 1.0, 0.0, 1.0, 0.0]),
             "bound_rate_holds": np.array([1.0, 1.0, 1.0, nan, 0.0]),
             "bound_rate": np.array([4.0, 2.0, 9.0, nan, 1.0]),
             "subopt_kl": np.array([1.0, 1.0, 3.0, 5.0, 2.0])}
    got = online_common.bound_summary(table, "s", exact_set=True)
    assert got == {"s/bound_holds_frac": 0.75, "s/bound_holds_frac_in_set": 0.5, "s/bound_rate_holds_frac": 0.75,
                   "s/bound_rate_over_subopt_kl_median": 2.5, "s/in_confidence_set_frac": 0.6}
    outside = dict(table, in_confidence_set=np.zeros(5))
    assert "s/bound_holds_frac_in_set" not in online_common.bound_summary(outside, "s", exact_set=False)
    none = {k: np.full(5, nan) if k.startswith("bound") else v for k, v in table.items()}
    assert online_common.bound_summary(none, "s", exact_set=False) == {}


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="algorithms"):
        replace(online_explore.presets["quick"], algorithms=("no_such",))
    with pytest.raises(ValueError, match="batch_sizes"):
        replace(batch_size.presets["quick"], total_queries=100, batch_sizes=(16,))
    with pytest.raises(ValueError, match="offline_fraction"):
        replace(hybrid.presets["quick"], offline_fraction=1.0)
    with pytest.raises(ValueError, match="strategy"):
        replace(hybrid.presets["quick"], strategy="no_such")
    with pytest.raises(ValueError, match="baseline"):
        replace(bonus_compare.presets["quick"], baseline="no_such")


def test_flat_set_names_reach_the_nested_configs():
    """Today's ``--set`` names keep working: each reaches its field in instance, confidence or online."""
    config = apply_overrides(online_explore.presets["quick"], ["iterations=8", "batch_size=16", "lam=2",
                                                               "kl_coef=0.05", "k=3", "bonus_coef=0.01",
                                                               "learner=linear", "hidden=8", "c_beta=2"])
    assert (config.online.iterations, config.online.batch_size, config.online.strategy_options.k) == (8, 16, 3)
    assert (config.confidence.lam, config.confidence.c_beta) == (2.0, 2.0)
    assert (config.instance.kl_coef, config.instance.hidden) == (0.05, 8)
    assert config.online.bonus_coef == 0.01 and config.learner_name == "linear"
    assert config_from_dict(type(config), config_to_dict(config)) == config
    flat = {"n_contexts": 32, "kl_coef": 0.1, "iterations": 12, "lam": 2.0, "k": 3, "dpo_steps": 50}
    old = config_from_dict(online_explore.Config, flat)   # a manifest written before the nesting
    assert (old.instance.n_contexts, old.online.iterations, old.confidence.lam, old.online.strategy_options.k) == (
        32, 12, 2.0, 3)


def test_fields_an_experiment_overrides_are_refused():
    """The settings set coverage and temperature; batch-size sets m and T; hybrid sets T and runs one algorithm."""
    for module in (online_explore, batch_size, hybrid, bonus_compare):
        for field, value in (("coverage", 0.5), ("temperature", 2.0)):
            with pytest.raises(ValueError, match=f"{field}=.* is not allowed: the settings set pi0"):
                replace(module.presets["quick"], **{field: value})
    for field, value in (("iterations", 4), ("batch_size", 8)):
        with pytest.raises(ValueError, match=f"{field}=.* is not allowed: batch-size runs"):
            replace(batch_size.presets["quick"], **{field: value})
    for field, value in (("iterations", 4), ("algorithms", ("pi0",))):
        with pytest.raises(ValueError, match=f"{field}=.* is not allowed: .*hybrid runs"):
            replace(hybrid.presets["quick"], **{field: value})
    assert replace(hybrid.presets["quick"], batch_size=16).online.batch_size == 16


_TWO_DEVICES = textwrap.dedent("""
    import json
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from experiments.catalogue import online_common, online_explore
    from experiments.engine.config import replace
    from experiments.engine.runner import Progress, seed_keys
    from tests.test_online_experiments import TINY
    assert jax.device_count() == 2, jax.devices()
    config = replace(online_explore.presets["quick"], **TINY, settings=("hard",))
    p = Progress()
    out = online_common.run_algorithms(config, ("enhancer",), seed_keys(0, 4), p)[0]
    assert p.calls[0]["devices"] == 2
    print(json.dumps({k: out[k].tolist() for k in ("subopt", "query_regret_kl", "confidence_width")}))
""")


def test_two_device_online_run_equals_one_device_run():
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _TWO_DEVICES], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    from experiments.engine.runner import seed_keys
    config = replace(online_explore.presets["quick"], **TINY, settings=("hard",))
    here = online_common.run_algorithms(config, ("enhancer",), seed_keys(0, 4), Progress())[0]
    for name, values in two.items():
        np.testing.assert_allclose(np.asarray(values), here[name], rtol=1e-10, atol=1e-12)
