"""Smoke tests of the P3 experiments (E8-E10) through the registry at tiny configs: required columns,
NaN exactly where documented, non-decreasing cumulative regrets, bad config values refused; the shared
``p3_common.P3Config`` fields reach the estimators; algorithms sharing one compiled scan (``lax.map`` +
``lax.switch``) give the same numbers as when run alone."""
import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
import pytest

from algorithms.onepass import hvp_cg, ogd, omd
from experiments.catalogue import p3_common
from experiments.engine.results import as_results
from experiments.engine import registry
from experiments.engine.config import apply_overrides, settable_fields
from experiments.engine.runner import Progress

P3 = ("omd-vs-mle", "active-vs-random", "deployment-regret")

REQUIRED = ("algorithm", "seed", "t", "estimation_error", "heldout_accuracy", "heldout_logloss",
            "regret_avg", "regret_weak", "seconds")
TINY = dict(n_contexts=4, n_actions=4, dim=2, timing_repeats=1)


def _run(name, **changes):
    """(config, table) of a 2-seed run at TINY + changes; cached, so tests reuse each other's runs."""
    return _cached_run(name, tuple(sorted(changes.items())))


@functools.lru_cache(maxsize=None)
def _cached_run(name, changes):
    exp = registry.get(name)
    assert set(exp.presets) == {"quick", "paper"}
    cfg = dataclasses.replace(exp.presets["quick"], **TINY, **dict(changes))
    res = as_results(exp.run(cfg, 2, Progress()))
    for col in REQUIRED:
        assert col in res.table, col
    return cfg, res.table


E9_GRID = dict(pool=64, budget=16, batch=8, checkpoints=(4, 16), heldout=16, timing_rounds=(4, 16))
E10_GRID = dict(rounds=20, checkpoints=(5, 10, 20), timing_rounds=(5,))
E10_GROUPED = ("p3:omd", "best_second:omd", "maxinp:mle")       # two rules share the OMD scan


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
    _, table = _run("active-vs-random", **E9_GRID)
    assert set(table["algorithm"]) == {f"{s}-{e}" for s in ("random", "active", "active_batch")
                                       for e in ("mle", "omd")}
    assert np.all(np.isfinite(table["heldout_accuracy"]))
    assert np.all(np.isnan(table["regret_avg"]))


@pytest.mark.parametrize("objective,algs", [("unregularized", E10_GROUPED), ("kl", ("p3:omd", "random:omd"))])
def test_deployment_regret_tiny(objective, algs):
    _, table = _run("deployment-regret", **E10_GRID, objective=objective, algorithms=algs)
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
    ("active-vs-random", "ogd_lr", 0.0, "ogd_lr=0.0"),
    ("deployment-regret", "hvp_lr", -1.0, "hvp_lr=-1.0"),
    ("omd-vs-mle", "omd_step_size", "big", "omd_step_size='big'"),
    ("deployment-regret", "omd_step_size", 0.0, "omd_step_size=0.0"),
    ("active-vs-random", "estimators", ("sgd",), "estimators='sgd'"),
])
def test_bad_config_refused(name, field, value, message):
    exp = registry.get(name)
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(exp.presets["quick"], **{field: value})


@pytest.mark.parametrize("name", P3)
def test_shared_fields_are_settable_and_reach_the_estimators(name):
    """Every P3Config field is a --set field of each experiment with the shared defaults, and the values
    set are the ones the estimators use (checked against direct calls of the update functions)."""
    quick = registry.get(name).presets["quick"]
    assert isinstance(quick, p3_common.P3Config)
    shared = [f.name for f in dataclasses.fields(p3_common.P3Config)]
    assert set(shared) <= set(settable_fields(quick))
    assert (quick.omd_step_size, quick.ogd_lr, quick.hvp_lr) == (p3_common.DEFAULT_OMD_STEP_SIZE, 1.0, 0.1)
    cfg = apply_overrides(quick, ["ogd_lr=0.5", "hvp_lr=0.05", "omd_step_size=theory", "lam=2", "omd_lam=3",
                                  "projection=none"])
    assert (cfg.ogd_lr, cfg.hvp_lr, cfg.omd_step_size, cfg.lam, cfg.omd_lam) == (0.5, 0.05, "theory", 2.0, 3.0)
    z, y, radius = jnp.asarray([0.9, -0.4] + [0.0] * (cfg.dim - 2)), 1.0, 1.5
    est = dict(zip(("omd", "ogd", "hvp"), p3_common.estimators(cfg, ("omd", "ogd", "hvp"), radius, 4)))
    want = {"omd": omd.omd_step(omd.omd_init(cfg.dim, 3.0), z, y, omd.default_step_size(radius)),
            "ogd": ogd.ogd_step(ogd.ogd_init(cfg.dim, 2.0), z, y, 0.5, radius),
            "hvp": hvp_cg.hvp_step(hvp_cg.hvp_init(cfg.dim, 2.0), z, y, 0.05)}
    for key, e in est.items():
        got = e.update(e.init(), z, y)
        np.testing.assert_allclose(got.theta, want[key].theta, atol=1e-14)
        inverse = want[key].hess_inv if key == "omd" else want[key].gram_inv
        np.testing.assert_allclose(e.inverse_design(got), inverse, atol=1e-14)
    fixed = p3_common.estimators(apply_overrides(quick, ["omd_step_size=0.3", "projection=none"]), ("omd",), radius, 4)
    np.testing.assert_allclose(fixed[0].update(fixed[0].init(), z, y).theta,
                               omd.omd_step(omd.omd_init(cfg.dim, 1.0), z, y, 0.3).theta, atol=1e-14)
    for bad, field in (("omd_step_size=abc", "omd_step_size"), ("ogd_lr=-1", "ogd_lr"), ("hvp_lr=0", "hvp_lr"),
                       ("lam=0", "lam"), ("projection=ball", "projection"), ("timing_rounds=100000", "timing_rounds")):
        with pytest.raises(ValueError, match=field):
            apply_overrides(quick, [bad])


def _rows(table, algorithm, columns):
    rows = np.flatnonzero(table["algorithm"] == algorithm)
    rows = rows[np.lexsort((table["t"][rows], table["seed"][rows]))]
    return np.stack([np.asarray(table[c][rows], float) for c in columns])


def test_deployment_rules_sharing_an_estimator_match_a_run_alone():
    _, grouped = _run("deployment-regret", **E10_GRID, objective="unregularized", algorithms=E10_GROUPED)
    _, alone = _run("deployment-regret", **E10_GRID, objective="unregularized", algorithms=("best_second:omd",))
    cols = ("regret_avg", "regret_weak", "estimation_error")
    np.testing.assert_allclose(_rows(grouped, "best_second:omd", cols), _rows(alone, "best_second:omd", cols),
                               rtol=1e-12, atol=1e-12)
    assert not np.allclose(_rows(grouped, "p3:omd", cols), _rows(grouped, "best_second:omd", cols))


def test_active_selections_sharing_an_estimator_match_a_run_alone():
    _, grouped = _run("active-vs-random", **E9_GRID)
    _, alone = _run("active-vs-random", **E9_GRID, selections=("active",), estimators=("omd",))
    cols = ("estimation_error", "heldout_accuracy", "heldout_logloss", "subopt_pess")
    np.testing.assert_allclose(_rows(grouped, "active-omd", cols), _rows(alone, "active-omd", cols),
                               rtol=1e-12, atol=1e-12)
    assert not np.allclose(_rows(grouped, "random-omd", cols), _rows(grouped, "active-omd", cols))
