"""Smoke tests of the P3 experiments (E8-E10) through the registry at tiny configs: required columns,
NaN exactly where documented, non-decreasing cumulative regrets, bad config values refused (unread nested
fields included); the former flat ``P3Config`` fields are still settable by name and reach the estimators;
algorithms sharing one compiled scan (``lax.map`` + ``lax.switch``) give the same numbers as when run
alone; an estimator registered by a plugin file runs in omd-vs-mle unchanged."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms.onepass import estimators, hvp_cg, ogd, omd
from experiments.catalogue import omd_vs_mle, p3_common
from experiments.engine.cli import run_experiment
from experiments.engine.results import as_results
from experiments.engine import registry
from experiments.engine.config import apply_overrides, replace, settable_fields, short_names
from experiments.engine.runner import Progress, seed_keys
from experiments.engine.storage import read_manifest, read_results

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
    assert {"quick", "paper"} <= set(exp.presets)
    cfg = replace(exp.presets["quick"], **TINY, **dict(changes))
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


def test_omd_vs_mle_radius_modes_and_effective_kappa():
    """``radius_mode=theory`` leaves OMD's pessimistic output as it is (its H_t-norm radius has no kappa) and
    changes the MLE's (kappa times the radius); ``kappa_effective`` is ``1 / mean_{s <= t} sigma'(<theta*, z_s>)``
    of the stream and ``kappa_information`` the same mean weighted by ``||z_s||^2`` (NumPy)."""
    from scipy.special import expit

    grid = dict(reward_norms=(1.0, 3.0), rounds=24, checkpoints=(8, 24), heldout=16, timing_rounds=(8, 24))
    cfg, shared = _run("omd-vs-mle", **grid)                  # test_omd_vs_mle_tiny's run
    _, theory = _run("omd-vs-mle", **grid, algorithms=("omd", "mle"), radius_mode="theory")
    for alg in ("omd", "mle"):
        np.testing.assert_allclose(theory["estimation_error"][theory["algorithm"] == alg],
                                   shared["estimation_error"][shared["algorithm"] == alg], rtol=1e-12)
    pess = {(name, alg): table["subopt_pess"][table["algorithm"] == alg]
            for name, table in (("shared", shared), ("theory", theory)) for alg in ("omd", "mle")}
    np.testing.assert_allclose(pess["theory", "omd"], pess["shared", "omd"], rtol=1e-12)
    assert np.any(pess["theory", "mle"] != pess["shared", "mle"])
    key = seed_keys(cfg.seed, 2)[1]
    for bnorm in (1.0, 3.0):
        inst, z, _, _, _ = omd_vs_mle.make_stream(key, jnp.asarray(bnorm), cfg)
        u = np.asarray(z) @ np.asarray(inst.theta_star)
        slope = expit(u) * expit(-u)
        for t in (8, 24):
            rows = (shared["seed"] == 1) & (shared["reward_norm"] == bnorm) & (shared["t"] == t)
            np.testing.assert_allclose(shared["kappa_effective"][rows], 1 / slope[:t].mean(), rtol=1e-10)
            assert np.all(shared["kappa_effective"][rows] <= shared["kappa"][rows])
            w = (np.asarray(z[:t]) ** 2).sum(-1)
            np.testing.assert_allclose(shared["kappa_information"][rows], w.sum() / (w * slope[:t]).sum(),
                                       rtol=1e-10)


def test_deployment_regret_calibrated_radius():
    """``radius_mode=calibrated``: one multiplier per estimator in the summary (positive), the effective kappa of
    the pairs played between 4 (its floor, sigma' <= 1/4) and the nominal kappa."""
    exp = registry.get("deployment-regret")
    cfg = replace(exp.presets["quick"], **TINY, **E10_GRID, algorithms=E10_GROUPED, radius_mode="calibrated",
                  calibration_seeds=20)
    res = as_results(exp.run(cfg, 2, Progress()))
    for est in ("omd", "mle"):
        assert np.isfinite(res.summary[f"{est}/radius_multiplier"]) and res.summary[f"{est}/radius_multiplier"] > 0
    k = res.table["kappa_effective"]
    assert np.all(k >= 4.0 - 1e-12) and np.all(k <= res.summary["kappa_nominal"])
    last = res.table["t"] == 20
    for alg in E10_GROUPED:
        rows = last & (res.table["algorithm"] == alg)
        assert res.summary[f"{alg}/kappa_effective_T"] == pytest.approx(k[rows].mean())


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
    ("omd-vs-mle", "algorithms", ("omd", "omd"), "without repeated names"),
    ("deployment-regret", "algorithms", ("p3:omd", "p3:omd"), "without repeated names"),
    ("omd-vs-mle", "c_beta", -0.5, "c_beta=-0.5"),
    # nested fields the experiment does not read
    ("omd-vs-mle", "reward_norm", 3.0, "reward_norm=3.0 is not allowed: omd-vs-mle sweeps B"),
    ("active-vs-random", "coverage", 0.5, "coverage=0.5 is not allowed: P3's instance family"),
    ("deployment-regret", "reward", "neural", "reward='neural' is not allowed: P3's instance family"),
    ("omd-vs-mle", "kl_coef", 0.3, "kl_coef=0.3 is not allowed: objective='unregularized'"),
    ("active-vs-random", "hvp_lr", 0.05, r"hvp_lr=0.05 is not allowed: none of the estimators run \(mle, omd\)"),
    ("deployment-regret", "ogd_lr", 0.5, "ogd_lr=0.5 is not allowed: none of the estimators run"),
    ("omd-vs-mle", "radius_mode", "own", "radius_mode='own' is not allowed"),
    ("active-vs-random", "radius_mode", "theory", "radius_mode='theory' is not allowed: this experiment uses the"),
    ("deployment-regret", "calibration_seeds", 32, "calibration_seeds=32 is not allowed: only radius_mode="),
])
def test_bad_config_refused(name, field, value, message):
    exp = registry.get(name)
    with pytest.raises(ValueError, match=message):
        replace(exp.presets["quick"], **{field: value})


def test_fields_read_only_in_some_settings_are_accepted_there():
    """kl_coef with objective=kl (and in E10 with a greedy rule), c_beta = 0 (no bonus), an estimator's option
    once that estimator runs."""
    assert replace(registry.get("omd-vs-mle").presets["quick"], objective="kl", kl_coef=0.3).instance.kl_coef == 0.3
    e10 = registry.get("deployment-regret").presets["quick"]
    assert replace(e10, kl_coef=0.3).instance.kl_coef == 0.3                  # the quick preset has greedy:omd
    with pytest.raises(ValueError, match="kl_coef=0.3"):
        replace(e10, kl_coef=0.3, algorithms=("p3:omd",))
    assert replace(e10, c_beta=0.0).onepass.c_beta == 0.0
    e9 = registry.get("active-vs-random").presets["quick"]
    assert replace(e9, estimators=("omd", "hvp"), hvp_lr=0.05).onepass.hvp_lr == 0.05


# The fields of the former flat P3Config (before instance / onepass were nested), with a valid new value each.
FLAT = {"lam": ("onepass.lam", "2", 2.0), "omd_lam": ("onepass.omd_lam", "3", 3.0),
        "omd_step_size": ("onepass.omd_step_size", "theory", "theory"),
        "projection": ("onepass.projection", "none", "none"), "ogd_lr": ("onepass.ogd_lr", "0.5", 0.5),
        "hvp_lr": ("onepass.hvp_lr", "0.05", 0.05), "c_beta": ("onepass.c_beta", "0", 0.0),
        "n_contexts": ("instance.n_contexts", "8", 8), "n_actions": ("instance.n_actions", "4", 4),
        "dim": ("instance.dim", "3", 3), "objective": ("objective", "kl", "kl"),
        "kl_coef": ("instance.kl_coef", "0.3", 0.3), "timing_rounds": ("timing_rounds", "16", (16,)),
        "timing_repeats": ("timing_repeats", "2", 2), "seed": ("seed", "5", 5)}
RUN_ALL = {"omd-vs-mle": "algorithms=omd,mle,ogd,hvp", "active-vs-random": "estimators=omd,ogd,hvp",
           "deployment-regret": "algorithms=p3:omd,p3:ogd,p3:hvp"}


def _at(config, path):
    for part in path.split("."):
        config = getattr(config, part)
    return config


@pytest.mark.parametrize("name", P3)
def test_shared_fields_are_settable_and_reach_the_estimators(name):
    """Every field of the former flat P3Config (and E9/E10's reward_norm) is still a --set name of each
    experiment, a short name of the nested instance / onepass configs, with the shared defaults, and the
    values set are the ones the estimators use (checked against direct calls of the update functions)."""
    quick = registry.get(name).presets["quick"]
    assert isinstance(quick, p3_common.P3Config)
    flat = dict(FLAT, **({} if name == "omd-vs-mle" else {"reward_norm": ("instance.reward_norm", "3", 3.0)}))
    assert set(flat) <= set(settable_fields(quick)) | set(short_names(quick))
    assert quick.onepass == estimators.OnePassOptions()
    assert (quick.onepass.omd_step_size, quick.onepass.ogd_lr, quick.onepass.hvp_lr, quick.onepass.c_beta) == \
        (estimators.DEFAULT_OMD_STEP_SIZE, 1.0, 0.1, 0.5)
    cfg = apply_overrides(quick, [RUN_ALL[name]] + [f"{k}={text}" for k, (_, text, _) in flat.items()])
    for key, (path, _, value) in flat.items():
        assert _at(cfg, path) == value, key
    if name != "omd-vs-mle":
        assert cfg.reward_norm == 3.0
    z, y, radius = jnp.asarray([0.9, -0.4] + [0.0] * (cfg.instance.dim - 2)), 1.0, 1.5
    est = dict(zip(("omd", "ogd", "hvp"), estimators.make_estimators(("omd", "ogd", "hvp"), cfg.instance.dim,
                                                                     cfg.onepass, radius=radius, capacity=4)))
    d = cfg.instance.dim
    want = {"omd": omd.omd_step(omd.omd_init(d, 3.0), z, y, omd.default_step_size(radius)),
            "ogd": ogd.ogd_step(ogd.ogd_init(d, 2.0), z, y, 0.5, radius),
            "hvp": hvp_cg.hvp_step(hvp_cg.hvp_init(d, 2.0), z, y, 0.05)}
    for key, e in est.items():
        got = e.update(e.init(), z, y)
        np.testing.assert_allclose(got.theta, want[key].theta, atol=1e-14)
        inverse = want[key].hess_inv if key == "omd" else want[key].gram_inv
        np.testing.assert_allclose(e.inverse_design(got), inverse, atol=1e-14)
    fixed_cfg = apply_overrides(quick, [RUN_ALL[name], "omd_step_size=0.3", "projection=none", "dim=3"])
    fixed = estimators.make_estimator("omd", 3, fixed_cfg.onepass, radius=radius, capacity=4)
    np.testing.assert_allclose(fixed.update(fixed.init(), z, y).theta,
                               omd.omd_step(omd.omd_init(3, 1.0), z, y, 0.3).theta, atol=1e-14)
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


PLUGIN = '''
import jax.numpy as jnp
from algorithms.onepass import estimators, ogd, omd

def build(spec):                      # constant-step OGD: theta <- Proj_B(theta - ogd_lr g_t(theta))
    def update(state, z, y):
        z = jnp.asarray(z, state.theta.dtype)
        grad = omd.logistic_gradient(state.theta, z, y)
        return ogd.projected_step(state, grad, spec.options.ogd_lr, z[None, :], spec.radius)
    return estimators.Estimator(lambda: ogd.ogd_init(spec.dim, spec.options.lam, spec.dtype), update)

estimators.register("ogd_const", estimators.EstimatorEntry(build, label="OGD, constant step", first_order=True,
                                                           reads=("lam", "ogd_lr")))
'''
E8_SMALL = ["n_contexts=4", "n_actions=4", "dim=2", "reward_norms=1,3", "rounds=24", "checkpoints=8,24",
            "heldout=16", "timing_rounds=24", "timing_repeats=1"]


def test_plugin_estimator_runs_in_omd_vs_mle_unchanged(tmp_path):
    """A plugin file that registers an estimator is all omd-vs-mle needs: ``--set algorithms=...`` accepts
    it, its option is read (``ogd_lr``), its rows equal a NumPy run of its update on the same stream, and
    the figure is drawn with its registry label."""
    path = tmp_path / "my_estimator.py"
    path.write_text(PLUGIN)
    try:
        run_dir = run_experiment("omd-vs-mle", "quick", seeds=2, out=tmp_path, plugins=[str(path)],
                                 overrides=E8_SMALL + ["algorithms=omd,ogd_const", "ogd_lr=0.5"])
        table = read_results(run_dir)
        assert set(np.asarray(table["algorithm"]).tolist()) == {"omd", "ogd_const"}
        assert read_manifest(run_dir)["config"]["algorithms"] == ["omd", "ogd_const"]
        assert estimators.get("ogd_const").label == "OGD, constant step"
        config = apply_overrides(registry.get("omd-vs-mle").presets["quick"],
                                 E8_SMALL + ["algorithms=omd,ogd_const", "ogd_lr=0.5"])
        stream = jax.jit(lambda k, r: omd_vs_mle.make_stream(k, r, config)[:3])
        for seed, key in enumerate(seed_keys(config.seed, 2)):
            for bnorm in (1.0, 3.0):
                inst, z, y = stream(key, jnp.asarray(bnorm))
                z, y, star = np.asarray(z), np.asarray(y), np.asarray(inst.theta_star)
                theta = np.zeros(2)
                for t in range(24):
                    theta = theta - 0.5 * (1 / (1 + np.exp(-z[t] @ theta)) - y[t]) * z[t]
                    theta *= min(1.0, bnorm / max(np.linalg.norm(theta), 1e-300))      # z = 0 when a = a'
                rows = ((np.asarray(table["algorithm"]) == "ogd_const") & (np.asarray(table["seed"]) == seed)
                        & (np.asarray(table["t"]) == 24) & (np.asarray(table["reward_norm"]) == bnorm))
                np.testing.assert_allclose(np.asarray(table["estimation_error"])[rows], np.linalg.norm(theta - star),
                                           rtol=1e-10)
        assert (run_dir / "omd_vs_mle.png").is_file()
    finally:
        estimators.ESTIMATORS.pop("ogd_const", None)
