"""Smoke tests of the P3 experiments (E8-E10) through the registry at tiny configs: required columns,
NaN exactly where documented, non-decreasing cumulative regrets, bad config values refused."""
import dataclasses

import numpy as np
import pytest

from experiments import registry
from experiments.runner import Progress

REQUIRED = ("algorithm", "seed", "t", "estimation_error", "heldout_accuracy", "heldout_logloss",
            "regret_avg", "regret_weak", "seconds")
TINY = dict(n_contexts=4, n_actions=4, dim=2, timing_repeats=1)


def _run(name, **changes):
    exp = registry.get(name)
    assert set(exp.presets) == {"quick", "paper"}
    cfg = dataclasses.replace(exp.presets["quick"], **TINY, **changes)
    res = registry.as_results(exp.run(cfg, 2, Progress()))
    for col in REQUIRED:
        assert col in res.table, col
    return cfg, res.table


def test_omd_vs_mle_tiny(tmp_path):
    cfg, table = _run("omd-vs-mle", reward_norms=(1.0, 3.0), rounds=24, checkpoints=(8, 24), heldout=16,
                      timing_rounds=(8, 24))
    assert np.all(np.isnan(table["regret_avg"])) and np.all(np.isnan(table["regret_weak"]))
    for col in ("estimation_error", "heldout_accuracy", "heldout_logloss", "subopt_pess"):
        assert np.all(np.isfinite(table[col]))
    timed = table["seed"] == 0
    assert np.all(np.isfinite(table["seconds"][timed])) and np.all(np.isnan(table["seconds"][~timed]))
    assert set(table["algorithm"]) == {"omd", "mle", "ogd", "hvp"}
    assert registry.get("omd-vs-mle").plot(table, cfg, tmp_path)


def test_active_vs_random_tiny():
    _, table = _run("active-vs-random", pool=64, budget=16, batch=8, checkpoints=(4, 16), heldout=16,
                    timing_rounds=(4, 16))
    assert set(table["algorithm"]) == {f"{s}-{e}" for s in ("random", "active", "active_batch")
                                       for e in ("mle", "omd")}
    assert np.all(np.isfinite(table["heldout_accuracy"]))
    assert np.all(np.isnan(table["regret_avg"]))


@pytest.mark.parametrize("objective,algs", [("unregularized", ("p3:omd", "maxinp:mle")),
                                            ("kl", ("p3:omd", "random:omd"))])
def test_deployment_regret_tiny(objective, algs):
    _, table = _run("deployment-regret", rounds=20, checkpoints=(5, 10, 20), timing_rounds=(5,),
                    objective=objective, algorithms=algs)
    for alg in algs:
        for s in (0, 1):
            rows = (table["algorithm"] == alg) & (table["seed"] == s)
            reg = table["regret_avg"][rows][np.argsort(table["t"][rows])]
            assert np.all(np.diff(reg) >= -1e-12) and reg[0] >= 0
            if objective == "unregularized":
                weak = table["regret_weak"][rows][np.argsort(table["t"][rows])]
                assert np.all(np.diff(weak) >= -1e-12) and np.all(weak <= reg + 1e-12)
    assert np.all(np.isnan(table["heldout_accuracy"]))
    assert np.all(np.isnan(table["regret_weak"])) == (objective == "kl")


@pytest.mark.parametrize("name,field,value,message", [
    ("omd-vs-mle", "projection", "ball", "projection='ball'"),
    ("omd-vs-mle", "checkpoints", (8, 4), "checkpoints"),
    ("active-vs-random", "pool", 10, "pool=10"),
    ("deployment-regret", "algorithms", ("p3:sgd",), "p3:sgd"),
    ("deployment-regret", "objective", "reverse", "objective='reverse'"),
])
def test_bad_config_refused(name, field, value, message):
    exp = registry.get(name)
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(exp.presets["quick"], **{field: value})
