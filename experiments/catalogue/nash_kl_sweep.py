"""nash-kl-sweep (docs/theory.md §3.4 target 4; analogue of P2's Table 2): win rate against ``pi0`` (the SFT
model) and against the equilibrium ``pi*`` across ``kl_coef``, for IPO-aligned and Nash policies.

For each seed: one intransitive linear instance; ``kl_coef`` is a traced instance field (one compiled
program, a ``vmap`` over the grid; every coefficient sees the same instance, the same offline data
and the same query keys). The methods are those of ``algorithms.nash.methods`` (any registered one, of
every kind, a plugin's included, through ``--set algorithms=...``); by default:

- ``nash``: the exact equilibrium ``pi*`` of the ``kl_coef``-regularized game (reference row);
- ``ipo``: offline IPO on ``n`` comparisons ``a1, a2 ~ pi0`` (tabular, exact minimiser of IPO's loss:
  the sampled best response to ``pi0``; ``algorithms.nash.dynamics``), as P2's Table 2 models;
- ``online_ipo``: iterative IPO, each round the sampled best response to the current policy (self-play);
- ``p2_online``: P2's online agent with the enhancer (``algorithms.nash.online``);
- ``nash_md``: sampled Nash-MD;
- ``bt_gibbs``, ``dpo``: reward-based RLHF and DPO on the offline data.

Online and dynamics methods use ``iterations x batch`` queries (their last policy is evaluated),
offline ones ``n`` (column ``n``; the entries' ``queries``). The IPO rows and the sampled dynamics
learn from binary labels: with ``payoff='logit'`` only methods supporting it are allowed.
Columns: ``algorithm, seed, kl_coef, n, nash_gap, win_rate_vs_ref, win_rate_vs_nash, kl_to_ref``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

import bandits as b
from algorithms.core import confidence as conf
from algorithms.nash import methods
from bandits import validation as v
from experiments.catalogue.nash_common import (check_p2_config, labels_with_queries, metric_panel, run_sweep,
                                               sweep_point_metrics)
from experiments.engine import plotting
from experiments.engine.config import check_unused, replace
from experiments.engine.results import Results

ALGORITHMS = ("nash", "ipo", "online_ipo", "p2_online", "nash_md", "bt_gibbs", "dpo")
KINDS = methods.KINDS
# The key stream of each method is its position here (fold_in), so results stay as they were; other
# methods get a stable hash of their name (methods.stream_key).
STREAMS = ALGORITHMS
# Seeds per compiled chunk unless --chunk-size says otherwise (results do not depend on it).
CHUNK_SIZE = 16
# A gap at the equilibrium solver's tolerance (pi* itself: ~1e-10) is left out of the log-scale gap panel.
SOLVER_GAP = 1e-8

description = "P2 Table 2 analogue: win rate vs pi0 and vs the equilibrium across kl_coef (IPO, Nash methods)"


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields reachable with ``--set field=value``; those of the nested ``instance`` (``bandits.InstanceConfig``;
    its ``kl_coef`` is swept by ``kl_coefs``), ``confidence`` (``algorithms.core.confidence.ConfidenceConfig``:
    ``lam`` for every fit, the radius for offline methods that need the confidence set) and ``nash``
    (``algorithms.nash.methods.NashOptions``) by their own names.

    payoff: the payoff ``G`` of P2's game, ``'identity'`` (``G = P``) or ``'logit'`` (``G = log P/(1-P)``;
    ``bandits.nash``), in which every policy is evaluated;
    kl_coefs: the KL coefficients ``eta > 0`` swept (``step <= 1 / max(kl_coefs)``);
    n: the offline comparisons ``a1, a2 ~ pi0`` of the offline methods (the others use ``iterations x batch``
    queries);
    algorithms: the methods of ``algorithms.nash.methods`` run at every ``kl_coef`` (a plugin's included).
    """

    instance: b.InstanceConfig = b.InstanceConfig(n_contexts=32, n_actions=8, dim=4, reward_norm=2.0,
                                                  temperature=2.0, skew_strength=2.0)
    confidence: conf.ConfidenceConfig = conf.ConfidenceConfig()
    nash: methods.NashOptions = methods.NashOptions(dpo_steps=100, iterations=16, batch=256, step=0.5)
    payoff: str = "identity"
    kl_coefs: tuple[float, ...] = (0.1, 0.5, 1.0)
    n: int = 4096
    algorithms: tuple[str, ...] = ALGORITHMS
    seed: int = 0

    def __post_init__(self):
        if not self.kl_coefs:
            v.fail("kl_coefs", self.kl_coefs, "a non-empty tuple of numbers > 0")
        for k in self.kl_coefs:
            v.check_float("kl_coefs", k, low=0.0, low_open=True)
        check_unused(self, ("instance.kl_coef",), "nash-kl-sweep sweeps kl_coef over kl_coefs")
        check_p2_config(self, KINDS, "nash-kl-sweep")
        v.check_int("n", self.n, 1)
        v.check_float("step", self.nash.step, low=0.0, high=1.0 / max(self.kl_coefs), low_open=True)


presets = {
    "quick": Config(),
    "paper": replace(Config(), n_contexts=128, n_actions=16, dim=8, kl_coefs=(0.05, 0.1, 0.2, 0.5, 1.0), n=16384,
                     iterations=32, batch=512, step=1.0),
}
seeds = {"quick": 8, "paper": 128}


def per_seed(key, kl_coefs, config: Config):
    """``{metric: [n_kl, n_algorithms]}`` for one seed."""
    k_inst, k_data, k_run = jax.random.split(key, 3)
    base = b.make_instance(k_inst, config.instance)

    def one_kl(kl):
        return sweep_point_metrics(base._replace(kl_coef=kl), k_data,
                                   lambda name: methods.stream_key(k_run, name, STREAMS), config)

    return jax.vmap(one_kl)(kl_coefs)


def run(config: Config, seeds: int, progress) -> Results:
    out, table = run_sweep(per_seed, config, seeds, progress, CHUNK_SIZE,
                           kl_coef=np.asarray(config.kl_coefs, np.float64))

    def summarize():
        summary = {}
        for i, alg in enumerate(config.algorithms):
            for j, k in enumerate(config.kl_coefs):
                summary[f"{alg}/kl{k:g}/win_rate_vs_ref"] = float(out["win_rate_vs_ref"][:, j, i].mean())
                summary[f"{alg}/kl{k:g}/win_rate_vs_nash"] = float(out["win_rate_vs_nash"][:, j, i].mean())
        return summary

    return Results(table, summarize)


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    fig, axes = plotting.figure(ncols=4, size=(4.6, 4.3))
    names = np.asarray(table["algorithm"])
    algorithms = list(dict.fromkeys(names.tolist()))
    panels = (("win_rate_vs_ref", "win rate vs pi0 (SFT)", "(a) against the reference pi0"),
              ("win_rate_vs_nash", "win rate vs equilibrium pi*", "(b) against the equilibrium"),
              ("kl_to_ref", "E_x KL(pi || pi0)", "(c) distance from pi0"),
              ("nash_gap", "duality gap Gap(pi) (exact)", "(d) gap in the kl_coef-regularized game\n(pi* itself: 0)"))
    labels = labels_with_queries(table)
    at_solver_gap = {a for a in algorithms if np.all(np.asarray(table["nash_gap"])[names == a] <= SOLVER_GAP)}
    for ax, (metric, ylabel, title) in zip(axes, panels):
        # a gap at the solver's tolerance (pi* itself), drawn on the log scale, would squash the other curves
        shown = {a: t for a, t in labels.items() if not (metric == "nash_gap" and a in at_solver_gap)}
        metric_panel(ax, table, "kl_coef", metric, shown, log_x=True, title=title, xlabel="kl_coef", ylabel=ylabel,
                     legend_size=None)
    # one legend for the four panels, below them (inside a panel it covered curves)
    fig.legend(axes[0].get_lines()[:len(labels)], list(labels.values()), loc="outside lower center", ncol=4,
               fontsize="small")
    i = config.instance
    fig.suptitle(f"nash-kl-sweep: d={i.dim}, K={i.n_actions}, n_x={i.n_contexts}, "
                 f"skew={i.skew_strength:g}, pi0 temperature={i.temperature:g} (mean over seeds, 95% band)")
    return plotting.save_figure(fig, out_dir, "nash_kl_sweep")
