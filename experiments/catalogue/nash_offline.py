"""nash-offline (docs/theory.md §3.4 target 2, E7): Nash duality gap against n for P2's offline algorithms
under unilateral vs diagonal-only coverage.

For each seed: one intransitive linear instance (``skew_strength``) and its equilibrium ``pi*``. The
default world has few contexts and ``d = K`` (``D = 36`` parameters), so the linear model barely
generalises across actions: coverage is then about which action pairs were compared. For
each data design, one stream of comparisons whose nested prefixes are the data sets of size ``n``:

- ``unilateral``: ``a1 ~ pi*, a2 ~ uniform`` (covers ``(pi*, b)`` for every opponent action ``b``);
- ``diagonal``:   ``a1, a2 ~ pi*`` (covers only the equilibrium pair; ``pi*`` is peaked at small ``kl_coef``);
- ``reference``:  ``a1, a2 ~ pi0`` (the usual SFT data; uniform ``pi0`` unless ``temperature > 0``).

Per ``n``: the general-preference MLE (warm-started along the stream) and its confidence set, then
``nash_mle`` (equilibrium of the estimated game), ``p2_pessimistic`` (P2's pessimistic max-min policy)
and ``bt_gibbs`` (reward-based RLHF), evaluated exactly. Diagnostics per row: ``beta``, the unilateral
and diagonal coverage ``E_x max_b E_{a~pi*} Gamma`` and ``E_x E_{a,b~pi*} Gamma``, the pessimistic bound
``2 L_g beta x unilateral`` (``algorithms.nash.offline``), and whether ``theta*`` is in the set.

Columns: ``algorithm, design, seed, n, nash_gap, win_rate_vs_ref, win_rate_vs_nash, kl_to_ref,
unilateral_coverage, diagonal_coverage, bound, in_confidence_set, beta``.
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
from algorithms.nash import preference_model as gp
from algorithms.nash import offline as no
from bandits import validation as v
from experiments.engine import plotting, stats
from experiments.catalogue.nash_common import (CHUNK_SIZE, LABELS, METRICS, check_algorithms, metric_panel, policy_metrics,
                                     thin_log_x_ticks)
from experiments.engine.results import Results, tidy
from experiments.engine.runner import run_vectorized, seed_keys

ALGORITHMS = ("nash_mle", "p2_pessimistic", "bt_gibbs")
DESIGNS = ("unilateral", "diagonal", "reference")
DESIGN_LABELS = {"unilateral": "unilateral: a1~pi*, a2~uniform", "diagonal": "diagonal: a1, a2 ~ pi*",
                 "reference": "reference: a1, a2 ~ pi0"}
DIAGNOSTICS = ("unilateral_coverage", "diagonal_coverage", "bound", "in_confidence_set", "beta")

description = "E7: offline Nash gap vs n, unilateral vs diagonal-only coverage (P2 pessimism, plug-in, BT)"


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields reachable with ``--set field=value``."""

    n_contexts: int = 4
    n_actions: int = 8
    dim: int = 8
    reward_norm: float = 2.0
    kl_coef: float = 0.05
    temperature: float = 0.0
    skew_strength: float = 2.0
    payoff: str = "identity"
    sample_sizes: tuple[int, ...] = (64, 256, 1024, 4096, 16384)
    designs: tuple[str, ...] = DESIGNS
    algorithms: tuple[str, ...] = ALGORITHMS
    lam: float = 1.0
    beta_mode: str = "sqrt_d"
    c_beta: float = 1.0
    seed: int = 0

    def __post_init__(self):
        self.instance
        v.check_choice("payoff", self.payoff, b.PAYOFFS)
        if not self.sample_sizes or any(int(n) < 1 for n in self.sample_sizes) or \
                list(self.sample_sizes) != sorted(set(self.sample_sizes)):
            v.fail("sample_sizes", self.sample_sizes, "a non-empty strictly increasing tuple of integers >= 1")
        check_algorithms("designs", self.designs, DESIGNS)
        check_algorithms("algorithms", self.algorithms, ALGORITHMS)
        v.check_float("lam", self.lam, low=0.0, low_open=True)
        v.check_choice("beta_mode", self.beta_mode, conf.BETA_MODES)
        v.check_float("c_beta", self.c_beta, low=0.0, low_open=True)

    @property
    def instance(self) -> b.InstanceConfig:
        return b.InstanceConfig(n_contexts=self.n_contexts, n_actions=self.n_actions, dim=self.dim,
                                reward_norm=self.reward_norm, kl_coef=self.kl_coef,
                                temperature=self.temperature, skew_strength=self.skew_strength)


presets = {
    "quick": Config(sample_sizes=(64, 256, 1024, 4096)),
    "paper": Config(sample_sizes=(64, 256, 1024, 4096, 16384, 65536)),
}
seeds = {"quick": 8, "paper": 128}


def design_policies(instance: b.Instance, log_star: jax.Array, design: str):
    """``(pi1, pi2)`` from which the design draws ``a1`` and ``a2``."""
    uniform = b.uniform_policy(instance.n_contexts, instance.n_actions, log_star.dtype)
    return {"unilateral": (log_star, uniform), "diagonal": (log_star, log_star),
            "reference": (instance.log_pi0, instance.log_pi0)}[design]


def per_seed(key, sizes, config: Config):
    """``{column: [n_designs, n_sizes, n_algorithms]}`` for one seed.

    Designs are a ``vmap`` and sample sizes a ``lax.scan`` over masked prefixes of one fixed-shape
    stream (warm-started MLE), so the program is compiled once whatever the numbers of both.
    """
    k_inst, k_data = jax.random.split(key)
    inst = b.make_instance(k_inst, config.instance)
    star = b.nash_equilibrium(inst, config.payoff).log_pi
    theta_star = gp.true_parameter(inst)
    d_psi = gp.psi_dim(config.dim)
    pairs = [design_policies(inst, star, d) for d in config.designs]
    firsts, seconds = jnp.stack([p[0] for p in pairs]), jnp.stack([p[1] for p in pairs])
    index = jnp.asarray([DESIGNS.index(d) for d in config.designs])

    def one_design(idx, first, second):
        stream = b.sample_preference_data(jax.random.fold_in(k_data, idx), inst, first, second,
                                          config.sample_sizes[-1])

        def one_size(theta, n):
            data = b.with_size(stream, n)
            theta = gp.fit_general_preference(inst, data, config.lam, theta0=theta).theta
            beta = conf.confidence_radius(config.beta_mode, d_psi, n, config.lam, config.reward_norm,
                                          c_beta=config.c_beta)
            cs = gp.confidence_set(inst, data, theta, config.lam, beta)
            gamma = gp.pair_uncertainty(inst, cs.chol)
            policies = {}
            if "nash_mle" in config.algorithms:
                policies["nash_mle"] = no.plug_in_nash(inst, theta, config.payoff).log_pi
            if "p2_pessimistic" in config.algorithms:
                policies["p2_pessimistic"] = no.pessimistic_policy(inst, cs, config.payoff).log_pi
            if "bt_gibbs" in config.algorithms:
                policies["bt_gibbs"] = no.bt_gibbs_policy(inst, data, config.lam)[0]
            diag = {"unilateral_coverage": no.unilateral_coverage(inst, gamma, star),
                    "diagonal_coverage": no.diagonal_coverage(inst, gamma, star),
                    "bound": no.pessimistic_bound(inst, gamma, beta, star, config.payoff),
                    "in_confidence_set": conf.contains(cs, theta_star).astype(theta.dtype),
                    "beta": jnp.asarray(beta, theta.dtype)}
            per_alg = [{**policy_metrics(inst, policies[a], star, config.payoff), **diag}
                       for a in config.algorithms]
            return theta, {k: jnp.stack([r[k] for r in per_alg]) for k in METRICS + DIAGNOSTICS}

        return jax.lax.scan(one_size, jnp.zeros(d_psi, inst.phi.dtype), sizes)[1]

    return jax.vmap(one_design)(index, firsts, seconds)


def run(config: Config, seeds: int, progress) -> Results:
    out = run_vectorized(functools.partial(per_seed, config=config), seed_keys(config.seed, seeds),
                         np.asarray(config.sample_sizes), progress=progress, chunk_size=CHUNK_SIZE)
    table = tidy(out, seed=np.arange(seeds), design=np.asarray(config.designs),
                 n=np.asarray(config.sample_sizes), algorithm=np.asarray(config.algorithms))
    summary = {}
    for i, design in enumerate(config.designs):
        for j, alg in enumerate(config.algorithms):
            y = out["nash_gap"][:, i, :, j]
            summary[f"{design}/{alg}/nash_gap_n_max"] = float(y[:, -1].mean())
            if len(config.sample_sizes) >= 2 and np.all(y.mean(0) > 0):
                summary[f"{design}/{alg}/slope"] = stats.fit_loglog_slope(config.sample_sizes, y).slope
        summary[f"{design}/unilateral_coverage_n_max"] = float(out["unilateral_coverage"][:, i, -1, 0].mean())
        summary[f"{design}/in_confidence_set_frac"] = float(out["in_confidence_set"][:, i, :, 0].mean())
        if "p2_pessimistic" in config.algorithms:
            j = config.algorithms.index("p2_pessimistic")
            inside = out["in_confidence_set"][:, i, :, j] == 1.0
            holds = out["nash_gap"][:, i, :, j] <= out["bound"][:, i, :, j] + 1e-9
            if inside.any():   # the bound is a statement on the event theta* in C only
                summary[f"{design}/bound_holds_when_inside_frac"] = float(holds[inside].mean())
    return Results(table, summary)


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    designs = list(dict.fromkeys(np.asarray(table["design"]).tolist()))
    algorithms = list(dict.fromkeys(np.asarray(table["algorithm"]).tolist()))
    fig, axes = plotting.figure(ncols=len(designs) + 1, size=(4.6, 4.2))
    axes = np.atleast_1d(axes)
    for ax, design in zip(axes, designs):
        metric_panel(ax, table, "n", "nash_gap", {a: LABELS[a] for a in algorithms}, where={"design": design},
                     log_x=True, title=f"data: {DESIGN_LABELS[design]}", xlabel="n (offline comparisons)",
                     ylabel="duality gap Gap(pi) (exact)", legend_loc="lower left")
    low = min(a.get_ylim()[0] for a in axes[:len(designs)])
    high = max(a.get_ylim()[1] for a in axes[:len(designs)])
    for a in axes[:len(designs)]:   # one gap scale across designs
        a.set_ylim(low, high)
    ax = axes[-1]
    for k, design in enumerate(designs):
        where = {"design": design, "algorithm": algorithms[0]}
        x, y = plotting.pivot(table, "n", "unilateral_coverage", where=where)
        plotting.band_plot(ax, x, y, f"unilateral, {design} data", color=f"C{k}", loglog=True)
        x, y = plotting.pivot(table, "n", "diagonal_coverage", where=where)
        plotting.band_plot(ax, x, y, f"diagonal, {design} data", color=f"C{k}", linestyle=":", marker="x")
    thin_log_x_ticks(ax)
    ax.set(title="coverage: E max_b E_pi* Gamma (solid),\nE_{pi*,pi*} Gamma (dotted)",
           xlabel="n (offline comparisons)", ylabel="uncertainty ||psi||_{Sigma^-1}")
    ax.legend(fontsize="x-small", loc="lower left")
    fig.suptitle(f"nash-offline: d={config.dim}, K={config.n_actions}, n_x={config.n_contexts}, "
                 f"kl_coef={config.kl_coef:g}, skew={config.skew_strength:g}, payoff={config.payoff}, "
                 f"pessimism radius {config.beta_mode} c_beta={config.c_beta:g} (mean over seeds, 95% band)")
    return plotting.save_figure(fig, out_dir, "nash_offline")
