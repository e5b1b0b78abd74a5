"""active-vs-random (docs/theory.md E9, §4.4): random vs uncertainty-based selection x MLE vs OMD, equal label budget.

Per seed: one instance (``B = reward_norm``), a pool of ``pool`` candidate comparisons drawn from the
logging policy ``(pi0, pi0)`` (labels drawn with the pool, revealed only when selected), ``budget`` labels.
Selections (``selections``):

- ``random``: the first ``budget`` pool rows (the pool is in random order);
- ``active``: APO-style, each round the still-unlabelled candidate with the largest ``||z||_{A_t^{-1}}``
  (``A_t = cH_t`` for OMD, ``V_t`` for MLE; ``algorithms.onepass.active_selection``);
- ``active_batch``: P3's code, the pool arrives in batches of ``batch``; the top ``batch // 4`` of each by
  ``||z||_{A^{-1}}`` (scored with the design at the batch start) are labelled (needs ``pool >= 4 budget``).

Estimators (``estimators``): ``mle`` (refit each label, warm-started) and ``omd`` by default, or any
estimator registered in ``algorithms.onepass.estimators`` (``A_t`` is its registry ``design``: ``ogd`` and
``hvp`` use ``V_t``); algorithm names are ``selection-estimator``. ``B`` is ``reward_norm``
(``instance.reward_norm``); the instance family and the metrics are ``algorithms.onepass.evaluation``'s.
Metrics at label counts ``checkpoints``: as in ``omd_vs_mle`` (estimation error, held-out expected
accuracy / log-loss, plug-in and pessimistic suboptimality under ``objective``), and
``seconds``: the wall-clock of one round (selection + update) at round t, from seed 0's state after
``t - 1`` rounds in a separate jitted call (MLE buffer of exactly t rows; all pool rows marked available,
which costs the same), median of ``timing_repeats``; NaN except for seed 0 at ``timing_rounds``.
The selections of one estimator run one after the other through one compiled scan (``lax.map`` over the
selection index, ``lax.switch`` to the selection; only the chosen one runs); the timed round is that
same code. The summary's ``total_seconds`` integrates those per-round times over rounds 1..budget (trapezoid on the
timed rounds, flat before the first): the analogue of P3's train-time column.
``regret_avg`` / ``regret_weak`` do not apply: NaN.

Quantities below the Bayes ceiling (issue 17 item 6). At ``B = 2`` the held-out accuracy of every cell sits at
the accuracy of ``theta*`` itself (about 0.671 at the default sizes), so it cannot separate the selections;
these columns can (``algorithms.onepass.evaluation.population_metrics``, exact over the finite logging law
``d0(x) pi0(a|x) pi0(a'|x)`` of the pool, no sampling):

- ``estimation_error_sigma = ||theta_t - theta*||_Sigma``, ``Sigma = E[z z^T]`` (beside ``estimation_error``,
  the 2-norm): the error in the norm the logging law weighs, the one the excess log-loss sees to second order;
- ``excess_logloss = E[l(theta_t)] - E[l(theta*)]``, the mean KL from the BT label law, ``>= 0``, zero at ``theta*``;
- ``accuracy`` and ``bayes_accuracy`` (the accuracy of ``theta*``, the ceiling) exactly, and
  ``heldout_bayes_accuracy``, the accuracy of ``theta*`` on the same sampled held-out rows as ``heldout_accuracy``;
- ``grad_evals``: the cost in P3's model (below), cumulative over rounds ``1..t``: the number of evaluations of one
  comparison's loss derivative at one parameter, as each estimator states it (``Estimator.grad_evals``,
  ``algorithms.onepass.estimators``: ``omd`` 2 per round, ``ogd`` 1, ``hvp`` 4, ``mle`` ``iterations_t * t``, a
  lower bound, ``mle_sgd`` ``sgd_epochs * t``; NaN for a plugin that states none). Deterministic given the
  data: a count, not a clock.

P3's cost model, in our words (docs/theory.md §4.7-4.8). P3's reward model is a head on frozen LLM embeddings
(``d = 4096``); the baseline fits it by first-order training for several epochs over every labelled comparison,
the one-pass method touches each new comparison once (a gradient and a few Hessian-vector products). With ``E``
epochs over ``n`` labels, the baseline costs about ``E n`` per-sample gradients for one final fit (``E t`` again
whenever it is refitted after ``t`` labels, ``E t (t + 1) / 2`` if refitted after every label), the one-pass
method ``n (1 + k)`` with ``k`` Hessian-vector products per label; each costs ``O(d)``, which dominates at
``d = 4096``. So "faster" is a constant factor of about ``E / (1 + k)`` in gradient count for one fit (P3's
table: about a third of the MLE's train time), not a statistical statement. Here the MLE is refitted by Newton
every round (``O(iterations t d^2)``) and OMD keeps ``d x d`` matrices (``O(d^2)`` per round), so wall-clock
(``seconds``) reflects neither side of P3's model; ``grad_evals`` is the column in its units. The estimator in
P3's cost model is ``mle_sgd`` (``sgd_epochs`` warm-started epochs of minibatch SGD over the ``t`` labels each
round, ``algorithms.onepass.mle_sgd``), run with the others by the ``e9_regime`` preset; ``mle`` is its converged limit.

Regime preset ``e9_regime``: ``d = 64``, 64 contexts x 16 actions, anisotropic features (``feature_condition =
100``: ``phi = D g / ||D g||``, ``D = diag(100^{-j / (2 (d - 1))})``, ``p3_common.anisotropic_instance``),
``B = 6`` (at ``d = 64`` the margins ``<theta*, z>`` shrink like ``B sqrt(2 / d)``: ``B = 2`` leaves a Bayes accuracy
of about 0.565, ``B = 6`` about 0.67, the quick preset's ceiling and near P3's reported accuracies),
estimators ``mle``, ``mle_sgd``, ``omd``, ``hvp``, budgets ``2d, 4d, 6d, 8d`` as the checkpoints of one run of budget ``8d``
(every selection is sequential, so the first ``t`` labels of a run are the run of budget ``t``; ``active_batch``
too, its batches being fixed in advance). The summary gives, per selection other than ``random``, estimator,
budget ``t`` and metric ``m`` of ``PAIRED``, ``{selection}-{est}/minus_random/{m}/t{t}``: the mean over seeds of
``m(selection-est) - m(random-est)`` paired by seed (same instance, pool and labels) as ``.../diff`` with its 95%
Student-t interval (``.../diff_low``, ``.../diff_high``) and ``.../below_frac``, the fraction of seeds where the
selection's value is below random's (``stats.paired_summary``); and ``bayes_accuracy``, ``heldout_bayes_accuracy``, ``sigma_condition`` (the
condition number of ``Sigma``), means over seeds, beside each cell's ``heldout_accuracy_budget``.
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
from algorithms.onepass import active_selection as act
from algorithms.onepass import estimators, evaluation
from algorithms.onepass.evaluation import METRICS
from bandits import validation as v
from experiments.catalogue import p3_common as p3
from experiments.engine import plotting, stats
from experiments.engine.config import replace
from experiments.engine.results import Results, concat_tables
from experiments.engine.runner import run_vectorized, seed_keys

SELECTIONS = ("random", "active", "active_batch")
EST = ("mle", "omd")

# NaN means "not applicable" in these columns (module docstring).
nan_columns = ("regret_avg", "regret_weak", "seconds", "grad_evals")

COLUMNS = METRICS + evaluation.POPULATION_METRICS + ("grad_evals",)
PAIRED = ("estimation_error", "estimation_error_sigma", "excess_logloss", "accuracy", "heldout_accuracy")
# Loss-derivative evaluations of one comparison per round (module docstring); the MLE's come from its state.

description = "E9: random vs active (APO / top-25% batch) selection x MLE vs OMD at an equal label budget"


@dataclasses.dataclass(frozen=True)
class Config(p3.P3Config):
    """Fields reachable with ``--set field=value`` (module docstring); the instance (``reward_norm`` is
    ``B``), estimator options, objective and timing fields are ``p3_common.P3Config``'s.

    pool: candidate comparisons; budget: labels; batch: the top-fraction batch size; checkpoints: label
    counts at which metrics are taken; heldout: held-out comparisons; selections: random | active |
    active_batch; estimators: registered estimators (built in: omd, mle, ogd, hvp; default mle, omd);
    feature_condition: ``>= 1``, the eigenvalue ratio of the anisotropic features (1: P3's isotropic ones;
    ``p3_common.anisotropic_instance``).
    """

    pool: int = 8192
    budget: int = 1024
    batch: int = 32
    checkpoints: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)
    heldout: int = 2048
    selections: tuple[str, ...] = SELECTIONS
    estimators: tuple[str, ...] = EST
    feature_condition: float = 1.0

    def __post_init__(self):
        v.check_int("budget", self.budget, 1)
        v.check_float("feature_condition", self.feature_condition, low=1.0)
        v.check_int("batch", self.batch, 4)
        v.check_int("pool", self.pool, self.budget)
        v.check_names("selections", self.selections, SELECTIONS)
        v.check_names("estimators", self.estimators, estimators.names())
        needed = -(-self.budget // (self.batch // 4)) * self.batch
        if "active_batch" in self.selections and self.pool < needed:
            v.fail("pool", self.pool, f"at least {needed} (ceil(budget / (batch // 4)) batches of {self.batch}) "
                   "with selection 'active_batch'")
        v.check_int("heldout", self.heldout, 1)
        super().__post_init__()

    @property
    def estimator_names(self) -> tuple[str, ...]:
        return self.estimators

    @property
    def reward_norm(self) -> float:
        """``B = ||theta*||``."""
        return self.instance.reward_norm

    @property
    def rounds(self) -> int:
        """The horizon: one label per round."""
        return self.budget

    @property
    def names(self) -> list[tuple[str, str]]:
        return [(s, e) for s in self.selections for e in self.estimators]


presets = {
    "quick": replace(Config(), n_contexts=64, pool=1536, budget=256, checkpoints=(16, 32, 64, 128, 256),
                     heldout=1024, timing_rounds=(16, 256), timing_repeats=5),
    "paper": Config(),
    "e9_regime": replace(Config(), n_contexts=64, n_actions=16, dim=64, reward_norm=6.0, feature_condition=100.0,
                         pool=4096,
                         budget=512, batch=32, checkpoints=(128, 256, 384, 512), heldout=2048,
                         estimators=("mle", "mle_sgd", "omd", "hvp"), timing_rounds=(128, 512), timing_repeats=3),
}
seeds = {"quick": 8, "paper": 32, "e9_regime": 16}


def make_instance(key, config: Config) -> b.Instance:
    """P3's instance ``theta* = B u`` of ``key``, with anisotropic features unless ``feature_condition = 1``."""
    inst = evaluation.scaled_instance(key, config.instance, config.reward_norm)
    if config.feature_condition != 1.0:
        inst = p3.anisotropic_instance(inst, config.feature_condition)
    return inst


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


def choose_any(selections, index, est, state, available, t, pool_z, batch_rows, config):
    """``choose`` with ``selections[index]`` (a traced index: ``lax.switch``, so the selections of one
    estimator share one compiled round, and only the chosen selection runs)."""
    branches = [functools.partial(choose, s, est, config=config) for s in selections]
    if len(branches) == 1:
        return branches[0](state, available, t, pool_z, batch_rows)
    return jax.lax.switch(index, branches, state, available, t, pool_z, batch_rows)


def simulate(key, config: Config):
    """One seed: metrics ``[n_checkpoints, n_alg]`` and, per algorithm, light state snapshots after rounds
    ``t - 1`` (``t`` in ``config.timed``) and the pool rows chosen. The selections of one estimator run
    one after the other (``lax.map``) through one compiled scan."""
    k_inst, k_pool, k_held = jax.random.split(key, 3)
    inst = make_instance(k_inst, config)
    data = b.sample_preference_data(k_pool, inst, inst.log_pi0, inst.log_pi0, config.pool)
    pool_z = b.feature_differences(inst, data)
    pool_y = data.y.astype(pool_z.dtype)
    z_held, p_held = evaluation.heldout_set(k_held, inst, config.heldout)
    sigma = evaluation.difference_covariance(inst)
    nu = conf.reference_vector(inst, "pi0")
    ck = jnp.asarray(config.checkpoints)
    tk = jnp.asarray([t - 1 for t in config.timed])
    d, n_sel = config.instance.dim, len(config.selections)
    ests = estimators.make_estimators(config.estimators, d, config.onepass, radius=config.reward_norm,
                                      capacity=config.budget)
    metrics, timings = {}, {}
    for est_name, est in zip(config.estimators, ests):
        init = est.init()
        timing0 = p3.timing_buffers(est_name, init, len(tk))

        def one_selection(index, est=est, init=init, timing0=timing0):
            def body(carry, _):
                state, available, rows, snaps, timing, t, evals = carry
                idx, rows = choose_any(config.selections, index, est, state, available, t, pool_z, rows, config)
                state = est.update(state, pool_z[idx], pool_y[idx])
                evals = evals + est.grad_evals(state)
                available = available.at[idx].set(False)
                pos = p3.snapshot_index(t + 1, ck)
                snaps = (snaps[0].at[pos].set(est.theta(state), mode="drop"),
                         snaps[1].at[pos].set(est.inverse_design(state), mode="drop"),
                         snaps[2].at[pos].set(evals, mode="drop"))
                tpos = p3.snapshot_index(t + 1, tk)
                timing = p3.record(est.name, timing, tpos, state)
                return (state, available, rows, snaps, timing, t + 1, evals), idx

            snaps = (jnp.zeros((len(ck), d), pool_z.dtype), jnp.zeros((len(ck), d, d), pool_z.dtype),
                     jnp.zeros(len(ck), pool_z.dtype))
            carry0 = (init, jnp.ones(config.pool, bool), jnp.zeros(config.batch // 4, jnp.int32), snaps, timing0,
                      jnp.asarray(0), jnp.zeros((), pool_z.dtype))
            (_, _, _, snaps, timing, _, _), chosen = jax.lax.scan(body, carry0, None, length=config.budget)

            def per(th, iv, t, evals):
                got = evaluation.estimate_metrics(inst, th, iv, t, z_held, p_held, nu, config.onepass,
                                                  config.objective)
                return {**got, **evaluation.population_metrics(inst, th, sigma), "grad_evals": evals}

            return jax.vmap(per)(snaps[0], snaps[1], ck, snaps[2]), timing, chosen

        got, timing, chosen = jax.lax.map(one_selection, jnp.arange(n_sel, dtype=jnp.int32))
        for j, selection in enumerate(config.selections):
            metrics[(selection, est_name)] = {m: got[m][j] for m in COLUMNS}
            timings[(selection, est_name)] = (jax.tree.map(lambda a, j=j: a[j], timing), chosen[j])
    stacked = {m: jnp.stack([metrics[n][m] for n in config.names], axis=-1) for m in COLUMNS}
    eig = jnp.linalg.eigvalsh(sigma)
    stacked["heldout_bayes_accuracy"] = evaluation.heldout_metrics(inst.theta_star, z_held, p_held)[0]
    stacked["sigma_condition"] = jnp.where(eig[0] > 0, eig[-1] / eig[0], jnp.inf)
    return stacked, tuple(timings[n] for n in config.names)


def _round(state, pool_z, pool_y, t, index, reward_norm, config, est_name, capacity):
    est = estimators.make_estimator(est_name, config.instance.dim, config.onepass, radius=reward_norm,
                                    capacity=max(capacity, 1))
    idx, _ = choose_any(config.selections, index, est, state, jnp.ones(pool_z.shape[0], bool), t, pool_z,
                        jnp.zeros(config.batch // 4, jnp.int32), config)
    return est.update(state, pool_z[idx], pool_y[idx])


def timing_pass(config: Config, timings) -> np.ndarray:
    """Seconds of one round ``[n_timed, n_alg]`` for seed 0 (module docstring); one compile per estimator
    (and per timed ``t`` for one that stores its data, the MLE, whose buffer has exactly ``t`` rows)."""
    key = seed_keys(config.seed, 1)[0]
    k_inst, k_pool, _ = jax.random.split(key, 3)
    inst = make_instance(k_inst, config)
    data = b.sample_preference_data(k_pool, inst, inst.log_pi0, inst.log_pi0, config.pool)
    pool_z = b.feature_differences(inst, data)
    pool_y = data.y.astype(pool_z.dtype)
    out = np.full((len(config.timed), len(config.names)), np.nan)
    jitted = {}
    for ia, (selection, est_name) in enumerate(config.names):
        timing, chosen = timings[ia]
        chosen = np.asarray(chosen)
        index = jnp.asarray(config.selections.index(selection), jnp.int32)
        for it, t in enumerate(config.timed):
            cap = p3.timed_capacity(est_name, t)
            if (est_name, cap) not in jitted:
                jitted[est_name, cap] = jax.jit(functools.partial(_round, config=config, est_name=est_name,
                                                                  capacity=cap))
            # a data-storing estimator gets the labelled rows so far, in the order they were chosen
            state = p3.with_buffer(est_name, jax.tree.map(lambda a: a[it], timing), pool_z[chosen], pool_y[chosen], t)
            out[it, ia] = p3.time_call(jitted[est_name, cap], (state, pool_z, pool_y, jnp.asarray(t - 1), index,
                                                               jnp.asarray(config.reward_norm)),
                                       config.timing_repeats)
    return out


def run(config: Config, seeds: int, progress) -> Results:
    keys = seed_keys(config.seed, seeds)
    out, timings = run_vectorized(functools.partial(simulate, config=config), keys, progress=progress, tag="e9")
    secs = timing_pass(config, jax.tree.map(lambda a: a[0], timings))
    progress.message("timing done")
    ck = np.asarray(config.checkpoints)
    tables = []
    for ia, (selection, est_name) in enumerate(config.names):
        name = f"{selection}-{est_name}"
        n = seeds * len(ck)
        table = {"algorithm": np.full(n, name), "selection": np.full(n, selection),
                 "estimator": np.full(n, est_name), "seed": np.repeat(np.arange(seeds), len(ck)),
                 "t": np.tile(ck, seeds)}
        for m in COLUMNS:
            table[m] = out[m][:, :, ia].reshape(-1)
        table["heldout_bayes_accuracy"] = np.repeat(np.asarray(out["heldout_bayes_accuracy"]), len(ck))
        table["regret_avg"] = p3.nan_column(n)
        table["regret_weak"] = p3.nan_column(n)
        sec = p3.nan_column(n)
        for it, t in enumerate(config.timed):
            sec[(table["seed"] == 0) & (table["t"] == t)] = secs[it, ia]
        table["seconds"] = sec
        tables.append(table)

    def summarize():
        summary = {"dispatch_seconds": p3.dispatch_seconds(config.instance.dim)}
        timed = np.asarray(config.timed, float)
        for ia, (selection, est_name) in enumerate(config.names):
            name = f"{selection}-{est_name}"
            grid = np.concatenate([[1.0], timed, [float(config.budget)]])
            vals = np.concatenate([[secs[0, ia]], secs[:, ia], [secs[-1, ia]]])
            summary[f"{name}/total_seconds"] = float(np.trapezoid(vals, grid))
            final = {m: out[m][:, -1, ia] for m in ("heldout_accuracy", "estimation_error", "subopt_pess",
                                                     "excess_logloss", "grad_evals")}
            summary[f"{name}/heldout_accuracy_budget"] = float(final["heldout_accuracy"].mean())
            summary[f"{name}/heldout_accuracy_budget_sem"] = float(final["heldout_accuracy"].std(ddof=1)
                                                                   / np.sqrt(seeds)) if seeds > 1 else float("nan")
            for m in ("estimation_error", "subopt_pess", "excess_logloss", "grad_evals"):
                summary[f"{name}/{m}_budget"] = float(final[m].mean())
        summary["bayes_accuracy"] = float(out["bayes_accuracy"][:, -1, 0].mean())
        summary["heldout_bayes_accuracy"] = float(np.mean(out["heldout_bayes_accuracy"]))
        summary["sigma_condition"] = float(np.mean(out["sigma_condition"]))
        summary.update(paired_differences(out, config))
        return summary

    return Results(concat_tables(tables), summarize)


def paired_differences(out, config: Config) -> dict:
    """``{selection}-{est}/minus_random/{m}/t{t}/diff`` (``_low``, ``_high``, ``below_frac``: ``stats.paired_summary``)
    for every selection other than
    ``random``, estimator, checkpoint ``t`` and metric of ``PAIRED``: per-seed differences against
    ``random-{est}``, mean and 95% Student-t interval (module docstring); empty without ``random``."""
    entries = {}
    if "random" not in config.selections:
        return entries
    for est_name in config.estimators:
        base = config.names.index(("random", est_name))
        for selection in config.selections:
            if selection == "random":
                continue
            ia = config.names.index((selection, est_name))
            for ic, t in enumerate(config.checkpoints):
                for m in PAIRED:
                    entries.update(stats.paired_summary(f"{selection}-{est_name}/minus_random/{m}/t{t}",
                                                        out[m][:, ic, ia], out[m][:, ic, base]))
    return entries


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    names = list(dict.fromkeys(np.asarray(table["algorithm"]).tolist()))
    panels = [("heldout_accuracy", "held-out accuracy", False), ("estimation_error", "||theta - theta*||_2", True),
              ("excess_logloss", "excess log-loss over theta*", True), ("subopt_pess", "pessimistic SubOpt", True)]
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
            plotting.band_plot(ax, x, y, name, color=estimators.get(est).color, linestyle=styles[sel],
                               loglog=loglog_ok)
        if metric == "heldout_accuracy" and "heldout_bayes_accuracy" in table:
            ax.axhline(float(np.mean(table["heldout_bayes_accuracy"])), color="k", linestyle=":", linewidth=1,
                       label="Bayes ceiling (theta*)")
        plotting.set_logx(ax)
        ax.set(title=label, xlabel="labels used", ylabel=label)
        ax.legend(fontsize="xx-small")
    fig.suptitle(f"active-vs-random: pool {config.pool}, budget {config.budget}, B={config.reward_norm:g}")
    return plotting.save_figure(fig, out_dir, "active_vs_random")
