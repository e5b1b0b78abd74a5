"""lm-iterative-dpo (LLM_BRIDGE.md §1.4, §5.4 test 8; THEORY.md §2.5): P1's iterative DPO on a tiny LM, exact J, KL.

Per seed: a random reference LM ``pi0`` (``TreeLM``, realizable, or the tiny transformer, misspecified; ``lm``),
``n_prompts`` prompts, and a gold reward that is a per-prompt token-weight sum,
``r*(x, y) = reward_scale * sum_t w[x, y_t] / sqrt(L)`` with ``w ~ N(0, 1)`` (a reward a small transformer can
represent). ``algorithms.lm_iterative.iterative_dpo`` then runs every variant of ``variants`` from the same
``pi0`` and reward (one compiled loop, ``vmap``-ed over variants and seeds):

- ``max_min_warm``: ``max_min`` of ``k`` draws from ``pi_{t-1}``, warm start (P1 / RLHFlow);
- ``max_min_restart``: the same pairs, but each iteration trains from ``pi0``;
- ``max_random_warm``: best against a random other draw, warm start;
- ``random_pairs_warm``: two draws from ``pi_{t-1}`` with no selection (``self_play``), warm start.

Columns: ``algorithm, seed, iteration`` (0 is ``pi0``), exact ``J`` (``J(pi_t)``), ``reward_mean`` (``E r*``),
``kl_to_ref`` (``KL(pi_t || pi0)``), ``subopt_kl`` (P1's ``J* - J + eta KL(pi* || pi_t)``), the per-seed
constants ``J_star``, ``reward_star``, ``kl_star_to_ref`` (``KL(pi* || pi0)``), and the mean gold reward of the
chosen / rejected responses of the iteration (NaN at iteration 0). The summary reports, per variant, the
seed means of ``J``, ``E r*``, ``KL`` at ``T``, ``J(pi_T) - J(pi0)`` with its 95% CI, and the measured KL
overshoot ``KL(pi_T || pi0) / KL(pi* || pi0)`` (a ratio > 1 means the loop went further from ``pi0`` than
the target itself: max_min pairs are not ``pi0 x pi0`` pairs, so DPO's fixed point is not ``pi*``).
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from algorithms import lm_iterative as it
from bandits import validation as v
from bandits.lm import tiny, tree
from bandits.lm.space import ResponseSpace, enumerate_responses
from experiments import plotting
from experiments.registry import Results, tidy
from experiments.runner import run_vectorized, seed_keys

description = "LLM_BRIDGE §5.4 test 8: iterative DPO (max_min, warm/restart) on a tiny LM, exact J, E r*, KL"

VARIANTS = {"max_min_warm": ("max_min", False), "max_min_restart": ("max_min", True),
            "max_random_warm": ("max_random", False), "random_pairs_warm": ("self_play", False)}
METRICS = ("J", "reward_mean", "kl_to_ref", "subopt_kl", "chosen_reward", "rejected_reward")
CONSTANTS = ("J_star", "reward_star", "kl_star_to_ref")
nan_columns = ("chosen_reward", "rejected_reward")


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields reachable with ``--set field=value`` (module docstring).

    lm: ``"tree"`` or ``"tiny"``; vocab_size, length: the fixed-length space ``V^L`` (all enumerated);
    n_prompts; d_model, d_ff: the tiny transformer (1 layer, 2 heads); init_scale: TreeLM's logit sd;
    kl_coef: ``eta`` = DPO's ``beta``; reward_scale; the loop's ``n_iterations, k, n_groups, n_steps,
    learning_rate, history, deterministic_labels`` (``algorithms.lm_iterative.IterativeOptions``);
    variants: names in ``VARIANTS``.
    """

    lm: str = "tree"
    vocab_size: int = 6
    length: int = 4
    n_prompts: int = 4
    d_model: int = 16
    d_ff: int = 32
    init_scale: float = 1.0
    kl_coef: float = 0.5
    reward_scale: float = 1.5
    n_iterations: int = 6
    k: int = 4
    n_groups: int = 32
    n_steps: int = 10
    learning_rate: float = 0.03
    history: bool = False
    deterministic_labels: bool = False
    variants: tuple[str, ...] = ("max_min_warm", "max_min_restart", "random_pairs_warm")
    seed: int = 0

    def __post_init__(self):
        v.check_choice("lm", self.lm, tuple(it.MODELS))
        for name in self.variants:
            v.check_choice("variants", name, tuple(VARIANTS))
        if not self.variants:
            v.fail("variants", self.variants, f"a non-empty tuple of names in {tuple(VARIANTS)}")
        v.check_int("n_prompts", self.n_prompts, 1)
        v.check_float("reward_scale", self.reward_scale, low=0.0)
        v.check_float("init_scale", self.init_scale, low=0.0)
        self.options                                    # validates the loop's options
        self.spec                                       # validates the LM

    @property
    def options(self) -> it.IterativeOptions:
        return it.IterativeOptions(n_iterations=self.n_iterations, k=self.k, n_groups=self.n_groups,
                                   n_steps=self.n_steps, learning_rate=self.learning_rate, history=self.history,
                                   deterministic_labels=self.deterministic_labels)

    @property
    def spec(self) -> it.LMSpec:
        space = ResponseSpace(self.vocab_size, self.length)
        if self.lm == "tree":
            cfg = tree.TreeConfig(self.vocab_size, self.length, prompt_len=1, prompt_vocab_size=self.n_prompts)
        else:
            cfg = tiny.TinyLMConfig(vocab_size=self.vocab_size, d_model=self.d_model, n_heads=2, n_layers=1,
                                    max_len=self.length + 2, d_ff=self.d_ff)
        return it.LMSpec(self.lm, cfg, space)

    @property
    def prompts(self) -> jax.Array:
        if self.lm == "tree":
            return jnp.arange(self.n_prompts, dtype=jnp.int32)[:, None]
        # Two-token prompts in the LM's vocabulary, distinct for n_prompts <= V^2.
        codes = np.arange(self.n_prompts)
        return jnp.asarray(np.stack([codes // self.vocab_size % self.vocab_size, codes % self.vocab_size], 1),
                           jnp.int32)


presets = {
    "quick": Config(),
    "paper": Config(n_iterations=12, n_groups=64, variants=tuple(VARIANTS)),
    "quick-tiny": Config(lm="tiny", learning_rate=5e-4),
}
seeds = {"quick": 8, "paper": 64, "quick-tiny": 8}


def token_weight_reward(key: jax.Array, space: ResponseSpace, n_prompts: int, scale) -> jax.Array:
    """``r*(x, y) = scale * sum_t w[x, y_t] / sqrt(L)``, ``w ~ N(0, 1)`` ``[n_prompts, V]``; ``[n_x, A]``."""
    tokens, mask = enumerate_responses(space)
    counts = jnp.sum(jax.nn.one_hot(tokens, space.vocab_size) * mask[..., None], axis=1)      # [A, V]
    w = jax.random.normal(key, (n_prompts, space.vocab_size))
    return scale * (w @ counts.T) / np.sqrt(space.length)


def one_seed(key, selectors, restarts, config: Config) -> dict:
    """Every variant from one random ``pi0`` and reward; metrics ``[n_variants, T + 1]``."""
    lm, prompts = config.spec, config.prompts
    k_lm, k_reward, k_loop = jax.random.split(key, 3)
    params0 = (tree.init(k_lm, lm.cfg, scale=config.init_scale) if config.lm == "tree" else tiny.init(k_lm, lm.cfg))
    reward = token_weight_reward(k_reward, lm.space, config.n_prompts, config.reward_scale)
    instance = it.exact_lm_instance(lm, params0, prompts, reward, config.kl_coef)
    run = lambda sel, rst: it.iterative_dpo(k_loop, params0, instance, prompts, lm, config.options,  # noqa: E731
                                            selector=sel, restart=rst)
    res = jax.vmap(run)(selectors, restarts)
    out = dict(zip(METRICS, (res.value, res.reward_mean, res.kl_to_ref, res.subopt_kl, res.chosen_reward,
                             res.rejected_reward)))
    shape = res.value.shape
    out.update({name: jnp.broadcast_to(c[:, None], shape) for name, c in
                zip(CONSTANTS, (res.value_star, res.reward_star, res.kl_star_to_ref))})
    return out


def run(config: Config, seeds: int, progress) -> Results:
    selectors = np.asarray([it.SELECTORS.index(VARIANTS[n][0]) for n in config.variants], np.int32)
    restarts = np.asarray([VARIANTS[n][1] for n in config.variants], bool)
    out = run_vectorized(functools.partial(one_seed, config=config), seed_keys(config.seed, seeds),
                         selectors, restarts, progress=progress, tag="lm_iterative_dpo")
    table = tidy({m: np.asarray(out[m]) for m in METRICS + CONSTANTS}, seed=np.arange(seeds),
                 algorithm=np.asarray(config.variants), iteration=np.arange(config.n_iterations + 1))
    return Results(table, summarize(table, config))


def _ci(x: np.ndarray) -> tuple[float, float, float]:
    mean = float(np.mean(x))
    if len(x) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.975, len(x) - 1) * np.std(x, ddof=1) / np.sqrt(len(x)))
    return mean, mean - half, mean + half


def summarize(table, config: Config) -> dict[str, float]:
    """Per variant at ``T``: seed means of J, E r*, KL, subopt_kl; ``J(pi_T) - J(pi0)`` with its 95% t-CI;
    the KL overshoot ``KL(pi_T||pi0) / KL(pi*||pi0)`` (mean and range over seeds); and the seed means of
    ``J*``, ``E_{pi*} r*`` and ``KL(pi*||pi0)``."""
    s = {}
    T = config.n_iterations
    for name in config.variants:
        _, j = plotting.pivot(table, "iteration", "J", where={"algorithm": name})
        _, kl = plotting.pivot(table, "iteration", "kl_to_ref", where={"algorithm": name})
        _, r = plotting.pivot(table, "iteration", "reward_mean", where={"algorithm": name})
        _, sub = plotting.pivot(table, "iteration", "subopt_kl", where={"algorithm": name})
        _, kl_star = plotting.pivot(table, "iteration", "kl_star_to_ref", where={"algorithm": name})
        s[f"{name}/J_T"], s[f"{name}/reward_T"] = float(j[:, T].mean()), float(r[:, T].mean())
        s[f"{name}/kl_T"], s[f"{name}/subopt_kl_T"] = float(kl[:, T].mean()), float(sub[:, T].mean())
        gain = _ci(j[:, T] - j[:, 0])
        s[f"{name}/J_gain"], s[f"{name}/J_gain_lo"], s[f"{name}/J_gain_hi"] = gain
        ratio = kl[:, T] / kl_star[:, 0]
        s[f"{name}/kl_overshoot_mean"] = float(ratio.mean())
        s[f"{name}/kl_overshoot_min"], s[f"{name}/kl_overshoot_max"] = float(ratio.min()), float(ratio.max())
    first = np.asarray(table["algorithm"]) == config.variants[0]
    at0 = first & (np.asarray(table["iteration"]) == 0)
    for c in ("J_star", "reward_star", "kl_star_to_ref"):
        s[c] = float(np.mean(np.asarray(table[c], float)[at0]))
    s["J_0"] = float(np.mean(np.asarray(table["J"], float)[at0]))
    s["reward_0"] = float(np.mean(np.asarray(table["reward_mean"], float)[at0]))
    return s


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    n_seeds = len(np.unique(np.asarray(table["seed"])))
    fig, axes = plotting.figure(ncols=3, size=(4.6, 3.6))
    panels = (("J", "exact J(pi_t)", "J_star"), ("reward_mean", "exact E r* under pi_t", "reward_star"),
              ("kl_to_ref", "exact KL(pi_t || pi0)", "kl_star_to_ref"))
    first = np.asarray(table["algorithm"]) == config.variants[0]
    for ax, (metric, title, star) in zip(axes.ravel(), panels):
        for i, name in enumerate(config.variants):
            x, y = plotting.pivot(table, "iteration", metric, where={"algorithm": name})
            plotting.band_plot(ax, x, y, name, color=f"C{i}")
        level = float(np.mean(np.asarray(table[star], float)[first]))
        ax.axhline(level, color="k", linestyle="--", label=f"pi* ({level:.3g})")
        ax.set(title=title, xlabel="iteration t", ylabel=metric)
    fig.suptitle(f"Iterative DPO on {config.lm} LM, V={config.vocab_size}, L={config.length}, eta={config.kl_coef}: "
                 f"{n_seeds} seeds, mean and 95% CI", fontsize="small")
    return plotting.save_figure(fig, out_dir, "lm_iterative_dpo")
