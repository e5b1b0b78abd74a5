"""lm-iterative-dpo (docs/llm_bridge.md §1.4, §5.4 test 8; docs/theory.md §2.5): P1's iterative DPO on a tiny LM, exact J, KL.

Per seed: a random reference LM ``pi0`` (``TreeLM``, realizable, or the tiny transformer, misspecified; ``lm``),
``n_prompts`` prompts, and a gold reward that is a per-prompt token-weight sum,
``r*(x, y) = reward_scale * sum_t w[x, y_t] / sqrt(L)`` with ``w ~ N(0, 1)`` (a reward a small transformer can
represent). ``algorithms.lm.iterative.iterative_dpo`` then runs every variant of ``variants`` from the same
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

``--set policy.backend=hf`` (docs/llm_bridge.md §5.1) runs the same loop, variants and columns through a Hugging Face
policy instead (``algorithms.lm.hf_loop``, shared with ``hf-smoke``): ``pi0`` is ``policy.path`` (default the
installed SmolLM2-135M-Instruct GGUF; ``policy.device``, ``policy.dtype``, ``policy.max_new_tokens``), the
prompts are the first ``n_prompts`` built-in ones, the gold reward is the planted MiniLM reward of
``text_reward`` (``algorithms.lm.hf_loop.PlantedReward``), ``kl_coef`` that of DPO. Nothing is exact then, and the
columns change meaning: ``reward_mean`` is the sample mean of ``r*`` over ``n_prompts * policy.n_eval`` fresh
draws of ``pi_t`` (``reward_lo``/``reward_hi``: its 95% t-interval, computed here from the loop's per-draw
rewards), ``kl_to_ref`` the sampled ``sum_t k3``
estimate of ``KL(pi_t || pi0)`` (``kl_k1``: the k1 estimate), ``J`` is ``reward_mean - kl_coef * kl_to_ref``,
chosen/rejected rewards are those of the sampled pairs; ``subopt_kl``, ``J_star``, ``reward_star`` and
``kl_star_to_ref`` need ``pi*`` over all responses and are NaN. Extra columns: ``dpo_loss_before``,
``dpo_loss_after``, ``seconds``. ``vocab_size``, ``length``, ``lm``, ``d_model``, ``d_ff``, ``init_scale`` and
``reward_scale`` do not apply; ``history`` is not supported. Preset ``quick-hf`` is a 1-2 minute CPU run.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from algorithms.lm import iterative as it
from algorithms.lm import hf_loop as ol
from bandits import validation as v
from bandits.lm import tiny, tree
from bandits.lm.space import ResponseSpace, enumerate_responses
from experiments.engine import plotting, stats
from experiments.engine.config import check_unused, replace
from experiments.engine.results import Results, concat_tables, tidy
from experiments.engine.runner import run_vectorized, seed_keys

description = ("docs/llm_bridge.md §5.4 test 8: iterative DPO (max_min, warm/restart) on a tiny LM, exact J, E r*, KL "
               "(policy.backend=hf: a local checkpoint, sampled)")

VARIANTS = {"max_min_warm": ("max_min", False), "max_min_restart": ("max_min", True),
            "max_random_warm": ("max_random", False), "random_pairs_warm": ("self_play", False)}
METRICS = ("J", "reward_mean", "kl_to_ref", "subopt_kl", "chosen_reward", "rejected_reward")
CONSTANTS = ("J_star", "reward_star", "kl_star_to_ref")
BACKENDS = ("jax", "hf")
HF_EXTRA = ("reward_lo", "reward_hi", "kl_k1", "dpo_loss_before", "dpo_loss_after", "seconds")
# NaN = not applicable: chosen/rejected at iteration 0; with policy.backend=hf also the pi*-dependent columns.
nan_columns = ("chosen_reward", "rejected_reward", "dpo_loss_before", "dpo_loss_after", "subopt_kl") + CONSTANTS


@dataclasses.dataclass(frozen=True)
class PolicyConfig(ol.HFPolicyConfig):
    """The policy backend (docs/llm_bridge.md §5.1).

    backend: ``jax`` is the tiny LM named by ``lm`` (exact), ``hf`` a local checkpoint (the other fields, those
    of ``algorithms.lm.hf_loop.HFPolicyConfig``; sampled); n_eval: fresh draws per prompt and iteration that
    evaluate the hf backend.
    """

    backend: str = "jax"
    n_eval: int = 8

    def __post_init__(self):
        v.check_choice("policy.backend", self.backend, BACKENDS)
        v.check_int("policy.n_eval", self.n_eval, 2)
        if self.backend == "hf":
            self.validate("policy")

    @property
    def hf(self) -> ol.HFPolicyConfig:
        return ol.HFPolicyConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ol.HFPolicyConfig)})


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields reachable with ``--set field=value`` (module docstring), nested ones by their own names.

    lm: ``"tree"`` or ``"tiny"``; vocab_size, length: the fixed-length space ``V^L`` (all enumerated);
    n_prompts: the number of prompts; d_model, d_ff: the tiny transformer (1 layer, 2 heads); init_scale:
    TreeLM's logit sd; kl_coef: ``eta``, the KL coefficient of J and of the DPO loss; reward_scale: the gold
    reward's scale (``r* = reward_scale sum_t w[x, y_t] / sqrt(L)``); loop: the loop's options
    (``algorithms.lm.iterative.IterativeOptions``: n_iterations, k, n_groups, n_steps, learning_rate, history,
    deterministic_labels; its selector and restart are the variants', so they are refused); variants: names in
    ``VARIANTS``; policy: the backend (``PolicyConfig``; ``policy.backend=hf`` and the checkpoint fields);
    text_reward: the planted MiniLM reward of the hf backend (``algorithms.lm.hf_loop.RewardConfig``).
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
    loop: it.IterativeOptions = it.IterativeOptions(n_iterations=6, k=4, n_groups=32, n_steps=10, learning_rate=0.03)
    variants: tuple[str, ...] = ("max_min_warm", "max_min_restart", "random_pairs_warm")
    seed: int = 0
    policy: PolicyConfig = PolicyConfig()
    text_reward: ol.RewardConfig = ol.RewardConfig()

    def __post_init__(self):
        v.check_choice("lm", self.lm, tuple(it.MODELS))
        v.check_names("variants", self.variants, tuple(VARIANTS))
        v.check_int("n_prompts", self.n_prompts, 1)
        v.check_float("reward_scale", self.reward_scale, low=0.0)
        v.check_float("init_scale", self.init_scale, low=0.0)
        check_unused(self, ("loop.selector", "loop.restart"), "each variant picks its selector and restart")
        self.spec                                       # validates the LM
        if self.policy.backend == "hf":
            if self.n_prompts > len(ol.PROMPTS):
                v.fail("n_prompts", self.n_prompts, f"an integer in [1, {len(ol.PROMPTS)}] with policy.backend='hf' "
                                                    "(the built-in prompts)")
            if self.loop.history:
                v.fail("history", self.loop.history, "False with policy.backend='hf' (that loop trains on the "
                                                     "fresh pairs of each iteration only)")
            self.hf_options("max_min", False)           # validates the HF loop's options

    def hf_options(self, selector: str, restart: bool) -> ol.OnlineOptions:
        """The HF loop's options for one variant: this config's ``loop`` with the variant's selector and restart."""
        return ol.OnlineOptions(loop=dataclasses.replace(self.loop, selector=selector, restart=restart),
                                kl_coef=self.kl_coef, n_eval=self.policy.n_eval, n_examples=1)

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
    "paper": replace(Config(), n_iterations=12, n_groups=64, variants=tuple(VARIANTS)),
    "quick-tiny": replace(Config(), lm="tiny", learning_rate=5e-4),
    "quick-hf": replace(Config(), policy=PolicyConfig(backend="hf", max_new_tokens=14, n_eval=6), n_prompts=3,
                        n_iterations=2, n_groups=1, n_steps=3, learning_rate=1e-5, kl_coef=0.1,
                        variants=("max_min_warm",)),
}
seeds = {"quick": 8, "paper": 64, "quick-tiny": 8, "quick-hf": 1}


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
    run = lambda sel, rst: it.iterative_dpo(k_loop, params0, instance, prompts, lm, config.loop,  # noqa: E731
                                            selector=sel, restart=rst)
    res = jax.vmap(run)(selectors, restarts)
    out = dict(zip(METRICS, (res.value, res.reward_mean, res.kl_to_ref, res.subopt_kl, res.chosen_reward,
                             res.rejected_reward)))
    shape = res.value.shape
    out.update({name: jnp.broadcast_to(c[:, None], shape) for name, c in
                zip(CONSTANTS, (res.value_star, res.reward_star, res.kl_star_to_ref))})
    return out


def run(config: Config, seeds: int, progress) -> Results:
    if config.policy.backend == "hf":
        return run_hf(config, seeds, progress)
    selectors = np.asarray([it.SELECTORS.index(VARIANTS[n][0]) for n in config.variants], np.int32)
    restarts = np.asarray([VARIANTS[n][1] for n in config.variants], bool)
    out = run_vectorized(functools.partial(one_seed, config=config), seed_keys(config.seed, seeds),
                         selectors, restarts, progress=progress, tag="lm_iterative_dpo")
    table = tidy({m: np.asarray(out[m]) for m in METRICS + CONSTANTS}, seed=np.arange(seeds),
                 algorithm=np.asarray(config.variants), iteration=np.arange(config.loop.n_iterations + 1))
    return Results(table, lambda: summarize(table, config))


def run_hf(config: Config, seeds: int, progress) -> Results:
    """Every variant through ``algorithms.lm.hf_loop.online_dpo`` from the same ``pi0`` and per-seed keys (sampled);
    the reward intervals from the per-draw rewards (``stats.mean_ci`` per iteration)."""
    prompts = ol.PROMPTS[:config.n_prompts]
    tables, runs = [], {}
    for name in config.variants:
        selector, restart = VARIANTS[name]
        results, reference, _ = ol.run_seeds(config.policy.hf, seed_keys(config.seed, seeds), progress.message,
                                         options=config.hf_options(selector, restart), prompts=prompts,
                                         reward_config=config.text_reward, tag=f"{name} ")
        runs[name] = results
        for seed, res in enumerate(results):
            T1 = len(res.reward_mean)
            nan = np.full(T1, np.nan)
            bounds = np.array([stats.mean_ci(row)[1:] for row in np.asarray(res.eval_reward, float)])
            interval = {"reward_lo": bounds[:, 0], "reward_hi": bounds[:, 1]}
            cols = {"J": res.reward_mean - config.kl_coef * res.kl_k3, "reward_mean": res.reward_mean,
                    "kl_to_ref": res.kl_k3, "subopt_kl": nan, "chosen_reward": res.chosen_reward,
                    "rejected_reward": res.rejected_reward, **{c: nan for c in CONSTANTS},
                    **{c: interval[c] if c in interval else np.asarray(getattr(res, c)) for c in HF_EXTRA}}
            tables.append({"seed": np.full(T1, seed), "algorithm": np.full(T1, name), "iteration": np.arange(T1),
                           **cols})

    def summarize():
        summary = {"backend": "hf", "sampled_columns": "J, reward_mean, kl_to_ref (sum k3), kl_k1, "
                   "chosen_reward, rejected_reward", "nan_columns": "subopt_kl, " + ", ".join(CONSTANTS)}
        T = config.loop.n_iterations
        for name, results in runs.items():
            summary[f"{name}/J_T"] = float(np.mean([r.reward_mean[T] - config.kl_coef * r.kl_k3[T] for r in results]))
            summary[f"{name}/reward_T"] = float(np.mean([r.reward_mean[T] for r in results]))
            summary[f"{name}/kl_T"] = float(np.mean([r.kl_k3[T] for r in results]))
            gain = stats.welch_interval(np.concatenate([r.eval_reward[0] for r in results]),
                                        np.concatenate([r.eval_reward[T] for r in results]))
            summary[f"{name}/reward_gain"], summary[f"{name}/reward_gain_lo"], summary[f"{name}/reward_gain_hi"] = gain
            summary[f"{name}/seconds_per_iteration"] = float(np.mean([r.seconds[1:].mean() for r in results]))
            for ex in results[0].examples:
                if ex["iteration"] in (0, T):
                    summary[f"{name}/example/t{ex['iteration']}/{prompts.index(ex['prompt'])}"] = (
                        f"{ex['response']!r} (r*={ex['reward']:.3f})")
        summary["reward_0"] = float(np.mean([r.reward_mean[0] for r in results]))
        summary.update(ol.policy_record(reference))
        return summary

    return Results(concat_tables(tables), summarize)


def summarize(table, config: Config) -> dict[str, float]:
    """Per variant at ``T``: seed means of J, E r*, KL, subopt_kl; ``J(pi_T) - J(pi0)`` with its 95% t-CI;
    the KL overshoot ``KL(pi_T||pi0) / KL(pi*||pi0)`` (mean and range over seeds); and the seed means of
    ``J*``, ``E_{pi*} r*`` and ``KL(pi*||pi0)``."""
    s = {}
    T = config.loop.n_iterations
    for name in config.variants:
        _, j = plotting.pivot(table, "iteration", "J", where={"algorithm": name})
        _, kl = plotting.pivot(table, "iteration", "kl_to_ref", where={"algorithm": name})
        _, r = plotting.pivot(table, "iteration", "reward_mean", where={"algorithm": name})
        _, sub = plotting.pivot(table, "iteration", "subopt_kl", where={"algorithm": name})
        _, kl_star = plotting.pivot(table, "iteration", "kl_star_to_ref", where={"algorithm": name})
        s[f"{name}/J_T"], s[f"{name}/reward_T"] = float(j[:, T].mean()), float(r[:, T].mean())
        s[f"{name}/kl_T"], s[f"{name}/subopt_kl_T"] = float(kl[:, T].mean()), float(sub[:, T].mean())
        gain = tuple(map(float, stats.mean_ci(j[:, T] - j[:, 0])))
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
    hf = config.policy.backend == "hf"
    kind = "sampled" if hf else "exact"
    panels = (("J", f"{kind} J(pi_t)", "J_star"), ("reward_mean", f"{kind} E r* under pi_t", "reward_star"),
              ("kl_to_ref", f"{kind} KL(pi_t || pi0)" + (" (k3)" if hf else ""), "kl_star_to_ref"))
    first = np.asarray(table["algorithm"]) == config.variants[0]
    for ax, (metric, title, star) in zip(axes.ravel(), panels):
        for i, name in enumerate(config.variants):
            x, y = plotting.pivot(table, "iteration", metric, where={"algorithm": name})
            plotting.band_plot(ax, x, y, name, color=f"C{i}")
            if hf and n_seeds == 1 and metric == "reward_mean":     # one seed: the interval over samples
                rows = np.asarray(table["algorithm"]) == name
                order = np.argsort(np.asarray(table["iteration"])[rows])
                lo, hi = (np.asarray(table[c], float)[rows][order] for c in ("reward_lo", "reward_hi"))
                ax.fill_between(x, lo, hi, color=f"C{i}", alpha=0.2, linewidth=0)
        level = float(np.mean(np.asarray(table[star], float)[first]))
        if np.isfinite(level):
            ax.axhline(level, color="k", linestyle="--", label=f"pi* ({level:.3g})")
        ax.set(title=title, xlabel="iteration t", ylabel=metric)
    if hf:
        name = Path(config.policy.path).name if config.policy.path else "SmolLM2-135M-Instruct Q4_1"
        fig.suptitle(f"Iterative DPO on {name} (hf backend), planted MiniLM reward, kl_coef={config.kl_coef}: "
                     f"{n_seeds} seed(s), sampled estimates, not exact", fontsize="small")
    else:
        fig.suptitle(f"Iterative DPO on {config.lm} LM, V={config.vocab_size}, L={config.length}, "
                     f"eta={config.kl_coef}: {n_seeds} seeds, mean and 95% CI", fontsize="small")
    return plotting.save_figure(fig, out_dir, "lm_iterative_dpo")
