"""nash-intransitive (docs/theory.md §3.4 target 1, E6): duality gap of reward-based RLHF/DPO vs Nash methods
as the cyclic (skew-symmetric) part of the preference grows.

For each seed: one linear instance whose oracle is ``P = sigmoid(r(a) - r(b) + s phi_a^T S phi_b)``
with ``||S|| = 1`` and the strength ``s`` swept over ``skew_strengths`` (a traced argument: one compiled
program; every strength sees the same features, reward, ``S`` direction, comparisons' contexts,
actions and label uniforms). The methods are those of ``algorithms.nash.methods`` (any registered
offline, dynamics or online method, a plugin's included, through ``--set algorithms=...``), all
evaluated exactly in P2's KL-regularized game (payoff ``payoff``). By default:

- ``bt_gibbs``: reward-based RLHF, BT-MLE on ``n`` offline comparisons ``a1, a2 ~ pi0``, then Gibbs;
- ``dpo``: DPO on the same data (linear-softmax policy, ``algorithms.core.direct_preference``);
- ``nash_mle``: equilibrium of the estimated general-preference game (same data);
- ``p2_pessimistic``: P2's pessimistic max-min policy (same data; ``algorithms.nash.offline``); the
  confidence set is ``preference_model.mle_confidence_set`` with the nested ``confidence`` config;
- ``nash_md``, ``inpo``, ``sppo``: sampled loss-based dynamics (``algorithms.nash.dynamics``) with
  ``iterations x batch`` fresh on-policy queries (their ``n``), all from one key (common random
  numbers). They learn from binary labels, so they target the identity-payoff equilibrium: with
  ``payoff='logit'`` only methods supporting it are allowed (their registry entries' ``payoffs``).

Offline methods use ``n`` comparisons, the others ``iterations x batch`` queries (column ``n``; the
entries' ``queries``); a trajectory's last policy is evaluated.
Columns: ``algorithm, seed, skew_strength, n, nash_gap, win_rate_vs_ref, win_rate_vs_nash, kl_to_ref``.
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

ALGORITHMS = ("bt_gibbs", "dpo", "nash_mle", "p2_pessimistic", "nash_md", "inpo", "sppo")
KINDS = ("offline", "dynamics", "online")
# Seeds per compiled chunk unless --chunk-size says otherwise (results do not depend on it).
CHUNK_SIZE = 16

description = "E6: Nash duality gap vs strength of the cyclic preference block (BT RLHF/DPO vs Nash methods)"


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields reachable with ``--set field=value``; those of the nested ``instance`` (``bandits.InstanceConfig``;
    its ``skew_strength`` is swept by ``skew_strengths``), ``confidence``
    (``algorithms.core.confidence.ConfidenceConfig``) and ``nash`` (``algorithms.nash.methods.NashOptions``)
    by their own names.

    payoff: the payoff ``G`` of P2's game, ``'identity'`` (``G = P``) or ``'logit'`` (``G = log P/(1-P)``;
    ``bandits.nash``), in which every policy is evaluated;
    skew_strengths: the strengths ``s >= 0`` of the cyclic block swept (``||s S|| = s``; 0: Bradley-Terry);
    n: the offline comparisons ``a1, a2 ~ pi0`` of the offline methods (the others use ``iterations x batch``
    queries);
    algorithms: the methods of ``algorithms.nash.methods`` run at every strength (a plugin's included).
    """

    instance: b.InstanceConfig = b.InstanceConfig(n_contexts=64, n_actions=16, dim=6, reward_norm=1.0, kl_coef=0.1)
    confidence: conf.ConfidenceConfig = conf.ConfidenceConfig(c_beta=0.5)
    nash: methods.NashOptions = methods.NashOptions()
    payoff: str = "identity"
    skew_strengths: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)
    n: int = 4096
    algorithms: tuple[str, ...] = ALGORITHMS
    seed: int = 0

    def __post_init__(self):
        check_unused(self, ("instance.skew_strength",), "nash-intransitive scales a unit-norm cyclic block S "
                     "by each strength of skew_strengths")
        check_p2_config(self, KINDS, "nash-intransitive")
        if not self.skew_strengths:
            v.fail("skew_strengths", self.skew_strengths, "a non-empty tuple of numbers >= 0")
        for s in self.skew_strengths:
            v.check_float("skew_strengths", s, low=0.0)
        v.check_int("n", self.n, 1)
        v.check_float("step", self.nash.step, low=0.0, high=1.0 / self.instance.kl_coef, low_open=True)


presets = {
    "quick": replace(Config(), n_contexts=32, n_actions=8, dim=4, n=2048, dpo_steps=100, iterations=24, batch=96),
    "paper": replace(Config(), n_contexts=128, n_actions=32, dim=8, skew_strengths=(0.0, 0.5, 1.0, 2.0, 4.0, 8.0),
                     n=16384, iterations=64, batch=256),
}
seeds = {"quick": 8, "paper": 128}


def per_seed(key, strengths, config: Config):
    """``{metric: [n_strengths, n_algorithms]}`` for one seed."""
    k_inst, k_data, k_dyn = jax.random.split(key, 3)
    base = b.make_instance(k_inst, dataclasses.replace(config.instance, skew_strength=1.0))

    def one_strength(s):
        return sweep_point_metrics(base._replace(skew=s * base.skew), k_data, lambda name: k_dyn, config)

    return jax.vmap(one_strength)(strengths)


def run(config: Config, seeds: int, progress) -> Results:
    out, table = run_sweep(per_seed, config, seeds, progress, CHUNK_SIZE,
                           skew_strength=np.asarray(config.skew_strengths, np.float64))

    def summarize():
        summary = {}
        for i, alg in enumerate(config.algorithms):
            gap = out["nash_gap"][:, :, i].mean(0)
            summary[f"{alg}/nash_gap_s_min"] = float(gap[0])
            summary[f"{alg}/nash_gap_s_max"] = float(gap[-1])
        return summary

    return Results(table, summarize)


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    fig, axes = plotting.figure(ncols=2, size=(5.6, 4.4))
    labels = labels_with_queries(table)
    xlabel = "strength s of the cyclic block ||S|| (0 = Bradley-Terry)"
    metric_panel(axes[0], table, "skew_strength", "nash_gap", labels, title="(a) Nash duality gap vs intransitivity",
                 xlabel=xlabel, ylabel="duality gap Gap(pi) (exact)")
    metric_panel(axes[1], table, "skew_strength", "win_rate_vs_nash", labels,
                 title="(b) win rate against the equilibrium", xlabel=xlabel, ylabel="win rate vs equilibrium pi*",
                 legend_size=None)
    i = config.instance
    fig.suptitle(f"nash-intransitive: d={i.dim}, K={i.n_actions}, n_x={i.n_contexts}, "
                 f"kl_coef={i.kl_coef:g}, payoff={config.payoff} (mean over seeds, 95% band)")
    return plotting.save_figure(fig, out_dir, "nash_intransitive")
