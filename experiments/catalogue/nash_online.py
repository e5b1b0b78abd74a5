"""nash-online (docs/theory.md §3.4 target 3, E6 online): Nash duality gap against total queries for P2's
online agent with the enhancer vs self-play and uniform random pairs, and the sampled Nash dynamics.

For each seed: one intransitive linear instance (``bandits.nash.make_game_instance`` with the nested ``game``
knobs; the preset ``p2_regime``: 4 contexts, ``d = K = 8`` with features close to one-hot, ``kl_coef =
0.01`` and a ``pi0`` tilted away from the equilibrium, i.e. poor unilateral coverage by round 0's
``pi0 x pi0`` pairs, with both enhancers). Every method runs ``iterations`` rounds of ``batch``
fresh comparisons from the true oracle (``lax.scan``, fixed-shape buffers). The methods are the online
and dynamics methods of ``algorithms.nash.methods`` (any registered one, a plugin's included, through
``--set algorithms=...``), each on its own key stream (``methods.stream_key``); built in:

- ``enhancer``, ``self_play``, ``uniform``: P2's online agent (``algorithms.nash.online``): the main
  agent is the equilibrium of the game estimated from *all* data so far; the three differ only in
  how the second response of each comparison is chosen (``enhancer``: P2's max-uncertainty plausible best
  response; ``enhancer_optimistic``, by ``--set algorithms=...``: the optimistic best-response variant);
- ``inpo``, ``nash_md``, ``sppo``, ``online_ipo``: sampled loss-based dynamics
  (``algorithms.nash.dynamics``) that use only the current round's comparisons; ``*_exact``: their
  exact updates on the true payoff (no queries: a reference).

Summary, paired by seed (every method sees the same instance): for each enhancer run (``enhancer``,
``enhancer_optimistic``) against each other method run, ``{a}_minus_{b}/nash_gap_final`` and
``/nash_gap_mean_over_rounds`` with ``/diff``, ``/diff_low``, ``/diff_high`` (the mean difference of the
gaps ``a - b`` after the last round, resp. averaged over rounds, and its paired 95% Student-t interval,
``stats.paired_summary``) and ``/below_frac`` (the fraction of seeds where ``a``'s is below ``b``'s).

Columns: ``algorithm, seed, iteration, queries`` (``= (iteration + 1) batch``), ``nash_gap,
win_rate_vs_ref, win_rate_vs_nash, kl_to_ref, pair_kl`` (the online methods' ``E_x KL(pi2_t || pi1_t)``
between the pairing policy chosen after round ``t`` and the main agent, NaN for the dynamics).
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
from bandits import validation as v
from bandits.nash import GameConfig, make_game_instance, policy_metrics
from experiments.catalogue.nash_common import check_p2_config, metric_panel
from experiments.engine import plotting, stats
from experiments.engine.config import replace
from experiments.engine.results import Results, tidy
from experiments.engine.runner import run_vectorized, seed_keys

KINDS = ("online", "dynamics")
# The key stream of each method is its position here (fold_in), so results stay as they were; other
# methods get a stable hash of their name (methods.stream_key).
STREAMS = ("enhancer", "self_play", "uniform", "inpo", "nash_md", "sppo")
# The methods whose paired differences to every other method run are summarised (P2's enhancer and its variant).
ENHANCERS = ("enhancer", "enhancer_optimistic")
# Seeds per compiled chunk unless --chunk-size says otherwise (results do not depend on it).
CHUNK_SIZE = 16

description = "E6 online: Nash gap vs queries, P2 enhancer vs self-play vs uniform pairs (+ INPO/Nash-MD/SPPO)"


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields reachable with ``--set field=value``; those of the nested ``instance`` (``bandits.InstanceConfig``),
    ``confidence`` (``algorithms.core.confidence.ConfidenceConfig``: only ``lam``, the ridge of the online
    MLE, is read; the enhancer's radius is ``beta``), ``game`` (``bandits.nash.GameConfig``: P2's instance
    knobs) and ``nash`` (``algorithms.nash.methods.NashOptions``) by their own names.

    payoff: the payoff ``G`` of P2's game, ``'identity'`` (``G = P``) or ``'logit'`` (``G = log P/(1-P)``;
    ``bandits.nash``), in which every policy is evaluated and the online agents solve;
    algorithms: the online and dynamics methods of ``algorithms.nash.methods`` run (a plugin's included),
    each on its own key stream.
    """

    instance: b.InstanceConfig = b.InstanceConfig(n_contexts=16, n_actions=8, dim=6, reward_norm=2.0, kl_coef=0.1,
                                                  coverage=-0.5, temperature=4.0, skew_strength=2.0)
    game: GameConfig = GameConfig()
    confidence: conf.ConfidenceConfig = conf.ConfidenceConfig()
    nash: methods.NashOptions = methods.NashOptions(iterations=24, batch=32)
    payoff: str = "identity"
    algorithms: tuple[str, ...] = ("enhancer", "self_play", "uniform", "inpo")
    seed: int = 0

    def __post_init__(self):
        check_p2_config(self, KINDS, "nash-online", confidence_set=False)
        v.check_float("step", self.nash.step, low=0.0, high=1.0 / self.instance.kl_coef, low_open=True)


presets = {
    "quick": Config(),
    "paper": replace(Config(), n_contexts=64, n_actions=16, dim=8, iterations=64, batch=64, algorithms=STREAMS),
    # issue 17: few contexts, near one-hot pair features (d = K), small eta, pi0 avoiding the equilibrium
    "p2_regime": replace(Config(), n_contexts=4, n_actions=8, dim=8, reward_norm=1.0, kl_coef=0.01, coverage=0.0,
                         temperature=0.0, skew_strength=4.0, one_hot=0.9, avoid_nash=4.0,
                         algorithms=("enhancer", "enhancer_optimistic", "self_play", "uniform", "inpo")),
}
seeds = {"quick": 8, "paper": 128, "p2_regime": 16}


def per_seed(key, config: Config):
    """``{metric: [n_algorithms, iterations]}`` for one seed."""
    k_inst, k_run = jax.random.split(key)
    inst = make_game_instance(k_inst, config.instance, config.game)
    star = b.nash_equilibrium(inst, config.payoff).log_pi
    extras = {}
    trajectories = methods.run_methods(config.algorithms, inst, payoff=config.payoff, options=config.nash,
                                       lam=config.confidence.lam,
                                       key_of=lambda name: methods.stream_key(k_run, name, STREAMS), extras=extras)
    nan = jnp.full(config.nash.iterations, jnp.nan, inst.phi.dtype)
    rows = [{**jax.vmap(lambda pi: policy_metrics(inst, pi, star, config.payoff))(trajectories[a]),
             "pair_kl": extras.get(a, {}).get("pair_kl", nan)} for a in config.algorithms]
    return {k: jnp.stack([r[k] for r in rows]) for k in rows[0]}


def run(config: Config, seeds: int, progress) -> Results:
    out = run_vectorized(functools.partial(per_seed, config=config), seed_keys(config.seed, seeds),
                         progress=progress, chunk_size=CHUNK_SIZE)
    iterations = np.arange(config.nash.iterations)
    table = tidy(out, seed=np.arange(seeds), algorithm=np.asarray(config.algorithms), iteration=iterations)
    table["queries"] = (table["iteration"] + 1) * config.nash.batch

    def summarize():
        summary = {}
        for i, alg in enumerate(config.algorithms):
            gap = out["nash_gap"][:, i, :]
            summary[f"{alg}/nash_gap_final"] = float(gap[:, -1].mean())
            summary[f"{alg}/nash_gap_mean_over_rounds"] = float(gap.mean())
            if not np.all(np.isnan(out["pair_kl"][:, i, :])):
                summary[f"{alg}/pair_kl_mean_over_rounds"] = float(np.nanmean(out["pair_kl"][:, i, :]))
        if {"enhancer", "self_play"} <= set(config.algorithms):   # P2's claim: the enhancer's pairs beat self-play
            e, s = (config.algorithms.index(a) for a in ("enhancer", "self_play"))
            summary["enhancer_below_self_play_final_frac"] = float(
                np.mean(out["nash_gap"][:, e, -1] < out["nash_gap"][:, s, -1]))
        for a in (a for a in ENHANCERS if a in config.algorithms):
            gap_a = out["nash_gap"][:, config.algorithms.index(a), :]
            # each pair of enhancers once (enhancer minus enhancer_optimistic)
            earlier = ENHANCERS[:ENHANCERS.index(a) + 1]
            for other in (o for o in config.algorithms if o not in earlier):
                gap_b = out["nash_gap"][:, config.algorithms.index(other), :]
                summary.update(stats.paired_summary(f"{a}_minus_{other}/nash_gap_final", gap_a[:, -1], gap_b[:, -1]))
                summary.update(stats.paired_summary(f"{a}_minus_{other}/nash_gap_mean_over_rounds",
                                                    gap_a.mean(1), gap_b.mean(1)))
        return summary

    return Results(table, summarize)


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    fig, axes = plotting.figure(ncols=2, size=(5.6, 4.4))
    algorithms = list(dict.fromkeys(np.asarray(table["algorithm"]).tolist()))
    labels = {a: methods.label(a) for a in algorithms}
    xlabel = "total queries (rounds x batch)"
    metric_panel(axes[0], table, "queries", "nash_gap", labels, marker=None, log_x=True,
                 title="(a) Nash duality gap of the learned policy", xlabel=xlabel,
                 ylabel="duality gap Gap(pi_t) (exact)")
    metric_panel(axes[1], table, "queries", "win_rate_vs_nash", labels, marker=None,
                 title="(b) win rate against the equilibrium", xlabel=xlabel,
                 ylabel="win rate of pi_t vs equilibrium pi*", legend_size=None)
    i, g = config.instance, config.game
    game = "" if g.is_default else f"one_hot={g.one_hot:g}, avoid_nash={g.avoid_nash:g}, "
    fig.suptitle(f"nash-online: d={i.dim}, K={i.n_actions}, n_x={i.n_contexts}, "
                 f"kl_coef={i.kl_coef:g}, skew={i.skew_strength:g}, {game}pi0 c={i.coverage:+g} "
                 f"s={i.temperature:g}, batch={config.nash.batch}, beta={config.nash.beta:g} (mean, 95% band)")
    return plotting.save_figure(fig, out_dir, "nash_online")
