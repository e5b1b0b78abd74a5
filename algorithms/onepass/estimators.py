"""One interface over P3's online reward estimators (docs/theory.md §4.2, §4.8): OMD, MLE refit, OGD, HVP/CG.

``make_estimator(name, dim, ...)`` returns an ``Estimator`` bundle of pure functions::

    init()                  -> state
    update(state, z, y)     -> state           one comparison z = phi(x,a) - phi(x,a'), label y
    theta(state)            -> [d]             the current estimate
    inverse_design(state)   -> [d, d]          A_t^{-1} whose norm ||v||_{A_t^{-1}} is the bonus width

with ``A_t = cH_t`` (OMD's local, curvature-weighted design, docs/theory.md §4.2) for ``omd`` and
``A_t = V_t = lam I + sum z z^T`` for the others (the MLE design, §1.4). Hyper-parameters are closed over.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

from algorithms.onepass import hvp_cg, mle_refit, ogd, omd
from bandits import validation as v

ESTIMATORS = ("omd", "mle", "ogd", "hvp")


class Estimator(NamedTuple):
    name: str
    init: Callable[[], Any]
    update: Callable[[Any, Any, Any], Any]
    theta: Callable[[Any], Any]
    inverse_design: Callable[[Any], Any]


def make_estimator(name: str, dim: int, *, lam=1.0, omd_lam=None, radius=None, step_size=None,
                   projection: str = "none", capacity: int = 1, ogd_lr=1.0, hvp_lr=0.1,
                   hvp_damping=0.8, hvp_growth_steps=100, hvp_cg_steps: int = 3, mle_radius=None,
                   mle_max_iter: int = 50, dtype=None) -> Estimator:
    """The bundle of ``name`` in ``ESTIMATORS``.

    lam: ridge of the MLE / design ``V``; omd_lam: OMD's ``cH_1 = omd_lam I`` (default ``lam``);
    radius: ``B`` for projections (OMD ``projection``, OGD Euclidean; None: no projection);
    step_size: OMD's ``eta`` (default ``omd.default_step_size(radius)``, or 1 without a radius);
    capacity: the MLE buffer size (>= the number of rounds); mle_radius: optional ``||theta|| <= B``
    constraint of the MLE; ogd_lr, hvp_*: see ``algorithms.onepass.ogd``, ``algorithms.onepass.hvp_cg``.
    """
    v.check_choice("estimator", name, ESTIMATORS)
    if name == "omd":
        eta = step_size if step_size is not None else (omd.default_step_size(radius) if radius is not None else 1.0)
        return Estimator(name, functools.partial(omd.omd_init, dim, lam if omd_lam is None else omd_lam, dtype),
                         functools.partial(_omd_update, step_size=eta, radius=radius, projection=projection),
                         _theta, _hess_inv)
    if name == "mle":
        return Estimator(name, functools.partial(mle_refit.mle_init, capacity, dim, lam, dtype),
                         functools.partial(_mle_update, lam=lam, radius=mle_radius, max_iter=mle_max_iter),
                         _theta, _gram_inv)
    if name == "ogd":
        return Estimator(name, functools.partial(ogd.ogd_init, dim, lam, dtype),
                         functools.partial(_ogd_update, learning_rate=ogd_lr, radius=radius), _theta, _gram_inv)
    return Estimator(name, functools.partial(hvp_cg.hvp_init, dim, lam, dtype),
                     functools.partial(_hvp_update, learning_rate=hvp_lr, damping=hvp_damping,
                                       growth_steps=hvp_growth_steps, cg_steps=hvp_cg_steps),
                     _theta, _gram_inv)


def _omd_update(state, z, y, step_size, radius, projection):
    return omd.omd_step(state, z, y, step_size, radius, projection)


def _mle_update(state, z, y, lam, radius, max_iter):
    return mle_refit.mle_step(state, z, y, lam, radius, max_iter)


def _ogd_update(state, z, y, learning_rate, radius):
    return ogd.ogd_step(state, z, y, learning_rate, radius)


def _hvp_update(state, z, y, learning_rate, damping, growth_steps, cg_steps):
    return hvp_cg.hvp_step(state, z, y, learning_rate, damping, growth_steps, cg_steps)


def _theta(state):
    return state.theta


def _hess_inv(state):
    return state.hess_inv


def _gram_inv(state):
    return state.gram_inv
