"""P3's online reward estimators: one protocol, one registry, one options dataclass (docs/theory.md §4.2, §4.7-4.8).

An estimator is a small bundle of pure functions over an explicit, typed state (a NamedTuple), in the
spirit of optax: its hyper-parameters are closed over when it is built, so all estimators share one
signature::

    est = make_estimator("omd", dim, OnePassOptions(), radius=B, capacity=T)
    state = est.init()                    # e.g. OMDState(theta = 0, hess = lam I, hess_inv = I / lam, count = 0)
    state = est.update(state, z, y)       # one comparison z = phi(x,a) - phi(x,a'), label y in {0, 1}
    est.theta(state)                      # [d]     the current estimate theta_t
    est.inverse_design(state)             # [d, d]  A_t^{-1}, whose norm ||v||_{A_t^{-1}} is the bonus width
    est.grad_evals(state)                 # []      the round's cost in P3's units (per-sample derivatives)

``A_t`` is the design in which the estimator's confidence radius is measured, the entry's ``design``:
``H_t`` for OMD (its local, curvature-weighted design ``cH_t``, §4.2; ``||v||_{V^-1} <= ||v||_{cH^-1}
<= sqrt(kappa) ||v||_{V^-1}``, §9.2 invariant 16) and ``V_t = lam I + sum_i z_i z_i^T`` for the others
(the MLE design, §1.4). Built from an ``EstimatorSpec``: the dimension, the ``OnePassOptions``, the
bound ``B`` on ``||theta*||`` (``radius``: projections and OMD's theory step size; may be traced, so a
sweep over ``B`` compiles once), the number of rounds (``capacity``: the buffer of estimators that store
their data) and the dtype.

Registry entries (``EstimatorEntry``) carry the metadata the experiments use instead of per-estimator
branches: the legend ``label``, an optional ``color`` (None: matplotlib's cycle), ``design`` (``H_t`` |
``V_t``), ``first_order`` (the update uses gradients only, no curvature), ``stores_data`` (the state keeps
every comparison so far in buffers ``z [capacity, d]``, ``y [capacity]``, so a round costs more as ``t``
grows; the experiments time it with a buffer of exactly ``t`` rows) and ``reads`` (the ``OnePassOptions``
fields its build reads; an experiment refuses a changed option that none of its estimators reads).

Built in: ``omd`` (P3's one-pass OMD, ``algorithms.onepass.omd``; ``H_t``), ``mle`` (the regularised
BT-MLE refitted every round, ``algorithms.onepass.mle_refit``; stores its data), ``mle_sgd`` (the same MLE
fitted every round by ``sgd_epochs`` warm-started epochs of minibatch SGD, P3's cost model of its baseline,
``algorithms.onepass.mle_sgd``; stores its data), ``ogd`` (projected OGD with step ``ogd_lr / sqrt(t)``,
the first-order baseline, ``algorithms.onepass.ogd``) and ``hvp`` (the HVP/CG update of P3's code,
``algorithms.onepass.hvp_cg``, constants damping 0.8, growth 100 rounds, 3 CG steps).

``grad_evals(state)`` is the cost of the round that produced ``state`` in P3's units (docs/theory.md §4.7-4.8):
evaluations of one comparison's loss derivative (gradient, curvature ``sigma'`` or Hessian-vector product, ``O(d)``
each for a linear head) at one parameter. ``omd`` 2 (gradient and curvature at ``theta_t``, look-ahead curvature
at ``theta_{t+1}``; its ``O(d^2)`` rank-one updates are not counted), ``ogd`` 1, ``hvp`` ``1 + cg_steps``,
``mle`` ``iterations_t * t`` (each warm-started Newton iteration passes over the ``t`` rows; line-search values
and the ``O(d^2)`` per-row Hessian work are not counted: a lower bound), ``mle_sgd`` ``sgd_epochs * t``; NaN
for an estimator that states none (the default of ``Estimator``). A new estimator is one build function and one registry line::

    def build(spec):                      # constant-step OGD: theta <- Proj_B(theta - ogd_lr g_t(theta))
        def update(state, z, y):
            z = jnp.asarray(z, state.theta.dtype)
            grad = omd.logistic_gradient(state.theta, z, y)
            return ogd.projected_step(state, grad, spec.options.ogd_lr, z[None, :], spec.radius)
        return Estimator(lambda: ogd.ogd_init(spec.dim, spec.options.lam, spec.dtype), update)

    register("ogd_const", EstimatorEntry(build, label="OGD, constant step", first_order=True,
                                         reads=("lam", "ogd_lr")))

(``Estimator``'s ``theta`` and ``inverse_design`` default to ``state.theta`` and ``state.gram_inv``.)
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp

from algorithms.onepass import hvp_cg, mle_refit, mle_sgd, ogd, omd
from bandits import validation as v

DEFAULT_OMD_STEP_SIZE = 1.0
THEORY = "theory"
DESIGNS = ("H_t", "V_t")
RADIUS_MODES = ("shared", "theory", "calibrated")   # algorithms.onepass.radii
RADIUS_FIELDS = ("c_beta", "radius_mode", "calibration_seeds")   # the bonus radius's fields, read by no estimator


@dataclasses.dataclass(frozen=True)
class OnePassOptions:
    """Options of the one-pass estimators and of their bonus radius, validated on creation.

    lam: ridge ``lam > 0`` of the MLE and of ``V_t = lam I + sum z z^T``; omd_lam: OMD's ``cH_1 = omd_lam I``
    (none: ``lam``); omd_step_size: OMD's ``eta``, a number ``> 0`` or ``theory`` for P3's
    ``(1/2) log 2 + B + 1`` (docs/theory.md §4.2 [M]; ``none``, its older spelling in saved manifests, means
    the same); the default ``DEFAULT_OMD_STEP_SIZE = 1`` is the most robust value of the sweep recorded in
    paper_repro.md (E8). projection: OMD's (``none`` | ``euclid`` | ``local_norm``, ``omd.PROJECTIONS``);
    ogd_lr, hvp_lr: the step sizes of ``ogd`` and ``hvp``. sgd_epochs, sgd_lr, sgd_batch: ``mle_sgd``'s epochs per
    round (``>= 1``), step size (``> 0``; the per-sample loss is ``||z||^2 / 4``-smooth, 1 for ``||z|| <= 2``)
    and minibatch size (``>= 1``).

    c_beta: the multiplier of the bonus radius ``beta_t = c_beta sqrt(d log(1 + t))`` [D] (``beta``) that
    scales ``||.||_{A_t^{-1}}`` in P3's pessimistic output and in the deployment rules. ``c_beta = 0`` is
    allowed here, unlike ``ConfidenceConfig.c_beta > 0``: there the radius defines a confidence set that
    P1's bounds rely on, here it is a tuning knob, and ``0`` is the meaningful "no bonus" end (P3's rule
    and MaxInP become greedy, the pessimistic output the plug-in one).

    radius_mode: which radius each estimator's bonus uses (``algorithms.onepass.radii``, docs/theory.md §4.2):
    ``shared`` (the default, one ``beta_t`` above for every design), ``theory`` (each in its own norm with the
    theory's kappa: ``H_t`` estimators ``c_beta sqrt(d log(1 + t))``, ``V_t`` ones ``c_beta kappa sqrt(d log(1 + t))``,
    ``kappa = 1 / sigma'(2B)``) or ``calibrated`` (``c_e sqrt(d log(1 + t))`` with ``c_e`` estimator ``e``'s own 95%
    error quantile from a calibration run on fresh seeds); calibration_seeds: the number of seeds of that run
    (``>= 20``).
    """

    lam: float = 1.0
    omd_lam: float | None = None
    omd_step_size: float | Literal["theory"] | None = DEFAULT_OMD_STEP_SIZE
    projection: str = "euclid"
    ogd_lr: float = 1.0
    hvp_lr: float = 0.1
    sgd_epochs: int = 3
    sgd_lr: float = 0.5
    sgd_batch: int = 32
    c_beta: float = 0.5
    radius_mode: str = "shared"
    calibration_seeds: int = 64

    def __post_init__(self):
        v.check_float("lam", self.lam, low=0.0, low_open=True)
        if self.omd_lam is not None:
            v.check_float("omd_lam", self.omd_lam, low=0.0, low_open=True)
        if self.omd_step_size is not None and self.omd_step_size != THEORY:
            if isinstance(self.omd_step_size, str):
                v.fail("omd_step_size", self.omd_step_size, f"a finite number > 0 or {THEORY!r}")
            v.check_float("omd_step_size", self.omd_step_size, low=0.0, low_open=True)
        v.check_choice("projection", self.projection, omd.PROJECTIONS)
        v.check_float("ogd_lr", self.ogd_lr, low=0.0, low_open=True)
        v.check_float("hvp_lr", self.hvp_lr, low=0.0, low_open=True)
        v.check_int("sgd_epochs", self.sgd_epochs, 1)
        v.check_float("sgd_lr", self.sgd_lr, low=0.0, low_open=True)
        v.check_int("sgd_batch", self.sgd_batch, 1)
        v.check_float("c_beta", self.c_beta, low=0.0)
        v.check_choice("radius_mode", self.radius_mode, RADIUS_MODES)
        v.check_int("calibration_seeds", self.calibration_seeds, 20)

    def step_size(self, reward_norm):
        """OMD's ``eta`` at ``B = reward_norm`` (may be traced): the field, or ``omd.default_step_size(B)``
        for ``theory`` (1 without a bound)."""
        if self.omd_step_size is not None and self.omd_step_size != THEORY:
            return self.omd_step_size
        return omd.default_step_size(reward_norm) if reward_norm is not None else 1.0

    def beta(self, dim: int, t) -> jax.Array:
        """The shared bonus radius ``beta_t = c_beta sqrt(d log(1 + t))`` [D] after ``t`` comparisons (class
        docstring); ``algorithms.onepass.radii.estimator_radius`` gives each estimator's radius of ``radius_mode``."""
        return bonus_radius(self.c_beta, dim, t)


OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(OnePassOptions))


def bonus_radius(c_beta, dim: int, t) -> jax.Array:
    """``beta_t = c_beta sqrt(d log(1 + t))`` [D]: the common shape of the radii used for bonuses."""
    return c_beta * jnp.sqrt(dim * jnp.log1p(jnp.asarray(t, jnp.result_type(float))))


class EstimatorSpec(NamedTuple):
    """What an estimator is built from (module docstring)."""

    dim: int
    options: OnePassOptions
    radius: Any = None        # B = the bound on ||theta*|| (None: no projection); may be traced
    capacity: int = 1         # rounds to come: the buffer size of a data-storing estimator
    dtype: Any = None


def _theta(state) -> jax.Array:
    return state.theta


def _gram_inv(state) -> jax.Array:
    return state.gram_inv


def _hess_inv(state) -> jax.Array:
    return state.hess_inv


def _no_cost(state) -> jax.Array:
    return jnp.asarray(jnp.nan, jnp.result_type(float))


def _fixed_cost(evals: float):
    return lambda state: jnp.asarray(evals, jnp.result_type(float))


class Estimator(NamedTuple):
    """The bundle of one estimator: ``init() -> state``, ``update(state, z, y) -> state``, ``theta(state)``,
    ``inverse_design(state)`` (``A_t^{-1}`` of its ``design``) and ``grad_evals(state)`` (the round's cost in P3's
    units, module docstring; NaN by default); ``name`` is filled by ``make_estimator``."""

    init: Callable[[], Any]
    update: Callable[[Any, jax.Array, Any], Any]
    theta: Callable[[Any], jax.Array] = _theta
    inverse_design: Callable[[Any], jax.Array] = _gram_inv
    name: str = ""
    grad_evals: Callable[[Any], jax.Array] = _no_cost


class EstimatorEntry(NamedTuple):
    """A registered estimator: its ``build(spec) -> Estimator`` and its metadata (module docstring)."""

    build: Callable[[EstimatorSpec], Estimator]
    label: str = ""
    color: str | None = None
    design: str = "V_t"
    first_order: bool = False
    stores_data: bool = False
    reads: tuple[str, ...] = ("lam",)


def _omd(spec: EstimatorSpec) -> Estimator:
    o = spec.options
    if o.projection != "none" and spec.radius is None:
        raise ValueError(f"radius=None is not allowed with projection={o.projection!r}: radius must be the bound B "
                         "on ||theta*|| (or projection='none').")
    lam = o.lam if o.omd_lam is None else o.omd_lam
    return Estimator(functools.partial(omd.omd_init, spec.dim, lam, spec.dtype),
                     functools.partial(_omd_update, step_size=o.step_size(spec.radius), radius=spec.radius,
                                       projection=o.projection),
                     _theta, _hess_inv, grad_evals=_fixed_cost(2.0))


def _mle(spec: EstimatorSpec, radius=None, max_iter: int = 50) -> Estimator:
    o = spec.options
    return Estimator(functools.partial(mle_refit.mle_init, spec.capacity, spec.dim, o.lam, spec.dtype),
                     functools.partial(_mle_update, lam=o.lam, radius=radius, max_iter=max_iter),
                     grad_evals=_refit_cost)


def _refit_cost(state) -> jax.Array:
    return (state.iterations * state.count).astype(jnp.result_type(float))


def _mle_sgd(spec: EstimatorSpec) -> Estimator:
    o = spec.options
    return Estimator(functools.partial(mle_sgd.mle_sgd_init, spec.capacity, spec.dim, o.lam, spec.dtype),
                     functools.partial(_mle_sgd_update, lam=o.lam, learning_rate=o.sgd_lr, epochs=o.sgd_epochs,
                                       batch=o.sgd_batch, radius=spec.radius),
                     grad_evals=functools.partial(_epochs_cost, epochs=o.sgd_epochs))


def _epochs_cost(state, epochs: int) -> jax.Array:
    return (epochs * state.count).astype(jnp.result_type(float))


def _ogd(spec: EstimatorSpec) -> Estimator:
    o = spec.options
    return Estimator(functools.partial(ogd.ogd_init, spec.dim, o.lam, spec.dtype),
                     functools.partial(_ogd_update, learning_rate=o.ogd_lr, radius=spec.radius),
                     grad_evals=_fixed_cost(1.0))


def _hvp(spec: EstimatorSpec, damping=0.8, growth_steps=100, cg_steps: int = 3) -> Estimator:
    o = spec.options
    return Estimator(functools.partial(hvp_cg.hvp_init, spec.dim, o.lam, spec.dtype),
                     functools.partial(_hvp_update, learning_rate=o.hvp_lr, damping=damping,
                                       growth_steps=growth_steps, cg_steps=cg_steps),
                     grad_evals=_fixed_cost(1.0 + cg_steps))


def _omd_update(state, z, y, step_size, radius, projection):
    return omd.omd_step(state, z, y, step_size, radius, projection)


def _mle_update(state, z, y, lam, radius, max_iter):
    return mle_refit.mle_step(state, z, y, lam, radius, max_iter)


def _mle_sgd_update(state, z, y, lam, learning_rate, epochs, batch, radius):
    return mle_sgd.mle_sgd_step(state, z, y, lam, learning_rate, epochs, batch, radius)


def _ogd_update(state, z, y, learning_rate, radius):
    return ogd.ogd_step(state, z, y, learning_rate, radius)


def _hvp_update(state, z, y, learning_rate, damping, growth_steps, cg_steps):
    return hvp_cg.hvp_step(state, z, y, learning_rate, damping, growth_steps, cg_steps)


ESTIMATORS: dict[str, EstimatorEntry] = {
    "omd": EstimatorEntry(_omd, label="one-pass OMD (P3)", color="C0", design="H_t",
                          reads=("lam", "omd_lam", "omd_step_size", "projection")),
    "mle": EstimatorEntry(_mle, label="MLE refit each round", color="C3", stores_data=True),
    "mle_sgd": EstimatorEntry(_mle_sgd, label="MLE by SGD epochs each round", color="C1", first_order=True,
                              stores_data=True, reads=("lam", "sgd_epochs", "sgd_lr", "sgd_batch")),
    "ogd": EstimatorEntry(_ogd, label="one-pass OGD", color="C2", first_order=True, reads=("lam", "ogd_lr")),
    "hvp": EstimatorEntry(_hvp, label="HVP/CG (P3 code)", color="C4", reads=("lam", "hvp_lr")),
}
BUILTIN_ESTIMATORS = tuple(ESTIMATORS)


def register(name: str, entry: EstimatorEntry, *, overwrite: bool = False) -> EstimatorEntry:
    """Add ``entry`` under ``name`` (a taken name is refused unless ``overwrite``); returns it. Names are
    letters, digits and ``_``: the experiments write ``selection-estimator`` and ``rule:estimator``."""
    v.check_registry_name("estimator", name, ESTIMATORS, overwrite=overwrite, dash=False)
    if not isinstance(entry, EstimatorEntry) or not callable(entry.build):
        v.fail(f"estimator {name!r}", entry, "an EstimatorEntry(build, label, color, design, first_order, "
               "stores_data, reads)")
    v.check_choice(f"estimator {name!r} design", entry.design, DESIGNS)
    reads = tuple(entry.reads)
    for field in reads:
        v.check_choice(f"estimator {name!r} reads", field, OPTION_FIELDS)
    ESTIMATORS[name] = entry._replace(label=entry.label or name, reads=reads)
    return ESTIMATORS[name]


def get(name: str) -> EstimatorEntry:
    v.check_choice("estimator", name, tuple(ESTIMATORS))
    return ESTIMATORS[name]


def names() -> tuple[str, ...]:
    """Every registered estimator, built-ins first."""
    return tuple(ESTIMATORS)


def make_estimator(name: str, dim: int, options: OnePassOptions = OnePassOptions(), *, radius=None,
                   capacity: int = 1, dtype=None) -> Estimator:
    """The bundle of the registered estimator ``name`` (module docstring); ``radius`` is ``B``
    (None: no projection, and OMD's ``theory`` step is 1); ``capacity``: rounds to come."""
    entry = get(name)
    if not isinstance(options, OnePassOptions):
        v.fail("options", options, "a OnePassOptions")
    v.check_int("dim", dim, 1)
    return entry.build(EstimatorSpec(dim, options, radius, capacity, dtype))._replace(name=name)


def make_estimators(names_: tuple[str, ...], dim: int, options: OnePassOptions, *, radius=None,
                    capacity: int = 1, dtype=None) -> list[Estimator]:
    """``make_estimator`` of each name, sharing the dimension, options, ``B`` and capacity."""
    return [make_estimator(n, dim, options, radius=radius, capacity=capacity, dtype=dtype) for n in names_]


def unread_options(names_: tuple[str, ...]) -> tuple[str, ...]:
    """The estimator fields of ``OnePassOptions`` (all but the radius's, ``RADIUS_FIELDS``) that none of
    ``names_`` reads."""
    read = {f for n in names_ for f in get(n).reads}
    return tuple(f for f in OPTION_FIELDS if f not in RADIUS_FIELDS and f not in read)

