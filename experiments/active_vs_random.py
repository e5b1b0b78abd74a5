"""active-vs-random (THEORY.md E9, §4.4): random vs uncertainty-based selection x MLE vs OMD, equal label budget.

Per seed: one instance (``B = reward_norm``), a pool of ``pool`` candidate comparisons drawn from the
logging policy ``(pi0, pi0)`` (labels drawn with the pool, revealed only when selected), ``budget`` labels.
Selections (``selections``):

- ``random``: the first ``budget`` pool rows (the pool is in random order);
- ``active``: APO-style, each round the still-unlabelled candidate with the largest ``||z||_{A_t^{-1}}``
  (``A_t = cH_t`` for OMD, ``V_t`` for MLE; ``algorithms.active_selection``);
- ``active_batch``: P3's code, the pool arrives in batches of ``batch``; the top ``batch // 4`` of each by
  ``||z||_{A^{-1}}`` (scored with the design at the batch start) are labelled (needs ``pool >= 4 budget``).

Estimators (``estimators``): ``mle`` (refit each label, warm-started) and ``omd``; algorithm names are
``selection-estimator``. Metrics at label counts ``checkpoints``: as in ``omd_vs_mle`` (estimation error,
held-out expected accuracy / log-loss, plug-in and pessimistic suboptimality under ``objective``), and
``seconds``: the wall-clock of one round (selection + update) at round t, from seed 0's state after
``t - 1`` rounds in a separate jitted call (MLE buffer of exactly t rows; all pool rows marked available,
which costs the same), median of ``timing_repeats``; NaN except for seed 0 at ``timing_rounds``.
The summary's ``total_seconds`` integrates those per-round times over rounds 1..budget (trapezoid on the
timed rounds, flat before the first): the analogue of P3's train-time column.
``regret_avg`` / ``regret_weak`` do not apply: NaN.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import bandits as b
from algorithms import active_selection as act
from algorithms import confidence as conf
from algorithms import p3_policy
from algorithms.omd import PROJECTIONS
from bandits import validation as v
from experiments import omd_vs_mle as e8
from experiments import plotting
from experiments.registry import Results, concat_tables
from experiments.runner import run_vectorized, seed_keys

SELECTIONS = ("random", "active", "active_batch")
EST = ("mle", "omd")
METRICS = e8.METRICS

# NaN means "not applicable" in these columns (module docstring).
nan_columns = ("regret_avg", "regret_weak", "seconds")

description = "E9: random vs active (APO / top-25% batch) selection x MLE vs OMD at an equal label budget"


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields reachable with ``--set field=value`` (module docstring); estimator fields as in omd-vs-mle."""

    n_contexts: int = 128
    n_actions: int = 32
    dim: int = 8
    reward_norm: float = 2.0
    pool: int = 8192
    budget: int = 1024
    batch: int = 32
    checkpoints: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)
    heldout: int = 2048
    lam: float = 1.0
    omd_lam: float | None = None
    omd_step_size: float | None = None
    projection: str = "euclid"
    objective: str = "unregularized"
    kl_coef: float = 0.1
    c_beta: float = 0.5
    selections: tuple[str, ...] = SELECTIONS
    estimators: tuple[str, ...] = EST
    timing_rounds: tuple[int, ...] | None = None
    timing_repeats: int = 15
    seed: int = 0

    def __post_init__(self):
        b.InstanceConfig(n_contexts=self.n_contexts, n_actions=self.n_actions, dim=self.dim,
                         reward_norm=self.reward_norm, kl_coef=self.kl_coef)
        v.check_int("budget", self.budget, 1)
        v.check_int("batch", self.batch, 4)
        v.check_int("pool", self.pool, self.budget)
        needed = -(-self.budget // (self.batch // 4)) * self.batch
        if "active_batch" in self.selections and self.pool < needed:
            v.fail("pool", self.pool, f"at least {needed} (ceil(budget / (batch // 4)) batches of {self.batch}) "
                   "with selection 'active_batch'")
        e8.check_rounds("checkpoints", self.checkpoints, self.budget)
        v.check_int("heldout", self.heldout, 1)
        v.check_float("lam", self.lam, low=0.0, low_open=True)
        if self.omd_lam is not None:
            v.check_float("omd_lam", self.omd_lam, low=0.0, low_open=True)
        if self.omd_step_size is not None:
            v.check_float("omd_step_size", self.omd_step_size, low=0.0, low_open=True)
        v.check_choice("projection", self.projection, PROJECTIONS)
        v.check_choice("objective", self.objective, p3_policy.OBJECTIVES)
        v.check_float("c_beta", self.c_beta, low=0.0)
        for field, values, allowed in (("selections", self.selections, SELECTIONS),
                                       ("estimators", self.estimators, EST)):
            if not values:
                v.fail(field, values, "a non-empty tuple of " + ", ".join(allowed))
            for s in values:
                v.check_choice(field, s, allowed)
        if self.timing_rounds is not None:
            e8.check_rounds("timing_rounds", self.timing_rounds, self.budget)
        v.check_int("timing_repeats", self.timing_repeats, 1)

    # what omd_vs_mle's helpers read
    @property
    def rounds(self) -> int:
        return self.budget

    @property
    def algorithms(self) -> tuple[str, ...]:
        return self.estimators

    @property
    def ogd_lr(self):
        return 1.0

    @property
    def hvp_lr(self):
        return 0.1

    @property
    def timed(self) -> tuple[int, ...]:
        return self.checkpoints if self.timing_rounds is None else self.timing_rounds

    @property
    def names(self) -> list[tuple[str, str]]:
        return [(s, e) for s in self.selections for e in self.estimators]


presets = {
    "quick": Config(n_contexts=64, pool=1536, budget=256, checkpoints=(16, 32, 64, 128, 256), heldout=1024,
                    timing_rounds=(16, 256), timing_repeats=5),
    "paper": Config(),
}
seeds = {"quick": 8, "paper": 32}


def choose(selection, est, state, available, t, pool_z, batch_rows, config):
    """Index of the pool row labelled at round ``t`` (``batch_rows``: the current batch's chosen rows)."""
    if selection == "random":
        return t.astype(jnp.int32), batch_rows
    inverse = est.inverse_design(state)
    if selection == "active":
        return act.select_max_uncertainty(pool_z, inverse, available), batch_rows
    n_sel = config.batch // 4
    start = (t // n_sel) * config.batch
    rows = jax.lax.dynamic_slice_in_dim(pool_z, start, config.batch)
    fresh = act.top_fraction(act.uncertainty(rows, inverse), n_sel) + start
    batch_rows = jnp.where(t % n_sel == 0, fresh, batch_rows)
    return batch_rows[t % n_sel], batch_rows


def simulate(key, config: Config):
    k_inst, k_pool, k_held = jax.random.split(key, 3)
    inst = e8.scaled_instance(k_inst, config, config.reward_norm)
    data = b.sample_preference_data(k_pool, inst, inst.log_pi0, inst.log_pi0, config.pool)
    pool_z = b.feature_differences(inst, data)
    pool_y = data.y.astype(pool_z.dtype)
    z_held, p_held = e8.heldout_set(k_held, inst, config.heldout)
    nu = conf.reference_vector(inst, "pi0")
    ck = jnp.asarray(config.checkpoints)
    tk = jnp.asarray([t - 1 for t in config.timed])
    ests = e8.estimators(config, config.reward_norm, config.budget)
    out, timings = {}, []
    for selection, est_name in config.names:
        est = ests[config.estimators.index(est_name)]
        init = est.init()
        d = config.dim
        snaps = (jnp.zeros((len(ck), d), pool_z.dtype), jnp.zeros((len(ck), d, d), pool_z.dtype))
        timing = jax.tree.map(lambda a: jnp.broadcast_to(a, (len(tk),) + a.shape), e8.light(init))

        def body(carry, _, selection=selection, est=est):
            state, available, rows, snaps, timing, t = carry
            idx, rows = choose(selection, est, state, available, t, pool_z, rows, config)
            state = est.update(state, pool_z[idx], pool_y[idx])
            available = available.at[idx].set(False)
            pos = e8.snapshot_index(t + 1, ck)
            snaps = (snaps[0].at[pos].set(est.theta(state), mode="drop"),
                     snaps[1].at[pos].set(est.inverse_design(state), mode="drop"))
            tpos = e8.snapshot_index(t + 1, tk)
            timing = jax.tree.map(lambda buf, a: buf.at[tpos].set(a, mode="drop"), timing, e8.light(state))
            return (state, available, rows, snaps, timing, t + 1), idx

        carry0 = (init, jnp.ones(config.pool, bool), jnp.zeros(config.batch // 4, jnp.int32), snaps, timing,
                  jnp.asarray(0))
        (_, _, _, snaps, timing, _), chosen = jax.lax.scan(body, carry0, None, length=config.budget)
        per = lambda th, iv, t: e8.estimate_metrics(inst, th, iv, t, z_held, p_held, nu, config)
        metrics = jax.vmap(per)(snaps[0], snaps[1], ck)
        out[f"{selection}-{est_name}"] = metrics
        timings.append((timing, chosen))
    metrics = {m: jnp.stack([out[f"{s}-{e}"][m] for s, e in config.names], axis=-1) for m in METRICS}
    return metrics, tuple(timings)


def _round(state, pool_z, pool_y, t, reward_norm, config, selection, index, capacity):
    est = e8.estimators(config, reward_norm, max(capacity, 1))[index]
    idx, _ = choose(selection, est, state, jnp.ones(pool_z.shape[0], bool), t, pool_z,
                    jnp.zeros(config.batch // 4, jnp.int32), config)
    return est.update(state, pool_z[idx], pool_y[idx])


def timing_pass(config: Config, timings) -> np.ndarray:
    """Seconds of one round ``[n_timed, n_alg]`` for seed 0 (module docstring)."""
    key = seed_keys(config.seed, 1)[0]
    k_inst, k_pool, _ = jax.random.split(key, 3)
    inst = e8.scaled_instance(k_inst, config, config.reward_norm)
    data = b.sample_preference_data(k_pool, inst, inst.log_pi0, inst.log_pi0, config.pool)
    pool_z = b.feature_differences(inst, data)
    pool_y = data.y.astype(pool_z.dtype)
    out = np.full((len(config.timed), len(config.names)), np.nan)
    for ia, (selection, est_name) in enumerate(config.names):
        timing, chosen = timings[ia]
        index = config.estimators.index(est_name)
        chosen = np.asarray(chosen)
        for it, t in enumerate(config.timed):
            cap = t if est_name == "mle" else 0
            fn = jax.jit(functools.partial(_round, config=config, selection=selection, index=index, capacity=cap))
            state = jax.tree.map(lambda a: a[it], timing)
            if est_name == "mle":       # the labelled rows so far, in the order they were chosen
                state = e8.mle_state_at(state, pool_z[chosen], pool_y[chosen], t)
            out[it, ia] = e8.time_call(fn, (state, pool_z, pool_y, jnp.asarray(t - 1),
                                            jnp.asarray(config.reward_norm)), config.timing_repeats)
    return out


def run(config: Config, seeds: int, progress) -> Results:
    keys = seed_keys(config.seed, seeds)
    out, timings = run_vectorized(functools.partial(simulate, config=config), keys, progress=progress, tag="e9")
    secs = timing_pass(config, jax.tree.map(lambda a: a[0], timings))
    progress.message("timing done")
    ck = np.asarray(config.checkpoints)
    tables, summary = [], {"dispatch_seconds": e8.dispatch_seconds(config)}
    timed = np.asarray(config.timed, float)
    for ia, (selection, est_name) in enumerate(config.names):
        name = f"{selection}-{est_name}"
        n = seeds * len(ck)
        table = {"algorithm": np.full(n, name), "selection": np.full(n, selection),
                 "estimator": np.full(n, est_name), "seed": np.repeat(np.arange(seeds), len(ck)),
                 "t": np.tile(ck, seeds)}
        for m in METRICS:
            table[m] = out[m][:, :, ia].reshape(-1)
        table["regret_avg"] = e8.nan_column(n)
        table["regret_weak"] = e8.nan_column(n)
        sec = e8.nan_column(n)
        for it, t in enumerate(config.timed):
            sec[(table["seed"] == 0) & (table["t"] == t)] = secs[it, ia]
        table["seconds"] = sec
        tables.append(table)
        grid = np.concatenate([[1.0], timed, [float(config.budget)]])
        vals = np.concatenate([[secs[0, ia]], secs[:, ia], [secs[-1, ia]]])
        summary[f"{name}/total_seconds"] = float(np.trapezoid(vals, grid))
        summary[f"{name}/heldout_accuracy_budget"] = float(out["heldout_accuracy"][:, -1, ia].mean())
        summary[f"{name}/heldout_accuracy_budget_sem"] = float(out["heldout_accuracy"][:, -1, ia].std(ddof=1)
                                                               / np.sqrt(seeds)) if seeds > 1 else float("nan")
        summary[f"{name}/estimation_error_budget"] = float(out["estimation_error"][:, -1, ia].mean())
        summary[f"{name}/subopt_pess_budget"] = float(out["subopt_pess"][:, -1, ia].mean())
    return Results(concat_tables(tables), summary)


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    names = list(dict.fromkeys(np.asarray(table["algorithm"]).tolist()))
    panels = [("heldout_accuracy", "held-out accuracy", False), ("estimation_error", "||theta - theta*||_2", True),
              ("subopt_pess", "pessimistic SubOpt", True)]
    fig, axes = plotting.figure(ncols=len(panels), size=(4.6, 3.6))
    styles = {"random": "--", "active": "-", "active_batch": ":"}
    for ax, (metric, label, loglog) in zip(np.atleast_1d(axes), panels):
        for name in names:
            sel, est = name.rsplit("-", 1)
            x, y = plotting.pivot(table, "t", metric, where={"algorithm": name})
            if loglog and not np.all(y.mean(0) > 0):
                loglog_ok = False
            else:
                loglog_ok = loglog
            plotting.band_plot(ax, x, y, name, color=e8.COLORS[est], linestyle=styles[sel], loglog=loglog_ok)
        plotting.set_logx(ax)
        ax.set(title=label, xlabel="labels used", ylabel=label)
        ax.legend(fontsize="xx-small")
    fig.suptitle(f"active-vs-random: pool {config.pool}, budget {config.budget}, B={config.reward_norm:g}")
    return plotting.save_figure(fig, out_dir, "active_vs_random")
