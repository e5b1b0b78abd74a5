"""offline-rate (THEORY.md E1): suboptimality against n for P1's offline algorithms, with P1's bounds.

For each seed: one instance, one stream of comparisons ``a1, a2 ~ pi0`` whose nested prefixes are the
data sets of size ``n``; a warm-started BT-MLE per ``n``; then MLE-Gibbs, pessimistic Option I and
Option II (P1 §2.2), DPO and pessimistic DPO on a linear-softmax policy (P1 §2.3), all evaluated
exactly. The bound of P1 that applies to each algorithm (``algorithms.offline.gshf``) is computed per
seed with the comparator ``pi*``, together with whether ``theta*`` lies in the confidence set.

Settings: the canonical one (uniform ``pi0``, ``kl_coef``) and a coverage panel (peaked ``pi0``,
temperature ``panel_temperature``, ``panel_kl_coef``, one setting per ``c`` in ``panel_coverages``).
All settings share one compiled program (coverage, temperature and kl_coef are traced arguments).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import bandits as b
from algorithms.core import confidence as conf
from algorithms.core import neural_mle
from algorithms.offline import gshf as offline
from algorithms.core.bt_mle import fit_bt_mle
from algorithms.core.direct_preference import train_linear
from bandits import validation as v
from experiments.engine import plotting, stats
from experiments.engine.results import Results, concat_tables, tidy
from experiments.engine.runner import run_vectorized, seed_keys
from experiments.catalogue.world_config import WorldConfig

ALGORITHMS = ("mle_gibbs", "option_i", "option_ii", "dpo", "pessimistic_dpo")
NEURAL_ALGORITHMS = ("mle_gibbs", "option_ii", "neural_gibbs", "neural_linear_pess", "ensemble_pess")
ALL_ALGORITHMS = ALGORITHMS + NEURAL_ALGORITHMS[2:]
LABELS = {"mle_gibbs": "MLE-Gibbs", "option_i": "Option I (pessimistic)",
          "option_ii": "Option II (pessimistic)", "dpo": "DPO (linear softmax)",
          "pessimistic_dpo": "pessimistic DPO", "neural_gibbs": "neural MLE-Gibbs",
          "neural_linear_pess": "neural-linear pessimistic", "ensemble_pess": "ensemble pessimistic"}
# The quantity each algorithm's bound controls (see algorithms.offline.gshf): subopt or subopt_kl.
BOUNDED = {"mle_gibbs": "subopt_kl", "option_i": "subopt", "option_ii": "subopt_kl"}

nan_columns = ("bound", "bound_holds", "in_confidence_set", "error_sigma_norm")
description = "E1: offline suboptimality vs n (MLE-Gibbs, Option I/II, DPO, pessimistic DPO) with P1's bounds"


@dataclasses.dataclass(frozen=True)
class Config(WorldConfig):
    """Fields reachable with ``--set field=value``; instance and confidence fields in ``WorldConfig``."""

    sample_sizes: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
    panel_coverages: tuple[float, ...] = (-0.8, 0.0, 0.8)
    panel_temperature: float = 10.0
    panel_kl_coef: float = 0.1
    algorithms: tuple[str, ...] = ()
    dpo_steps: int = 200
    dpo_learning_rate: float = 0.05
    neural_steps: int = 300
    neural_learning_rate: float = 0.02
    neural_beta: float = 1.0
    ensemble_size: int = 4
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        if not self.sample_sizes or any(int(n) < 1 for n in self.sample_sizes) or \
                list(self.sample_sizes) != sorted(set(self.sample_sizes)):
            v.fail("sample_sizes", self.sample_sizes, "a non-empty strictly increasing tuple of integers >= 1")
        for c in self.panel_coverages:
            v.check_float("panel_coverages", c, low=-1.0, high=1.0)
        v.check_float("panel_temperature", self.panel_temperature, low=0.0)
        v.check_float("panel_kl_coef", self.panel_kl_coef, low=0.0, low_open=True)
        allowed = ALL_ALGORITHMS if self.reward == "neural" else ALGORITHMS
        for a in self.algorithms:
            v.check_choice("algorithms", a, allowed)
        v.check_int("dpo_steps", self.dpo_steps, 1)
        v.check_float("dpo_learning_rate", self.dpo_learning_rate, low=0.0, low_open=True)
        v.check_int("neural_steps", self.neural_steps, 1)
        v.check_float("neural_learning_rate", self.neural_learning_rate, low=0.0, low_open=True)
        v.check_float("neural_beta", self.neural_beta, low=0.0)
        v.check_int("ensemble_size", self.ensemble_size, 2)

    @property
    def algorithm_names(self) -> tuple[str, ...]:
        """``algorithms``, or the default set of the reward kind when empty."""
        if self.algorithms:
            return tuple(self.algorithms)
        return NEURAL_ALGORITHMS if self.reward == "neural" else ALGORITHMS

    def settings(self) -> list[tuple[str, float, float, float]]:
        """(name, coverage, temperature, kl_coef) of every setting run."""
        out = [("canonical", 0.0, 0.0, self.kl_coef)]
        out += [(f"coverage{c:+.1f}", float(c), self.panel_temperature, self.panel_kl_coef)
                for c in self.panel_coverages]
        return out


presets = {
    "quick": Config(sample_sizes=(64, 256, 1024, 4096), dpo_steps=100),
    "paper": Config(),
}
seeds = {"quick": 48, "paper": 1024}


def per_seed(key, coverage, temperature, kl_coef, config: Config):
    """All metrics of one seed and one setting: dict of ``[n_sizes, n_algorithms]`` arrays."""
    k_inst, k_data, k_net = jax.random.split(key, 3)
    inst = b.make_instance(k_inst, config.instance, coverage=coverage, temperature=temperature,
                           kl_coef=kl_coef)
    n_max = config.sample_sizes[-1]
    stream = b.sample_preference_data(k_data, inst, inst.log_pi0, inst.log_pi0, n_max)
    z_all = b.feature_differences(inst, stream)
    nu = conf.reference_vector(inst, config.reference_vector)
    pi_star = b.optimal_policy(inst)
    theta = jnp.zeros(config.dim, z_all.dtype)
    w_dpo = w_pdpo = jnp.zeros(config.dim, z_all.dtype)
    linear_world = config.reward == "linear"
    theta_star = inst.theta_star if linear_world else jnp.full(config.dim, jnp.nan, z_all.dtype)
    net = neural_mle.init_network(k_net, config.dim, config.hidden, z_all.dtype)
    rows = []
    for n in config.sample_sizes:
        data = b.PreferenceData(*(f[:n] for f in stream))
        z = z_all[:n]
        theta = fit_bt_mle(z, data.y, data.mask, config.lam, theta0=theta).theta
        beta = conf.confidence_radius(config.beta_mode, config.dim, n, config.lam, config.reward_norm,
                                      config.delta, config.c_beta)
        cs = conf.confidence_set(theta, conf.gram_matrix(z, data.mask, config.lam), beta)
        in_cs = jnp.where(linear_world, conf.contains(cs, theta_star).astype(z.dtype), jnp.nan)
        if any(a.startswith(("neural", "ensemble")) for a in config.algorithm_names):
            net = neural_mle.fit_network(net, inst.phi, data, config.lam, config.neural_steps,
                                         config.neural_learning_rate).params
        metrics = {}
        for name in config.algorithm_names:
            if name == "mle_gibbs":
                pi = offline.linear_gibbs(inst, theta)
                bound = offline.plug_in_bound(inst, cs, pi_star, pi)
            elif name == "option_i":
                pi = offline.option_i_policy(inst, cs, nu)
                bound = offline.option_i_bound(inst, cs, nu, pi_star)
            elif name == "option_ii":
                pi = offline.option_ii_policy(inst, cs, nu)
                bound = offline.option_ii_bound(inst, cs, nu, pi_star)
            elif name == "dpo":
                fit = train_linear(data, inst.phi, inst.log_pi0, kl_coef, "dpo", init_w=w_dpo,
                                   steps=config.dpo_steps, learning_rate=config.dpo_learning_rate)
                pi, w_dpo, bound = fit.log_pi, fit.params, jnp.nan
            elif name == "neural_gibbs":
                pi, bound = b.gibbs_policy(inst.log_pi0, b.reward_table(net, inst.phi), kl_coef), jnp.nan
            elif name == "neural_linear_pess":
                gamma = neural_mle.neural_linear_uncertainty(inst, net, data, config.lam)
                r_pess = b.reward_table(net, inst.phi) - config.neural_beta * gamma
                pi, bound = b.gibbs_policy(inst.log_pi0, r_pess, kl_coef), jnp.nan
            elif name == "ensemble_pess":
                _, mean, spread = neural_mle.bootstrap_ensemble(
                    jax.random.fold_in(k_net, n), inst, data, config.lam, config.ensemble_size, config.hidden,
                    config.neural_steps, config.neural_learning_rate)
                pi, bound = b.gibbs_policy(inst.log_pi0, mean - config.neural_beta * spread, kl_coef), jnp.nan
            else:
                gamma = cs.beta * conf.pointwise_uncertainty(inst, cs.chol, nu)
                fit = train_linear(data, inst.phi, inst.log_pi0, kl_coef, "pessimistic_dpo", gamma=gamma,
                                   init_w=w_pdpo, steps=config.dpo_steps,
                                   learning_rate=config.dpo_learning_rate)
                pi, w_pdpo, bound = fit.log_pi, fit.params, jnp.nan
            subopt = b.suboptimality(inst, pi)
            subopt_kl = b.suboptimality_kl(inst, pi)
            bounded = subopt_kl if BOUNDED.get(name) == "subopt_kl" else subopt
            metrics[name] = {
                "subopt": subopt, "subopt_kl": subopt_kl, "kl_to_ref": b.kl_to_reference(inst, pi),
                "bound": jnp.asarray(bound, z.dtype),
                "bound_holds": jnp.where(jnp.isnan(bound), jnp.nan, (bounded <= bound).astype(z.dtype)),
                "in_confidence_set": in_cs, "beta": beta,
                "error_sigma_norm": conf.primal_norm(cs.gram, theta - theta_star),
            }
        rows.append(metrics)
    names = list(config.algorithm_names)
    keys = rows[0][names[0]].keys()
    return {k: jnp.stack([jnp.stack([r[a][k] for a in names]) for r in rows]) for k in keys}


def run(config: Config, seeds: int, progress) -> Results:
    keys = seed_keys(config.seed, seeds)
    tables, summary = [], {}
    fn = lambda key, c, s, e: per_seed(key, c, s, e, config)
    for setting, coverage, temperature, kl_coef in config.settings():
        out = run_vectorized(fn, keys, np.float64(coverage), np.float64(temperature), np.float64(kl_coef),
                             progress=progress, tag=setting)
        # out[k]: [seeds, n_sizes, n_algorithms] -> rows (seed, n, algorithm)
        table = tidy(out, seed=np.arange(seeds), n=np.asarray(config.sample_sizes),
                     algorithm=np.asarray(config.algorithm_names))
        count = len(table["seed"])
        table["setting"] = np.full(count, setting)
        table["coverage"] = np.full(count, coverage)
        table["temperature"] = np.full(count, temperature)
        table["kl_coef"] = np.full(count, kl_coef)
        tables.append(table)
        for i, alg in enumerate(config.algorithm_names):
            y = out["subopt"][:, :, i]
            if len(config.sample_sizes) >= 2 and np.all(y.mean(0) > 0):
                fit = stats.fit_loglog_slope(config.sample_sizes, y)
                summary[f"{setting}/{alg}/slope"] = fit.slope
                summary[f"{setting}/{alg}/slope_low"] = fit.low
                summary[f"{setting}/{alg}/slope_high"] = fit.high
            summary[f"{setting}/{alg}/subopt_n_min"] = float(y[:, 0].mean())
            summary[f"{setting}/{alg}/subopt_n_max"] = float(y[:, -1].mean())
            holds = out["bound_holds"][:, :, i]
            if not np.all(np.isnan(holds)):
                summary[f"{setting}/{alg}/bound_holds_frac"] = float(np.nanmean(holds))
        if config.reward == "linear":
            summary[f"{setting}/in_confidence_set_frac"] = float(out["in_confidence_set"][:, :, 0].mean())
    return Results(concat_tables(tables), summary)


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
            plotting.band_plot(ax, x, y, LABELS.get(alg, alg), color=colors.get(alg), loglog=True,
                               slope=bool(np.all(y.mean(0) > 0)))
            if alg in ("option_i", "option_ii"):
                _, bound = plotting.pivot(table, "n", "bound", where=where)
                plotting.bound_plot(ax, x, bound.mean(0), f"P1 bound, {LABELS[alg].split(' ')[0]} "
                                    f"{'I' if alg == 'option_i' else 'II'}", color=colors.get(alg))
        pi0 = "uniform pi0" if temp == 0 else f"pi0: c={cov:+.1f}, s={temp:g}"
        ax.set(title=f"{setting}: {pi0}, kl_coef={kl:g}", xlabel="n (comparisons)",
               ylabel="J(pi*) - J(pi_hat)")
        ax.legend(fontsize="x-small")
    seeds = len(np.unique(np.asarray(table["seed"])))
    fig.suptitle(f"offline-rate: exact suboptimality vs n, {seeds} seeds (mean, 95% band)\n"
                 f"d={config.dim}, K={config.n_actions}, n_x={config.n_contexts}, B={config.reward_norm:g}, "
                 f"reward={config.reward}, beta={config.beta_mode} x {config.c_beta:g}, lambda={config.lam:g}")
    return plotting.save_figure(fig, out_dir, "offline_rate")

