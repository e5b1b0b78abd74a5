"""TMPS-PF: two-stage mixed-policy sampling for preference feedback (docs/theory.md §5.3).

Zhao, Ye, Gu, Zhang, "Sharp Analysis for KL-Regularized Contextual Bandits and RLHF",
arXiv 2411.04625, Algorithm 2 (TMPS-PF). In the toolkit's parametrization ``kl_coef = 1/eta_Zhao``
(Zhao et al. put ``eta^{-1}`` on the KL; docs/theory.md §1.2)::

    Stage 1: m comparisons x ~ d0, a1, a2 ~ pi0(.|x), y ~ BT;   theta_hat0 = BT-MLE(stage 1)
             pi_hat0(a|x) = pi0(a|x) exp(<theta_hat0, phi(x,a)> / kl_coef) / Z(x)
    Stage 2: n comparisons x ~ d0, a1, a2 ~ pi_hat0(.|x), y ~ BT
             theta_hat = BT-MLE(stage 1 + stage 2)          (warm-started at theta_hat0)
    Output:  pi_hat(a|x) = pi0(a|x) exp(<theta_hat, phi(x,a)> / kl_coef) / Z(x)

Zhao et al. take ``m = Theta(eta^2 D^2 e^B log N)`` (coverage burn-in) and ``n = Theta(eta e^B log N / eps)``
(their Thm 4.7): the coverage constant ``D^2`` enters additively through the stage-1 size only.

Both stages come from ONE comparison stream of ``key`` (``bandits.sample_preference_data``):
stage 1 is comparisons ``0 .. m-1``, stage 2 is comparisons ``m .. m+n-1`` (``start=m``), so the two
stages never share randomness and, where ``pi_hat0 = pi0``, TMPS sees exactly the single-stage data.
Pure JAX, one seed per call, fixed shapes (``m`` and ``n`` are static), ``vmap``-able over keys.
"""
from __future__ import annotations

from typing import NamedTuple

import jax

import bandits as b
from algorithms.core.bt_mle import fit_bt_mle
from algorithms.offline.gshf import linear_gibbs
from bandits import validation as v


class TMPSResult(NamedTuple):
    theta0: jax.Array        # [d] stage-1 BT-MLE
    log_pi_hat0: jax.Array   # [n_x, K] stage-1 Gibbs policy (the stage-2 sampling policy)
    theta: jax.Array         # [d] BT-MLE on both stages
    log_pi: jax.Array        # [n_x, K] output Gibbs policy
    data: b.PreferenceData   # [m + n] stage 1 followed by stage 2


def check_stage_sizes(m, n) -> None:
    """Validate the stage sizes: ``m >= 1`` (stage 1 needs data) and ``n >= 0``."""
    v.check_int("m", m, 1)
    v.check_int("n", n, 0)


def tmps(key: jax.Array, instance: b.Instance, m: int, n: int, lam=1.0) -> TMPSResult:
    """TMPS-PF on ``instance`` with ``m`` stage-1 and ``n`` stage-2 comparisons (module docstring).

    ``lam > 0`` is the ridge of both BT-MLE fits (``algorithms.core.bt_mle.fit_bt_mle``); the policies use
    ``instance.kl_coef``. ``n = 0`` returns the single-stage Gibbs-of-MLE on ``m`` comparisons.
    """
    check_stage_sizes(m, n)
    stage1 = b.sample_preference_data(key, instance, instance.log_pi0, instance.log_pi0, m)
    z1 = b.feature_differences(instance, stage1)
    theta0 = fit_bt_mle(z1, stage1.y, stage1.mask, lam).theta
    log_pi_hat0 = linear_gibbs(instance, theta0)
    stage2 = b.sample_preference_data(key, instance, log_pi_hat0, log_pi_hat0, n, start=m)
    data = b.concatenate(stage1, stage2)
    z = b.feature_differences(instance, data)
    theta = fit_bt_mle(z, data.y, data.mask, lam, theta0=theta0).theta
    return TMPSResult(theta0, log_pi_hat0, theta, linear_gibbs(instance, theta), data)
