"""nash-online (docs/theory.md §3.4 target 3, E6 online): Nash duality gap against total queries for P2's
online agent with the enhancer vs self-play and uniform random pairs, and the sampled Nash dynamics.

For each seed: one intransitive linear instance. Every method runs ``iterations`` rounds of ``batch``
fresh comparisons from the true oracle (``lax.scan``, fixed-shape buffers):

- ``enhancer``, ``self_play``, ``uniform``: P2's online agent (``algorithms.nash.online``): the main
  agent is the equilibrium of the game estimated from *all* data so far; the three differ only in
  how the second response of each comparison is chosen;
- ``inpo``, ``nash_md``, ``sppo``: sampled loss-based dynamics (``algorithms.nash.dynamics``) that use
  only the current round's comparisons.

Columns: ``algorithm, seed, iteration, queries`` (``= (iteration + 1) batch``), ``nash_gap,
win_rate_vs_ref, win_rate_vs_nash, kl_to_ref``.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import bandits as b
from algorithms.nash import dynamics as nd
from algorithms.nash import online as non
from bandits import validation as v
from experiments.engine import plotting
from experiments.catalogue.nash_common import CHUNK_SIZE, LABELS, METRICS, check_algorithms, metric_panel, policy_metrics
from experiments.engine.results import Results, tidy
from experiments.engine.runner import run_vectorized, seed_keys

AGENTS = non.METHODS
DYNAMICS = ("inpo", "nash_md", "sppo")
ALGORITHMS = AGENTS + DYNAMICS

description = "E6 online: Nash gap vs queries, P2 enhancer vs self-play vs uniform pairs (+ INPO/Nash-MD/SPPO)"


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields reachable with ``--set field=value``."""

    n_contexts: int = 16
    n_actions: int = 8
    dim: int = 6
    reward_norm: float = 2.0
    kl_coef: float = 0.1
    coverage: float = -0.5
    temperature: float = 4.0
    skew_strength: float = 2.0
    payoff: str = "identity"
    iterations: int = 24
    batch: int = 32
    lam: float = 1.0
    beta: float = 1.0
    step: float = 1.0
    ridge: float = 1e-3
    algorithms: tuple[str, ...] = ("enhancer", "self_play", "uniform", "inpo")
    seed: int = 0

    def __post_init__(self):
        self.instance
        v.check_choice("payoff", self.payoff, b.PAYOFFS)
        v.check_int("iterations", self.iterations, 1)
        v.check_int("batch", self.batch, 1)
        v.check_float("lam", self.lam, low=0.0, low_open=True)
        v.check_float("beta", self.beta, low=0.0)
        v.check_float("step", self.step, low=0.0, high=1.0 / self.kl_coef, low_open=True)
        v.check_float("ridge", self.ridge, low=0.0, low_open=True)
        check_algorithms("algorithms", self.algorithms, ALGORITHMS)
        if self.payoff != "identity" and any(a in DYNAMICS for a in self.algorithms):
            v.fail("algorithms", self.algorithms, "free of the sampled dynamics "
                   f"{DYNAMICS} when payoff='logit' (they learn from binary labels, i.e. the identity payoff)")

    @property
    def instance(self) -> b.InstanceConfig:
        return b.InstanceConfig(n_contexts=self.n_contexts, n_actions=self.n_actions, dim=self.dim,
                                reward_norm=self.reward_norm, kl_coef=self.kl_coef, coverage=self.coverage,
                                temperature=self.temperature, skew_strength=self.skew_strength)


presets = {
    "quick": Config(),
    "paper": Config(n_contexts=64, n_actions=16, dim=8, iterations=64, batch=64,
                    algorithms=ALGORITHMS),
}
seeds = {"quick": 8, "paper": 128}


def per_seed(key, config: Config):
    """``{metric: [n_algorithms, iterations]}`` for one seed."""
    k_inst, k_run = jax.random.split(key)
    inst = b.make_instance(k_inst, config.instance)
    star = b.nash_equilibrium(inst, config.payoff).log_pi
    rows = []
    for i, name in enumerate(config.algorithms):
        k = jax.random.fold_in(k_run, ALGORITHMS.index(name))
        if name in AGENTS:
            traj = non.run_online(k, inst, name, config.iterations, config.batch, config.lam, config.beta,
                                  config.payoff).log_pi
        else:
            traj = nd.run_sampled(k, inst, name, config.step, config.iterations, config.batch, config.ridge)
        metrics = jax.vmap(lambda pi: policy_metrics(inst, pi, star, config.payoff))(traj)
        rows.append(metrics)
    return {k: jnp.stack([r[k] for r in rows]) for k in METRICS}


def run(config: Config, seeds: int, progress) -> Results:
    out = run_vectorized(functools.partial(per_seed, config=config), seed_keys(config.seed, seeds),
                         progress=progress, chunk_size=CHUNK_SIZE)
    iterations = np.arange(config.iterations)
    table = tidy(out, seed=np.arange(seeds), algorithm=np.asarray(config.algorithms), iteration=iterations)
    table["queries"] = (table["iteration"] + 1) * config.batch
    summary = {}
    for i, alg in enumerate(config.algorithms):
        gap = out["nash_gap"][:, i, :]
        summary[f"{alg}/nash_gap_final"] = float(gap[:, -1].mean())
        summary[f"{alg}/nash_gap_mean_over_rounds"] = float(gap.mean())
    if {"enhancer", "self_play"} <= set(config.algorithms):
        e, s = (config.algorithms.index(a) for a in ("enhancer", "self_play"))
        summary["enhancer_below_self_play_final_frac"] = float(
            np.mean(out["nash_gap"][:, e, -1] < out["nash_gap"][:, s, -1]))
    return Results(table, summary)


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    fig, axes = plotting.figure(ncols=2, size=(5.6, 4.4))
    algorithms = list(dict.fromkeys(np.asarray(table["algorithm"]).tolist()))
    labels = {a: LABELS[a] for a in algorithms}
    xlabel = "total queries (rounds x batch)"
    metric_panel(axes[0], table, "queries", "nash_gap", labels, marker=None, log_x=True,
                 title="(a) Nash duality gap of the learned policy", xlabel=xlabel,
                 ylabel="duality gap Gap(pi_t) (exact)")
    metric_panel(axes[1], table, "queries", "win_rate_vs_nash", labels, marker=None,
                 title="(b) win rate against the equilibrium", xlabel=xlabel,
                 ylabel="win rate of pi_t vs equilibrium pi*", legend_size=None)
    fig.suptitle(f"nash-online: d={config.dim}, K={config.n_actions}, n_x={config.n_contexts}, "
                 f"kl_coef={config.kl_coef:g}, skew={config.skew_strength:g}, pi0 c={config.coverage:+g} "
                 f"s={config.temperature:g}, batch={config.batch}, beta={config.beta:g} (mean, 95% band)")
    return plotting.save_figure(fig, out_dir, "nash_online")
