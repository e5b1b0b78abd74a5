"""nash-offline (docs/theory.md §3.4 target 2, E7): Nash duality gap against n for P2's offline algorithms
under unilateral vs diagonal-only coverage.

For each seed: one intransitive linear instance (``skew_strength``; ``bandits.nash.make_game_instance`` with
the nested ``game`` knobs) and its equilibrium ``pi*``. The default world has few contexts and ``d = K``
(``D = 36`` parameters), so the linear model barely generalises across actions: coverage is then about
which action pairs were compared. The preset ``p2_regime`` pushes that further, to where P2's
pessimism should matter: features close to one-hot (``one_hot = 0.9``: the pair features ``psi`` close to
one-hot over pairs), ``kl_coef = 0.01`` (so a payoff error ``eps`` moves the policy by ``eps / eta``) and a
``pi0`` tilted away from the equilibrium (``avoid_nash = 4``: poor unilateral coverage of the
``reference`` data), with ``reward_norm = 1`` and ``skew_strength = 4`` so that the equilibria are mixed,
and the pointwise variant run beside the policy-level one. For
each data design, one stream of comparisons whose nested prefixes are the data sets of size ``n``:

- ``unilateral``: ``a1 ~ pi*, a2 ~ uniform`` (covers ``(pi*, b)`` for every opponent action ``b``);
- ``diagonal``:   ``a1, a2 ~ pi*`` (covers only the equilibrium pair; ``pi*`` is peaked at small ``kl_coef``);
- ``reference``:  ``a1, a2 ~ pi0`` (the usual SFT data; uniform ``pi0`` unless ``temperature > 0``).

Per ``n``: the general-preference MLE (warm-started along the stream) and its confidence set
(``preference_model.mle_confidence_set`` with the nested ``confidence`` config), then the offline methods
of ``algorithms.nash.methods`` (any registered one, a plugin's included, through ``--set
algorithms=...``; by default ``nash_mle``, the equilibrium of the estimated game, ``p2_pessimistic``,
P2's policy-level pessimistic max-min policy (``algorithms.nash.pessimism``), and ``bt_gibbs``,
reward-based RLHF; ``p2_pessimistic_pointwise``, the pointwise-box variant, by ``--set algorithms=...``),
evaluated exactly. Diagnostics per row: ``beta``, the pointwise unilateral and diagonal coverage ``E_x
max_b E_{a~pi*} Gamma`` and ``E_x E_{a,b~pi*} Gamma``, the pointwise bound ``2 L_g beta x unilateral``
(``algorithms.nash.offline``; the guarantee of the pointwise variant on the event ``theta* in C``), the
policy-level coverage ``E_x max_b ||E_{a~pi*} psi(x,a,b)||_{Sigma^-1}`` and bound ``policy_bound = 2 L_g
beta x policy_unilateral_coverage`` (P2's guarantee for ``p2_pessimistic``; exact for the logit payoff,
first order for the probability payoff), whether ``theta*`` is in the set, and ``max_err_over_eta =
max_{x,a,b} |G_theta_hat - G*| / eta``, the plug-in estimate's largest payoff error against ``eta``
(pessimism can pay only where it is of order 1: ``algorithms.nash.offline``, "Why the plug-in ..."). These
are the same number on every algorithm's row.

Summary, paired by seed (common random numbers: every method sees the same instance and data): for each
design and each pair of ``PAIRS`` run (the pessimistic policies against the plug-in ``nash_mle`` and
against each other), ``{design}/{a}_minus_{b}/nash_gap_n_min`` and ``_n_max`` with ``/diff``, ``/diff_low``,
``/diff_high`` (the mean difference of the gaps ``a - b`` at the smallest and largest ``n`` and its paired
95% Student-t interval, ``stats.paired_summary``) and ``/below_frac`` (the fraction of seeds where ``a``'s
gap is below ``b``'s): an interval wholly below 0 says ``a`` helps there.

Columns: ``algorithm, design, seed, n, nash_gap, win_rate_vs_ref, win_rate_vs_nash, kl_to_ref,
unilateral_coverage, diagonal_coverage, bound, policy_unilateral_coverage, policy_bound, in_confidence_set,
beta, max_err_over_eta``.
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
from algorithms.nash import methods
from algorithms.nash import offline as no
from algorithms.nash import pessimism as ps
from algorithms.nash import preference_model as gp
from bandits import validation as v
from bandits.nash import GameConfig, make_game_instance, policy_metrics
from experiments.catalogue.nash_common import check_p2_config, metric_panel, thin_log_x_ticks
from experiments.engine import plotting, stats
from experiments.engine.config import replace
from experiments.engine.results import Results, tidy
from experiments.engine.runner import run_vectorized, seed_keys

ALGORITHMS = ("nash_mle", "p2_pessimistic", "bt_gibbs")
KINDS = ("offline",)
DESIGNS = ("unilateral", "diagonal", "reference")
DESIGN_LABELS = {"unilateral": "unilateral: a1~pi*, a2~uniform", "diagonal": "diagonal: a1, a2 ~ pi*",
                 "reference": "reference: a1, a2 ~ pi0"}
# The paired comparisons of the summary (each run when both methods are in algorithms): P2's pessimism
# (policy-level, pointwise) against the plug-in equilibrium, and the two forms of pessimism against each other.
PAIRS = (("p2_pessimistic", "nash_mle"), ("p2_pessimistic_pointwise", "nash_mle"),
         ("p2_pessimistic", "p2_pessimistic_pointwise"))
# Seeds per compiled chunk unless --chunk-size says otherwise (results do not depend on it): the paper
# preset, 128 seeds in one chunk, was killed by the OOM killer at 24 GB on this machine.
CHUNK_SIZE = 16

description = "E7: offline Nash gap vs n, unilateral vs diagonal-only coverage (P2 pessimism, plug-in, BT)"


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields reachable with ``--set field=value``; those of the nested ``instance`` (``bandits.InstanceConfig``),
    ``game`` (``bandits.nash.GameConfig``: P2's instance knobs), ``confidence``
    (``algorithms.core.confidence.ConfidenceConfig``) and ``nash`` (``algorithms.nash.methods.NashOptions``: the
    fields offline methods read) by their own names.

    payoff: the payoff ``G`` of P2's game, ``'identity'`` (``G = P``) or ``'logit'`` (``G = log P/(1-P)``;
    ``bandits.nash``), in which every policy is evaluated and the methods solve;
    sample_sizes: the data set sizes ``n``, strictly increasing (nested prefixes of one stream per design);
    designs: the data designs run, a subset of ``unilateral``, ``diagonal``, ``reference`` (module docstring);
    algorithms: the offline methods of ``algorithms.nash.methods`` run on every data set (a plugin's included).
    """

    instance: b.InstanceConfig = b.InstanceConfig(n_contexts=4, n_actions=8, dim=8, reward_norm=2.0, kl_coef=0.05,
                                                  skew_strength=2.0)
    game: GameConfig = GameConfig()
    confidence: conf.ConfidenceConfig = conf.ConfidenceConfig()
    nash: methods.NashOptions = methods.NashOptions()
    payoff: str = "identity"
    sample_sizes: tuple[int, ...] = (64, 256, 1024, 4096, 16384)
    designs: tuple[str, ...] = DESIGNS
    algorithms: tuple[str, ...] = ALGORITHMS
    seed: int = 0

    def __post_init__(self):
        check_p2_config(self, KINDS, "nash-offline")
        v.check_increasing_ints("sample_sizes", self.sample_sizes)
        v.check_names("designs", self.designs, DESIGNS)


presets = {
    "quick": replace(Config(), sample_sizes=(64, 256, 1024, 4096)),
    "paper": replace(Config(), sample_sizes=(64, 256, 1024, 4096, 16384, 65536)),
    # issue 17: few contexts, near one-hot pair features (d = K), small eta, pi0 avoiding the equilibrium
    "p2_regime": replace(Config(), reward_norm=1.0, skew_strength=4.0, kl_coef=0.01, one_hot=0.9, avoid_nash=4.0,
                         sample_sizes=(64, 256, 1024, 4096),
                         algorithms=("nash_mle", "p2_pessimistic", "p2_pessimistic_pointwise", "bt_gibbs")),
}
seeds = {"quick": 8, "paper": 128, "p2_regime": 8}


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
    icfg = config.instance
    inst = make_game_instance(k_inst, icfg, config.game)
    star = b.nash_equilibrium(inst, config.payoff).log_pi
    theta_star = gp.true_parameter(inst)
    g_star = b.payoff_matrices(inst, config.payoff)
    pairs = [design_policies(inst, star, d) for d in config.designs]
    firsts, seconds = jnp.stack([p[0] for p in pairs]), jnp.stack([p[1] for p in pairs])
    index = jnp.asarray([DESIGNS.index(d) for d in config.designs])

    def one_design(idx, first, second):
        k_design = jax.random.fold_in(k_data, idx)
        stream = b.sample_preference_data(k_design, inst, first, second, config.sample_sizes[-1])

        def one_size(theta, n):
            data = b.with_size(stream, n)
            cs = gp.mle_confidence_set(inst, data, n, icfg.reward_norm, config.confidence, theta0=theta)
            gamma = gp.pair_uncertainty(inst, cs.chol)
            policy_cov = ps.policy_unilateral_coverage(inst, cs.chol, star)
            g_error = no.transform(gp.model_margins(inst, cs.center), config.payoff) - g_star
            policies = methods.run_methods(config.algorithms, inst, payoff=config.payoff, options=config.nash,
                                           lam=config.confidence.lam, data=data, confidence=cs,
                                           key_of=lambda name: jax.random.fold_in(k_design, n))
            diag = {"unilateral_coverage": no.unilateral_coverage(inst, gamma, star),
                    "diagonal_coverage": no.diagonal_coverage(inst, gamma, star),
                    "bound": no.pessimistic_bound(inst, gamma, cs.beta, star, config.payoff),
                    "policy_unilateral_coverage": policy_cov,
                    "policy_bound": 2.0 * ps.LIPSCHITZ[config.payoff] * cs.beta * policy_cov,
                    "in_confidence_set": conf.contains(cs, theta_star).astype(cs.center.dtype),
                    "beta": cs.beta,
                    "max_err_over_eta": jnp.max(jnp.abs(g_error)) / inst.kl_coef}
            per_alg = [{**policy_metrics(inst, policies[a], star, config.payoff), **diag}
                       for a in config.algorithms]
            return cs.center, {k: jnp.stack([r[k] for r in per_alg]) for k in per_alg[0]}

        return jax.lax.scan(one_size, jnp.zeros(gp.psi_dim(icfg.dim), inst.phi.dtype), sizes)[1]

    return jax.vmap(one_design)(index, firsts, seconds)


def run(config: Config, seeds: int, progress) -> Results:
    out = run_vectorized(functools.partial(per_seed, config=config), seed_keys(config.seed, seeds),
                         np.asarray(config.sample_sizes), progress=progress, chunk_size=CHUNK_SIZE)
    table = tidy(out, seed=np.arange(seeds), design=np.asarray(config.designs),
                 n=np.asarray(config.sample_sizes), algorithm=np.asarray(config.algorithms))

    def summarize():
        summary = {}
        for i, design in enumerate(config.designs):
            for j, alg in enumerate(config.algorithms):
                y = out["nash_gap"][:, i, :, j]
                summary[f"{design}/{alg}/nash_gap_n_max"] = float(y[:, -1].mean())
                summary.update(stats.slope_summary(f"{design}/{alg}", config.sample_sizes, y))
            summary[f"{design}/unilateral_coverage_n_max"] = float(out["unilateral_coverage"][:, i, -1, 0].mean())
            summary[f"{design}/in_confidence_set_frac"] = float(out["in_confidence_set"][:, i, :, 0].mean())
            inside = out["in_confidence_set"][:, i, :, 0] == 1.0
            summary[f"{design}/max_err_over_eta_n_max"] = float(out["max_err_over_eta"][:, i, -1, 0].mean())
            for j, alg in enumerate(config.algorithms):
                # the bounds are the guarantees of the pessimistic policies (pointwise: p2_pessimistic_pointwise,
                # policy-level: p2_pessimistic) on the event theta* in C only; for the other methods the fractions
                # are descriptive
                if inside.any():
                    for key in ("bound", "policy_bound"):
                        holds = out["nash_gap"][:, i, :, j] <= out[key][:, i, :, j] + 1e-9
                        summary[f"{design}/{alg}/{key}_holds_when_inside_frac"] = float(holds[inside].mean())
            for a, base in PAIRS:
                if {a, base} <= set(config.algorithms):
                    gap_a = out["nash_gap"][:, i, :, config.algorithms.index(a)]
                    gap_b = out["nash_gap"][:, i, :, config.algorithms.index(base)]
                    for tag, k in (("n_min", 0), ("n_max", -1)):
                        summary.update(stats.paired_summary(f"{design}/{a}_minus_{base}/nash_gap_{tag}",
                                                            gap_a[:, k], gap_b[:, k]))
        return summary

    return Results(table, summarize)


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    designs = list(dict.fromkeys(np.asarray(table["design"]).tolist()))
    algorithms = list(dict.fromkeys(np.asarray(table["algorithm"]).tolist()))
    fig, axes = plotting.figure(ncols=len(designs) + 1, size=(4.6, 4.2))
    axes = np.atleast_1d(axes)
    for ax, design in zip(axes, designs):
        metric_panel(ax, table, "n", "nash_gap", {a: methods.label(a) for a in algorithms}, where={"design": design},
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
    i, c, g = config.instance, config.confidence, config.game
    game = "" if g.is_default else f"one_hot={g.one_hot:g}, avoid_nash={g.avoid_nash:g}, "
    fig.suptitle(f"nash-offline: d={i.dim}, K={i.n_actions}, n_x={i.n_contexts}, "
                 f"kl_coef={i.kl_coef:g}, skew={i.skew_strength:g}, {game}payoff={config.payoff}, "
                 f"pessimism radius {c.beta_mode} c_beta={c.c_beta:g} (mean over seeds, 95% band)")
    return plotting.save_figure(fig, out_dir, "nash_offline")
