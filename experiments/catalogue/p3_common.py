"""Shared by the three P3 experiments (docs/theory.md §4): E8 omd-vs-mle, E9 active-vs-random, E10 deployment-regret.

- ``P3Config``: the frozen base of their configs, holding the instance, estimator (``EstimatorFields``, also
  used by lm-omd-features), objective and timing fields and their validation (each experiment's ``Config``
  derives from it and adds its own fields);
- the instance family ``theta* = B u`` (``scaled_instance``), the estimator bundles (``estimators``), the
  metrics of one estimate (``estimate_metrics``) and the per-round wall-clock helpers (``time_call``,
  ``mle_state_at``, ``light``).

OMD's step size ``eta`` (``omd_step_size``): the default ``DEFAULT_OMD_STEP_SIZE`` is the value chosen by
the sweep recorded in paper_repro.md (E8, quick preset, B in {1,2,3,4}); ``omd_step_size=theory`` selects
P3's ``(1/2) log 2 + B + 1`` (docs/theory.md §4.2 [M]; ``algorithms.onepass.omd.default_step_size``), which was too large
on these instances.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

import bandits as b
from algorithms.onepass import mle_refit, policies as p3_policy
from algorithms.onepass.omd import PROJECTIONS
from algorithms.onepass.estimators import make_estimator
from bandits import validation as v

LABELS = {"omd": "one-pass OMD (P3)", "mle": "MLE refit each round", "ogd": "one-pass OGD",
          "hvp": "HVP/CG (P3 code)"}
COLORS = {"omd": "C0", "mle": "C3", "ogd": "C2", "hvp": "C4"}
METRICS = ("estimation_error", "error_local", "heldout_accuracy", "heldout_logloss", "subopt", "subopt_pess")

DEFAULT_OMD_STEP_SIZE = 1.0
THEORY = "theory"


def check_rounds(field, values, maximum=None):
    """``values`` must be a non-empty strictly increasing tuple of integers >= 1 (and <= ``maximum``)."""
    if (not values or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in values)
            or list(values) != sorted(set(values)) or (maximum is not None and values[-1] > maximum)):
        limit = f" and <= {maximum}" if maximum is not None else ""
        v.fail(field, values, f"a non-empty strictly increasing tuple of integers >= 1{limit}")


def check_names(field, values, allowed):
    """``values`` must be a non-empty tuple of names from ``allowed``."""
    if not values:
        v.fail(field, values, "a non-empty tuple of " + ", ".join(allowed))
    for name in values:
        v.check_choice(field, name, allowed)


@dataclasses.dataclass(frozen=True)
class EstimatorFields:
    """The estimators' fields (``estimators``), shared by E8-E10 and lm-omd-features.

    lam: ridge of the MLE and of ``V``; omd_lam: OMD's ``cH_1 = omd_lam I`` (none: ``lam``); omd_step_size:
    OMD's ``eta``, a number or ``theory`` (``(1/2) log 2 + B + 1``; ``none``, its older spelling in saved
    manifests, means the same); projection: OMD's (none | euclid | local_norm); ogd_lr, hvp_lr: the step
    sizes of the ``ogd`` and ``hvp`` estimators. A subclass calls ``check_estimator_fields`` from its
    ``__post_init__``.
    """

    lam: float = 1.0
    omd_lam: float | None = None
    omd_step_size: float | Literal["theory"] | None = DEFAULT_OMD_STEP_SIZE
    projection: str = "euclid"
    ogd_lr: float = 1.0
    hvp_lr: float = 0.1

    def check_estimator_fields(self) -> None:
        v.check_float("lam", self.lam, low=0.0, low_open=True)
        if self.omd_lam is not None:
            v.check_float("omd_lam", self.omd_lam, low=0.0, low_open=True)
        if self.omd_step_size is not None and self.omd_step_size != THEORY:
            if isinstance(self.omd_step_size, str):
                v.fail("omd_step_size", self.omd_step_size, f"a finite number > 0 or {THEORY!r}")
            v.check_float("omd_step_size", self.omd_step_size, low=0.0, low_open=True)
        v.check_choice("projection", self.projection, PROJECTIONS)
        v.check_float("ogd_lr", self.ogd_lr, low=0.0, low_open=True)
        v.check_float("hvp_lr", self.hvp_lr, low=0.0, low_open=True)

    def step_size(self, reward_norm):
        """OMD's ``eta`` at ``B = reward_norm`` (may be traced): the field, or the theory value."""
        if self.omd_step_size is None or self.omd_step_size == THEORY:
            return None          # make_estimator: algorithms.onepass.omd.default_step_size(radius)
        return self.omd_step_size


@dataclasses.dataclass(frozen=True)
class P3Config(EstimatorFields):
    """Fields shared by E8-E10, reachable with ``--set field=value`` in each: the estimator fields
    (``EstimatorFields``) and

    n_contexts, n_actions, dim: the instance (``bandits.InstanceConfig``); objective: unregularized | kl
    (Gibbs at kl_coef); c_beta: the radius scale ``beta_t = c_beta sqrt(d log(1 + t))``; timing_rounds:
    rounds timed (none: the checkpoints); timing_repeats: timed calls per round; seed: first seed.

    A subclass defines ``checkpoints`` and the horizon ``rounds`` (a field or a property); they are
    validated here together, after the subclass's own checks.
    """

    n_contexts: int = 128
    n_actions: int = 32
    dim: int = 8
    objective: str = "unregularized"
    kl_coef: float = 0.1
    c_beta: float = 0.5
    timing_rounds: tuple[int, ...] | None = None
    timing_repeats: int = 15
    seed: int = 0

    def __post_init__(self):
        b.InstanceConfig(n_contexts=self.n_contexts, n_actions=self.n_actions, dim=self.dim, kl_coef=self.kl_coef)
        self.check_estimator_fields()
        v.check_choice("objective", self.objective, p3_policy.OBJECTIVES)
        v.check_float("c_beta", self.c_beta, low=0.0)
        check_rounds("checkpoints", self.checkpoints, self.rounds)
        if self.timing_rounds is not None:
            check_rounds("timing_rounds", self.timing_rounds, self.rounds)
        v.check_int("timing_repeats", self.timing_repeats, 1)

    @property
    def timed(self) -> tuple[int, ...]:
        """The rounds whose wall-clock is measured."""
        return self.checkpoints if self.timing_rounds is None else self.timing_rounds


def scaled_instance(key, config: P3Config, reward_norm) -> b.Instance:
    """``make_instance`` at ``B = 1`` with ``theta*`` (and the reward table) scaled by ``reward_norm``
    (may be traced), uniform ``pi0``: every ``B`` shares the features and the direction of ``theta*``."""
    cfg = b.InstanceConfig(n_contexts=config.n_contexts, n_actions=config.n_actions, dim=config.dim,
                           reward_norm=1.0, kl_coef=config.kl_coef)
    inst = b.make_instance(key, cfg)
    return inst._replace(reward=reward_norm * inst.reward, params=b.LinearReward(reward_norm * inst.theta_star))


def estimators(config: P3Config, names, reward_norm, capacity: int):
    """The estimator bundles of ``names`` (radius = ``B`` for the projections; MLE buffer ``capacity``)."""
    return [make_estimator(name, config.dim, lam=config.lam, omd_lam=config.omd_lam, radius=reward_norm,
                           step_size=config.step_size(reward_norm), projection=config.projection,
                           capacity=capacity, ogd_lr=config.ogd_lr, hvp_lr=config.hvp_lr)
            for name in names]


def light(state):
    """A state without the MLE's data buffer (snapshots keep O(d^2) per estimator)."""
    if isinstance(state, mle_refit.MLEState):
        return state._replace(z=state.z[:0], y=state.y[:0])
    return state


def snapshot_index(rounds_done, snapshot_rounds):
    """Position of ``rounds_done`` in the sorted ``snapshot_rounds`` (length if absent: dropped write)."""
    pos = jnp.searchsorted(snapshot_rounds, rounds_done)
    hit = snapshot_rounds[jnp.minimum(pos, snapshot_rounds.shape[0] - 1)] == rounds_done
    return jnp.where(hit, pos, snapshot_rounds.shape[0])


def heldout_metrics(theta, z, p):
    """Accuracy and cross-entropy of ``theta`` in expectation over BT labels with probabilities ``p``."""
    u = z @ theta
    acc = jnp.where(u > 0, p, jnp.where(u < 0, 1.0 - p, 0.5))
    loss = p * jax.nn.softplus(-u) + (1.0 - p) * jax.nn.softplus(u)
    return jnp.mean(acc), jnp.mean(loss)


def beta_schedule(c_beta, dim, t):
    """``beta_t = c_beta sqrt(d log(1 + t))`` [D]: the common shape of the radii used for bonuses."""
    return c_beta * jnp.sqrt(dim * jnp.log1p(jnp.asarray(t, jnp.result_type(float))))


def estimate_metrics(inst, theta, inverse, t, z_held, p_held, nu, config: P3Config):
    """The metric dict of one estimate (``METRICS``; omd_vs_mle's docstring defines them)."""
    err = theta - inst.theta_star
    chol = jnp.linalg.cholesky(inverse)
    local = jnp.linalg.norm(jax.scipy.linalg.solve_triangular(chol, err, lower=True))
    acc, loss = heldout_metrics(theta, z_held, p_held)
    beta = beta_schedule(config.c_beta, config.dim, t)
    return {"estimation_error": jnp.linalg.norm(err), "error_local": local, "heldout_accuracy": acc,
            "heldout_logloss": loss,
            "subopt": p3_policy.output_suboptimality(inst, inst.phi @ theta, config.objective),
            "subopt_pess": p3_policy.output_suboptimality(
                inst, p3_policy.pessimistic_reward(inst, theta, inverse, beta, nu), config.objective)}


def heldout_set(key, inst, n):
    """``n`` fresh logging-policy comparisons: feature differences and their BT probabilities."""
    data = b.sample_preference_data(key, inst, inst.log_pi0, inst.log_pi0, n)
    return b.feature_differences(inst, data), b.preference_probability(inst, data.x, data.a1, data.a2)


def time_call(fn, args, repeats: int) -> float:
    """Median wall-clock of ``fn(*args)`` (jitted, compiled beforehand, ``block_until_ready``)."""
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    jax.block_until_ready(jitted(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def mle_state_at(snap, z, y, t):
    """The MLE's honest state after ``t - 1`` rounds with a buffer of exactly ``t`` rows (rows ``< t - 1``
    the data so far, in order; row ``t - 1`` empty, to be written by round ``t``)."""
    zb = jnp.asarray(z[:t]).at[t - 1].set(0.0)
    yb = jnp.asarray(y[:t]).at[t - 1].set(0.0)
    return snap._replace(z=zb, y=yb)


def dispatch_seconds(config: P3Config) -> float:
    """Wall-clock of a trivial jitted call on round-sized inputs: the floor under every timed round."""
    return time_call(lambda z, y: z * y, (jnp.ones(config.dim), jnp.asarray(1.0)), 50)


def nan_column(n):
    return np.full(n, np.nan)
