"""lm-kl-estimators (docs/llm_bridge.md §4.3, issue 7): k1/k2/k3 KL estimators against exact ground truth.

On the tiny causal transformer (``bandits.lm.tiny``) every response of ``V^L`` is enumerated, so the
value of each estimator (mean, bias, per-sample sd) and the *expected gradient* of each way of using it
(in the loss, in the reward, per token or per sequence; ``bandits.lm.kl_estimators.CONFIGURATIONS``) are
exact sums, compared with the exact ``KL(pi||pi_ref)`` and its gradient. No Monte Carlo, except in the
``monte_carlo`` panel, which shows finite-sample estimates beside the exact values.

Per seed: a random ``pi_ref`` (``tiny.init``), ``n_prompts`` random prompts, and random directions
``eps``, ``eps_old`` (every leaf ``N(0, 1)``), drawn by a separate compiled call (``draw``). In parameter
space ``theta(s) = theta_ref + s sd eps`` (``sd`` the standard deviation of each leaf of ``theta_ref``, 1
for constant leaves: RMSNorm gains, zero biases). Panels:

- ``perturbation``: on policy, ``s`` over ``perturbations`` (KL size);
- ``off_policy``: ``pi`` at ``theta(base_perturbation)``, samples from ``pi_old`` at ``theta + drift sd eps_old``,
  with importance weighting ``none`` (ignore the drift), ``sequence`` (``pi(y)/pi_old(y)``), ``prefix``
  (``prod_{s<=t} pi_s/pi_old_s`` per token) and ``token`` (``pi_t/pi_old_t`` per token, as TRL GRPO's
  ``use_bias_correction_kl``); the config ``k3_ratio_loss`` (TRL's ratio-multiplied k3) only unweighted;
- ``temperature``: samples from the token-level tempered sampler ``softmax(logits / T)`` scored under
  ``pi`` (mismatched sampling), weighting ``none`` or ``sequence`` (``pi(y)/pi_T(y)``);
- ``monte_carlo``: on policy at ``base_perturbation``: the mean of ``n`` draws, over ``mc_replicates``
  replicates (95% band: 2.5% and 97.5% quantiles), for ``n`` in ``mc_sizes``.

Gradient expectations hold the samples fixed and detach the importance weights (autodiff on samples):
``grad sum_y stop_gradient(q(y) W(y)) s(theta; y)`` (``kl_estimators`` module docstring).

Columns: ``panel, seed, config, estimator, placement, granularity, sampler, weighting, perturbation, drift,
temperature, n_samples`` and the metrics ``kl_exact`` (``KL(pi||pi_ref)``), ``kl_forward``
(``KL(pi_ref||pi)``), ``sampler_kl`` (``KL(pi||q)``, 0 on policy), ``value_mean`` (exact ``E_q[W k]``),
``value_bias`` (``value_mean - kl_exact``), ``value_rel_bias``, ``value_sd`` (per-sample sd),
``grad_norm``, ``kl_grad_norm`` (``||grad KL||``), ``grad_cos_rev`` and ``grad_rel_err`` (against
``grad KL(pi||pi_ref)``), ``grad_cos_fwd`` (against ``grad KL(pi_ref||pi)``), and in the
``monte_carlo`` panel ``mc_mean``, ``mc_sd`` (mean and sd of the ``n``-sample estimate over replicates),
``mc_lo``, ``mc_hi`` (its 2.5% and 97.5% quantiles). The value columns of a configuration are
those of its estimator (k3_ratio_loss: k3 with per-token ratio weights). NaN marks "not applicable":
gradients in the ``monte_carlo`` panel, Monte Carlo columns elsewhere.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jax.flatten_util import ravel_pytree

from bandits import validation as v
from bandits.lm import kl_estimators as kl
from bandits.lm import tiny
from bandits.lm.space import ResponseSpace, enumerate_responses
from experiments.engine import plotting
from experiments.engine.results import Results, concat_tables
from experiments.engine.runner import run_vectorized, seed_keys

description = "docs/llm_bridge.md §4.3: k1/k2/k3 KL estimators on the tiny LM, exact value bias/sd and expected-gradient error"

MC_METRICS = ("mc_mean", "mc_sd", "mc_lo", "mc_hi")
nan_columns = MC_METRICS + ("grad_norm", "kl_grad_norm", "grad_cos_rev", "grad_rel_err", "grad_cos_fwd")

CONFIGS = tuple(kl.CONFIGURATIONS)
# The value estimator behind each configuration.
VALUE_OF = {"k1_loss": "k1", "k2_loss": "k2", "k3_loss": "k3", "k3_ratio_loss": "k3", "k2_seq_loss": "k2_seq",
            "k3_seq_loss": "k3_seq", "k1_reward": "k1", "k3_reward": "k3", "k1_reward_to_go": "k1"}
PANEL_WEIGHTINGS = {"perturbation": ("none",), "off_policy": ("none", "sequence", "prefix", "token"),
                    "temperature": ("none", "sequence")}
SAMPLER = {"perturbation": "on_policy", "off_policy": "off_policy", "temperature": "temperature"}
METRICS = ("kl_exact", "kl_forward", "sampler_kl", "value_mean", "value_bias", "value_rel_bias", "value_sd",
           "grad_norm", "kl_grad_norm", "grad_cos_rev", "grad_rel_err", "grad_cos_fwd")
MC_ESTIMATORS = tuple(kl.VALUE_ESTIMATORS)
LABELS = {"k1_loss": "k1 in loss", "k2_loss": "k2 in loss (per token)", "k3_loss": "k3 in loss (per token)",
          "k3_ratio_loss": "k3 x ratio in loss (TRL bias corr.)", "k2_seq_loss": "k2 of sequence in loss",
          "k3_seq_loss": "k3 of sequence in loss", "k1_reward": "k1 in reward (REINFORCE)",
          "k3_reward": "k3 in reward (REINFORCE)", "k1_reward_to_go": "k1 reward-to-go",
          "k1": "k1", "k2": "k2", "k3": "k3", "k2_seq": "k2 (sequence)", "k3_seq": "k3 (sequence)"}
COLORS = {"k1_loss": "C7", "k2_loss": "C1", "k3_loss": "C3", "k3_ratio_loss": "C5", "k2_seq_loss": "C2",
          "k3_seq_loss": "C4", "k1_reward": "k", "k3_reward": "C8", "k1_reward_to_go": "C0",
          "k1": "k", "k2": "C1", "k3": "C3", "k2_seq": "C2", "k3_seq": "C4"}


def combos(weighting: str) -> tuple[str, ...]:
    """Configurations evaluated under ``weighting`` (``kl_estimators._check_configuration``'s rules)."""
    if weighting == "none":
        return CONFIGS
    drop = {"k3_ratio_loss"} | ({"k2_seq_loss", "k3_seq_loss"} if weighting == "token" else set())
    return tuple(c for c in CONFIGS if c not in drop)


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields reachable with ``--set field=value`` (module docstring).

    vocab_size, length: the response space ``V^L`` (all enumerated); prompt_len, n_prompts: random prompts
    (KL and gradients averaged over them); d_model, n_heads, n_layers, d_ff, logit_std: the tiny
    transformer (``tiny.TinyLMConfig``); perturbations: the on-policy KL-size sweep ``s``;
    base_perturbation: ``s`` of the off-policy, temperature and Monte Carlo panels; drifts, temperatures:
    their sweeps; mc_sizes, mc_replicates: the Monte Carlo panel.
    """

    vocab_size: int = 10
    length: int = 3
    prompt_len: int = 3
    n_prompts: int = 1
    d_model: int = 32
    n_heads: int = 2
    n_layers: int = 1
    d_ff: int = 64
    logit_std: float = 1.0
    perturbations: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8)
    base_perturbation: float = 0.3
    drifts: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
    temperatures: tuple[float, ...] = (0.5, 0.7, 0.85, 1.15, 1.3, 1.6)
    mc_sizes: tuple[int, ...] = (16, 64, 256, 1024, 4096)
    mc_replicates: int = 200
    seed: int = 0

    def __post_init__(self):
        v.check_int("vocab_size", self.vocab_size, 2)
        v.check_int("length", self.length, 1)
        if self.vocab_size**self.length > 200_000:
            v.fail("length", self.length, f"such that vocab_size**length <= 200000 (here {self.vocab_size}**"
                   f"{self.length}): every response is enumerated")
        v.check_int("prompt_len", self.prompt_len, 0)
        v.check_int("n_prompts", self.n_prompts, 1)
        self.model  # validates the transformer fields
        for name in ("perturbations", "drifts", "temperatures"):
            values = getattr(self, name)
            if not values:
                v.fail(name, values, "a non-empty tuple of numbers > 0")
            for x in values:
                v.check_float(name, x, low=0.0, low_open=True)
        v.check_float("base_perturbation", self.base_perturbation, low=0.0, low_open=True)
        sizes = self.mc_sizes
        if not sizes or any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1 for x in sizes) \
                or list(sizes) != sorted(set(sizes)):
            v.fail("mc_sizes", sizes, "a non-empty strictly increasing tuple of integers >= 1")
        v.check_int("mc_replicates", self.mc_replicates, 2)

    @property
    def model(self) -> tiny.TinyLMConfig:
        return tiny.TinyLMConfig(vocab_size=self.vocab_size, d_model=self.d_model, n_heads=self.n_heads,
                                 n_layers=self.n_layers, max_len=self.prompt_len + self.length, d_ff=self.d_ff,
                                 logit_std=self.logit_std)

    @property
    def space(self) -> ResponseSpace:
        return ResponseSpace(self.vocab_size, self.length)


# quick: |A| = 1000 (docs/llm_bridge.md §5.4 test 6's size). paper: |A| = 1e4; §4.3's |A| = 1e5 (``--set length=5``)
# needs about ten times the time and memory of a paper seed (several GB: the backward passes of ~300
# expected gradients over every response).
presets = {
    "quick": Config(),
    "paper": Config(length=4, mc_replicates=1000),
}
seeds = {"quick": 1, "paper": 3}


# ---------------------------------------------------------------------------------------------
# One seed


@functools.lru_cache(maxsize=8)
def _space_arrays(space: ResponseSpace):
    """NumPy ``(mask [A, L], PrefixGroups)`` of the enumerated space (concrete even when called under jit)."""
    with jax.ensure_compile_time_eval():
        tokens, mask = enumerate_responses(space)
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    return mask, kl.prefix_groups(tokens, mask)


def _logp_fn(config: Config, prompts):
    cfg, space = config.model, config.space
    return lambda params: jax.vmap(lambda x: tiny.enumerated_token_logprobs(cfg, params, x, space))(prompts)


def _flat(grads) -> jax.Array:
    """Stacked gradient pytree (leading axis R) -> ``[R, n_params]``."""
    return jnp.concatenate([g.reshape(g.shape[0], -1) for g in jax.tree.leaves(grads)], axis=1)


def _values_and_cotangents(lp, lr, mask, sampler, weightings):
    """Exact value metrics (dict -> ``[n_rows]``) and expected-surrogate cotangents ``[n_rows, *lp.shape]``
    of every (weighting, configuration) row of one sampler setting."""
    moments = {w: kl.exact_moments(lp, lr, mask, sampler_logp=sampler, weighting=w,
                                   estimators=[e for e in kl.VALUE_ESTIMATORS if not (w == "token" and "seq" in e)])
               for w in sorted(set(weightings) | {"token"})}
    cots, values = [], []
    for w in weightings:
        names = combos(w)
        c = kl.expected_cotangents(lp, lr, mask, names, sampler_logp=sampler, weighting=w)
        cots += [c[n] for n in names]
        values += [moments["token" if n == "k3_ratio_loss" else w][VALUE_OF[n]] for n in names]
    kl_exact = kl.exact_kl(lp, lr, mask)
    mean = jnp.stack([m.mean for m in values])
    n = len(values)
    out = {"kl_exact": jnp.full(n, kl_exact), "kl_forward": jnp.full(n, kl.forward_kl(lp, lr, mask)),
           "sampler_kl": jnp.full(n, 0.0 if sampler is None else kl.exact_kl(lp, sampler, mask)),
           "value_mean": mean, "value_bias": mean - kl_exact, "value_rel_bias": (mean - kl_exact) / kl_exact,
           "value_sd": jnp.stack([m.sd for m in values])}
    return out, jnp.stack(cots)


def _grad_metrics(grads, rev, fwd):
    """Gradient columns from expected gradients ``[n_rows, n_params]`` and the true ones ``[n_params]``."""
    gn, rn, fn = jnp.linalg.norm(grads, axis=1), jnp.linalg.norm(rev), jnp.linalg.norm(fwd)
    return {"grad_norm": gn, "kl_grad_norm": jnp.full(gn.shape, rn), "grad_cos_rev": grads @ rev / (gn * rn),
            "grad_rel_err": jnp.linalg.norm(grads - rev[None, :], axis=1) / rn, "grad_cos_fwd": grads @ fwd / (gn * fn)}


def _pull(vjp, cots):
    """``J^T c`` for stacked cotangents ``[N, ...]`` (one backward pass each) as ``[N, n_params]``."""
    return _flat(jax.lax.map(lambda c: vjp(c)[0], cots))


def draw(key, config: Config) -> dict:
    """The random part of one seed: ``ref`` (``tiny.init``), ``prompts`` and the directions ``eps``,
    ``eps_old`` (leaf lists, each leaf ``sd(leaf) N(0, 1)``; ``sd = 1`` for constant leaves) and the
    Monte Carlo panel's key data."""
    k_init, k_prompt, k_eps, k_old, k_mc = jax.random.split(key, 5)
    ref = tiny.init(k_init, config.model)
    prompts = jax.random.randint(k_prompt, (config.n_prompts, config.prompt_len), 0, config.vocab_size, jnp.int32)
    leaves = jax.tree.leaves(ref)
    sd = [jnp.where(jnp.std(x) > 0, jnp.std(x), 1.0) for x in leaves]
    offsets = np.concatenate([[0], np.cumsum([x.size for x in leaves])])

    def direction(k):  # one draw for all leaves
        z = jax.random.normal(k, (int(offsets[-1]),), leaves[0].dtype)
        return [s * z[a:b].reshape(x.shape) for s, a, b, x in zip(sd, offsets[:-1], offsets[1:], leaves)]

    return {"ref": ref, "prompts": prompts, "eps": direction(k_eps), "eps_old": direction(k_old),
            "mc_key": jax.random.key_data(k_mc)}


@functools.lru_cache(maxsize=8)
def _unravel(config: Config):
    """Flat-vector <-> ``draw`` pytree (prompt ids round-trip exactly through float64)."""
    shapes = jax.eval_shape(functools.partial(draw, config=config), jax.random.key(0))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return ravel_pytree(zeros)[1]


def draw_flat(key, config: Config) -> jax.Array:
    """``draw`` as one flat vector, so the seeds' draws can be the batched input of ``run_vectorized``."""
    return ravel_pytree(draw(key, config))[0]


def per_seed(flat_draw, perturbations, drifts, temperatures, config: Config):
    """All panels of one seed from its ``draw_flat`` vector (module docstring); every array's leading axis
    is the sweep. The draws are made by a separate compiled call: random draws inside this large
    program made XLA's compile several times slower."""
    d = _unravel(config)(flat_draw)
    ref, prompts, eps, eps_old = d["ref"], d["prompts"], d["eps"], d["eps_old"]
    k_mc = jax.random.wrap_key_data(d["mc_key"])
    logp_fn = _logp_fn(config, prompts)
    mask, groups = _space_arrays(config.space)
    leaves, treedef = jax.tree.flatten(ref)
    move = lambda base, d, scale: jax.tree.unflatten(treedef, [b + scale * e for b, e in zip(base, d)])  # noqa: E731
    lr = logp_fn(ref)

    def on_policy(s):
        lp, vjp = jax.vjp(logp_fn, move(leaves, eps, s))
        values, cots = _values_and_cotangents(lp, lr, mask, None, PANEL_WEIGHTINGS["perturbation"])
        grads = _pull(vjp, jnp.concatenate([jnp.stack(kl.kl_cotangents(lp, lr, mask)), cots]))
        return {**values, **_grad_metrics(grads[2:], grads[0], grads[1])}

    out = {"perturbation": jax.lax.map(on_policy, perturbations)}
    # Off-policy and temperature panels share pi_theta(base): one forward pass, all backward passes together.
    base = move(leaves, eps, config.base_perturbation)
    lp, vjp = jax.vjp(logp_fn, base)
    base_leaves = jax.tree.leaves(base)

    def off_policy(drift):
        old = jax.lax.stop_gradient(logp_fn(move(base_leaves, eps_old, drift)))
        return _values_and_cotangents(lp, lr, mask, old, PANEL_WEIGHTINGS["off_policy"])

    def tempered(t):
        law = kl.tempered_token_logprobs(lp, groups, t)
        return _values_and_cotangents(lp, lr, mask, law, PANEL_WEIGHTINGS["temperature"])

    off_values, off_cots = jax.lax.map(off_policy, drifts)
    tmp_values, tmp_cots = jax.lax.map(tempered, temperatures)
    flat_cots = [c.reshape((-1,) + lp.shape) for c in (off_cots, tmp_cots)]
    grads = _pull(vjp, jnp.concatenate([jnp.stack(kl.kl_cotangents(lp, lr, mask))] + flat_cots))
    rev, fwd = grads[0], grads[1]
    n_off = off_cots.shape[0] * off_cots.shape[1]
    for panel, values, g in (("off_policy", off_values, grads[2:2 + n_off]),
                             ("temperature", tmp_values, grads[2 + n_off:])):
        shape = values["value_mean"].shape                                          # [n_sweep, n_rows]
        metrics = _grad_metrics(g, rev, fwd)
        out[panel] = {**values, **{k: m.reshape(shape) for k, m in metrics.items()}}
    out["monte_carlo"] = _monte_carlo(k_mc, lp, lr, mask, config)
    exact = kl.exact_moments(lp, lr, mask, estimators=MC_ESTIMATORS)
    out["base_exact"] = {"value_mean": jnp.stack([exact[e].mean for e in MC_ESTIMATORS]),
                         "value_sd": jnp.stack([exact[e].sd for e in MC_ESTIMATORS]),
                         "kl_exact": kl.exact_kl(lp, lr, mask), "kl_forward": kl.forward_kl(lp, lr, mask)}
    return out


def _monte_carlo(key, lp, lr, mask, config: Config):
    """Mean of ``n`` on-policy draws per prompt (averaged over prompts), ``mc_replicates`` times:
    dict metric -> ``[n_sizes, n_estimators]`` (replicate mean and sd, 2.5% and 97.5% quantiles)."""
    d = kl.log_ratio(lp, lr, jnp.broadcast_to(mask, lp.shape))
    values = jnp.stack([kl.value(e, d, mask) for e in MC_ESTIMATORS])             # [E, n_x, A]
    n_x = lp.shape[0]
    law = kl.sequence_logprob(lp, mask)                                              # [n_x, A]
    # Inverse-CDF draws (categorical's Gumbel trick would materialise [R, n, n_x, A] noise).
    cdf = jnp.cumsum(jnp.exp(law), axis=-1)
    u = jax.random.uniform(key, (config.mc_replicates, config.mc_sizes[-1], n_x)) * cdf[:, -1]
    idx = jax.vmap(lambda c, uu: jnp.clip(jnp.searchsorted(c, uu), 0, c.shape[0] - 1), in_axes=(0, 2),
                   out_axes=2)(cdf, u)                                               # [R, n_max, n_x]
    draws = values[:, jnp.arange(n_x)[None, None, :], idx]                           # [E, R, n_max, n_x]
    est = jnp.stack([draws[:, :, :n].mean(axis=(2, 3)) for n in config.mc_sizes])    # [n_sizes, E, R]
    lo, hi = jnp.quantile(est, jnp.array([0.025, 0.975]), axis=-1)
    return {"mc_mean": est.mean(-1), "mc_sd": est.std(-1, ddof=1), "mc_lo": lo, "mc_hi": hi}


# ---------------------------------------------------------------------------------------------
# Table


def _rows(panel, sweep, out, seed_ids, config):
    """Tidy rows of one sweep panel from ``out[metric] [seeds, n_sweep, n_rows]``."""
    names = [(w, c) for w in PANEL_WEIGHTINGS[panel] for c in combos(w)]
    tables = []
    for si, seed in enumerate(seed_ids):
        for j, x in enumerate(sweep):
            n = len(names)
            cols = {"panel": np.full(n, panel), "seed": np.full(n, seed),
                    "config": np.array([c for _, c in names]),
                    "estimator": np.array([kl.CONFIGURATIONS[c].estimator for _, c in names]),
                    "placement": np.array([kl.CONFIGURATIONS[c].placement for _, c in names]),
                    "granularity": np.array([kl.CONFIGURATIONS[c].granularity for _, c in names]),
                    "sampler": np.full(n, SAMPLER[panel]), "weighting": np.array([w for w, _ in names]),
                    "perturbation": np.full(n, x if panel == "perturbation" else config.base_perturbation),
                    "drift": np.full(n, x if panel == "off_policy" else 0.0),
                    "temperature": np.full(n, x if panel == "temperature" else 1.0),
                    "n_samples": np.zeros(n, int)}
            cols.update({m: np.asarray(out[m][si, j], float) for m in METRICS})
            cols.update({m: np.full(n, np.nan) for m in MC_METRICS})
            tables.append(cols)
    return concat_tables(tables)


def _mc_rows(out, exact, seed_ids, config):
    """Rows of the Monte Carlo panel; the exact columns are the base on-policy values."""
    tables = []
    e = len(MC_ESTIMATORS)
    nan = np.full(e, np.nan)
    for si, seed in enumerate(seed_ids):
        kl_exact = float(exact["kl_exact"][si])
        mean = np.asarray(exact["value_mean"][si], float)
        for j, n in enumerate(config.mc_sizes):
            cols = {"panel": np.full(e, "monte_carlo"), "seed": np.full(e, seed), "config": np.array(MC_ESTIMATORS),
                    "estimator": np.array([kl.VALUE_ESTIMATORS[x][0] for x in MC_ESTIMATORS]),
                    "placement": np.full(e, "value"),
                    "granularity": np.array([kl.VALUE_ESTIMATORS[x][1] for x in MC_ESTIMATORS]),
                    "sampler": np.full(e, "on_policy"), "weighting": np.full(e, "none"),
                    "perturbation": np.full(e, config.base_perturbation), "drift": np.zeros(e),
                    "temperature": np.ones(e), "n_samples": np.full(e, n),
                    "kl_exact": np.full(e, kl_exact), "kl_forward": np.full(e, float(exact["kl_forward"][si])),
                    "sampler_kl": np.zeros(e), "value_mean": mean, "value_bias": mean - kl_exact,
                    "value_rel_bias": (mean - kl_exact) / kl_exact,
                    "value_sd": np.asarray(exact["value_sd"][si], float), "grad_norm": nan, "kl_grad_norm": nan,
                    "grad_cos_rev": nan, "grad_rel_err": nan, "grad_cos_fwd": nan}
            cols.update({m: np.asarray(out[m][si, j], float) for m in MC_METRICS})
            tables.append(cols)
    return concat_tables(tables)


def run(config: Config, seeds: int, progress) -> Results:
    keys = seed_keys(config.seed, seeds)
    sweeps = (np.asarray(config.perturbations, float), np.asarray(config.drifts, float),
              np.asarray(config.temperatures, float))
    draws = run_vectorized(functools.partial(draw_flat, config=config), keys, progress=progress, tag="draw")
    out = run_vectorized(functools.partial(per_seed, config=config), jnp.asarray(draws), *sweeps,
                         progress=progress, tag="lm_kl_estimators", chunk_size=1)
    seed_ids = np.arange(seeds)
    tables = [_rows(panel, sweep, out[panel], seed_ids, config)
              for panel, sweep in zip(("perturbation", "off_policy", "temperature"), sweeps)]
    tables.append(_mc_rows(out["monte_carlo"], out["base_exact"], seed_ids, config))
    table = concat_tables(tables)
    return Results(table, lambda: summarize(table, config))


def summarize(table, config: Config) -> dict[str, float]:
    """Seed-mean metrics of every configuration at the base on-policy setting, and the worst absolute
    bias of the unbiased value estimators over the on-policy sweep."""
    s = {}
    panel = np.asarray(table["panel"])
    on = (panel == "perturbation") & np.isclose(np.asarray(table["perturbation"], float), config.base_perturbation)
    if on.any():
        for c in CONFIGS:
            rows = on & (np.asarray(table["config"]) == c)
            for m in ("value_mean", "value_bias", "value_sd", "grad_cos_rev", "grad_rel_err", "grad_cos_fwd"):
                s[f"base/{c}/{m}"] = float(np.mean(np.asarray(table[m])[rows]))
        s["base/kl_exact"] = float(np.mean(np.asarray(table["kl_exact"])[on]))
    sweep = panel == "perturbation"
    for e in ("k1", "k3"):
        rows = sweep & (np.asarray(table["config"]) == f"{e}_loss")
        s[f"perturbation/{e}/max_abs_bias"] = float(np.max(np.abs(np.asarray(table["value_bias"])[rows])))
    return s


# ---------------------------------------------------------------------------------------------
# Figures


def _where(table, **conds):
    mask = np.ones(len(np.asarray(table["panel"])), bool)
    for k, val in conds.items():
        mask &= np.asarray(table[k]) == val
    return {k: np.asarray(c)[mask] for k, c in table.items()}


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    n_seeds = len(np.unique(np.asarray(table["seed"])))
    setting = (f"tiny transformer, V={config.vocab_size}, L={config.length} (|A|={config.vocab_size**config.length}, "
               f"all enumerated), {config.n_prompts} prompt(s); "
               + (f"{n_seeds} seeds (random models), mean, band from min to max over seeds" if n_seeds > 1
                  else "one seed (one random model): exact, no error bars"))
    sweeps = [("perturbation", "perturbation", "perturbation scale s (on policy)"),
              ("off_policy", "drift", f"drift of pi_old (s={config.base_perturbation:g})"),
              ("temperature", "temperature", f"sampler temperature T (s={config.base_perturbation:g})")]
    paths = []

    # Figure 1: value bias and sd.
    fig, axes = plotting.figure(ncols=3, nrows=2, size=(4.8, 3.6))
    value_lines = {"perturbation": [("none", c)
                                    for c in ("k1_loss", "k2_loss", "k3_loss", "k2_seq_loss", "k3_seq_loss")],
                   "off_policy": [(w, c) for w in ("none", "token", "prefix") for c in ("k1_loss", "k3_loss")],
                   "temperature": [(w, c) for w in ("none", "sequence")
                                   for c in ("k1_loss", "k2_loss", "k3_loss", "k3_seq_loss")]}
    styles = {"none": "-", "sequence": ":", "prefix": "--", "token": "-."}
    for col, (panel, x_name, x_label) in enumerate(sweeps):
        for w, c in value_lines[panel]:
            sub = _where(table, panel=panel, config=c, weighting=w)
            est = VALUE_OF[c] if c != "k3_ratio_loss" else "k3"
            label = LABELS[est] + ("" if panel == "perturbation" else f", weights {w}")
            for row, metric in enumerate(("value_rel_bias", "value_sd")):
                x, y = plotting.pivot(sub, x_name, metric)
                plotting.band_plot(axes[row, col], x, y, label, color=COLORS[est], linestyle=styles[w], band="range")
        for row, (metric, what) in enumerate((("value_rel_bias", "(E[estimate] - KL) / KL"),
                                              ("value_sd", "per-sample sd"))):
            ax = axes[row, col]
            ax.axhline(0.0, color="0.6", linewidth=0.8)
            ax.set(title=f"{panel.replace('_', ' ')}: {what}", xlabel=x_label, ylabel=what)
            ax.legend(fontsize="xx-small")
            ax.grid(alpha=0.3)
    fig.suptitle("lm-kl-estimators: exact value of k1/k2/k3 (per token summed, or on the sequence log-ratio)\n"
                 + setting, fontsize="medium")
    paths += plotting.save_figure(fig, out_dir, "lm_kl_estimators_values")

    # Figure 2: expected gradients.
    fig, axes = plotting.figure(ncols=3, nrows=2, size=(4.8, 3.6))
    grad_lines = {"perturbation": [("none", c) for c in CONFIGS],
                  "off_policy": [(w, c) for w in ("none", "sequence", "token")
                                 for c in ("k1_reward", "k2_loss", "k3_loss")] + [("none", "k3_ratio_loss")],
                  "temperature": [(w, c) for w in ("none", "sequence")
                                  for c in ("k1_reward", "k2_seq_loss", "k3_loss")]}
    for col, (panel, x_name, x_label) in enumerate(sweeps):
        for w, c in grad_lines[panel]:
            sub = _where(table, panel=panel, config=c, weighting=w)
            label = LABELS[c] + ("" if panel == "perturbation" else f", weights {w}")
            x, y = plotting.pivot(sub, x_name, "grad_cos_rev")
            plotting.band_plot(axes[0, col], x, y, label, color=COLORS[c], linestyle=styles[w], band="range")
            x, y = plotting.pivot(sub, x_name, "grad_rel_err")
            if np.all(y > 0):
                plotting.band_plot(axes[1, col], x, np.maximum(y, 1e-16), label, color=COLORS[c], linestyle=styles[w], band="range")
        axes[0, col].set(title=f"{panel.replace('_', ' ')}: cos(E grad, grad KL)", xlabel=x_label,
                         ylabel="cosine with grad KL(pi||pi_ref)")
        axes[1, col].set_yscale("log")
        axes[1, col].set(title=f"{panel.replace('_', ' ')}: relative error", xlabel=x_label,
                         ylabel="||E grad - grad KL|| / ||grad KL||")
        for ax in axes[:, col]:
            ax.legend(fontsize="xx-small")
            ax.grid(alpha=0.3)
    fig.suptitle("lm-kl-estimators: exact expected gradient of each configuration vs grad KL(pi||pi_ref)\n"
                 "(samples held fixed, importance weights detached; rel. err ~1e-15 = exact)\n" + setting,
                 fontsize="medium")
    paths += plotting.save_figure(fig, out_dir, "lm_kl_estimators_gradients")

    # Figure 3: Monte Carlo beside the exact values (seed 0).
    fig, axes = plotting.figure(ncols=2, size=(5.6, 4.2))
    mc = _where(table, panel="monte_carlo", seed=np.unique(np.asarray(table["seed"]))[0])
    for e in ("k1", "k2", "k3", "k3_seq"):
        sub = _where(mc, config=e)
        order = np.argsort(sub["n_samples"])
        n = sub["n_samples"][order]
        (line,) = axes[0].plot(n, sub["mc_mean"][order], marker="o", markersize=3, color=COLORS[e],
                               label=f"{LABELS[e]}: Monte Carlo (band 95%)")
        axes[0].fill_between(n, sub["mc_lo"][order], sub["mc_hi"][order], color=line.get_color(), alpha=0.12,
                             linewidth=0)
        axes[0].axhline(sub["value_mean"][0], color=line.get_color(), linestyle="--", linewidth=0.9,
                        label=f"{LABELS[e]}: exact E = {sub['value_mean'][0]:.4f}")
        axes[1].plot(n, np.sqrt(n) * sub["mc_sd"][order], marker="o", markersize=3, color=COLORS[e],
                     label=f"{LABELS[e]}: sqrt(n) sd over replicates")
        axes[1].axhline(sub["value_sd"][0], color=COLORS[e], linestyle="--", linewidth=0.9,
                        label=f"{LABELS[e]}: exact per-sample sd {sub['value_sd'][0]:.3f}")
    axes[0].axhline(mc["kl_exact"][0], color="0.2", linewidth=2.0, alpha=0.4,
                    label=f"exact KL = {mc['kl_exact'][0]:.4f}")
    axes[0].set(title="n-sample estimates vs exact expectations", xlabel="samples per estimate n",
                ylabel="estimate of KL(pi||pi_ref)")
    axes[1].set(title="spread of the estimates (CLT: flat at the exact sd)", xlabel="samples per estimate n",
                ylabel="sqrt(n) x sd of the n-sample estimate")
    for ax in axes:
        plotting.set_logx(ax)
        ax.legend(fontsize="xx-small")
        ax.grid(alpha=0.3)
    fig.suptitle(f"lm-kl-estimators: on policy, s={config.base_perturbation:g}, seed 0, "
                 f"{config.mc_replicates} replicates per n\n" + setting, fontsize="small")
    paths += plotting.save_figure(fig, out_dir, "lm_kl_estimators_monte_carlo")
    return paths
