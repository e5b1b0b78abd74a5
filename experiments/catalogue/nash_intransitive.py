"""nash-intransitive (docs/theory.md §3.4 target 1, E6): duality gap of reward-based RLHF/DPO vs Nash methods
as the cyclic (skew-symmetric) part of the preference grows.

For each seed: one linear instance whose oracle is ``P = sigmoid(r(a) - r(b) + s phi_a^T S phi_b)``
with ``||S|| = 1`` and the strength ``s`` swept over ``skew_strengths`` (a traced argument: one compiled
program; every strength sees the same features, reward, ``S`` direction, comparisons' contexts,
actions and label uniforms). Algorithms, all evaluated exactly in P2's KL-regularized game
(payoff ``payoff``):

- ``bt_gibbs``: reward-based RLHF, BT-MLE on ``n`` offline comparisons ``a1, a2 ~ pi0``, then Gibbs;
- ``dpo``: DPO on the same data (linear-softmax policy, ``algorithms.core.direct_preference``);
- ``nash_mle``: equilibrium of the estimated general-preference game (same data);
- ``p2_pessimistic``: P2's pessimistic max-min policy (same data; ``algorithms.nash.offline``);
- ``nash_md``, ``inpo``, ``sppo``: sampled loss-based dynamics (``algorithms.nash.dynamics``) with
  ``iterations x batch`` fresh on-policy queries (their ``n``). They learn from binary labels, so
  they target the identity-payoff equilibrium: with ``payoff='logit'`` only the four offline
  algorithms are allowed (as in nash-online and nash-kl-sweep).

Columns: ``algorithm, seed, skew_strength, n, nash_gap, win_rate_vs_ref, win_rate_vs_nash, kl_to_ref``.
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
from algorithms.nash import dynamics as nd
from algorithms.nash import methods
from bandits import validation as v
from experiments.engine import plotting
from experiments.catalogue.nash_common import CHUNK_SIZE, LABELS, METRICS, check_algorithms, metric_panel, policy_metrics
from experiments.engine.results import Results, tidy
from experiments.engine.runner import run_vectorized, seed_keys

ALGORITHMS = ("bt_gibbs", "dpo", "nash_mle", "p2_pessimistic", "nash_md", "inpo", "sppo")
OFFLINE = ("bt_gibbs", "dpo", "nash_mle", "p2_pessimistic")
DYNAMICS = ("nash_md", "inpo", "sppo")

description = "E6: Nash duality gap vs strength of the cyclic preference block (BT RLHF/DPO vs Nash methods)"


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields reachable with ``--set field=value``."""

    n_contexts: int = 64
    n_actions: int = 16
    dim: int = 6
    reward_norm: float = 1.0
    kl_coef: float = 0.1
    temperature: float = 0.0
    payoff: str = "identity"
    skew_strengths: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)
    n: int = 4096
    lam: float = 1.0
    beta_mode: str = "sqrt_d"
    c_beta: float = 0.5
    dpo_steps: int = 200
    dpo_learning_rate: float = 0.05
    iterations: int = 32
    batch: int = 128
    step: float = 1.0
    ridge: float = 1e-3
    algorithms: tuple[str, ...] = ALGORITHMS
    seed: int = 0

    def __post_init__(self):
        self.instance  # validates the instance fields
        v.check_choice("payoff", self.payoff, b.PAYOFFS)
        if not self.skew_strengths:
            v.fail("skew_strengths", self.skew_strengths, "a non-empty tuple of numbers >= 0")
        for s in self.skew_strengths:
            v.check_float("skew_strengths", s, low=0.0)
        v.check_int("n", self.n, 1)
        v.check_float("lam", self.lam, low=0.0, low_open=True)
        v.check_choice("beta_mode", self.beta_mode, conf.BETA_MODES)
        v.check_float("c_beta", self.c_beta, low=0.0, low_open=True)
        v.check_int("dpo_steps", self.dpo_steps, 1)
        v.check_float("dpo_learning_rate", self.dpo_learning_rate, low=0.0, low_open=True)
        v.check_int("iterations", self.iterations, 1)
        v.check_int("batch", self.batch, 1)
        v.check_float("step", self.step, low=0.0, high=1.0 / self.kl_coef, low_open=True)
        v.check_float("ridge", self.ridge, low=0.0, low_open=True)
        check_algorithms("algorithms", self.algorithms, ALGORITHMS)
        if self.payoff != "identity" and any(a in DYNAMICS for a in self.algorithms):
            v.fail("algorithms", self.algorithms, "free of the sampled dynamics "
                   f"{DYNAMICS} when payoff='logit' (they learn from binary labels, so they target the "
                   "identity-payoff equilibrium, not the logit one)")

    @property
    def instance(self) -> b.InstanceConfig:
        return b.InstanceConfig(n_contexts=self.n_contexts, n_actions=self.n_actions, dim=self.dim,
                                reward_norm=self.reward_norm, kl_coef=self.kl_coef,
                                temperature=self.temperature, skew_strength=1.0)


presets = {
    "quick": Config(n_contexts=32, n_actions=8, dim=4, n=2048, dpo_steps=100, iterations=24, batch=96),
    "paper": Config(n_contexts=128, n_actions=32, dim=8, skew_strengths=(0.0, 0.5, 1.0, 2.0, 4.0, 8.0),
                    n=16384, iterations=64, batch=256),
}
seeds = {"quick": 8, "paper": 128}


def per_seed(key, strengths, config: Config):
    """``{metric: [n_strengths, n_algorithms]}`` for one seed."""
    k_inst, k_data, k_dyn = jax.random.split(key, 3)
    base = b.make_instance(k_inst, config.instance)

    def one_strength(s):
        inst = base._replace(skew=s * base.skew)
        star = b.nash_equilibrium(inst, config.payoff).log_pi
        data = b.sample_preference_data(k_data, inst, inst.log_pi0, inst.log_pi0, config.n)
        policies = methods.fit_offline(inst, data, config, config.algorithms, config.payoff)
        for m in DYNAMICS:
            if m in config.algorithms:
                policies[m] = nd.run_sampled(k_dyn, inst, m, config.step, config.iterations, config.batch,
                                             config.ridge)[-1]
        rows = [policy_metrics(inst, policies[a], star, config.payoff) for a in config.algorithms]
        return {k: jnp.stack([r[k] for r in rows]) for k in METRICS}

    return jax.vmap(one_strength)(strengths)


def queries(config, name: str) -> int:
    return config.n if name in OFFLINE else config.iterations * config.batch


def run(config: Config, seeds: int, progress) -> Results:
    strengths = np.asarray(config.skew_strengths, np.float64)
    out = run_vectorized(functools.partial(per_seed, config=config), seed_keys(config.seed, seeds), strengths,
                         progress=progress, chunk_size=CHUNK_SIZE)
    table = tidy(out, seed=np.arange(seeds), skew_strength=strengths, algorithm=np.asarray(config.algorithms))
    table["n"] = np.asarray([queries(config, a) for a in table["algorithm"]])
    summary = {}
    for i, alg in enumerate(config.algorithms):
        gap = out["nash_gap"][:, :, i].mean(0)
        summary[f"{alg}/nash_gap_s_min"] = float(gap[0])
        summary[f"{alg}/nash_gap_s_max"] = float(gap[-1])
    return Results(table, summary)


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    fig, axes = plotting.figure(ncols=2, size=(5.6, 4.4))
    algorithms = list(dict.fromkeys(np.asarray(table["algorithm"]).tolist()))
    labels = {a: f"{LABELS[a]} (n={queries(config, a)})" for a in algorithms}
    xlabel = "strength s of the cyclic block ||S|| (0 = Bradley-Terry)"
    metric_panel(axes[0], table, "skew_strength", "nash_gap", labels, title="(a) Nash duality gap vs intransitivity",
                 xlabel=xlabel, ylabel="duality gap Gap(pi) (exact)")
    metric_panel(axes[1], table, "skew_strength", "win_rate_vs_nash", labels,
                 title="(b) win rate against the equilibrium", xlabel=xlabel, ylabel="win rate vs equilibrium pi*",
                 legend_size=None)
    fig.suptitle(f"nash-intransitive: d={config.dim}, K={config.n_actions}, n_x={config.n_contexts}, "
                 f"kl_coef={config.kl_coef:g}, payoff={config.payoff} (mean over seeds, 95% band)")
    return plotting.save_figure(fig, out_dir, "nash_intransitive")
