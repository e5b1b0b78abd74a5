"""deployment-regret (THEORY.md E10, §4.5, §6): cumulative average / weak regret of deployment rules vs T.

Per seed: one instance (``B = reward_norm``); each round a context ``x_t ~ d0``, the rule picks
``(a_t, a'_t)`` from its estimator's ``theta_t`` and inverse design (``algorithms.dueling``), the BT label
is drawn, and the estimator is updated on ``z = phi(x_t,a_t) - phi(x_t,a'_t)``. Algorithms are
``rule:estimator`` strings (``p3:omd`` is P3's rule with its one-pass OMD; the classic dueling bandits
use the MLE refit as in their papers). Bonus radius ``beta_t = c_beta sqrt(d log(1 + t))`` [D] for every
rule (the ``||.||_{cH^{-1}}`` vs ``||.||_{V^{-1}}`` norms carry the difference between OMD and MLE).
All rules on one seed share contexts and label uniforms (common random numbers).

Regret (THEORY.md §9.1 item 15), cumulative over rounds 1..t, reported at ``checkpoints``:

- ``objective = unregularized`` (P3's theory): ``regret_avg = sum max_a r* - (r*(a_t) + r*(a'_t))/2``,
  ``regret_weak = sum max_a r* - max(r*(a_t), r*(a'_t))``;
- ``objective = kl``: the pair only decides what is queried; the policy served at round t is
  ``Gibbs(<theta_t, phi>)`` at ``kl_coef`` and ``regret_avg = sum_t J*(x_t) - J_{x_t}(Gibbs(theta_t))``
  (the KL-regularized regret, exact per context); ``regret_weak`` has no analogue there: NaN.
``estimation_error = ||theta_t - theta*||``; held-out metrics do not apply: NaN. ``seconds``: wall-clock
of one round (rule + update) at round t for seed 0, from its state after ``t - 1`` rounds in a separate
jitted call (MLE buffer of exactly t rows), median of ``timing_repeats``; NaN on other rows.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import bandits as b
from algorithms import dueling, p3_policy
from algorithms.omd import PROJECTIONS
from algorithms.online_estimator import ESTIMATORS
from bandits import validation as v
from experiments import omd_vs_mle as e8
from experiments import plotting
from experiments.registry import Results, concat_tables
from experiments.runner import run_vectorized, seed_keys

DEFAULT = ("p3:omd", "maxinp:mle", "colstim:mle", "maxpairucb:mle", "greedy:omd", "random:omd",
           "best_worst:omd", "best_second:omd", "best_quartile:omd")

# NaN means "not applicable" in these columns (module docstring).
nan_columns = ("error_local", "heldout_accuracy", "heldout_logloss", "subopt", "subopt_pess",
               "regret_weak", "seconds")

description = "E10: deployment regret (avg/weak) of P3's rule vs MaxInP/CoLSTIM/MaxPairUCB/greedy/pairings"


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields reachable with ``--set field=value``; ``algorithms`` are ``rule:estimator`` strings."""

    n_contexts: int = 128
    n_actions: int = 32
    dim: int = 8
    reward_norm: float = 2.0
    rounds: int = 2048
    checkpoints: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048)
    algorithms: tuple[str, ...] = DEFAULT + ("p3:mle", "maxinp:omd", "colstim:omd", "maxpairucb:omd")
    lam: float = 1.0
    omd_lam: float | None = None
    omd_step_size: float | None = None
    projection: str = "euclid"
    objective: str = "unregularized"
    kl_coef: float = 0.1
    c_beta: float = 0.5
    colstim_c: float = 1.0
    quantile: float = 0.25
    timing_rounds: tuple[int, ...] | None = None
    timing_repeats: int = 15
    seed: int = 0

    def __post_init__(self):
        b.InstanceConfig(n_contexts=self.n_contexts, n_actions=self.n_actions, dim=self.dim,
                         reward_norm=self.reward_norm, kl_coef=self.kl_coef)
        v.check_int("rounds", self.rounds, 2)
        e8.check_rounds("checkpoints", self.checkpoints, self.rounds)
        if not self.algorithms:
            v.fail("algorithms", self.algorithms, "a non-empty tuple of 'rule:estimator' strings")
        for name in self.algorithms:
            rule, _, est = str(name).partition(":")
            if rule not in dueling.RULES or est not in ESTIMATORS:
                v.fail("algorithms", name, "'rule:estimator' with rule in " + ", ".join(dueling.RULES)
                       + " and estimator in " + ", ".join(ESTIMATORS))
        v.check_float("lam", self.lam, low=0.0, low_open=True)
        if self.omd_lam is not None:
            v.check_float("omd_lam", self.omd_lam, low=0.0, low_open=True)
        if self.omd_step_size is not None:
            v.check_float("omd_step_size", self.omd_step_size, low=0.0, low_open=True)
        v.check_choice("projection", self.projection, PROJECTIONS)
        v.check_choice("objective", self.objective, p3_policy.OBJECTIVES)
        v.check_float("c_beta", self.c_beta, low=0.0)
        v.check_float("colstim_c", self.colstim_c, low=0.0)
        v.check_float("quantile", self.quantile, low=0.0, high=1.0)
        if self.timing_rounds is not None:
            e8.check_rounds("timing_rounds", self.timing_rounds, self.rounds)
        v.check_int("timing_repeats", self.timing_repeats, 1)

    @property
    def timed(self) -> tuple[int, ...]:
        return self.checkpoints if self.timing_rounds is None else self.timing_rounds

    @property
    def ogd_lr(self):
        return 1.0

    @property
    def hvp_lr(self):
        return 0.1

    def parsed(self) -> list[tuple[str, str]]:
        return [tuple(str(n).split(":")) for n in self.algorithms]


presets = {
    "quick": Config(n_contexts=64, rounds=256, checkpoints=(16, 32, 64, 128, 256), algorithms=DEFAULT,
                    timing_rounds=(16, 256), timing_repeats=5),
    "paper": Config(),
}
seeds = {"quick": 8, "paper": 32}


def _estimator(config, est_name, capacity):
    cfg = dataclasses.replace(config, algorithms=DEFAULT[:1])   # any valid value: only est_name is built
    return e8.estimators(_Shim(cfg, est_name), config.reward_norm, capacity)[0]


class _Shim:
    """``config`` seen by ``omd_vs_mle.estimators`` with a single estimator name."""

    def __init__(self, config, est_name):
        self._c, self.algorithms = config, (est_name,)

    def __getattr__(self, item):
        return getattr(self._c, item)


def play_round(rule, est, state, key, inst, x, t, config):
    """One deployment round for context ``x``: returns (new state, a, a')."""
    k_rule, k_label = jax.random.split(key)
    beta = e8.beta_schedule(config.c_beta, config.dim, t)
    a, a2 = dueling.select_pair(rule, k_rule, inst.phi[x], est.theta(state), est.inverse_design(state), beta,
                                inst.log_pi0[x], inst.kl_coef, config.colstim_c, config.quantile)
    p = jax.nn.sigmoid(inst.reward[x, a] - inst.reward[x, a2])
    y = (jax.random.uniform(k_label, dtype=p.dtype) < p).astype(p.dtype)
    return est.update(state, inst.phi[x, a] - inst.phi[x, a2], y), a, a2


def simulate(key, config: Config):
    k_inst, k_run = jax.random.split(key)
    inst = e8.scaled_instance(k_inst, config, config.reward_norm)
    ck = jnp.asarray(config.checkpoints)
    tk = jnp.asarray([t - 1 for t in config.timed])
    round_keys = jax.random.split(k_run, config.rounds)
    contexts = jax.vmap(lambda k: jax.random.categorical(jax.random.fold_in(k, 7), jnp.log(inst.d0)))(round_keys)
    log_z = b.log_partition(inst.log_pi0, inst.reward, inst.kl_coef)
    out, timings = [], []
    for rule, est_name in config.parsed():
        est = _estimator(config, est_name, config.rounds)
        init = est.init()
        timing = jax.tree.map(lambda a: jnp.broadcast_to(a, (len(tk),) + a.shape), e8.light(init))

        def body(carry, inp, rule=rule, est=est):
            state, cum, timing, t = carry
            key, x = inp
            theta = est.theta(state)
            if config.objective == "kl":
                log_pi = jax.nn.log_softmax(inst.log_pi0[x] + inst.phi[x] @ theta / inst.kl_coef)
                served = jnp.exp(log_pi) @ inst.reward[x] - inst.kl_coef * b.kl_divergence(log_pi, inst.log_pi0[x])
                inc = jnp.stack([inst.kl_coef * log_z[x] - served, jnp.nan])
            state, a, a2 = play_round(rule, est, state, key, inst, x, t, config)
            if config.objective != "kl":
                inc = jnp.stack(dueling.pair_regret(inst.reward[x], a, a2))
            cum = cum + inc
            tpos = e8.snapshot_index(t + 1, tk)
            timing = jax.tree.map(lambda buf, s: buf.at[tpos].set(s, mode="drop"), timing, e8.light(state))
            err = jnp.linalg.norm(est.theta(state) - inst.theta_star)
            return (state, cum, timing, t + 1), jnp.concatenate([cum, err[None]])

        carry0 = (init, jnp.zeros(2, inst.phi.dtype), timing, jnp.asarray(0))
        (_, _, timing, _), trace = jax.lax.scan(body, carry0, (round_keys, contexts))
        out.append(trace[ck - 1])          # [n_ck, 3]
        timings.append(timing)
    return jnp.stack(out, axis=-1), tuple(timings), contexts   # [n_ck, 3, n_alg]


def timing_pass(config: Config, timings) -> np.ndarray:
    """Seconds of one round ``[n_timed, n_alg]`` for seed 0 (module docstring)."""
    key = seed_keys(config.seed, 1)[0]
    k_inst, k_run = jax.random.split(key)
    inst = jax.jit(lambda k: e8.scaled_instance(k, config, config.reward_norm))(k_inst)
    round_keys = jax.random.split(k_run, config.rounds)
    out = np.full((len(config.timed), len(config.algorithms)), np.nan)
    for ia, (rule, est_name) in enumerate(config.parsed()):
        for it, t in enumerate(config.timed):
            cap = t if est_name == "mle" else 0
            est = _estimator(config, est_name, max(cap, 1))

            def fn(state, key, x, tt, inst, rule=rule, est=est):
                return play_round(rule, est, state, key, inst, x, tt, config)[0]

            state = jax.tree.map(lambda a: a[it], timings[ia])
            if est_name == "mle":
                # rebuild the honest buffer: the pairs played so far are replayed from seed 0's stream
                state = _mle_buffer(config, rule, est_name, inst, round_keys, t)
            x = jnp.asarray(0)
            out[it, ia] = e8.time_call(jax.jit(fn), (state, round_keys[t - 1], x, jnp.asarray(t - 1), inst),
                                       config.timing_repeats)
    return out


def _mle_buffer(config, rule, est_name, inst, round_keys, t):
    """Seed 0's MLE state after ``t - 1`` rounds with a buffer of exactly ``t`` rows (replayed)."""
    est = _estimator(config, est_name, t)
    contexts = jax.vmap(lambda k: jax.random.categorical(jax.random.fold_in(k, 7), jnp.log(inst.d0)))(round_keys)

    @jax.jit
    def replay(keys, xs):
        def body(carry, inp):
            s, tt = carry
            s, _, _ = play_round(rule, est, s, inp[0], inst, inp[1], tt, config)
            return (s, tt + 1), None
        return jax.lax.scan(body, (est.init(), jnp.asarray(0)), (keys, xs))[0][0]

    return replay(round_keys[: t - 1], contexts[: t - 1])


def run(config: Config, seeds: int, progress) -> Results:
    keys = seed_keys(config.seed, seeds)
    out, timings, _ = run_vectorized(functools.partial(simulate, config=config), keys, progress=progress, tag="e10")
    secs = timing_pass(config, jax.tree.map(lambda a: a[0], timings))
    progress.message("timing done")
    ck = np.asarray(config.checkpoints)
    tables, summary = [], {"dispatch_seconds": e8.dispatch_seconds(config)}
    for ia, name in enumerate(config.algorithms):
        n = seeds * len(ck)
        table = {"algorithm": np.full(n, name), "seed": np.repeat(np.arange(seeds), len(ck)), "t": np.tile(ck, seeds),
                 "estimation_error": out[:, :, 2, ia].reshape(-1), "error_local": e8.nan_column(n),
                 "heldout_accuracy": e8.nan_column(n), "heldout_logloss": e8.nan_column(n),
                 "subopt": e8.nan_column(n), "subopt_pess": e8.nan_column(n),
                 "regret_avg": out[:, :, 0, ia].reshape(-1), "regret_weak": out[:, :, 1, ia].reshape(-1)}
        sec = e8.nan_column(n)
        for it, t in enumerate(config.timed):
            sec[(table["seed"] == 0) & (table["t"] == t)] = secs[it, ia]
        table["seconds"] = sec
        tables.append(table)
        summary[f"{name}/regret_avg_T"] = float(out[:, -1, 0, ia].mean())
        if config.objective != "kl":
            summary[f"{name}/regret_weak_T"] = float(out[:, -1, 1, ia].mean())
        summary[f"{name}/seconds_t_max"] = float(secs[-1, ia])
    return Results(concat_tables(tables), summary)


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    names = list(dict.fromkeys(np.asarray(table["algorithm"]).tolist()))
    metrics = [("regret_avg", "cumulative average regret")]
    if config.objective != "kl":
        metrics.append(("regret_weak", "cumulative weak regret"))
    fig, axes = plotting.figure(ncols=len(metrics), size=(5.4, 4.2))
    for ax, (metric, label) in zip(np.atleast_1d(axes), metrics):
        for i, name in enumerate(names):
            x, y = plotting.pivot(table, "t", metric, where={"algorithm": name})
            plotting.band_plot(ax, x, y, name, color=f"C{i % 10}",
                               linestyle="-" if name.endswith("omd") else "--")
        ax.set(title=label, xlabel="T (rounds)", ylabel=label)
        ax.legend(fontsize="xx-small")
    fig.suptitle(f"deployment-regret ({config.objective}): B={config.reward_norm:g}, K={config.n_actions}, "
                 f"d={config.dim}")
    return plotting.save_figure(fig, out_dir, "deployment_regret")
