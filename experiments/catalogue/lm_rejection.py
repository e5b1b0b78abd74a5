"""lm-rejection (docs/llm_bridge.md §5.1, §5.4 test 4): exact laws of best-of-n, RS and RSO on the enumerable LM.

Per seed: a random reference ``pi0`` (``TreeLM``, logits ``N(0, init_scale^2)``) over the fixed-length space
``V^L`` for ``n_prompts`` prompts, and a gold reward ``r ~ reward_scale N(0, 1)`` per (prompt, response). Every
quantity is an exact finite sum over the enumerated responses (no sampling), computed with the existing
``algorithms.offline.rejection_sampling`` and ``bandits.lm.exact`` functions:

- ``rs_exact``: accept-reject with the exact envelope ``M = max r``: the accepted law (Gibbs), the acceptance
  rate ``E_{pi0} exp((r - M)/eta)`` and the expected proposals per accepted sample ``1 / rate``;
- ``rso``: RSO with the per-batch maximum of ``n`` candidates (``max_reward="empirical"``), for ``n`` in
  ``n_grid``: its exact pooled accepted law, its TV distance to Gibbs, its reward bias ``E_RSO r - E_Gibbs r``
  (``<= 0``), its acceptance rate, the expected accepted samples per batch ``n rate`` and proposals per
  accepted sample ``1 / rate``;
- ``best_of_n``: the best-of-``n`` law (ties split by ``pi0`` mass), ``n`` proposals per sample;
- ``gibbs``: the Gibbs policy at every ``eta`` of ``kl_grid`` (the reward-KL frontier), against best-of-n's
  ``(KL(BoN || pi0), E r)`` and the bound ``KL <= log n - (n - 1)/n``.

Columns: ``method, seed, n`` (NaN for Gibbs), ``kl_coef`` (NaN for best-of-n), ``reward_mean``, ``kl_to_ref``,
``tv_to_gibbs`` (TV to the Gibbs policy at the experiment's ``kl_coef``; NaN on the frontier's Gibbs rows),
``reward_bias``, ``acceptance_rate``, ``proposals_per_sample``, ``accepted_per_batch``, ``bon_kl_bound``.
All per-prompt quantities are prompt means.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import bandits as b
from algorithms.offline import rejection_sampling as rs
from bandits import validation as v
from bandits.lm import exact, tree
from bandits.lm.space import ResponseSpace
from experiments.engine import plotting
from experiments.engine.results import Results, concat_tables
from experiments.engine.runner import run_vectorized, seed_keys

description = "docs/llm_bridge.md §5.4 test 4: exact best-of-n / RS / RSO laws on the tiny LM, TV to Gibbs, reward-KL frontier"

COLUMNS = ("reward_mean", "kl_to_ref", "tv_to_gibbs", "reward_bias", "acceptance_rate", "proposals_per_sample",
           "accepted_per_batch", "bon_kl_bound")
# Seeds per chunk (--chunk-size overrides; results do not depend on it): the paper preset asked XLA for 97 GB
# with all 100 seeds and every n of n_grid at once.
CHUNK_SIZE = 8
nan_columns = ("n", "kl_coef", "tv_to_gibbs", "reward_bias", "acceptance_rate", "proposals_per_sample",
               "accepted_per_batch", "bon_kl_bound")


@dataclasses.dataclass(frozen=True)
class Config:
    """vocab_size, length: the space ``V^L``; n_prompts: the number of prompts; init_scale: TreeLM logit sd
    of ``pi0``; reward_scale: the gold reward's scale (``r ~ reward_scale N(0, 1)``); kl_coef: ``eta`` of
    RS/RSO; n_grid: candidates per batch (RSO) and ``n`` of best-of-n; kl_grid: the Gibbs frontier's ``eta``
    values."""

    vocab_size: int = 6
    length: int = 4
    n_prompts: int = 3
    init_scale: float = 1.0
    reward_scale: float = 0.4
    kl_coef: float = 0.5
    n_grid: tuple[int, ...] = (1, 2, 4, 8, 16, 64)
    kl_grid: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
    seed: int = 0

    def __post_init__(self):
        v.check_int("n_prompts", self.n_prompts, 1)
        v.check_float("kl_coef", self.kl_coef, low=0.0, low_open=True)
        for n in self.n_grid:
            v.check_int("n_grid", n, 1)
        for eta in self.kl_grid:
            v.check_float("kl_grid", eta, low=0.0, low_open=True)
        self.tree_config   # validates the space and the TreeLM's table size (one line, before compiling)

    @property
    def space(self) -> ResponseSpace:
        return ResponseSpace(self.vocab_size, self.length)

    @property
    def tree_config(self) -> tree.TreeConfig:
        space = self.space
        return tree.TreeConfig(space.vocab_size, space.length, prompt_len=1, prompt_vocab_size=self.n_prompts)


presets = {"quick": Config(), "paper": Config(n_prompts=8, n_grid=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                                              kl_grid=tuple(np.round(np.geomspace(0.02, 10, 15), 4)))}
seeds = {"quick": 8, "paper": 100}


def lm_world(key, config: Config) -> tuple[jax.Array, jax.Array]:
    """``(log_pi0, reward)`` ``[n_x, A]``: a random TreeLM reference, enumerated, and a Gaussian reward."""
    space, cfg = config.space, config.tree_config
    k_lm, k_r = jax.random.split(key)
    prompts = jnp.arange(config.n_prompts, dtype=jnp.int32)[:, None]
    log_pi0 = exact.enumerated_log_policy(tree.enumerated_token_logprobs, cfg,
                                          tree.init(k_lm, cfg, scale=config.init_scale), prompts, space)
    return log_pi0, config.reward_scale * jax.random.normal(k_r, log_pi0.shape, log_pi0.dtype)


def _tv(log_p, log_q):
    return 0.5 * jnp.mean(jnp.sum(jnp.abs(jnp.exp(log_p) - jnp.exp(log_q)), axis=-1))


def one_seed(key, n_grid, kl_grid, config: Config) -> dict:
    log_pi0, reward = lm_world(key, config)
    inst = exact.exact_instance(log_pi0, reward, kl_coef=config.kl_coef)
    gibbs = b.optimal_policy(inst)
    r_gibbs = b.expected_reward(inst, gibbs)

    def stats_of(log_law):
        return b.expected_reward(inst, log_law), b.kl_to_reference(inst, log_law), _tv(log_law, gibbs)

    exact_rs = rs.accepted_law(log_pi0, reward, config.kl_coef, max_reward="exact")
    rs_r, rs_kl, rs_tv = stats_of(exact_rs.log_law)
    rs_rate = jnp.mean(exact_rs.acceptance_rate)

    def rso(n):
        law = rs.accepted_law(log_pi0, reward, config.kl_coef, max_reward="empirical", n_candidates=n)
        r, kl, tv = stats_of(law.log_law)
        rate = jnp.mean(law.acceptance_rate)
        return r, kl, tv, r - r_gibbs, rate, 1.0 / rate, n * rate

    def bon(n):
        r, kl, tv = stats_of(exact.best_of_n_law_split_ties(log_pi0, reward, n))
        return r, kl, tv, jnp.log(n) - (n - 1.0) / n

    def frontier(eta):
        law = b.gibbs_policy(log_pi0, reward, eta)
        return b.expected_reward(inst, law), b.kl_to_reference(inst, law)

    return {"rs_exact": (rs_r, rs_kl, rs_tv, rs_r - r_gibbs, rs_rate, 1.0 / rs_rate),
            # lax.map: each RSO law holds an [n_x, A, A] array (107 MB at the paper preset), so not all n at once
            "rso": jax.lax.map(rso, n_grid), "best_of_n": jax.vmap(bon)(n_grid), "gibbs": jax.vmap(frontier)(kl_grid)}


def _rows(method, seeds_, n, kl_coef, **cols):
    size = len(seeds_)
    nan = np.full(size, np.nan)
    table = {"method": np.full(size, method), "seed": seeds_, "n": n, "kl_coef": kl_coef}
    table.update({c: np.asarray(cols.get(c, nan), float) for c in COLUMNS})
    return table


def run(config: Config, seeds: int, progress) -> Results:
    n_grid, kl_grid = np.asarray(config.n_grid, float), np.asarray(config.kl_grid, float)
    out = run_vectorized(functools.partial(one_seed, config=config), seed_keys(config.seed, seeds), n_grid, kl_grid,
                         progress=progress, tag="lm_rejection", chunk_size=CHUNK_SIZE)
    s = np.arange(seeds)
    g_n, g_s = np.meshgrid(n_grid, s)
    e_k, e_s = np.meshgrid(kl_grid, s)
    nan_n, nan_s = np.full(g_n.size, np.nan), np.full(seeds, np.nan)
    rso_keys = ("reward_mean", "kl_to_ref", "tv_to_gibbs", "reward_bias", "acceptance_rate", "proposals_per_sample",
                "accepted_per_batch")
    tables = [
        _rows("rs_exact", s, nan_s, np.full(seeds, config.kl_coef),
              **dict(zip(rso_keys[:6], (np.asarray(a) for a in out["rs_exact"])))),
        _rows("rso", g_s.ravel(), g_n.ravel(), np.full(g_n.size, config.kl_coef),
              **{k: np.asarray(a).ravel() for k, a in zip(rso_keys, out["rso"])}),
        _rows("best_of_n", g_s.ravel(), g_n.ravel(), nan_n,
              **{k: np.asarray(a).ravel() for k, a in zip(("reward_mean", "kl_to_ref", "tv_to_gibbs",
                                                           "bon_kl_bound"), out["best_of_n"])},
              proposals_per_sample=g_n.ravel()),
        _rows("gibbs", e_s.ravel(), np.full(e_k.size, np.nan), e_k.ravel(),
              **{k: np.asarray(a).ravel() for k, a in zip(("reward_mean", "kl_to_ref"), out["gibbs"])}),
    ]
    table = concat_tables(tables)
    return Results(table, lambda: summarize(table, config))


def _sel(table, method, **conds):
    mask = np.asarray(table["method"]) == method
    for k, val in conds.items():
        mask &= np.isclose(np.asarray(table[k], float), val)
    return {k: np.asarray(c)[mask] for k, c in table.items()}


def summarize(table, config: Config) -> dict[str, float]:
    """Seed means: exact-RS acceptance rate, proposals per sample and TV to Gibbs; per ``n``: RSO's TV, reward
    bias and accepted per batch, best-of-n's E r, KL and its bound."""
    s = {}
    exact_rows = _sel(table, "rs_exact")
    for c in ("acceptance_rate", "proposals_per_sample", "tv_to_gibbs", "reward_mean", "kl_to_ref"):
        s[f"rs_exact/{c}"] = float(np.mean(exact_rows[c]))
    for n in config.n_grid:
        rso, bon = _sel(table, "rso", n=n), _sel(table, "best_of_n", n=n)
        for c in ("tv_to_gibbs", "reward_bias", "acceptance_rate", "accepted_per_batch"):
            s[f"rso/n={n}/{c}"] = float(np.mean(rso[c]))
        for c in ("reward_mean", "kl_to_ref", "bon_kl_bound"):
            s[f"best_of_n/n={n}/{c}"] = float(np.mean(bon[c]))
    return s


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    n_seeds = len(np.unique(np.asarray(table["seed"])))
    fig, axes = plotting.figure(ncols=3, size=(4.6, 3.6))
    ax = axes[0]
    for method, xcol, label in (("gibbs", "kl_coef", "Gibbs over eta"), ("best_of_n", "n", "best-of-n over n")):
        rows = _sel(table, method)
        x, kl = plotting.pivot(rows, xcol, "kl_to_ref")
        _, r = plotting.pivot(rows, xcol, "reward_mean")
        ax.plot(kl.mean(0), r.mean(0), marker="o", label=label)
    ax.set(title="reward-KL frontier (exact)", xlabel="KL(pi || pi0)", ylabel="E r")
    rso = _sel(table, "rso")
    x, tv = plotting.pivot(rso, "n", "tv_to_gibbs")
    plotting.band_plot(axes[1], x, tv, "RSO (per-batch max) TV to Gibbs", color="C3")
    x, bias = plotting.pivot(rso, "n", "reward_bias")
    plotting.band_plot(axes[1], x, bias, "RSO reward bias", color="C4")
    plotting.set_logx(axes[1])
    axes[1].set(title=f"RSO bias at eta={config.kl_coef}", xlabel="candidates per batch n", ylabel="TV / bias")
    x, acc = plotting.pivot(rso, "n", "accepted_per_batch")
    plotting.band_plot(axes[2], x, acc, "RSO accepted per batch", color="C3")
    rate = float(np.mean(_sel(table, "rs_exact")["acceptance_rate"]))
    plotting.bound_plot(axes[2], x, rate * x, label=f"exact-M RS: n x {rate:.3g}")
    plotting.set_loglog(axes[2])
    axes[2].set(title="accepted samples per batch", xlabel="candidates per batch n", ylabel="accepted")
    fig.suptitle(f"TreeLM pi0, V={config.vocab_size}, L={config.length}; {n_seeds} seeds, mean (95% CI)",
                 fontsize="small")
    return plotting.save_figure(fig, out_dir, "lm_rejection")
