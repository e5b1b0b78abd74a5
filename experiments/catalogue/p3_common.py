"""The P3 family's shared config base and per-round timing helpers (docs/theory.md §4; E8 omd-vs-mle,
E9 active-vs-random, E10 deployment-regret; the timing helpers also serve lm-omd-features).

The estimators, their options, the instance family ``theta* = B u`` and the metrics of one estimate are
the algorithm layer's (``algorithms.onepass.estimators``, ``algorithms.onepass.evaluation``); here are
``P3Config`` (the fields E8-E10 share) and the experiment-side machinery that measures the wall-clock of
one round outside the vectorised scans (``time_call``, ``light``, ``with_buffer``, ``snapshot_index``), and the
anisotropic features of E9's regime preset (``feature_spectrum``, ``anisotropic_instance``).
"""
from __future__ import annotations

import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import bandits as b
from algorithms.onepass import estimators, policies
from bandits import validation as v
from experiments.engine.config import check_unused

# P3's instances: theta* = B u (algorithms.onepass.evaluation.scaled_instance) with a uniform pi0.
INSTANCE = b.InstanceConfig(kl_coef=0.1)
UNREAD_INSTANCE_FIELDS = ("instance.coverage", "instance.temperature", "instance.reward", "instance.hidden",
                          "instance.skew_strength", "instance.feature_anisotropy", "instance.good_actions")


@dataclasses.dataclass(frozen=True)
class P3Config:
    """Fields shared by E8-E10, reachable with ``--set field=value`` in each (nested ones by their own names):

    instance: ``n_contexts, n_actions, dim, kl_coef`` and ``B = reward_norm`` of ``bandits.InstanceConfig``
    (the family ``theta* = B u`` is linear, BT, with a uniform ``pi0``: ``coverage``, ``temperature``,
    ``reward``, ``hidden`` and ``skew_strength`` are refused); onepass: the estimators' options and the bonus
    radius (``c_beta``, ``radius_mode`` shared | theory | calibrated, ``calibration_seeds``; ``OnePassOptions`` of
    ``algorithms.onepass.estimators``, radii in ``algorithms.onepass.radii``); objective: unregularized
    | kl (Gibbs at kl_coef; with ``unregularized`` kl_coef is refused unless a rule reads it); timing_rounds:
    rounds timed (none: the checkpoints); timing_repeats: timed calls per round; seed: first seed.

    A subclass defines ``checkpoints``, the horizon ``rounds`` (a field or a property) and
    ``estimator_names`` (the estimators it runs); they are validated here, after the subclass's own checks.
    """

    instance: b.InstanceConfig = INSTANCE
    onepass: estimators.OnePassOptions = estimators.OnePassOptions()
    objective: str = "unregularized"
    timing_rounds: tuple[int, ...] | None = None
    timing_repeats: int = 15
    seed: int = 0

    def __post_init__(self):
        v.check_choice("objective", self.objective, policies.OBJECTIVES)
        v.check_increasing_ints("checkpoints", self.checkpoints, 1, self.rounds)
        if self.timing_rounds is not None:
            v.check_increasing_ints("timing_rounds", self.timing_rounds, 1, self.rounds)
        v.check_int("timing_repeats", self.timing_repeats, 1)
        check_unused(self, UNREAD_INSTANCE_FIELDS, "P3's instance family theta* = B u is linear and BT with a "
                     "uniform pi0")
        if not self.reads_kl_coef:
            check_unused(self, ("instance.kl_coef",), "objective='unregularized' has no KL term")
        names = self.estimator_names
        check_unused(self, [f"onepass.{f}" for f in estimators.unread_options(names)],
                     f"none of the estimators run ({', '.join(names)}) reads it")
        if not self.reads_radius_mode:
            check_unused(self, ("onepass.radius_mode",), "this experiment uses the shared radius only")
        if self.onepass.radius_mode != "calibrated":
            check_unused(self, ("onepass.calibration_seeds",), "only radius_mode='calibrated' runs a calibration")

    @property
    def reads_kl_coef(self) -> bool:
        return self.objective == "kl"

    @property
    def reads_radius_mode(self) -> bool:
        """Whether the experiment gives each estimator its radius of ``onepass.radius_mode`` (E8, E10)."""
        return False

    @property
    def timed(self) -> tuple[int, ...]:
        """The rounds whose wall-clock is measured."""
        return self.checkpoints if self.timing_rounds is None else self.timing_rounds


def timed_capacity(name: str, t: int) -> int:
    """The buffer size of estimator ``name``'s timed call at round ``t``: ``t`` for one that stores its data
    (its cost grows with ``t``: one compile per timed round), else 0 (shapes do not depend on ``t``)."""
    return t if estimators.get(name).stores_data else 0


def light(name: str, state):
    """``state`` of estimator ``name`` without its data buffers if it stores its data (snapshots keep
    O(d^2) per estimator)."""
    if estimators.get(name).stores_data:
        return state._replace(z=state.z[:0], y=state.y[:0])
    return state


def timing_buffers(name: str, state, n: int):
    """``n`` copies of ``light(name, state)``: the snapshots of the states before the timed rounds."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), light(name, state))


def record(name: str, buffers, pos, state):
    """``buffers`` with ``light(name, state)`` written at ``pos`` (an out-of-range ``pos`` writes nothing)."""
    return jax.tree.map(lambda buf, a: buf.at[pos].set(a, mode="drop"), buffers, light(name, state))


def snapshot_index(rounds_done, snapshot_rounds):
    """Position of ``rounds_done`` in the sorted ``snapshot_rounds`` (length if absent: dropped write)."""
    pos = jnp.searchsorted(snapshot_rounds, rounds_done)
    hit = snapshot_rounds[jnp.minimum(pos, snapshot_rounds.shape[0] - 1)] == rounds_done
    return jnp.where(hit, pos, snapshot_rounds.shape[0])


def with_buffer(name: str, snap, z, y, t):
    """The honest state of estimator ``name`` after ``t - 1`` rounds from its light snapshot: for one that
    stores its data, buffers of exactly ``t`` rows (rows ``< t - 1`` the data so far, in order; row ``t - 1``
    empty, to be written by round ``t``); any other state as it is."""
    if not estimators.get(name).stores_data:
        return snap
    zb = jnp.asarray(z[:t]).at[t - 1].set(0.0)
    yb = jnp.asarray(y[:t]).at[t - 1].set(0.0)
    return snap._replace(z=zb, y=yb)


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


def dispatch_seconds(dim: int) -> float:
    """Wall-clock of a trivial jitted call on round-sized inputs: the floor under every timed round."""
    return time_call(lambda z, y: z * y, (jnp.ones(dim), jnp.asarray(1.0)), 50)


def nan_column(n):
    return np.full(n, np.nan)


def feature_spectrum(dim: int, condition: float) -> jax.Array:
    """The geometric scales ``s_j = condition^{-j / (2 (d - 1))}``, ``j = 0..d-1`` (``[1]`` for ``d = 1``):
    ``diag(s)^2`` has eigenvalue ratio ``s_0^2 / s_{d-1}^2 = condition``."""
    v.check_int("dim", dim, 1)
    v.check_float("feature_condition", condition, low=1.0)
    if dim == 1:
        return jnp.ones(1)
    return jnp.asarray(condition) ** (-jnp.arange(dim) / (2.0 * (dim - 1)))


def anisotropic_instance(inst: b.Instance, condition: float) -> b.Instance:
    """``inst`` (P3's family, linear reward) with anisotropic unit-norm features and its reward recomputed:

        phi'(x, a) = D phi(x, a) / ||D phi(x, a)||,   D = diag(feature_spectrum(d, condition)),
        r*(x, a) = <theta*, phi'(x, a)>                (theta*, pi0, d0 unchanged).

    The instance's ``phi`` is ``g / ||g||`` with ``g ~ N(0, I_d)``, so ``phi' = D g / ||D g||``: the
    Gaussian ``D g`` has covariance eigenvalue ratio ``condition``, and the row normalisation keeps
    ``||phi'|| = 1`` (``B`` and ``kappa`` keep their meaning); the normalisation and the finite number of
    features move that ratio somewhat (E9 reports the realised one, the condition number of
    ``Sigma = E[z z^T]``: about 106 at its regime preset's 64 x 16 features and ``condition = 100``).
    ``condition = 1`` only re-normalises the already unit rows (callers skip the call then, to keep the
    isotropic numbers bit for bit). No key is drawn: the features are a fixed function of the instance's own."""
    scaled = inst.phi * feature_spectrum(inst.dim, condition).astype(inst.phi.dtype)[None, None, :]
    phi = scaled / jnp.linalg.norm(scaled, axis=-1, keepdims=True)
    return inst._replace(phi=phi, reward=phi @ inst.theta_star)
