"""Smoke tests of the online experiments through the registry, and a sharded online run."""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from experiments.catalogue import batch_size, bonus_compare, hybrid, online_common, online_explore

from experiments.engine.results import as_results
from experiments.engine.runner import Progress

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(n_contexts=6, n_actions=5, dim=3, iterations=3, batch_size=8, dpo_steps=10, newton_steps=15)
COLUMNS = {"algorithm", "seed", "iteration", "queries", "subopt", "subopt_kl", "regret_kl", "kl_to_ref",
           "kl_to_ref_explorer", "confidence_width"}


def _run(module, **fields):
    config = dataclasses.replace(module.presets["quick"], **fields)
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
    assert online_explore.plot(table, config, tmp_path)


def test_shared_program_equals_separate_programs():
    """Strategies in one lax.switch program give the same traces as each compiled alone."""
    config = dataclasses.replace(online_explore.presets["quick"], **TINY, settings=("hard",))
    from experiments.engine.runner import seed_keys
    keys = seed_keys(0, 2)
    together = online_common.run_algorithms(config, ("optimism", "max_min"), keys, Progress())
    alone = online_common.run_algorithms(config, ("max_min",), keys, Progress())
    np.testing.assert_allclose(together[1]["subopt"], alone[0]["subopt"], rtol=1e-12)


def test_batch_size_and_hybrid_and_bonus_compare(tmp_path):
    config, table, summary = _run(batch_size, **{**TINY, "iterations": 1}, total_queries=32, batch_sizes=(8, 16),
                                  algorithms=("pi0",))
    assert set(np.unique(table["batch_size"])) == {8, 16}
    assert table["queries"].max() == 32 and "hard/pi0/max_over_min_final_subopt" in summary
    assert batch_size.plot(table, config, tmp_path)
    config, table, summary = _run(hybrid, **TINY, budget=32, offline_fraction=0.5)
    assert set(np.unique(table["mode"])) == {"offline", "online", "hybrid"}
    for mode in ("offline", "online", "hybrid"):
        assert table["comparisons"][table["mode"] == mode].max() == 32
    assert hybrid.plot(table, config, tmp_path)
    config, table, summary = _run(bonus_compare, **TINY, algorithms=("enhancer", "pi0", "uniform"))
    ranks = sorted(summary[f"hard/{a}/rank"] for a in ("enhancer", "pi0", "uniform"))
    assert ranks == [1, 2, 3] and summary["hard/enhancer/diff"] == 0.0
    assert bonus_compare.plot(table, config, tmp_path)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="algorithms"):
        dataclasses.replace(online_explore.presets["quick"], algorithms=("no_such",))
    with pytest.raises(ValueError, match="batch_sizes"):
        dataclasses.replace(batch_size.presets["quick"], total_queries=100, batch_sizes=(16,))
    with pytest.raises(ValueError, match="offline_fraction"):
        dataclasses.replace(hybrid.presets["quick"], offline_fraction=1.0)


_TWO_DEVICES = textwrap.dedent("""
    import dataclasses, json
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from experiments.catalogue import online_common, online_explore
    from experiments.engine.runner import Progress, seed_keys
    from tests.test_online_experiments import TINY
    assert jax.device_count() == 2, jax.devices()
    config = dataclasses.replace(online_explore.presets["quick"], **TINY, settings=("hard",))
    p = Progress()
    out = online_common.run_algorithms(config, ("enhancer",), seed_keys(0, 4), p)[0]
    assert p.calls[0]["devices"] == 2
    print(json.dumps({k: out[k].tolist() for k in ("subopt", "regret_kl", "confidence_width")}))
""")


def test_two_device_online_run_equals_one_device_run():
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _TWO_DEVICES], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    from experiments.engine.runner import seed_keys
    config = dataclasses.replace(online_explore.presets["quick"], **TINY, settings=("hard",))
    here = online_common.run_algorithms(config, ("enhancer",), seed_keys(0, 4), Progress())[0]
    for name, values in two.items():
        np.testing.assert_allclose(np.asarray(values), here[name], rtol=1e-10, atol=1e-12)
