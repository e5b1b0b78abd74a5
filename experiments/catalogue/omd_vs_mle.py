"""omd-vs-mle (docs/theory.md E8, §4.2-4.3): one-pass OMD vs MLE refit vs OGD vs HVP/CG on a passive stream.

Per seed and per ``B`` in ``reward_norms`` (so ``kappa = 2 + e^{2B} + e^{-2B}`` grows): one instance
(features, direction of ``theta*`` and the data's randomness shared across ``B``: ``theta* = B u``), one
stream of ``rounds`` comparisons from the fixed logging policy ``(pi0, pi0)``, and every estimator of
``algorithms.onepass.estimators`` run over it in one ``lax.scan`` (the MLE refits on all data so far,
warm-started, each round). At each checkpoint ``t``:

- ``estimation_error = ||theta_t - theta*||_2``; ``error_local = ||theta_t - theta*||_{A_t}`` (``A_t = cH_t``
  for OMD, ``V_t`` otherwise);
- ``heldout_accuracy`` / ``heldout_logloss``: on ``heldout`` fresh logging-policy pairs, the accuracy and the
  cross-entropy *in expectation over the BT label* (``p_i 1{<theta,z_i> > 0} + (1-p_i) 1{< 0}``, ties 1/2;
  ``-p_i log sigma(<theta,z_i>) - (1-p_i) log sigma(-<theta,z_i>)``), so no label noise is added;
- ``subopt`` (plug-in output policy) and ``subopt_pess`` (P3's pessimistic output, pointwise variant,
  ``beta_t = c_beta sqrt(d log(1 + t))`` [D], reference vector ``E_{pi0} phi``) under ``objective``
  (``unregularized``: greedy, reward gap; ``kl``: Gibbs at ``kl_coef``, KL-regularized gap);
  see ``algorithms.onepass.policies``;
- ``seconds``: wall-clock of ONE round (the estimator's update on comparison t) at round t, measured
  outside the vectorised scan (a ``lax.scan`` has no per-round clock): a separately jitted call of the
  update from seed 0's actual state after round ``t-1`` (snapshotted in the scan), compile excluded,
  ``block_until_ready``, median of ``timing_repeats`` calls. For the MLE the call gets a buffer of exactly
  ``t`` rows (the data so far), so its cost grows with ``t`` honestly (one compile per timed ``t``);
  inside the simulation scan the buffer is padded to ``rounds``. Timed only for seed 0 and the rounds
  in ``timing_rounds``; NaN on every other row. The cost of a trivial jitted call on the same inputs
  (dispatch floor) is in the summary (``dispatch_seconds``).
``regret_avg`` / ``regret_weak`` do not apply here: NaN. ``kappa`` is the nominal ``1 / sigma'(2B)``;
``kappa_effective`` the kappa the data see, ``1 / mean_{s <= t} sigma'(<theta*, z_s>)`` over the stream so far
(``algorithms.onepass.radii.effective_kappa``; the summary adds ``1 / min_s sigma'`` over the whole stream);
``kappa_information`` the same mean weighted by ``||z_s||^2``, ``tr(V_t) / tr(H_t)`` at ``theta*``
(``radii.information_kappa``: identical pairs, ``z = 0``, do not count). ``--set feature_alignment=RHO`` aligns
the features with ``theta*`` (``bandits.instance.aligned_features``): margins near ``+-2 rho B``, high kappa.

The pessimistic output's radius is each estimator's under ``radius_mode`` (``algorithms.onepass.radii``):
``shared`` (default, the ``beta_t`` above for every estimator), ``theory`` (OMD's ``H_t``-norm radius without
kappa, the ``V_t``-norm radius of the MLE, OGD and HVP times the nominal kappa) or ``calibrated`` (each
estimator's own 95% quantile of ``max_t ||theta_t - theta*||_{A_t} / sqrt(d log(1 + t))`` over
``calibration_seeds`` fresh streams of the same family, seeds ``2^31, 2^31 + 1, ...`` of the root seed; the
multipliers are in the summary, ``.../radius_multiplier``).

The estimators are ``algorithms`` of the registry ``algorithms.onepass.estimators`` (a plugin's included:
``--plugin my_estimator.py --set algorithms=omd,mle,my_estimator``), labelled with their registry labels.
OMD's step size is ``omd_step_size`` (default ``estimators.DEFAULT_OMD_STEP_SIZE = 1``, the most robust
value of the sweep recorded in paper_repro.md; ``--set omd_step_size=theory`` gives P3's
``(1/2) log 2 + B + 1``); the options are ``OnePassOptions``, the instance family and the metrics
``algorithms.onepass.evaluation``'s, the shared fields ``experiments.catalogue.p3_common.P3Config``'s.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import bandits as b
from algorithms.core import confidence as conf
from algorithms.onepass import estimators, evaluation, radii
from algorithms.onepass.evaluation import METRICS
from bandits import validation as v
from experiments.catalogue import p3_common as p3
from experiments.engine import plotting
from experiments.engine.config import check_unused, replace
from experiments.engine.results import Results, concat_tables
from experiments.engine.runner import run_vectorized, seed_keys

# NaN means "not applicable" in these columns (module docstring).
nan_columns = ("regret_avg", "regret_weak", "seconds")

description = "E8: one-pass OMD vs MLE refit/OGD/HVP: error, held-out acc/loss, time per round vs t, B sweep"


@dataclasses.dataclass(frozen=True)
class Config(p3.P3Config):
    """Fields reachable with ``--set field=value`` (module docstring for the metrics); the instance,
    estimator options, objective and timing fields are ``p3_common.P3Config``'s.

    reward_norms: the ``B`` sweep (so ``instance.reward_norm`` is refused); rounds: stream length;
    checkpoints: rounds at which metrics are taken; heldout: held-out comparisons; algorithms: the
    estimators run (registered names; default omd, mle, ogd, hvp, the estimators of E8's records; the built-in
    ``mle_sgd``, P3's cost-model baseline, runs in E9's ``e9_regime`` and by ``--set algorithms=...`` here).
    """

    reward_norms: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
    rounds: int = 4096
    checkpoints: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    heldout: int = 2048
    algorithms: tuple[str, ...] = ("omd", "mle", "ogd", "hvp")

    def __post_init__(self):
        if not self.reward_norms:
            v.fail("reward_norms", self.reward_norms, "a non-empty tuple of numbers > 0")
        for r in self.reward_norms:
            v.check_float("reward_norms", r, low=0.0, low_open=True)
        v.check_int("rounds", self.rounds, 2)
        v.check_int("heldout", self.heldout, 1)
        v.check_names("algorithms", self.algorithms, estimators.names())
        check_unused(self, ("instance.reward_norm",), "omd-vs-mle sweeps B over reward_norms")
        super().__post_init__()

    @property
    def reads_radius_mode(self) -> bool:
        return True

    @property
    def estimator_names(self) -> tuple[str, ...]:
        return self.algorithms


presets = {
    "quick": replace(Config(), n_contexts=64, rounds=512, checkpoints=(16, 32, 64, 128, 256, 512), heldout=1024,
                     timing_rounds=(16, 128, 512), timing_repeats=7),
    "paper": Config(),
}
seeds = {"quick": 8, "paper": 32}


def make_stream(key, reward_norm, config):
    """Instance, the logging-policy stream ``(z, y)`` and the held-out set of one seed and one ``B``."""
    k_inst, k_data, k_held = jax.random.split(key, 3)
    inst = evaluation.scaled_instance(k_inst, config.instance, reward_norm)
    stream = b.sample_preference_data(k_data, inst, inst.log_pi0, inst.log_pi0, config.rounds)
    z = b.feature_differences(inst, stream)
    z_held, p_held = evaluation.heldout_set(k_held, inst, config.heldout)
    return inst, z, stream.y.astype(z.dtype), z_held, p_held


CALIBRATION_START = 2**31   # the calibration run's seeds: 2^31, 2^31 + 1, ... of the root seed


def simulate(key, reward_norm, multipliers, config: Config):
    """One seed, one ``B``: metrics ``[n_checkpoints, n_alg]`` (and ``kappa_effective``, the same for every
    estimator), the worst slope's ``1 / min sigma'`` over the stream, and light state snapshots after rounds
    ``t - 1`` for ``t`` in ``config.timed`` (for the timing pass). ``multipliers [n_alg]``: the calibrated
    radius multipliers (read only with ``radius_mode='calibrated'``)."""
    inst, z, y, z_held, p_held = make_stream(key, reward_norm, config)
    nu = conf.reference_vector(inst, "pi0")
    d = config.instance.dim
    ests = estimators.make_estimators(config.algorithms, d, config.onepass, radius=reward_norm,
                                      capacity=config.rounds)
    ck = jnp.asarray(config.checkpoints)
    tk = jnp.asarray([t - 1 for t in config.timed])
    init = tuple(e.init() for e in ests)
    snaps = tuple((jnp.zeros((len(ck), d), z.dtype), jnp.zeros((len(ck), d, d), z.dtype)) for _ in ests)
    timing = tuple(p3.timing_buffers(e.name, s, len(tk)) for e, s in zip(ests, init))

    def body(carry, row):
        states, snaps, timing, t = carry
        states = tuple(e.update(s, row[0], row[1]) for e, s in zip(ests, states))
        pos = p3.snapshot_index(t + 1, ck)
        snaps = tuple((th.at[pos].set(e.theta(s), mode="drop"), iv.at[pos].set(e.inverse_design(s), mode="drop"))
                      for e, s, (th, iv) in zip(ests, states, snaps))
        tpos = p3.snapshot_index(t + 1, tk)
        timing = tuple(p3.record(e.name, tb, tpos, s) for e, tb, s in zip(ests, timing, states))
        return (states, snaps, timing, t + 1), None

    (_, snaps, timing, _), _ = jax.lax.scan(body, (init, snaps, timing, jnp.asarray(0)), (z, y))
    thetas = jnp.stack([th for th, _ in snaps])        # [n_alg, n_ck, d]
    invs = jnp.stack([iv for _, iv in snaps])          # [n_alg, n_ck, d, d]
    if config.onepass.radius_mode == "shared":         # options.beta inside estimate_metrics, as before
        per = lambda th, iv, t, beta: evaluation.estimate_metrics(inst, th, iv, t, z_held, p_held, nu, config.onepass,
                                                                  config.objective)
    else:
        per = lambda th, iv, t, beta: evaluation.estimate_metrics(inst, th, iv, t, z_held, p_held, nu, config.onepass,
                                                                  config.objective, beta=beta)
    betas = jnp.stack([radii.estimator_radius(config.onepass, name, d, ck, reward_norm, multipliers[i])
                       for i, name in enumerate(config.algorithms)])     # [n_alg, n_ck]
    metrics = jax.vmap(jax.vmap(per, in_axes=(0, 0, 0, 0)), in_axes=(0, 0, None, 0))(thetas, invs, ck, betas)
    out = {m: metrics[m].T for m in METRICS}
    kappa_t = jax.vmap(lambda t: radii.effective_kappa(inst.theta_star, z, jnp.arange(config.rounds) < t)[0])(ck)
    out["kappa_effective"] = jnp.broadcast_to(kappa_t[:, None], (len(config.checkpoints), len(config.algorithms)))
    kappa_i = jax.vmap(lambda t: radii.information_kappa(inst.theta_star, z, jnp.arange(config.rounds) < t))(ck)
    out["kappa_information"] = jnp.broadcast_to(kappa_i[:, None], (len(config.checkpoints), len(config.algorithms)))
    return out, radii.effective_kappa(inst.theta_star, z)[1], timing


def calibration(config: Config, progress) -> np.ndarray:
    """The calibrated radius multipliers ``[n_B, n_alg]`` (module docstring): ``radii.normalised_errors`` of
    every estimator on ``calibration_seeds`` fresh streams per ``B``, then their 95% quantile over seeds."""
    def one(key, norms):
        def per_norm(r):
            inst, z, y, _, _ = make_stream(key, r, config)
            return radii.normalised_errors(config.algorithms, config.instance.dim, config.onepass, z, y,
                                           inst.theta_star, config.checkpoints, r)
        return jax.vmap(per_norm)(norms)

    keys = seed_keys(config.seed, config.onepass.calibration_seeds, start=CALIBRATION_START)
    worst = run_vectorized(one, keys, np.asarray(config.reward_norms, float), progress=progress,
                           tag="e8_calibration")
    return np.asarray(radii.quantile_multiplier(worst))


def one_seed(key, reward_norms, multipliers, config: Config):
    """All ``B`` of one seed (common random numbers): metrics ``[n_B, n_checkpoints, n_alg]``."""
    return jax.vmap(lambda r, m: simulate(key, r, m, config))(reward_norms, multipliers)


def timing_pass(config: Config, timing, progress) -> np.ndarray:
    """Per-round seconds ``[n_B, n_timed, n_alg]`` of seed 0 from its state snapshots ``timing``
    (``[n_B]``-batched light states of seed 0, module docstring)."""
    key = seed_keys(config.seed, 1)[0]
    out = np.full((len(config.reward_norms), len(config.timed), len(config.algorithms)), np.nan)
    stream = jax.jit(lambda k, r: make_stream(k, r, config)[1:3])
    jitted = {}
    for ib, bnorm in enumerate(config.reward_norms):
        z, y = stream(key, jnp.asarray(bnorm))
        for it, t in enumerate(config.timed):
            for ia, name in enumerate(config.algorithms):
                cache = (name, p3.timed_capacity(name, t))
                if cache not in jitted:
                    jitted[cache] = jax.jit(functools.partial(_update, config=config, name=name, capacity=cache[1]))
                state = p3.with_buffer(name, jax.tree.map(lambda a: a[ib, it], timing[ia]), z, y, t)
                out[ib, it, ia] = p3.time_call(jitted[cache], (state, z[t - 1], y[t - 1], jnp.asarray(bnorm)),
                                               config.timing_repeats)
        progress.message(f"timing: B={bnorm:g} done")
    return out


def _update(state, z, y, reward_norm, config, name, capacity):
    est = estimators.make_estimator(name, config.instance.dim, config.onepass, radius=reward_norm,
                                    capacity=max(capacity, 1))
    return est.update(state, z, y)


def run(config: Config, seeds: int, progress) -> Results:
    keys = seed_keys(config.seed, seeds)
    norms = np.asarray(config.reward_norms, float)
    calibrated = config.onepass.radius_mode == "calibrated"
    mult = calibration(config, progress) if calibrated else np.zeros((len(norms), len(config.algorithms)))
    out, worst_kappa, timing = run_vectorized(functools.partial(one_seed, config=config), keys, norms, mult,
                                              progress=progress, tag="e8")
    secs = timing_pass(config, jax.tree.map(lambda a: a[0], timing), progress)
    algs, ck = list(config.algorithms), list(config.checkpoints)
    tables = []
    for ib, bnorm in enumerate(norms):
        for ia, alg in enumerate(algs):
            n = seeds * len(ck)
            table = {"algorithm": np.full(n, alg), "seed": np.repeat(np.arange(seeds), len(ck)),
                     "t": np.tile(np.asarray(ck), seeds), "reward_norm": np.full(n, bnorm),
                     "kappa": np.full(n, evaluation.kappa(bnorm)),
                     "kappa_effective": out["kappa_effective"][:, ib, :, ia].reshape(-1),
                     "kappa_information": out["kappa_information"][:, ib, :, ia].reshape(-1)}
            for m in METRICS:
                table[m] = out[m][:, ib, :, ia].reshape(-1)
            table["regret_avg"] = p3.nan_column(n)
            table["regret_weak"] = p3.nan_column(n)
            sec = p3.nan_column(n)
            for it, t in enumerate(config.timed):
                rows = np.flatnonzero((table["seed"] == 0) & (table["t"] == t))
                sec[rows] = secs[ib, it, ia]
            table["seconds"] = sec
            tables.append(table)

    def summarize():
        summary = {"dispatch_seconds": p3.dispatch_seconds(config.instance.dim)}
        for ib, bnorm in enumerate(norms):
            for ia, alg in enumerate(algs):
                prefix = f"B={bnorm:g}/{alg}"
                for m in ("estimation_error", "heldout_accuracy", "heldout_logloss", "subopt_pess"):
                    summary[f"{prefix}/{m}_t_max"] = float(out[m][:, ib, -1, ia].mean())
                summary[f"{prefix}/seconds_t_min"] = float(secs[ib, 0, ia])
                summary[f"{prefix}/seconds_t_max"] = float(secs[ib, -1, ia])
                if calibrated:
                    summary[f"{prefix}/radius_multiplier"] = float(mult[ib, ia])
            summary[f"B={bnorm:g}/kappa_nominal"] = evaluation.kappa(bnorm)
            summary[f"B={bnorm:g}/kappa_effective_t_max"] = float(out["kappa_effective"][:, ib, -1, 0].mean())
            summary[f"B={bnorm:g}/kappa_information_t_max"] = float(out["kappa_information"][:, ib, -1, 0].mean())
            summary[f"B={bnorm:g}/kappa_effective_worst"] = float(np.asarray(worst_kappa)[:, ib].mean())
        return summary

    return Results(concat_tables(tables), summarize)


def _where(table, **cond):
    mask = np.ones(len(table["algorithm"]), bool)
    for k, val in cond.items():
        mask &= np.asarray(table[k]) == val
    return {k: np.asarray(c)[mask] for k, c in table.items()}


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    norms = sorted(set(np.asarray(table["reward_norm"], float).tolist()))
    algs = list(dict.fromkeys(np.asarray(table["algorithm"]).tolist()))
    panels = [("estimation_error", "||theta_t - theta*||_2", True), ("heldout_accuracy", "held-out accuracy", False),
              ("heldout_logloss", "held-out log-loss", False), ("seconds", "s per round, seed 0", True)]
    fig, axes = plotting.figure(ncols=len(panels), nrows=len(norms), size=(4.2, 3.2))
    axes = np.asarray(axes).reshape(len(norms), len(panels))
    for i, bnorm in enumerate(norms):
        for j, (metric, label, loglog) in enumerate(panels):
            ax = axes[i, j]
            for alg in algs:
                sub = _where(table, reward_norm=bnorm, algorithm=alg)
                if metric == "seconds":
                    sub = _where(sub, seed=0)
                    ok = np.isfinite(sub["seconds"])
                    sub = {k: c[ok] for k, c in sub.items()}
                    if not len(sub["t"]):
                        continue
                x, y = plotting.pivot(sub, "t", metric)
                entry = estimators.get(alg)
                plotting.band_plot(ax, x, y, entry.label, color=entry.color, loglog=loglog)
            if not loglog:
                plotting.set_logx(ax)
            ax.set(title=f"B={bnorm:g} (kappa={evaluation.kappa(bnorm):.3g}): {label}", xlabel="t (comparisons)",
                   ylabel=label)
            ax.legend(fontsize="xx-small")
    fig.suptitle(f"omd-vs-mle: passive stream from pi0 (d={config.instance.dim}, K={config.instance.n_actions}); "
                 "mean over seeds, 95% band")
    return plotting.save_figure(fig, out_dir, "omd_vs_mle")
