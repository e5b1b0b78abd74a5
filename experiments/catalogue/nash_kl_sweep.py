"""nash-kl-sweep (docs/theory.md §3.4 target 4; analogue of P2's Table 2): win rate against ``pi0`` (the SFT
model) and against the equilibrium ``pi*`` across ``kl_coef``, for IPO-aligned and Nash policies.

For each seed: one intransitive linear instance; ``kl_coef`` is a traced instance field (one compiled
program, a ``vmap`` over the grid; every coefficient sees the same instance, the same offline data
and the same query keys). Algorithms:

- ``nash``: the exact equilibrium ``pi*`` of the ``kl_coef``-regularized game (reference row);
- ``ipo``: offline IPO on ``n`` comparisons ``a1, a2 ~ pi0`` (tabular, exact minimiser of IPO's loss:
  the sampled best response to ``pi0``; ``algorithms.nash.dynamics``), as P2's Table 2 models;
- ``online_ipo``: iterative IPO, each round the sampled best response to the current policy (self-play);
- ``p2_online``: P2's online agent with the enhancer (``algorithms.nash.online``);
- ``nash_md``: sampled Nash-MD;
- ``bt_gibbs``, ``dpo``: reward-based RLHF and DPO on the offline data.

Online methods use ``iterations x batch`` queries; offline ones ``n`` (column ``n``).
Columns: ``algorithm, seed, kl_coef, n, nash_gap, win_rate_vs_ref, win_rate_vs_nash, kl_to_ref``.
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
from algorithms.nash import methods
from algorithms.nash import online as non
from bandits import validation as v
from experiments.engine import plotting
from experiments.catalogue.nash_common import CHUNK_SIZE, LABELS, METRICS, check_algorithms, metric_panel, policy_metrics
from experiments.engine.results import Results, tidy
from experiments.engine.runner import run_vectorized, seed_keys

ALGORITHMS = ("nash", "ipo", "online_ipo", "p2_online", "nash_md", "bt_gibbs", "dpo")
OFFLINE = ("ipo", "bt_gibbs", "dpo")

description = "P2 Table 2 analogue: win rate vs pi0 and vs the equilibrium across kl_coef (IPO, Nash methods)"


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields reachable with ``--set field=value``."""

    n_contexts: int = 32
    n_actions: int = 8
    dim: int = 4
    reward_norm: float = 2.0
    coverage: float = 0.0
    temperature: float = 2.0
    skew_strength: float = 2.0
    payoff: str = "identity"
    kl_coefs: tuple[float, ...] = (0.1, 0.5, 1.0)
    n: int = 4096
    iterations: int = 16
    batch: int = 256
    step: float = 0.5
    ridge: float = 1e-3
    lam: float = 1.0
    beta: float = 1.0
    dpo_steps: int = 100
    dpo_learning_rate: float = 0.05
    algorithms: tuple[str, ...] = ALGORITHMS
    seed: int = 0

    def __post_init__(self):
        if not self.kl_coefs:
            v.fail("kl_coefs", self.kl_coefs, "a non-empty tuple of numbers > 0")
        self.instance
        if self.payoff != "identity":
            v.fail("payoff", self.payoff, "'identity' (IPO and the sampled dynamics learn from binary labels)")
        for k in self.kl_coefs:
            v.check_float("kl_coefs", k, low=0.0, low_open=True)
        v.check_int("n", self.n, 1)
        v.check_int("iterations", self.iterations, 1)
        v.check_int("batch", self.batch, 1)
        v.check_float("step", self.step, low=0.0, high=1.0 / max(self.kl_coefs), low_open=True)
        v.check_float("ridge", self.ridge, low=0.0, low_open=True)
        v.check_float("lam", self.lam, low=0.0, low_open=True)
        v.check_float("beta", self.beta, low=0.0)
        v.check_int("dpo_steps", self.dpo_steps, 1)
        v.check_float("dpo_learning_rate", self.dpo_learning_rate, low=0.0, low_open=True)
        check_algorithms("algorithms", self.algorithms, ALGORITHMS)

    @property
    def instance(self) -> b.InstanceConfig:
        return b.InstanceConfig(n_contexts=self.n_contexts, n_actions=self.n_actions, dim=self.dim,
                                reward_norm=self.reward_norm, kl_coef=self.kl_coefs[0], coverage=self.coverage,
                                temperature=self.temperature, skew_strength=self.skew_strength)


presets = {
    "quick": Config(),
    "paper": Config(n_contexts=128, n_actions=16, dim=8, kl_coefs=(0.05, 0.1, 0.2, 0.5, 1.0), n=16384,
                    iterations=32, batch=512, step=1.0),
}
seeds = {"quick": 8, "paper": 128}


def per_seed(key, kl_coefs, config: Config):
    """``{metric: [n_kl, n_algorithms]}`` for one seed."""
    k_inst, k_data, k_run = jax.random.split(key, 3)
    base = b.make_instance(k_inst, config.instance)

    def one_kl(kl):
        inst = base._replace(kl_coef=kl)
        star = b.nash_equilibrium(inst, config.payoff).log_pi
        data = b.sample_preference_data(k_data, inst, inst.log_pi0, inst.log_pi0, config.n)
        policies = methods.fit_offline(inst, data, config, config.algorithms, config.payoff)
        policies["nash"] = star
        # the same comparisons as `data` (same key): IPO's exact tabular minimiser on them
        policies["ipo"] = nd.sampled_step(k_data, inst, "ipo", inst.log_pi0, 1.0, config.n, config.ridge)
        key_of = lambda name: jax.random.fold_in(k_run, ALGORITHMS.index(name))
        if "online_ipo" in config.algorithms:
            policies["online_ipo"] = nd.run_sampled(key_of("online_ipo"), inst, "ipo", 1.0, config.iterations,
                                                    config.batch, config.ridge)[-1]
        if "nash_md" in config.algorithms:
            policies["nash_md"] = nd.run_sampled(key_of("nash_md"), inst, "nash_md", config.step,
                                                 config.iterations, config.batch, config.ridge)[-1]
        if "p2_online" in config.algorithms:
            policies["p2_online"] = non.run_online(key_of("p2_online"), inst, "enhancer", config.iterations,
                                                   config.batch, config.lam, config.beta,
                                                   config.payoff).log_pi[-1]
        rows = [policy_metrics(inst, policies[a], star, config.payoff) for a in config.algorithms]
        return {k: jnp.stack([r[k] for r in rows]) for k in METRICS}

    return jax.vmap(one_kl)(kl_coefs)


def queries(config, name: str) -> int:
    if name == "nash":
        return 0
    return config.n if name in OFFLINE else config.iterations * config.batch


def run(config: Config, seeds: int, progress) -> Results:
    kl = np.asarray(config.kl_coefs, np.float64)
    out = run_vectorized(functools.partial(per_seed, config=config), seed_keys(config.seed, seeds), kl,
                         progress=progress, chunk_size=CHUNK_SIZE)
    table = tidy(out, seed=np.arange(seeds), kl_coef=kl, algorithm=np.asarray(config.algorithms))
    table["n"] = np.asarray([queries(config, a) for a in table["algorithm"]])
    summary = {}
    for i, alg in enumerate(config.algorithms):
        for j, k in enumerate(config.kl_coefs):
            summary[f"{alg}/kl{k:g}/win_rate_vs_ref"] = float(out["win_rate_vs_ref"][:, j, i].mean())
            summary[f"{alg}/kl{k:g}/win_rate_vs_nash"] = float(out["win_rate_vs_nash"][:, j, i].mean())
    return Results(table, summary)


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    fig, axes = plotting.figure(ncols=4, size=(4.6, 4.3))
    algorithms = list(dict.fromkeys(np.asarray(table["algorithm"]).tolist()))
    panels = (("win_rate_vs_ref", "win rate vs pi0 (SFT)", "(a) against the reference pi0"),
              ("win_rate_vs_nash", "win rate vs equilibrium pi*", "(b) against the equilibrium"),
              ("kl_to_ref", "E_x KL(pi || pi0)", "(c) distance from pi0"),
              ("nash_gap", "duality gap Gap(pi) (exact)", "(d) gap in the kl_coef-regularized game\n(pi* itself: 0)"))
    labels = {a: f"{LABELS[a]} (n={queries(config, a)})" for a in algorithms}
    for ax, (metric, ylabel, title) in zip(axes, panels):
        # pi*'s own gap is the solver's tolerance (~1e-10): drawn, it would squash the other curves
        shown = {a: t for a, t in labels.items() if not (metric == "nash_gap" and a == "nash")}
        metric_panel(ax, table, "kl_coef", metric, shown, log_x=True, title=title, xlabel="kl_coef", ylabel=ylabel,
                     legend_size=None)
    # one legend for the four panels, below them (inside a panel it covered curves)
    fig.legend(axes[0].get_lines()[:len(labels)], list(labels.values()), loc="outside lower center", ncol=4,
               fontsize="small")
    fig.suptitle(f"nash-kl-sweep: d={config.dim}, K={config.n_actions}, n_x={config.n_contexts}, "
                 f"skew={config.skew_strength:g}, pi0 temperature={config.temperature:g} (mean over seeds, 95% band)")
    return plotting.save_figure(fig, out_dir, "nash_kl_sweep")
