"""offline-rate (docs/theory.md E1): suboptimality against n for P1's offline algorithms, with P1's bounds.

For each seed: one instance, one stream of comparisons ``a1, a2 ~ pi0`` whose nested prefixes are the
data sets of size ``n``; a warm-started BT-MLE per ``n``; then MLE-Gibbs, pessimistic Option I and
Option II (P1 §2.2), DPO and pessimistic DPO on a linear-softmax policy (P1 §2.3), all evaluated
exactly. The algorithms are the offline learners of ``algorithms.offline.learners`` (any registered one,
a plugin's included, is accepted by ``--set algorithms=...``); the bound of P1 that applies to each
(its registry entry) is computed per seed with the comparator ``pi*``, together with whether ``theta*``
lies in the confidence set. The summary gives, per bound, the fraction of (seed, n) rows where it held
(``bound_holds_frac``) and that fraction on the event ``theta* in C`` the bound assumes
(``bound_holds_frac_in_set``, present when the event occurs; ``in_confidence_set_frac`` its frequency:
``--set beta_mode=laplace`` gives a radius that covers, docs/theory.md §1.4).

Settings: the canonical one (the instance as configured: by default a uniform ``pi0``, ``coverage`` and
``temperature`` 0, at ``kl_coef``) and a coverage panel (peaked ``pi0``, temperature
``panel_temperature``, ``panel_kl_coef``, one setting per ``c`` in ``panel_coverages``). All settings
share one compiled program (coverage, temperature and kl_coef are traced arguments).
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
from algorithms.core import neural_mle
from algorithms.offline import learners
from bandits import validation as v
from experiments.engine import plotting, stats
from experiments.engine.config import replace
from experiments.engine.results import Results, concat_tables, tidy
from experiments.engine.runner import run_vectorized, seed_keys

ALGORITHMS = ("mle_gibbs", "option_i", "option_ii", "dpo", "pessimistic_dpo")
NEURAL_ALGORITHMS = ("mle_gibbs", "option_ii", "neural_gibbs", "neural_linear_pess", "ensemble_pess")
ALL_ALGORITHMS = ALGORITHMS + NEURAL_ALGORITHMS[2:]

nan_columns = ("bound", "bound_holds", "in_confidence_set", "error_sigma_norm")
description = "E1: offline suboptimality vs n (MLE-Gibbs, Option I/II, DPO, pessimistic DPO) with P1's bounds"


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields reachable with ``--set field=value``; those of the nested ``instance`` (``bandits.InstanceConfig``),
    ``confidence`` (``algorithms.core.confidence.ConfidenceConfig``) and ``offline``
    (``algorithms.offline.learners.OfflineOptions``) by their own names.

    ``sample_sizes``: the data-set sizes ``n`` (comparisons ``a1, a2 ~ pi0``), a strictly increasing tuple
    of integers ``>= 1``; each is a prefix of one stream per seed (nested data sets), the BT-MLE is
    warm-started from the previous size, and the summary's ``slope`` is the log-log slope of the mean
    suboptimality against ``n`` (P1's bounds decay like ``1/sqrt(n)``, docs/theory.md §2.2 and §7).
    ``panel_coverages``: the coverage knobs ``c`` in ``[-1, 1]`` of the coverage panel, distinct, one setting
    ``coverage{c:+}`` each (``pi0`` logits ``s (c rho + sqrt(1 - c^2) xi)``, docs/theory.md §8.1; ``c < 0``:
    ``pi0`` covers ``pi*`` poorly, the regime where P1's pessimism should help); empty: the canonical
    setting only.
    ``panel_temperature``: the peakedness ``s >= 0`` of every panel setting's ``pi0`` (0 would make all
    panel settings the uniform ``pi0``).
    ``panel_kl_coef``: the KL coefficient ``eta > 0`` of the panel settings (the canonical setting uses
    ``kl_coef`` of ``instance``).
    ``algorithms``: the offline learners run, distinct names of ``algorithms.offline.learners`` (a plugin's
    included; those needing the neural network only with ``reward=neural``); empty: the default set of the
    reward kind (linear: ``mle_gibbs``, ``option_i``, ``option_ii``, ``dpo``, ``pessimistic_dpo``, P1 §2.2-2.3;
    neural: ``mle_gibbs``, ``option_ii``, ``neural_gibbs``, ``neural_linear_pess``, ``ensemble_pess``)."""

    instance: b.InstanceConfig = b.InstanceConfig()
    confidence: conf.ConfidenceConfig = conf.ConfidenceConfig()
    offline: learners.OfflineOptions = learners.OfflineOptions()
    sample_sizes: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
    panel_coverages: tuple[float, ...] = (-0.8, 0.0, 0.8)
    panel_temperature: float = 10.0
    panel_kl_coef: float = 0.1
    algorithms: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self):
        v.check_increasing_ints("sample_sizes", self.sample_sizes)
        for c in self.panel_coverages:
            v.check_float("panel_coverages", c, low=-1.0, high=1.0)
        if len(set(self.panel_coverages)) != len(self.panel_coverages):
            v.fail("panel_coverages", self.panel_coverages, "a tuple without repeated values")
        v.check_float("panel_temperature", self.panel_temperature, low=0.0)
        v.check_float("panel_kl_coef", self.panel_kl_coef, low=0.0, low_open=True)
        v.check_names("algorithms", self.algorithms, learners.names(neural=self.instance.reward == "neural"),
                      empty=True)

    @property
    def algorithm_names(self) -> tuple[str, ...]:
        """``algorithms``, or the default set of the reward kind when empty."""
        if self.algorithms:
            return tuple(self.algorithms)
        return NEURAL_ALGORITHMS if self.instance.reward == "neural" else ALGORITHMS

    def settings(self) -> list[tuple[str, float, float, float]]:
        """(name, coverage, temperature, kl_coef) of every setting run."""
        i = self.instance
        out = [("canonical", i.coverage, i.temperature, i.kl_coef)]
        # names from the exact value (shortest repr), so two coverages never share a name
        out += [(f"coverage{float(c):+}", float(c), self.panel_temperature, self.panel_kl_coef)
                for c in self.panel_coverages]
        return out


presets = {
    "quick": replace(Config(), sample_sizes=(64, 256, 1024, 4096), dpo_steps=100),
    "paper": Config(),
}
seeds = {"quick": 48, "paper": 1024}


def per_seed(key, coverage, temperature, kl_coef, config: Config):
    """All metrics of one seed and one setting: dict of ``[n_sizes, n_algorithms]`` arrays."""
    k_inst, k_data, k_net = jax.random.split(key, 3)
    icfg, ccfg = config.instance, config.confidence
    inst = b.make_instance(k_inst, icfg, coverage=coverage, temperature=temperature, kl_coef=kl_coef)
    stream = b.sample_preference_data(k_data, inst, inst.log_pi0, inst.log_pi0, config.sample_sizes[-1])
    z_all = b.feature_differences(inst, stream)
    nu = conf.reference_vector(inst, ccfg.reference_vector)
    pi_star = b.optimal_policy(inst)
    theta = jnp.zeros(icfg.dim, z_all.dtype)
    linear_world = icfg.reward == "linear"
    theta_star = inst.theta_star if linear_world else jnp.full(icfg.dim, jnp.nan, z_all.dtype)
    names = list(config.algorithm_names)
    chosen = {name: learners.get(name) for name in names}
    net = neural_mle.init_network(k_net, icfg.dim, icfg.hidden, z_all.dtype)
    states = None
    rows = []
    for n in config.sample_sizes:
        data = b.PreferenceData(*(f[:n] for f in stream))
        z = z_all[:n]
        cs = conf.mle_confidence_set(z, data.y, data.mask, n, icfg.reward_norm, ccfg, theta0=theta)
        theta = cs.center
        in_cs = jnp.where(linear_world, conf.contains(cs, theta_star).astype(z.dtype), jnp.nan)
        if any(learner.needs_network for learner in chosen.values()):
            net = neural_mle.fit_network(net, inst.phi, data, ccfg.lam, config.offline.neural_steps,
                                         config.offline.neural_learning_rate).params
        view = learners.make_view(inst, data, cs, nu, network=net, key=jax.random.fold_in(k_net, n), lam=ccfg.lam,
                                  hidden=icfg.hidden, options=config.offline)
        if states is None:
            states = {name: learner.init(view) for name, learner in chosen.items()}
        metrics = {}
        for name, learner in chosen.items():
            pi, states[name] = learner.fit(view, states[name])
            bound = learner.bound(view, pi, pi_star) if learner.bound is not None else jnp.nan
            subopt = b.suboptimality(inst, pi)
            subopt_kl = b.suboptimality_kl(inst, pi)
            bounded = subopt_kl if learner.bounded == "subopt_kl" else subopt
            metrics[name] = {
                "subopt": subopt, "subopt_kl": subopt_kl, "kl_to_ref": b.kl_to_reference(inst, pi),
                "bound": jnp.asarray(bound, z.dtype),
                "bound_holds": jnp.where(jnp.isnan(bound), jnp.nan, (bounded <= bound).astype(z.dtype)),
                "in_confidence_set": in_cs, "beta": cs.beta,
                "error_sigma_norm": conf.primal_norm(cs.gram, theta - theta_star),
            }
        rows.append(metrics)
    keys = rows[0][names[0]].keys()
    return {k: jnp.stack([jnp.stack([r[a][k] for a in names]) for r in rows]) for k in keys}


def run(config: Config, seeds: int, progress) -> Results:
    keys = seed_keys(config.seed, seeds)
    tables, outs = [], {}
    fn = functools.partial(per_seed, config=config)
    for setting, coverage, temperature, kl_coef in config.settings():
        out = outs[setting] = run_vectorized(fn, keys, np.float64(coverage), np.float64(temperature),
                                             np.float64(kl_coef), progress=progress, tag=setting)
        # out[k]: [seeds, n_sizes, n_algorithms] -> rows (seed, n, algorithm)
        table = tidy(out, seed=np.arange(seeds), n=np.asarray(config.sample_sizes),
                     algorithm=np.asarray(config.algorithm_names))
        count = len(table["seed"])
        table["setting"] = np.full(count, setting)
        table["coverage"] = np.full(count, coverage)
        table["temperature"] = np.full(count, temperature)
        table["kl_coef"] = np.full(count, kl_coef)
        tables.append(table)

    def summarize():
        summary = {}
        for setting, out in outs.items():
            for i, alg in enumerate(config.algorithm_names):
                y = out["subopt"][:, :, i]
                summary.update(stats.slope_summary(f"{setting}/{alg}", config.sample_sizes, y))
                summary[f"{setting}/{alg}/subopt_n_min"] = float(y[:, 0].mean())
                summary[f"{setting}/{alg}/subopt_n_max"] = float(y[:, -1].mean())
                holds = out["bound_holds"][:, :, i]
                if not np.all(np.isnan(holds)):
                    summary[f"{setting}/{alg}/bound_holds_frac"] = float(np.nanmean(holds))
                    # P1's bounds assume theta* in C: the fraction on that event (seed x n rows), when it occurs
                    in_set = out["in_confidence_set"][:, :, i] == 1
                    if np.any(in_set & ~np.isnan(holds)):
                        summary[f"{setting}/{alg}/bound_holds_frac_in_set"] = float(np.nanmean(holds[in_set]))
            if config.instance.reward == "linear":
                summary[f"{setting}/in_confidence_set_frac"] = float(out["in_confidence_set"][:, :, 0].mean())
        return summary

    return Results(concat_tables(tables), summarize)


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    settings = list(dict.fromkeys(np.asarray(table["setting"]).tolist()))
    ncols = min(2, len(settings))
    nrows = -(-len(settings) // ncols)
    fig, axes = plotting.figure(ncols=ncols, nrows=nrows, size=(6.0, 4.6))
    axes = np.atleast_1d(axes).ravel()
    for ax in axes[len(settings):]:
        ax.set_visible(False)
    algorithms = list(dict.fromkeys(np.asarray(table["algorithm"]).tolist()))
    colors = {a: f"C{i}" for i, a in enumerate(ALL_ALGORITHMS)}
    for ax, setting in zip(axes, settings):
        first = np.asarray(table["setting"]) == setting
        kl = float(np.asarray(table["kl_coef"])[first][0])
        cov = float(np.asarray(table["coverage"])[first][0])
        temp = float(np.asarray(table["temperature"])[first][0])
        for alg in algorithms:
            where = {"setting": setting, "algorithm": alg}
            x, y = plotting.pivot(table, "n", "subopt", where=where)
            label = learners.LEARNERS[alg].label if alg in learners.LEARNERS else alg
            plotting.band_plot(ax, x, y, label, color=colors.get(alg), loglog=True,
                               slope=bool(np.all(y.mean(0) > 0)))
            if alg in ("option_i", "option_ii"):
                _, bound = plotting.pivot(table, "n", "bound", where=where)
                plotting.bound_plot(ax, x, bound.mean(0), f"P1 bound, {learners.LEARNERS[alg].label.split(' ')[0]} "
                                    f"{'I' if alg == 'option_i' else 'II'}", color=colors.get(alg))
        pi0 = "uniform pi0" if temp == 0 else f"pi0: c={cov:+.1f}, s={temp:g}"
        ax.set(title=f"{setting}: {pi0}, kl_coef={kl:g}", xlabel="n (comparisons)",
               ylabel="J(pi*) - J(pi_hat)")
        ax.legend(fontsize="x-small")
    seeds = len(np.unique(np.asarray(table["seed"])))
    i, c = config.instance, config.confidence
    fig.suptitle(f"offline-rate: exact suboptimality vs n, {seeds} seeds (mean, 95% band)\n"
                 f"d={i.dim}, K={i.n_actions}, n_x={i.n_contexts}, B={i.reward_norm:g}, "
                 f"reward={i.reward}, beta={c.beta_mode} x {c.c_beta:g}, lambda={c.lam:g}")
    return plotting.save_figure(fig, out_dir, "offline_rate")

