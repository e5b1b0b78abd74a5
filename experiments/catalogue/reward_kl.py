"""reward-kl (docs/theory.md E2): reward-KL frontiers, over-optimization, and multi-step vs one-step RS.

For each seed: one instance with a peaked, low-coverage ``pi0`` (``coverage``, ``temperature``), one
offline data set of ``n`` comparisons ``a1, a2 ~ pi0`` and its BT-MLE ``theta_hat`` (fitted once; it
does not depend on ``kl_coef``). Then, over a log-grid of ``kl_coef`` (a ``vmap``; ``Instance.kl_coef``
is an array), every policy is evaluated exactly with the TRUE reward ``r*``:

- panel ``frontier``: ``gibbs_true`` = Gibbs(r*) (the exact frontier ``pi*_eta``), ``mle_gibbs`` =
  Gibbs(<theta_hat, phi>) (over-optimizes the proxy), ``option_ii`` and ``option_i`` (P1's
  pessimistic offline GSHF, docs/theory.md §2.2);
- panel ``rs``: rejection sampling with the MLE reward as the proxy (as RSO does), at an equal
  proposal budget per prompt (``rs_budgets``): one-step RSO (``rso_*``) and P1's multi-step RS
  (``multistep_*``, ``rs_stages`` stages, schedule ``rs_schedule``; docs/theory.md §2.5 item 2), each with
  the empirical-M rule (RSO's heuristic) and with the exact M. Each row is the *exact* law of the
  pooled accepted samples (``algorithms.offline.rejection_sampling.accepted_law`` / ``multistep_law``), so no
  Monte Carlo noise beyond the seed (instance + data). With the exact M both samplers' output law is
  Gibbs(r_hat) (they differ only in acceptance), with the empirical M they differ in law.

Neural true reward (``--set reward=neural``; issue 3): ``r*`` is a random MLP (``bandits.MLPReward``,
width ``hidden``), so the linear BT-MLE above is misspecified (its rows are kept: ``mle_gibbs`` and
``option_ii`` measure what the linear theory buys when it is wrong). The frontier panel adds
``neural_gibbs`` = Gibbs(r_net), with ``r_net`` the neural BT-MLE (``algorithms.core.neural_mle.fit_network``,
``neural_steps`` Adam steps at ``neural_learning_rate`` on the same offline data, fitted once per seed:
it does not depend on ``kl_coef``), and ``neural_linear_pess`` = Gibbs(r_net - neural_beta Gamma_h),
``Gamma_h`` the neural-linear uncertainty on the network's last-layer features (docs/theory.md §8.1(ii);
the Option II form, as in ``offline-rate``). ``option_i`` is dropped for neural rewards: it is a second
linear pessimistic policy, and ``option_ii`` is the linear counterpart of ``neural_linear_pess`` (same
``Gibbs(r_hat - beta Gamma)`` form), so the pairs (mle_gibbs, option_ii) and (neural_gibbs,
neural_linear_pess) answer "does pessimism mitigate over-optimization" for each reward model. The rs
panel uses ``r_net`` as its proxy when the reward is neural (RSO ranks candidates with the trained
reward model, and the realizable one is what practice would train; the linear proxy's
over-optimization is already in the frontier panel); its exact-M rows then equal ``neural_gibbs``.
``proxy_reward`` is ``E_pi r_hat`` for the reward model the policy optimizes: ``<theta_hat, phi>``
for ``gibbs_true``, ``mle_gibbs`` and the Options, ``r_net`` for the neural policies, and the panel's
proxy in the rs panel.

Columns: ``panel, algorithm, seed, kl_coef, budget`` (0 in the frontier panel), ``kl_to_ref``
(``E_x KL(pi||pi0)``), ``true_reward`` (``E_x E_pi r*``), ``value`` (``J_{kl_coef}(pi)`` with ``r*``),
``value_gap`` (``J(pi*) - J(pi) >= 0``), ``proxy_reward`` (``E_pi r_hat``) and, in the rs panel,
``acceptance_rate`` (expected fraction of the output stage's candidates accepted),
``overall_acceptance`` (product of the stage rates; the one-step rate for RSO),
``min_stage_acceptance`` and ``expected_accepted`` (expected accepted samples per prompt from the
output stage: ``n_last * rate_last``). The summary adds, for a linear reward, the fraction of seeds with
``theta*`` in the confidence set of the pessimistic policies (``frontier/in_confidence_set_frac``) and each
linear pessimism difference at ``kl_min`` on that event (``..._at_kl_min_in_set``, when it occurs;
``--set beta_mode=laplace`` gives a radius that covers, docs/theory.md §1.4).
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
from algorithms.core import neural_mle
from algorithms.offline import learners
from algorithms.offline import rejection_sampling as rs
from bandits import validation as v
from experiments.engine import plotting, stats
from experiments.engine.config import check_unused, replace
from experiments.engine.results import Results, concat_tables, tidy
from experiments.engine.runner import run_vectorized, seed_keys

FRONTIER = ("gibbs_true", "mle_gibbs", "option_ii", "option_i")
NEURAL_FRONTIER = ("gibbs_true", "mle_gibbs", "option_ii", "neural_gibbs", "neural_linear_pess")
RS = ("rso_empirical", "multistep_empirical", "rso_exact", "multistep_exact")
SCHEDULES = ("inverse_linear", "geometric")
LABELS = {"gibbs_true": "Gibbs(r*) (exact frontier)", "mle_gibbs": "MLE-Gibbs (proxy r_hat)",
          "option_ii": "Option II (pessimistic)", "option_i": "Option I (pessimistic)",
          "rso_empirical": "one-step RSO, empirical M", "multistep_empirical": "multi-step RS, empirical M",
          "rso_exact": "one-step RS, exact M (= Gibbs(r_hat))",
          "multistep_exact": "multi-step RS, exact M (= Gibbs(r_hat))",
          "neural_gibbs": "neural MLE-Gibbs (proxy r_net)", "neural_linear_pess": "neural-linear pessimistic"}
NEURAL_LABELS = {"mle_gibbs": "linear MLE-Gibbs (misspecified)", "option_ii": "linear Option II (misspecified)"}
COLORS = {"gibbs_true": "k", "mle_gibbs": "C3", "option_ii": "C2", "option_i": "C0",
          "rso_empirical": "C1", "multistep_empirical": "C4", "rso_exact": "C3", "multistep_exact": "C9",
          "neural_gibbs": "C1", "neural_linear_pess": "C4"}
METRICS = ("kl_to_ref", "true_reward", "value", "value_gap", "proxy_reward", "acceptance_rate",
           "overall_acceptance", "min_stage_acceptance", "expected_accepted")

# (pessimistic policy, the Gibbs policy of the same reward model) pairs compared in the summary.
PESSIMISM_PAIRS = (("option_i", "mle_gibbs"), ("option_ii", "mle_gibbs"),
                   ("neural_linear_pess", "neural_gibbs"))
NET_STREAM = 1  # fold_in index of the neural BT-MLE's initialisation key (the linear run's keys are untouched)

TIE = 1e-9  # |difference| treated as float rounding in the summary's who-beats-whom fractions

description = "E2: reward-KL frontier, over-optimization, pessimism, multi-step vs one-step RS"


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields reachable with ``--set field=value``; those of the nested ``instance`` (``bandits.InstanceConfig``;
    its ``kl_coef`` is swept by ``kl_min``, ``kl_max``, ``n_kl``), ``confidence``
    (``algorithms.core.confidence.ConfidenceConfig``) and ``offline`` (``algorithms.offline.learners.OfflineOptions``:
    the neural fields) by their own names. ``algorithms``: the frontier's offline learners (any registered in
    ``algorithms.offline.learners``; empty: the default set of the reward kind), beside ``gibbs_true``.

    ``n``: the size of each seed's offline data set, comparisons ``a1, a2 ~ pi0`` (an integer ``>= 1``);
    the BT-MLE ``theta_hat`` (and, for a neural reward, ``r_net``) is fitted on it once and reused at every
    ``kl_coef``, so the grid shows over-optimization of one fixed proxy.
    ``kl_min``: the smallest ``kl_coef`` ``eta > 0`` of the grid (the summary's ``..._at_kl_min`` entries
    are read there, where the proxy is optimized hardest).
    ``kl_max``: the largest ``kl_coef`` of the grid (``> kl_min`` when ``n_kl > 1``).
    ``n_kl``: the number of grid points (an integer ``>= 1``), ``kl_coefs = geomspace(kl_min, kl_max,
    n_kl)``, log-spaced (``n_kl = 1``: ``kl_min`` only).
    ``rs_budgets``: the proposal budgets per prompt of the rs panel, a strictly increasing tuple of
    integers, each at least twice ``rs_stages`` (two proposals per stage); one-step RSO draws all of a
    budget's candidates from ``pi0`` at once, multi-step RS splits them over its stages by
    ``rejection_sampling.split_budget`` (``budget // rs_stages`` each, the remainder to the last, output
    stage), so both spend the same proposals.
    ``rs_stages``: the number ``N >= 1`` of stages of P1's multi-step rejection sampling (docs/theory.md
    §2.5 item 2), the path ``pi0 -> pi0 exp(r/eta_1) -> ... -> pi0 exp(r/eta_N)`` with ``eta_1 > ... >
    eta_N = kl_coef``, each stage proposing from the previous one's exact law.
    ``rs_schedule``: how the ``eta_k`` descend (``schedule``): ``inverse_linear`` splits ``1/kl_coef``
    into ``N`` equal increments, ``eta_k = N kl_coef / k``; ``geometric`` uses ``eta_k = kl_coef
    ratio^(N - k)`` with ``ratio = rs_geometric_ratio``.
    ``rs_geometric_ratio``: the ratio ``eta_k / eta_{k+1} > 1`` of the geometric schedule (read only
    when ``rs_schedule=geometric``)."""

    instance: b.InstanceConfig = b.InstanceConfig(n_contexts=64, coverage=0.8, temperature=10.0)
    confidence: conf.ConfidenceConfig = conf.ConfidenceConfig()
    offline: learners.OfflineOptions = learners.OfflineOptions()
    algorithms: tuple[str, ...] = ()
    n: int = 256
    kl_min: float = 0.01
    kl_max: float = 10.0
    n_kl: int = 12
    rs_budgets: tuple[int, ...] = (8, 32, 128)
    rs_stages: int = 3
    rs_schedule: str = "inverse_linear"
    rs_geometric_ratio: float = 4.0
    seed: int = 0

    def __post_init__(self):
        check_unused(self, ("instance.kl_coef",), "reward-kl sweeps kl_coef over kl_min..kl_max (n_kl values)")
        check_unused(self, ("offline.dpo_steps", "offline.dpo_learning_rate", "offline.ensemble_size"),
                     "no learner of reward-kl's frontier trains DPO or an ensemble")
        v.check_names("algorithms", self.algorithms, learners.names(neural=self.instance.reward == "neural"),
                      empty=True)
        v.check_int("n", self.n, 1)
        v.check_float("kl_min", self.kl_min, low=0.0, low_open=True)
        v.check_float("kl_max", self.kl_max, low=0.0, low_open=True)
        v.check_int("n_kl", self.n_kl, 1)
        if self.n_kl > 1 and not self.kl_max > self.kl_min:
            v.fail("kl_max", self.kl_max, f"a number > kl_min = {self.kl_min} when n_kl > 1")
        v.check_int("rs_stages", self.rs_stages, 1)
        v.check_choice("rs_schedule", self.rs_schedule, SCHEDULES)
        v.check_float("rs_geometric_ratio", self.rs_geometric_ratio, low=1.0, low_open=True)
        budgets = self.rs_budgets
        if not budgets or any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) for x in budgets) \
                or list(budgets) != sorted(set(budgets)) or min(budgets) < 2 * self.rs_stages:
            v.fail("rs_budgets", budgets, "a non-empty strictly increasing tuple of integers >= 2 * rs_stages "
                   f"= {2 * self.rs_stages} (every stage gets at least 2 proposals per prompt)")

    @property
    def frontier_algorithms(self) -> tuple[str, ...]:
        """``gibbs_true`` (the exact frontier, Gibbs(r*)) and the offline learners of the frontier panel."""
        if self.algorithms:
            return ("gibbs_true",) + tuple(self.algorithms)
        return NEURAL_FRONTIER if self.instance.reward == "neural" else FRONTIER

    @property
    def kl_coefs(self) -> np.ndarray:
        return np.geomspace(self.kl_min, self.kl_max, self.n_kl)


presets = {
    "quick": replace(Config(), n_contexts=32, rs_budgets=(8, 32)),
    "paper": Config(),
}
seeds = {"quick": 32, "paper": 512}


def schedule(kl_coef, config: Config) -> jax.Array:
    """Multi-step schedule ``eta_1 > ... > eta_N = kl_coef``: ``inverse_linear`` splits ``1/kl_coef``
    into N equal increments (``eta_k = N kl_coef / k``); ``geometric`` uses ``eta_k = kl_coef
    ratio^(N-k)``. Works on traced ``kl_coef``."""
    k = jnp.arange(1, config.rs_stages + 1, dtype=jnp.result_type(float))
    if config.rs_schedule == "inverse_linear":
        return kl_coef * config.rs_stages / k
    return kl_coef * config.rs_geometric_ratio ** (config.rs_stages - k)


def offline_data(key, config: Config):
    """Instance (kl_coef is overridden later) and its ``n`` comparisons ``a1, a2 ~ pi0`` of one seed."""
    k_inst, k_data = jax.random.split(key)
    inst = b.make_instance(k_inst, config.instance)
    return inst, b.sample_preference_data(k_data, inst, inst.log_pi0, inst.log_pi0, config.n)


def fit_offline(key, config: Config):
    """Instance (kl_coef is overridden later), the BT-MLE and its confidence set of one seed."""
    inst, theta, cs, _ = _fit_linear(key, config)
    return inst, theta, cs


def _fit_linear(key, config: Config):
    inst, data = offline_data(key, config)
    z = b.feature_differences(inst, data)
    cs = conf.mle_confidence_set(z, data.y, data.mask, config.n, config.instance.reward_norm, config.confidence)
    return inst, cs.center, cs, data


def fit_neural(key, inst, data, config: Config):
    """The neural BT-MLE (``algorithms.core.neural_mle``; Adam from a fresh initialisation), independent of
    ``kl_coef``."""
    i, lam = config.instance, config.confidence.lam
    net = neural_mle.init_network(jax.random.fold_in(key, NET_STREAM), i.dim, i.hidden, inst.phi.dtype)
    return neural_mle.fit_network(net, inst.phi, data, lam, config.offline.neural_steps,
                                  config.offline.neural_learning_rate).params


def _metrics(inst, log_pi, proxy):
    return {"kl_to_ref": b.kl_to_reference(inst, log_pi), "true_reward": b.expected_reward(inst, log_pi),
            "value": b.value(inst, log_pi), "value_gap": b.suboptimality(inst, log_pi),
            "proxy_reward": b.expected_reward(inst, log_pi, proxy)}


def rs_laws(log_pi0, proxy, kl_coef, budget: int, config: Config):
    """Exact accepted laws of the four RS variants at one ``kl_coef`` and per-prompt ``budget``:
    dict name -> (log_law [n_x, K], output-stage rate [n_x], overall rate [n_x], min stage rate [n_x],
    output-stage candidates)."""
    counts = rs.split_budget(budget, config.rs_stages)
    etas = schedule(kl_coef, config)
    out = {}
    for mode in ("empirical", "exact"):
        one = rs.accepted_law(log_pi0, proxy, kl_coef, max_reward=mode, n_candidates=budget)
        out[f"rso_{mode}"] = (one.log_law, one.acceptance_rate, one.acceptance_rate, one.acceptance_rate,
                              budget)
        multi = rs.multistep_law(log_pi0, proxy, etas, max_reward=mode, n_candidates=counts)
        rates = multi.acceptance_rate  # [N, n_x]
        out[f"multistep_{mode}"] = (multi.log_law[-1], rates[-1], jnp.prod(rates, axis=0),
                                    jnp.min(rates, axis=0), counts[-1])
    return out


def per_seed(key, kl_coefs, config: Config):
    """Frontier metrics ``[n_kl, n_frontier]`` and RS metrics ``[n_budgets, n_kl, n_rs]`` of one seed."""
    inst0, theta, cs, data = _fit_linear(key, config)
    nu = conf.reference_vector(inst0, config.confidence.reference_vector)
    proxy = inst0.phi @ theta
    nan = jnp.full((), jnp.nan, proxy.dtype)
    neural = config.instance.reward == "neural"
    net = fit_neural(key, inst0, data, config) if neural else None
    r_net = b.reward_table(net, inst0.phi) if neural else None
    rs_proxy = r_net if neural else proxy
    chosen = {name: learners.get(name) for name in config.frontier_algorithms if name != "gibbs_true"}

    def frontier(eta):
        inst = inst0._replace(kl_coef=eta.astype(proxy.dtype))
        view = learners.make_view(inst, data, cs, nu, network=net, key=jax.random.fold_in(key, NET_STREAM + 1),
                                  lam=config.confidence.lam, hidden=config.instance.hidden, options=config.offline)
        rows = []
        for name in config.frontier_algorithms:
            if name == "gibbs_true":
                log_pi = b.optimal_policy(inst)
            else:
                log_pi = chosen[name].fit(view, chosen[name].init(view))[0]
            m = _metrics(inst, log_pi, r_net if name in chosen and chosen[name].needs_network else proxy)
            m.update(acceptance_rate=nan, overall_acceptance=nan, min_stage_acceptance=nan,
                     expected_accepted=nan)
            rows.append(m)
        return {k: jnp.stack([r[k] for r in rows]) for k in METRICS}

    def rs_panel(eta, budget):
        inst = inst0._replace(kl_coef=eta.astype(proxy.dtype))
        laws = rs_laws(inst.log_pi0, rs_proxy, inst.kl_coef, budget, config)
        rows = []
        for name in RS:
            log_law, rate, overall, lowest, n_last = laws[name]
            m = _metrics(inst, log_law, rs_proxy)
            m.update(acceptance_rate=b.context_mean(inst, rate), overall_acceptance=b.context_mean(inst, overall),
                     min_stage_acceptance=b.context_mean(inst, lowest),
                     expected_accepted=n_last * b.context_mean(inst, rate))
            rows.append(m)
        return {k: jnp.stack([r[k] for r in rows]) for k in METRICS}

    front = jax.vmap(frontier)(kl_coefs)
    per_budget = [jax.vmap(lambda e: rs_panel(e, budget))(kl_coefs) for budget in config.rs_budgets]
    rs_out = {k: jnp.stack([p[k] for p in per_budget]) for k in METRICS}
    in_cs = nan if neural else conf.contains(cs, inst0.theta_star).astype(proxy.dtype)
    return {"frontier": front, "rs": rs_out, "in_confidence_set": in_cs}


def run(config: Config, seeds: int, progress) -> Results:
    keys = seed_keys(config.seed, seeds)
    etas = config.kl_coefs
    out = run_vectorized(functools.partial(per_seed, config=config), keys, etas, progress=progress,
                         tag="reward_kl")
    seed_ids = np.arange(seeds)
    front = tidy(out["frontier"], seed=seed_ids, kl_coef=etas, algorithm=np.asarray(config.frontier_algorithms))
    front = {"panel": np.full(len(front["seed"]), "frontier"), "budget": np.zeros(len(front["seed"]), int),
             **front}
    rs_table = tidy(out["rs"], seed=seed_ids, budget=np.asarray(config.rs_budgets), kl_coef=etas,
                    algorithm=np.asarray(RS))
    rs_table = {"panel": np.full(len(rs_table["seed"]), "rs"), **rs_table}
    cols = ["panel", "algorithm", "seed", "kl_coef", "budget", *METRICS]
    table = concat_tables([{c: front[c] for c in cols}, {c: rs_table[c] for c in cols}])
    return Results(table, lambda: summarize(out, config))


def _frontier_domination(kl_a, r_a, kl_b, r_b):
    """Mean-curve comparison at equal KL: at each point of curve A inside B's KL range, A's true reward
    minus B's (B linearly interpolated in log KL). Returns the array of differences (NaN outside)."""
    order = np.argsort(kl_b)
    lx, ly = np.log(kl_b[order]), r_b[order]
    inside = (np.log(kl_a) >= lx[0]) & (np.log(kl_a) <= lx[-1])
    diff = np.full(kl_a.shape, np.nan)
    diff[inside] = r_a[inside] - np.interp(np.log(kl_a[inside]), lx, ly)
    return diff


def summarize(out, config: Config) -> dict[str, float]:
    etas = config.kl_coefs
    s = {}
    f = {k: np.asarray(v) for k, v in out["frontier"].items()}  # [seeds, n_kl, n_alg]
    idx = {a: i for i, a in enumerate(config.frontier_algorithms)}
    for a, i in idx.items():
        r = f["true_reward"][:, :, i].mean(0)
        j = int(np.argmax(r))
        s[f"frontier/{a}/peak_true_reward"] = float(r[j])
        s[f"frontier/{a}/peak_kl_coef"] = float(etas[j])
        s[f"frontier/{a}/peak_kl_to_ref"] = float(f["kl_to_ref"][:, j, i].mean())
        s[f"frontier/{a}/true_reward_at_kl_min"] = float(r[0])
        s[f"frontier/{a}/kl_to_ref_at_kl_min"] = float(f["kl_to_ref"][:, 0, i].mean())
        s[f"frontier/{a}/max_value_gap"] = float(f["value_gap"][:, :, i].max())
    s["frontier/min_value_gap_over_all"] = float(f["value_gap"].min())
    if config.instance.reward == "linear":
        s["frontier/in_confidence_set_frac"] = float(np.mean(np.asarray(out["in_confidence_set"])))
    for a in ("mle_gibbs", "neural_gibbs"):
        if a in idx:
            r = f["true_reward"][:, :, idx[a]]
            s[f"frontier/{a}/overoptimization_drop"] = float(r.mean(0).max() - r.mean(0)[0])
            s[f"frontier/{a}/overoptimized_seed_frac"] = float(np.mean(r.max(1) - r[:, 0] > 1e-9))
    for a, ref in PESSIMISM_PAIRS:
        if a not in idx:
            continue
        # Keys of the linear pairs keep their historical names ("..._beats_mle").
        tag = "mle" if ref == "mle_gibbs" else ref
        r_ref = f["true_reward"][:, :, idx[ref]]
        d = f["true_reward"][:, :, idx[a]] - r_ref
        dm, h = d.mean(0), stats.t_interval(d)[1]
        s[f"frontier/{a}_beats_{tag}/true_reward_grid_frac"] = float(np.mean(dm > 0))
        s[f"frontier/{a}_beats_{tag}/true_reward_grid_frac_significant"] = float(np.mean(dm - h > 0))
        dv = f["value"][:, :, idx[a]] - f["value"][:, :, idx[ref]]
        s[f"frontier/{a}_beats_{tag}/value_grid_frac"] = float(np.mean(dv.mean(0) > 0))
        s[f"frontier/{a}_beats_{tag}/value_grid_frac_significant"] = float(np.mean(dv.mean(0) - stats.t_interval(dv)[1] > 0))
        s[f"frontier/{a}_minus_{tag}/true_reward_at_kl_min"] = float(dm[0])
        in_set = np.asarray(out["in_confidence_set"]) == 1
        if ref == "mle_gibbs" and np.any(in_set):
            # pessimism's guarantee assumes theta* in C: the same difference on the seeds of that event
            s[f"frontier/{a}_minus_{tag}/true_reward_at_kl_min_in_set"] = float(d[in_set, 0].mean())
        dom = _frontier_domination(f["kl_to_ref"][:, :, idx[a]].mean(0), f["true_reward"][:, :, idx[a]].mean(0),
                                   f["kl_to_ref"][:, :, idx[ref]].mean(0), r_ref.mean(0))
        if np.any(~np.isnan(dom)):
            s[f"frontier/{a}_above_{tag}_curve_at_equal_kl/frac"] = float(np.nanmean(dom > 0))
    g = {k: np.asarray(v) for k, v in out["rs"].items()}  # [seeds, n_budgets, n_kl, n_rs]
    ri = {a: i for i, a in enumerate(RS)}
    for bi, budget in enumerate(config.rs_budgets):
        pre = f"rs/budget{budget}"
        for mode in ("empirical", "exact"):
            one, multi = ri[f"rso_{mode}"], ri[f"multistep_{mode}"]
            for metric in ("true_reward", "value"):
                d = g[metric][:, bi, :, multi] - g[metric][:, bi, :, one]
                dm, h = d.mean(0), stats.t_interval(d)[1]
                # Differences below TIE are float rounding (exact M: the two laws are identical).
                tie = np.abs(d).max(0) <= TIE
                s[f"{pre}/{mode}/tie_{metric}_grid_frac"] = float(np.mean(tie))
                s[f"{pre}/{mode}/multi_beats_one_{metric}_grid_frac"] = float(np.mean((dm > 0) & ~tie))
                s[f"{pre}/{mode}/multi_beats_one_{metric}_grid_frac_significant"] = float(
                    np.mean((dm - h > 0) & ~tie))
                s[f"{pre}/{mode}/one_beats_multi_{metric}_grid_frac_significant"] = float(
                    np.mean((dm + h < 0) & ~tie))
            dom = _frontier_domination(g["kl_to_ref"][:, bi, :, multi].mean(0), g["true_reward"][:, bi, :, multi].mean(0),
                                       g["kl_to_ref"][:, bi, :, one].mean(0), g["true_reward"][:, bi, :, one].mean(0))
            if np.any(~np.isnan(dom)):
                s[f"{pre}/{mode}/multi_above_one_curve_at_equal_kl_frac"] = float(np.nanmean(dom > TIE))
                s[f"{pre}/{mode}/multi_below_one_curve_at_equal_kl_frac"] = float(np.nanmean(dom < -TIE))
                s[f"{pre}/{mode}/multi_minus_one_curve_at_equal_kl_mean"] = float(np.nanmean(dom))
            for a, i in ((f"rso_{mode}", one), (f"multistep_{mode}", multi)):
                r = g["true_reward"][:, bi, :, i].mean(0)
                j = int(np.argmax(r))
                s[f"{pre}/{a}/peak_true_reward"] = float(r[j])
                s[f"{pre}/{a}/peak_kl_coef"] = float(etas[j])
                s[f"{pre}/{a}/expected_accepted_at_kl_min"] = float(g["expected_accepted"][:, bi, 0, i].mean())
                s[f"{pre}/{a}/expected_accepted_at_kl_1"] = float(np.interp(
                    0.0, np.log(etas), g["expected_accepted"][:, bi, :, i].mean(0)))
                s[f"{pre}/{a}/acceptance_rate_at_kl_min"] = float(g["acceptance_rate"][:, bi, 0, i].mean())
            d = g["expected_accepted"][:, bi, :, multi] - g["expected_accepted"][:, bi, :, one]
            s[f"{pre}/{mode}/multi_more_accepted_grid_frac"] = float(np.mean(d.mean(0) > TIE))
            s[f"{pre}/{mode}/multi_minus_one_accepted_at_kl_min"] = float(d[:, 0].mean())
            s[f"{pre}/{mode}/multi_minus_one_accepted_at_kl_max"] = float(d[:, -1].mean())
    return s


# ---------------------------------------------------------------------------------------------
# Figures


def _frontier_points(ax, table, where, label, color, marker="o", linestyle="-"):
    """Mean (KL, true reward) per kl_coef with 95% CIs in both directions, joined in kl_coef order."""
    x_eta, kl = plotting.pivot(table, "kl_coef", "kl_to_ref", where=where)
    _, r = plotting.pivot(table, "kl_coef", "true_reward", where=where)
    km, klo, khi = stats.mean_ci(kl)
    rm, rlo, rhi = stats.mean_ci(r)
    ax.errorbar(km, rm, xerr=[km - klo, khi - km], yerr=[rm - rlo, rhi - rm], color=color, marker=marker,
                markersize=3.5, linestyle=linestyle, linewidth=1.2, elinewidth=0.8, capsize=1.5, label=label)
    return x_eta, km, rm


def _annotate_eta(ax, x_eta, km, rm):
    for i in (0, len(x_eta) // 2, len(x_eta) - 1):
        ax.annotate(f"kl_coef={x_eta[i]:.3g}", (km[i], rm[i]), textcoords="offset points", xytext=(4, -10),
                    fontsize="x-small", color="0.3")


def plot(table, config: Config, out_dir: Path) -> list[Path]:
    panel = np.asarray(table["panel"])
    n_seeds = len(np.unique(np.asarray(table["seed"])))
    i = config.instance
    setting = (f"pi0: c={i.coverage:+.1f}, s={i.temperature:g}; n={config.n} pi0 comparisons; "
               f"d={i.dim}, K={i.n_actions}, B={i.reward_norm:g}; {n_seeds} seeds; "
               "mean with 95% CI")
    present = set(np.asarray(table["algorithm"])[panel == "frontier"].tolist())
    neural = "neural_gibbs" in present
    if neural:
        setting = f"MLP r* (hidden {i.hidden}); " + setting
    paths = []
    labels = {**LABELS, **NEURAL_LABELS} if neural else LABELS
    # Figure 1: frontier + over-optimization.
    fig, axes = plotting.figure(ncols=3, size=(5.2, 4.4))
    known = FRONTIER + NEURAL_FRONTIER[3:]
    order = [a for a in known if a in present] + sorted(present - set(known))
    for alg in order:
        label = labels.get(alg) or (learners.LEARNERS[alg].label if alg in learners.LEARNERS else alg)
        color = COLORS.get(alg)
        where = {"panel": "frontier", "algorithm": alg}
        x_eta, km, rm = _frontier_points(axes[0], table, where, label, color)
        if alg == "mle_gibbs":
            _annotate_eta(axes[0], x_eta, km, rm)
        x, y = plotting.pivot(table, "kl_coef", "true_reward", where=where)
        plotting.band_plot(axes[1], x, y, label, color=color)
        x, y = plotting.pivot(table, "kl_coef", "value_gap", where=where)
        if alg != "gibbs_true":
            plotting.band_plot(axes[2], x, y, label, color=color, loglog=True)
    axes[0].set_xscale("log")
    axes[0].set(title="Reward-KL frontier (points: kl_coef grid)", xlabel="E_x KL(pi || pi0)",
                ylabel="true reward E_x E_pi r*")
    axes[1].set_xscale("log")
    axes[1].set(title="Over-optimization: true reward vs kl_coef", xlabel="kl_coef (log scale)",
                ylabel="true reward E_x E_pi r*")
    axes[2].set(title="Regularized gap J(pi*) - J(pi) (>= 0)", xlabel="kl_coef", ylabel="J_kl_coef(pi*) - J_kl_coef(pi)")
    for ax in axes:
        ax.legend(fontsize="x-small")
        ax.grid(alpha=0.3)
    what = ("neural true reward (MLP r*): linear MLE-Gibbs and Option II are misspecified; neural BT-MLE "
            f"r_net ({config.offline.neural_steps} Adam steps), neural-linear pessimism "
            f"beta={config.offline.neural_beta:g}"
            if neural else "Gibbs(r*), MLE-Gibbs and pessimistic offline GSHF")
    fig.suptitle(f"reward-kl: {what}\n{setting}", fontsize="medium")
    paths += plotting.save_figure(fig, out_dir, "reward_kl_frontier")

    # Figure 2: RS frontiers per budget.
    budgets = sorted(set(np.asarray(table["budget"])[panel == "rs"].tolist()))
    fig, axes = plotting.figure(ncols=len(budgets), nrows=2, size=(5.0, 4.2))
    axes = np.asarray(axes).reshape(2, len(budgets))
    for ax, budget in zip(axes[1], budgets):
        for alg, ls in (("rso_exact", "--"), ("rso_empirical", "-"), ("multistep_empirical", "-")):
            x, y = plotting.pivot(table, "kl_coef", "value_gap", where={"panel": "rs", "algorithm": alg,
                                                                          "budget": budget})
            plotting.band_plot(ax, x, y, LABELS[alg], color=COLORS[alg], loglog=True, linestyle=ls)
        ax.set(title=f"budget {budget}: regularized gap (lower is better)", xlabel="kl_coef",
               ylabel="J_kl_coef(pi*) - J_kl_coef(pi), true r*")
        ax.legend(fontsize="x-small")
        ax.grid(alpha=0.3)
    for ax, budget in zip(axes[0], budgets):
        _frontier_points(ax, table, {"panel": "frontier", "algorithm": "gibbs_true"}, LABELS["gibbs_true"], "k",
                         linestyle=":")
        for alg, marker, ls in (("rso_exact", "s", "--"), ("rso_empirical", "o", "-"),
                                ("multistep_empirical", "^", "-")):
            _frontier_points(ax, table, {"panel": "rs", "algorithm": alg, "budget": budget}, LABELS[alg],
                             COLORS[alg], marker=marker, linestyle=ls)
        ax.set_xscale("log")
        ax.set(title=f"budget {budget} proposals per prompt",
               xlabel="E_x KL(pi || pi0)", ylabel="true reward E_x E_pi r*")
        ax.legend(fontsize="x-small")
        ax.grid(alpha=0.3)
    fig.suptitle(f"reward-kl: exact accepted laws of RS on the {'neural' if neural else 'linear'} MLE proxy r_hat, "
                 "evaluated with r*\n"
                 f"multi-step: {config.rs_stages} stages, {config.rs_schedule} schedule; exact-M multi-step "
                 "has the same law as exact-M one-step (not drawn)\n" + setting, fontsize="small")
    paths += plotting.save_figure(fig, out_dir, "reward_kl_rs_frontier")

    # Figure 3: acceptance.
    fig, axes = plotting.figure(ncols=len(budgets), nrows=2, size=(5.0, 3.9))
    axes = np.asarray(axes).reshape(2, len(budgets))
    for col, budget in enumerate(budgets):
        for alg in RS:
            where = {"panel": "rs", "algorithm": alg, "budget": budget}
            x, y = plotting.pivot(table, "kl_coef", "expected_accepted", where=where)
            plotting.band_plot(axes[0, col], x, y, LABELS[alg], color=COLORS[alg], loglog=True,
                               linestyle="--" if "exact" in alg else "-")
            x, y = plotting.pivot(table, "kl_coef", "acceptance_rate", where=where)
            plotting.band_plot(axes[1, col], x, y, LABELS[alg].split(" (")[0] + " (output stage)",
                               color=COLORS[alg], loglog=True, linestyle="--" if "exact" in alg else "-")
        axes[0, col].set(title=f"budget {budget}: E[# accepted] per prompt", xlabel="kl_coef",
                         ylabel="E[# accepted] (output stage)")
        axes[1, col].set(title=f"budget {budget}: acceptance rate", xlabel="kl_coef",
                         ylabel="P(accept) of an output-stage candidate")
        for ax in axes[:, col]:
            ax.legend(fontsize="x-small")
            ax.grid(alpha=0.3)
    fig.suptitle(f"reward-kl: acceptance at equal proposal budget\n(multi-step: {config.rs_stages} stages, "
                 f"{config.rs_schedule} schedule, budget split by split_budget)\n" + setting, fontsize="small")
    paths += plotting.save_figure(fig, out_dir, "reward_kl_rs_acceptance")
    return paths
