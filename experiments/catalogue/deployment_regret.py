"""deployment-regret (docs/theory.md E10, §4.5, §6): cumulative average / weak regret of deployment rules vs T.

Per seed: one instance (``B = reward_norm``); each round a context ``x_t ~ d0``, the rule picks
``(a_t, a'_t)`` from its estimator's ``theta_t`` and inverse design (``algorithms.onepass.deployment``), the BT label
is drawn, and the estimator is updated on ``z = phi(x_t,a_t) - phi(x_t,a'_t)``. Algorithms are
``rule:estimator`` strings (``p3:omd`` is P3's rule with its one-pass OMD; the classic dueling bandits
use the MLE refit as in their papers; any estimator registered in ``algorithms.onepass.estimators`` is
accepted). Bonus radius ``beta_t = c_beta sqrt(d log(1 + t))`` [D] for every rule (``OnePassOptions.beta``;
the estimators' designs, ``||.||_{cH^{-1}}`` vs ``||.||_{V^{-1}}``, carry the difference between OMD and
MLE; ``c_beta = 0`` removes the bonus). That is ``radius_mode = shared``; ``theory`` and ``calibrated`` give each
estimator its own radius (``algorithms.onepass.radii``: OMD's ``H_t``-norm radius without kappa and the
``V_t``-norm radius times the nominal kappa; or ``c_e sqrt(d log(1 + t))`` with ``c_e`` estimator ``e``'s 95%
quantile of ``max_t ||theta_t - theta*||_{A_t} / sqrt(d log(1 + t))`` over ``calibration_seeds`` fresh
*passive* streams ``(pi0, pi0)`` of the same family, seeds ``2^31, ...`` of the root seed: a departure, since a
rule's own adaptive data need not give the same errors; multipliers in the summary).
All rules on one seed share contexts and label uniforms (common random numbers).

Regret (docs/theory.md §9.1 item 15), cumulative over rounds 1..t, reported at ``checkpoints``:

- ``objective = unregularized`` (P3's theory): ``regret_avg = sum max_a r* - (r*(a_t) + r*(a'_t))/2``,
  ``regret_weak = sum max_a r* - max(r*(a_t), r*(a'_t))``;
- ``objective = kl``: the pair only decides what is queried; the policy served at round t is
  ``Gibbs(<theta_t, phi>)`` at ``kl_coef`` and ``regret_avg = sum_t J*(x_t) - J_{x_t}(Gibbs(theta_t))``
  (the KL-regularized regret, exact per context); ``regret_weak`` has no analogue there: NaN.
``estimation_error = ||theta_t - theta*||``; ``kappa_effective = 1 / mean_{s <= t} sigma'(<theta*, z_s>)`` over the
pairs the algorithm played (the nominal ``1 / sigma'(2B)`` is the summary's ``kappa_nominal``); held-out metrics do
not apply: NaN. ``seconds``: wall-clock
of one round (rule + update) at round t for seed 0, from its state after ``t - 1`` rounds in a separate
jitted call (MLE buffer of exactly t rows: the pairs seed 0 played, recorded in the scan), median of
``timing_repeats``; NaN on other rows. The rules that share an estimator run one after the other
through one compiled scan (``lax.map`` over the rule index, ``lax.switch`` to the rule; only the chosen
rule runs), and the timed round is that same code, so it compiles once per estimator (and per timed
``t`` for the MLE) rather than once per rule and round.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import bandits as b
from algorithms.onepass import deployment as dueling
from algorithms.onepass import estimators, evaluation, radii
from bandits import validation as v
from experiments.catalogue import p3_common as p3
from experiments.engine import plotting
from experiments.engine.config import replace
from experiments.engine.results import Results, concat_tables
from experiments.engine.runner import run_vectorized, seed_keys

DEFAULT = ("p3:omd", "maxinp:mle", "colstim:mle", "maxpairucb:mle", "greedy:omd", "random:omd",
           "best_worst:omd", "best_second:omd", "best_quartile:omd")

# NaN means "not applicable" in these columns (module docstring).
nan_columns = ("error_local", "heldout_accuracy", "heldout_logloss", "subopt", "subopt_pess",
               "regret_weak", "seconds")

description = "E10: deployment regret (avg/weak) of P3's rule vs MaxInP/CoLSTIM/MaxPairUCB/greedy/pairings"


@dataclasses.dataclass(frozen=True)
class Config(p3.P3Config):
    """Fields reachable with ``--set field=value``; the instance (``reward_norm`` is ``B``), estimator
    options, objective and timing fields are ``p3_common.P3Config``'s (``kl_coef`` is read with
    ``objective=kl`` or a ``greedy`` rule).

    rounds: the horizon ``T >= 2`` of each seed's deployment stream (one context, one pair and one label
    per round, P3's deployment stage, docs/theory.md §4.5); checkpoints: rounds at which the cumulative regrets are reported; algorithms:
    ``rule:estimator`` strings (rules of ``algorithms.onepass.deployment``, registered estimators: built in
    omd, mle, ogd, hvp); colstim_c: CoLSTIM's perturbation scale; quantile: the rank of
    ``best_quartile``'s second action.
    """

    rounds: int = 2048
    checkpoints: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048)
    algorithms: tuple[str, ...] = DEFAULT + ("p3:mle", "maxinp:omd", "colstim:omd", "maxpairucb:omd")
    colstim_c: float = 1.0
    quantile: float = 0.25

    def __post_init__(self):
        v.check_int("rounds", self.rounds, 2)
        if not self.algorithms:
            v.fail("algorithms", self.algorithms, "a non-empty tuple of 'rule:estimator' strings")
        for name in self.algorithms:
            rule, _, est = str(name).partition(":")
            if rule not in dueling.RULES or est not in estimators.names():
                v.fail("algorithms", name, "'rule:estimator' with rule in " + ", ".join(dueling.RULES)
                       + " and estimator in " + ", ".join(estimators.names()))
        if len(set(self.algorithms)) != len(self.algorithms):
            v.fail("algorithms", self.algorithms, "a tuple without repeated names")
        v.check_float("colstim_c", self.colstim_c, low=0.0)
        v.check_float("quantile", self.quantile, low=0.0, high=1.0)
        super().__post_init__()

    def parsed(self) -> list[tuple[str, str]]:
        return [tuple(str(n).split(":")) for n in self.algorithms]

    @property
    def reads_radius_mode(self) -> bool:
        return True

    @property
    def estimator_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(est for _, est in self.parsed()))

    @property
    def reads_kl_coef(self) -> bool:
        return self.objective == "kl" or any(rule == "greedy" for rule, _ in self.parsed())

    @property
    def reward_norm(self) -> float:
        """``B = ||theta*||``."""
        return self.instance.reward_norm


presets = {
    "quick": replace(Config(), n_contexts=64, rounds=256, checkpoints=(16, 32, 64, 128, 256), algorithms=DEFAULT,
                     timing_rounds=(16, 256), timing_repeats=5),
    "paper": Config(),
}
seeds = {"quick": 8, "paper": 32}


def _estimator(config, est_name, capacity):
    return estimators.make_estimator(est_name, config.instance.dim, config.onepass, radius=config.reward_norm,
                                     capacity=capacity)


def groups(config: Config) -> dict[str, tuple[tuple[str, ...], list[int]]]:
    """``estimator -> (its distinct rules, indices into config.algorithms)``, in order of appearance."""
    out: dict[str, tuple[list[str], list[int]]] = {}
    for ia, (rule, est_name) in enumerate(config.parsed()):
        rules, members = out.setdefault(est_name, ([], []))
        if rule not in rules:
            rules.append(rule)
        members.append(ia)
    return {e: (tuple(r), m) for e, (r, m) in out.items()}


def select(rules, rule_index, key, phi, theta, inverse, beta, log_pi0, kl_coef, config):
    """``dueling.select_pair`` of ``rules[rule_index]`` (a traced index: ``lax.switch``, so the rules of
    one estimator share one compiled round, and only the chosen rule runs)."""
    branches = [functools.partial(dueling.select_pair, r, colstim_c=config.colstim_c, quantile=config.quantile)
                for r in rules]
    if len(branches) == 1:
        return branches[0](key, phi, theta, inverse, beta, log_pi0, kl_coef)
    return jax.lax.switch(rule_index, branches, key, phi, theta, inverse, beta, log_pi0, kl_coef)


CALIBRATION_START = 2**31   # the calibration run's seeds: 2^31, 2^31 + 1, ... of the root seed


def play_round(rules, rule_index, est, state, key, inst, x, t, config, multiplier=None):
    """One deployment round for context ``x`` with rule ``rules[rule_index]``: (new state, a, a', y).
    ``multiplier``: the estimator's calibrated radius multiplier (``radius_mode='calibrated'`` only)."""
    k_rule, k_label = jax.random.split(key)
    beta = radii.estimator_radius(config.onepass, est.name, config.instance.dim, t, config.reward_norm, multiplier)
    a, a2 = select(rules, rule_index, k_rule, inst.phi[x], est.theta(state), est.inverse_design(state), beta,
                   inst.log_pi0[x], inst.kl_coef, config)
    p = jax.nn.sigmoid(inst.reward[x, a] - inst.reward[x, a2])
    y = (jax.random.uniform(k_label, dtype=p.dtype) < p).astype(p.dtype)
    return est.update(state, inst.phi[x, a] - inst.phi[x, a2], y), a, a2, y


def calibration(config: Config, progress) -> np.ndarray:
    """The calibrated multipliers ``[n_estimators]`` (``config.estimator_names``; module docstring)."""
    def one(key):
        k_inst, k_data = jax.random.split(key)
        inst = evaluation.scaled_instance(k_inst, config.instance, config.reward_norm)
        data = b.sample_preference_data(k_data, inst, inst.log_pi0, inst.log_pi0, config.rounds)
        z = b.feature_differences(inst, data)
        return radii.normalised_errors(config.estimator_names, config.instance.dim, config.onepass, z,
                                       data.y.astype(z.dtype), inst.theta_star, config.checkpoints, config.reward_norm)

    keys = seed_keys(config.seed, config.onepass.calibration_seeds, start=CALIBRATION_START)
    return np.asarray(radii.quantile_multiplier(run_vectorized(one, keys, progress=progress, tag="e10_calibration")))


def simulate(key, multipliers, config: Config):
    """One seed: cumulative regrets, error and effective kappa at the checkpoints ``[n_ck, 4, n_alg]``, per
    algorithm the light state snapshots after rounds ``t - 1`` (``t`` in ``config.timed``) and the pairs played
    with their labels (for the MLE's honest timing buffer), and the contexts. The algorithms of one estimator
    run one after the other (``lax.map``) through one compiled scan. ``multipliers [n_estimators]``: the
    calibrated radius multipliers (read with ``radius_mode='calibrated'`` only)."""
    k_inst, k_run = jax.random.split(key)
    inst = evaluation.scaled_instance(k_inst, config.instance, config.reward_norm)
    ck = jnp.asarray(config.checkpoints)
    tk = jnp.asarray([t - 1 for t in config.timed])
    round_keys = jax.random.split(k_run, config.rounds)
    contexts = jax.vmap(lambda k: jax.random.categorical(jax.random.fold_in(k, 7), jnp.log(inst.d0)))(round_keys)
    log_z = b.log_partition(inst.log_pi0, inst.reward, inst.kl_coef)
    n_alg = len(config.algorithms)
    out, timings, played = [None] * n_alg, [None] * n_alg, [None] * n_alg
    for est_name, (rules, members) in groups(config).items():
        est = _estimator(config, est_name, config.rounds)
        multiplier = multipliers[config.estimator_names.index(est_name)]
        init = est.init()
        timing0 = p3.timing_buffers(est_name, init, len(tk))

        def one_rule(rule_index, rules=rules, est=est, init=init, timing0=timing0, multiplier=multiplier):
            def body(carry, inp):
                state, cum, slopes, timing, t = carry
                key, x = inp
                theta = est.theta(state)
                if config.objective == "kl":
                    log_pi = jax.nn.log_softmax(inst.log_pi0[x] + inst.phi[x] @ theta / inst.kl_coef)
                    served = (jnp.exp(log_pi) @ inst.reward[x]
                              - inst.kl_coef * b.kl_divergence(log_pi, inst.log_pi0[x]))
                    inc = jnp.stack([inst.kl_coef * log_z[x] - served, jnp.nan])
                state, a, a2, y = play_round(rules, rule_index, est, state, key, inst, x, t, config, multiplier)
                if config.objective != "kl":
                    inc = jnp.stack(dueling.pair_regret(inst.reward[x], a, a2))
                cum = cum + inc
                tpos = p3.snapshot_index(t + 1, tk)
                timing = p3.record(est.name, timing, tpos, state)
                err = jnp.linalg.norm(est.theta(state) - inst.theta_star)
                margin = inst.reward[x, a] - inst.reward[x, a2]          # <theta*, z_t>
                slopes = slopes + jax.nn.sigmoid(margin) * jax.nn.sigmoid(-margin)
                kappa_eff = (t + 1) / slopes
                return (state, cum, slopes, timing, t + 1), (jnp.concatenate([cum, err[None], kappa_eff[None]]),
                                                             jnp.stack([a, a2]), y)

            carry0 = (init, jnp.zeros(2, inst.phi.dtype), jnp.zeros((), inst.phi.dtype), timing0, jnp.asarray(0))
            (_, _, _, timing, _), (trace, pairs, ys) = jax.lax.scan(body, carry0, (round_keys, contexts))
            return trace[ck - 1], timing, (pairs, ys)          # [n_ck, 4], ..., ([T, 2], [T])

        index = jnp.asarray([rules.index(config.parsed()[ia][0]) for ia in members], jnp.int32)
        traces, timing, plays = jax.lax.map(one_rule, index)
        for j, ia in enumerate(members):
            out[ia] = traces[j]
            timings[ia] = jax.tree.map(lambda a, j=j: a[j], timing)
            played[ia] = jax.tree.map(lambda a, j=j: a[j], plays)
    return jnp.stack(out, axis=-1), tuple(timings), tuple(played), contexts


def _timed_round(state, rule_index, key, x, t, inst, multiplier, config, rules, est_name, capacity):
    est = _estimator(config, est_name, max(capacity, 1))
    return play_round(rules, rule_index, est, state, key, inst, x, t, config, multiplier)[0]


def timing_pass(config: Config, timings, played, contexts, multipliers) -> np.ndarray:
    """Seconds of one round ``[n_timed, n_alg]`` for seed 0 from its snapshots (module docstring); one
    compile per estimator (and per timed ``t`` for one that stores its data, the MLE, whose buffer has
    exactly ``t`` rows)."""
    key = seed_keys(config.seed, 1)[0]
    k_inst, k_run = jax.random.split(key)
    inst = jax.jit(lambda k: evaluation.scaled_instance(k, config.instance, config.reward_norm))(k_inst)
    round_keys = jax.random.split(k_run, config.rounds)
    phi, contexts = np.asarray(inst.phi), np.asarray(contexts)
    out = np.full((len(config.timed), len(config.algorithms)), np.nan)
    for est_name, (rules, members) in groups(config).items():
        jitted = {}
        for ia in members:
            rule_index = jnp.asarray(rules.index(config.parsed()[ia][0]), jnp.int32)
            pairs, ys = (np.asarray(a) for a in played[ia])
            for it, t in enumerate(config.timed):
                cap = p3.timed_capacity(est_name, t)
                if cap not in jitted:
                    jitted[cap] = jax.jit(functools.partial(_timed_round, config=config, rules=rules,
                                                            est_name=est_name, capacity=cap))
                z = phi[contexts, pairs[:, 0]] - phi[contexts, pairs[:, 1]]      # the pairs played so far
                state = p3.with_buffer(est_name, jax.tree.map(lambda a: a[it], timings[ia]), z, ys, t)
                mult = jnp.asarray(multipliers[config.estimator_names.index(est_name)])
                out[it, ia] = p3.time_call(jitted[cap], (state, rule_index, round_keys[t - 1], jnp.asarray(0),
                                                         jnp.asarray(t - 1), inst, mult), config.timing_repeats)
    return out


def run(config: Config, seeds: int, progress) -> Results:
    keys = seed_keys(config.seed, seeds)
    calibrated = config.onepass.radius_mode == "calibrated"
    mult = calibration(config, progress) if calibrated else np.zeros(len(config.estimator_names))
    out, timings, played, contexts = run_vectorized(functools.partial(simulate, config=config), keys, mult,
                                                    progress=progress, tag="e10")
    first = lambda tree: jax.tree.map(lambda a: a[0], tree)     # seed 0
    secs = timing_pass(config, first(timings), first(played), contexts[0], mult)
    progress.message("timing done")
    ck = np.asarray(config.checkpoints)
    tables = []
    for ia, name in enumerate(config.algorithms):
        n = seeds * len(ck)
        table = {"algorithm": np.full(n, name), "seed": np.repeat(np.arange(seeds), len(ck)), "t": np.tile(ck, seeds),
                 "estimation_error": out[:, :, 2, ia].reshape(-1), "error_local": p3.nan_column(n),
                 "heldout_accuracy": p3.nan_column(n), "heldout_logloss": p3.nan_column(n),
                 "subopt": p3.nan_column(n), "subopt_pess": p3.nan_column(n),
                 "regret_avg": out[:, :, 0, ia].reshape(-1), "regret_weak": out[:, :, 1, ia].reshape(-1),
                 "kappa_effective": out[:, :, 3, ia].reshape(-1)}
        sec = p3.nan_column(n)
        for it, t in enumerate(config.timed):
            sec[(table["seed"] == 0) & (table["t"] == t)] = secs[it, ia]
        table["seconds"] = sec
        tables.append(table)

    def summarize():
        summary = {"dispatch_seconds": p3.dispatch_seconds(config.instance.dim)}
        for ia, name in enumerate(config.algorithms):
            summary[f"{name}/regret_avg_T"] = float(out[:, -1, 0, ia].mean())
            if config.objective != "kl":
                summary[f"{name}/regret_weak_T"] = float(out[:, -1, 1, ia].mean())
            summary[f"{name}/seconds_t_max"] = float(secs[-1, ia])
            summary[f"{name}/kappa_effective_T"] = float(out[:, -1, 3, ia].mean())
        summary["kappa_nominal"] = evaluation.kappa(config.reward_norm)
        if calibrated:
            for est_name, m in zip(config.estimator_names, mult):
                summary[f"{est_name}/radius_multiplier"] = float(m)
        return summary

    return Results(concat_tables(tables), summarize)


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    names = list(dict.fromkeys(np.asarray(table["algorithm"]).tolist()))
    metrics = [("regret_avg", "cumulative average regret")]
    if config.objective != "kl":
        metrics.append(("regret_weak", "cumulative weak regret"))
    # colour = rule, line style = estimator, so p3:omd and p3:mle read as the same rule on two estimators
    colors = plotting.distinct_colors(dict.fromkeys(str(n).split(":")[0] for n in names))
    styles = ("-", "--", ":", "-.")          # by registry position: omd, mle, ogd, hvp, then again
    fig, axes = plotting.figure(ncols=len(metrics), size=(5.4, 4.2))
    for ax, (metric, label) in zip(np.atleast_1d(axes), metrics):
        positive = True
        for name in names:
            rule, est = str(name).split(":")
            x, y = plotting.pivot(table, "t", metric, where={"algorithm": name})
            positive &= bool(np.all(y.mean(0) > 0))
            style = styles[estimators.names().index(est) % len(styles)]
            plotting.band_plot(ax, x, y, name, color=colors[rule], linestyle=style)
        if positive:    # the rules span a decade or more: a log axis keeps the low curves apart
            plotting.set_loglog(ax)
        ax.set(title=label, xlabel="T (rounds)", ylabel=label)
        ax.legend(fontsize="xx-small", ncols=2)
    fig.suptitle(f"deployment-regret ({config.objective}): B={config.reward_norm:g}, K={config.instance.n_actions}, "
                 f"d={config.instance.dim}")
    return plotting.save_figure(fig, out_dir, "deployment_regret")
