"""Direct-alignment losses written once, on log-probability arrays (docs/theory.md §6, §2.3; docs/llm_bridge.md §0).

Every loss takes per-comparison log-probabilities of the chosen (preferred) and rejected responses
under the trained policy ``pi`` and the reference ``pi_ref``, so tabular, tiny-LM and Hugging Face
policies share one definition: a backend only has to supply the four arrays. With

    h = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)]

and ``kl_coef`` (the beta of the DPO paper; docs/theory.md §1.2), every loss is the mean over valid rows (``mask``; all rows
when ``mask`` is None; 0 when no row is valid). Masked rows are zeroed *before* any nonlinearity, so
non-finite values there reach neither the loss nor its gradient. All arrays of one call must have
the same shape (any shape; the mean runs over every valid element).

- DPO (Rafailov et al. 2023):           ``softplus(-(kl_coef h + margin))  =  -log sigmoid(kl_coef h + margin)``;
  the optional additive ``margin`` gives P1's pessimistic DPO (Xiong et al. ICML 2024; docs/theory.md §2.3).
- IPO (Azar et al. 2023):               ``(h - 1 / (2 tau))^2`` with ``tau = kl_coef``.
- DPO + likelihood bonus (docs/theory.md §6): ``DPO + alpha mean_{y ~ pi_cal}[log pi(y|x) - c log pi_ref(y|x)]``,
  of which XPO, SELM and VPO are calibration choices (``xpo_loss``, ``selm_loss``, ``vpo_loss``).

Scalars (``kl_coef``, ``tau``, coefficients) may be traced (``vmap`` over a ``kl_coef`` grid); they are
validated only when concrete.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bandits import validation as v


def _check_same_shape(reference_field: str, reference, **arrays) -> None:
    shape = tuple(jnp.shape(reference))
    for field, array in arrays.items():
        if array is not None and tuple(jnp.shape(array)) != shape:
            raise ValueError(f"{field} has shape {tuple(jnp.shape(array))}, which is not allowed: {field} "
                             f"must have the shape of {reference_field}, {shape}.")


def _check_positive(field: str, value) -> None:
    if v.is_concrete(value):
        v.check_float(field, value, low=0.0, low_open=True)


def _check_finite(field: str, value, low: float | None = None) -> None:
    if v.is_concrete(value):
        v.check_float(field, value, low=low)


def masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """``sum_i mask_i values_i / max(sum_i mask_i, 1)`` (the plain mean when ``mask`` is None)."""
    if mask is None:
        return jnp.mean(values)
    valid = mask.astype(bool)
    total = jnp.sum(jnp.where(valid, values, 0.0))
    return total / jnp.maximum(jnp.sum(valid), 1).astype(total.dtype)


def _zero_masked(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    return values if mask is None else jnp.where(mask.astype(bool), values, 0.0)


def log_ratio_difference(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected) -> jax.Array:
    """``h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]`` per comparison."""
    return (logp_chosen - ref_logp_chosen) - (logp_rejected - ref_logp_rejected)


def _h(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected, margin, mask):
    _check_same_shape("logp_chosen", logp_chosen, logp_rejected=logp_rejected,
                      ref_logp_chosen=ref_logp_chosen, ref_logp_rejected=ref_logp_rejected,
                      margin=margin, mask=mask)
    h = log_ratio_difference(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected)
    return _zero_masked(h, mask)


def dpo_loss(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected, kl_coef, *,
             margin=None, mask=None) -> jax.Array:
    """DPO (Rafailov et al. 2023): ``mean_i softplus(-(kl_coef h_i + margin_i))``.

    With ``pi = Gibbs(r)`` at the same ``kl_coef`` the log-partition cancels inside ``h`` and this is
    exactly the Bradley-Terry negative log-likelihood of ``r`` (docs/theory.md §9.2 invariant 4).
    ``margin`` (per comparison, additive inside the sigmoid) is P1's pessimistic DPO margin
    ``Gamma(x, y_w) - Gamma(x, y_l)`` (Xiong et al. ICML 2024; docs/theory.md §2.3); None means 0.
    """
    _check_positive("kl_coef", kl_coef)
    h = _h(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected, margin, mask)
    u = kl_coef * h if margin is None else kl_coef * h + _zero_masked(margin, mask)
    return masked_mean(jax.nn.softplus(-u), mask)


def ipo_loss(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected, tau, *, mask=None) -> jax.Array:
    """IPO (Azar et al. 2023): ``mean_i (h_i - 1 / (2 tau))^2`` with ``tau = kl_coef``.

    Zero iff every valid ``h_i = 1 / (2 tau)`` (docs/theory.md §9.2 invariant 17). For a pair seen with
    empirical win rate ``p`` the per-pair minimiser is ``h = (p - 1/2) / tau``.
    """
    _check_positive("tau", tau)
    h = _h(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected, None, mask)
    return masked_mean((h - 0.5 / tau) ** 2, mask)


def likelihood_bonus(cal_logp, cal_ref_logp, ref_coef=1.0, *, cal_mask=None) -> jax.Array:
    """``mean_{y ~ pi_cal} [log pi(y|x) - ref_coef log pi_ref(y|x)]`` over valid calibration rows."""
    _check_same_shape("cal_logp", cal_logp, cal_ref_logp=cal_ref_logp, cal_mask=cal_mask)
    _check_finite("ref_coef", ref_coef)
    terms = _zero_masked(cal_logp, cal_mask) - ref_coef * _zero_masked(cal_ref_logp, cal_mask)
    return masked_mean(terms, cal_mask)


def dpo_with_likelihood_bonus(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected, kl_coef,
                              cal_logp, cal_ref_logp, bonus_coef, ref_coef=1.0, *, margin=None,
                              mask=None, cal_mask=None) -> jax.Array:
    """``dpo_loss + bonus_coef * mean_{y ~ pi_cal}[log pi(y|x) - ref_coef log pi_ref(y|x)]`` (docs/theory.md §6).

    The one primitive behind XPO, SELM and VPO: they differ only in the calibration responses
    ``y ~ pi_cal`` (whose log-probs under ``pi`` and ``pi_ref`` are ``cal_logp``, ``cal_ref_logp``)
    and in ``(bonus_coef, ref_coef)``. Minimising a positive bonus pushes mass *off* the calibration
    responses (optimism / exploration). ``bonus_coef = 0`` returns ``dpo_loss`` exactly.

    The calibration rows may differ in number from the comparisons. ``cal_mask`` marks the valid
    ones; when None it is ``mask`` if the calibration arrays have the comparisons' shape (one
    response per comparison, as in SELM), else all calibration rows are valid (then ``mask`` must be
    None or ``cal_mask`` given explicitly).
    """
    _check_finite("bonus_coef", bonus_coef)
    if cal_mask is None and mask is not None:
        if tuple(jnp.shape(cal_logp)) != tuple(jnp.shape(logp_chosen)):
            raise ValueError(
                f"cal_mask=None is not allowed here: the calibration arrays have shape "
                f"{tuple(jnp.shape(cal_logp))}, not the comparisons' {tuple(jnp.shape(logp_chosen))}, so "
                "cal_mask must be given explicitly when mask is.")
        cal_mask = mask
    loss = dpo_loss(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected, kl_coef,
                    margin=margin, mask=mask)
    return loss + bonus_coef * likelihood_bonus(cal_logp, cal_ref_logp, ref_coef, cal_mask=cal_mask)


def xpo_loss(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected, kl_coef, explore_logp, alpha, *,
             margin=None, mask=None, cal_mask=None) -> jax.Array:
    """XPO (Xie et al. 2024): ``dpo_loss + alpha * mean_{y ~ pi_tilde} log pi(y|x)``.

    Calibration: ``explore_logp = log pi(y|x)`` on responses ``y ~ pi_tilde`` (theory: ``pi_tilde =
    pi_ref``; practice: the current policy or a mixture); ``ref_coef = 0``, so the reference is not
    subtracted (it would only shift the loss by a constant in ``pi``). The paper sums both terms over
    rounds; with means, this ``alpha`` is the paper's times ``n_cal / n_pairs``. ``alpha >= 0``.
    """
    if v.is_concrete(alpha):
        v.check_float("alpha", alpha, low=0.0)
    return dpo_with_likelihood_bonus(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected, kl_coef,
                                     explore_logp, jnp.zeros_like(explore_logp), alpha, 0.0,
                                     margin=margin, mask=mask, cal_mask=cal_mask)


def selm_loss(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected, kl_coef, ref_sample_logp,
              ref_sample_ref_logp, alpha, *, margin=None, mask=None, cal_mask=None) -> jax.Array:
    """SELM (Zhang et al. 2024; official code, ``optimistic_dpo_loss``):

        dpo_loss + alpha * kl_coef * mean[log pi(y_ref|x) - log pi_ref(y_ref|x)].

    Calibration: ``y_ref`` sampled from the current reference (previous-iteration) policy, usually
    one per comparison; ``ref_sample_logp``, ``ref_sample_ref_logp`` are its log-probs under ``pi`` and
    ``pi_ref``. ``bonus_coef = alpha * kl_coef``, ``ref_coef = 1``. ``alpha >= 0``.
    """
    if v.is_concrete(alpha):
        v.check_float("alpha", alpha, low=0.0)
    return dpo_with_likelihood_bonus(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected, kl_coef,
                                     ref_sample_logp, ref_sample_ref_logp, alpha * kl_coef, 1.0,
                                     margin=margin, mask=mask, cal_mask=cal_mask)


def vpo_loss(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected, kl_coef, cal_logp, cal_ref_logp,
             alpha, sign=1, *, margin=None, mask=None, cal_mask=None) -> jax.Array:
    """VPO (Cen et al. 2024): ``dpo_loss + sign alpha kl_coef E_{x, y ~ pi_cal} log(pi(y|x) / pi_ref(y|x))``.

    From ``min_r l_BT(r) - sign alpha max_pi J_r(pi)`` with the calibration ``E_{pi_cal} r = 0``, which
    makes ``max_pi J_r = -kl_coef E_{pi_cal} log(pi / pi_ref)`` (docs/theory.md §6). ``sign = +1``: optimism
    (online); ``-1``: pessimism (offline). ``bonus_coef = sign * alpha * kl_coef``, ``ref_coef = 1``.
    """
    if v.is_concrete(alpha):
        v.check_float("alpha", alpha, low=0.0)
    if v.is_concrete(sign) and sign not in (1, -1):
        v.fail("sign", sign, "+1 (optimistic, online) or -1 (pessimistic, offline)")
    return dpo_with_likelihood_bonus(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected, kl_coef,
                                     cal_logp, cal_ref_logp, sign * alpha * kl_coef, 1.0,
                                     margin=margin, mask=mask, cal_mask=cal_mask)
