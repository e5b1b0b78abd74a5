"""Direct-alignment losses on log-prob arrays: docs/theory.md §9.2 invariants 4 (first half) and 17,
brute-force NumPy values, closed-form and finite-difference gradients, masking, validation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import bandits as b
from algorithms.core import preference_losses as pl
from algorithms.core.direct_preference import comparison_log_probs
from tests.helpers import kl_coefs, random_instance, random_log_policy, seeds, shapes

N = 12
alphas = st.floats(min_value=0.0, max_value=3.0, allow_nan=False)


def _arrays(seed, n=N, n_cal=7):
    """Four comparison log-prob arrays, a margin, a mask with >= 1 valid row, calibration arrays."""
    rng = np.random.default_rng(seed)
    lc, lr, rc, rr = (-rng.exponential(2.0, n) for _ in range(4))
    margin = rng.standard_normal(n)
    mask = rng.random(n) < 0.7
    mask[0] = True
    cal, cal_ref = -rng.exponential(2.0, n_cal), -rng.exponential(2.0, n_cal)
    cal_mask = rng.random(n_cal) < 0.7
    cal_mask[0] = True
    return lc, lr, rc, rr, margin, mask, cal, cal_ref, cal_mask


def _np_dpo(lc, lr, rc, rr, kl_coef, margin, mask):
    total = 0.0
    for i in range(len(lc)):
        if mask[i]:
            u = kl_coef * ((lc[i] - rc[i]) - (lr[i] - rr[i])) + margin[i]
            total += np.log1p(np.exp(-u))
    return total / mask.sum()


def _np_mean(values, mask):
    return sum(val for val, m in zip(values, mask) if m) / mask.sum()


def _j(*arrays):
    return tuple(jnp.asarray(a) for a in arrays)


@given(seeds, shapes, kl_coefs)
def test_invariant4_dpo_at_gibbs_policy_equals_bt_nll(seed, shape, eta):
    """L_DPO(pi_r; D, kl_coef) = l_BT(r; D) for any reward table r (log Z cancels)."""
    inst = random_instance(seed, shape, eta)
    rng = np.random.default_rng(seed + 1)
    r = 3.0 * rng.standard_normal(shape[:2])
    pi1, pi2 = (jnp.asarray(random_log_policy(rng, *shape[:2])) for _ in range(2))
    data = b.with_size(b.sample_preference_data(jax.random.key(seed % 1000), inst, pi1, pi2, 16), 11)
    log_pi = b.gibbs_policy(inst.log_pi0, jnp.asarray(r), inst.kl_coef)
    chosen, rejected = comparison_log_probs(log_pi, data)
    ref_chosen, ref_rejected = comparison_log_probs(inst.log_pi0, data)
    got = pl.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, inst.kl_coef, mask=data.mask)
    x, a1, a2, y = (np.asarray(f) for f in data[:4])
    nll = [np.logaddexp(0.0, -(r[x[i], a1[i]] - r[x[i], a2[i]]) * (1 if y[i] == 1 else -1)) for i in range(11)]
    np.testing.assert_allclose(got, np.mean(nll), rtol=1e-11, atol=1e-13)


@given(seeds, kl_coefs, alphas)
def test_loss_values_match_bruteforce(seed, kl_coef, alpha):
    lc, lr, rc, rr, margin, mask, cal, cal_ref, cal_mask = _arrays(seed)
    args = _j(lc, lr, rc, rr)
    jm, jcal, jref, jcm = _j(mask, cal, cal_ref, cal_mask)
    dpo = _np_dpo(lc, lr, rc, rr, kl_coef, np.zeros(N), mask)
    np.testing.assert_allclose(pl.dpo_loss(*args, kl_coef, mask=jm), dpo, rtol=1e-12)
    np.testing.assert_allclose(pl.dpo_loss(*args, kl_coef, margin=jnp.asarray(margin), mask=jm),
                               _np_dpo(lc, lr, rc, rr, kl_coef, margin, mask), rtol=1e-12)
    all_rows = _np_dpo(lc, lr, rc, rr, kl_coef, np.zeros(N), np.ones(N, bool))
    np.testing.assert_allclose(pl.dpo_loss(*args, kl_coef), all_rows, rtol=1e-12)
    h = (lc - rc) - (lr - rr)
    np.testing.assert_allclose(pl.ipo_loss(*args, kl_coef, mask=jm), _np_mean((h - 1 / (2 * kl_coef)) ** 2, mask),
                               rtol=1e-12)
    c = 0.3
    np.testing.assert_allclose(
        pl.dpo_with_likelihood_bonus(*args, kl_coef, jcal, jref, alpha, c, mask=jm, cal_mask=jcm),
        dpo + alpha * _np_mean(cal - c * cal_ref, cal_mask), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(pl.xpo_loss(*args, kl_coef, jcal, alpha, mask=jm, cal_mask=jcm),
                               dpo + alpha * _np_mean(cal, cal_mask), rtol=1e-12, atol=1e-14)
    # SELM: one reference sample per comparison, masked like the comparisons.
    y_ref, y_ref_ref = -np.abs(margin), -np.abs(h)
    np.testing.assert_allclose(pl.selm_loss(*args, kl_coef, *_j(y_ref, y_ref_ref), alpha, mask=jm),
                               dpo + alpha * kl_coef * _np_mean(y_ref - y_ref_ref, mask), rtol=1e-12, atol=1e-14)
    for sign in (1, -1):
        np.testing.assert_allclose(pl.vpo_loss(*args, kl_coef, jcal, jref, alpha, sign, mask=jm, cal_mask=jcm),
                                   dpo + sign * alpha * kl_coef * _np_mean(cal - cal_ref, cal_mask),
                                   rtol=1e-12, atol=1e-14)


@given(seeds, kl_coefs)
def test_invariant17_bonus_family_with_alpha_zero_is_dpo(seed, kl_coef):
    lc, lr, rc, rr, margin, mask, cal, cal_ref, cal_mask = _arrays(seed)
    args, (jmargin, jm, jcal, jref, jcm) = _j(lc, lr, rc, rr), _j(margin, mask, cal, cal_ref, cal_mask)
    dpo = pl.dpo_loss(*args, kl_coef, margin=jmargin, mask=jm)
    same = [pl.xpo_loss(*args, kl_coef, jcal, 0.0, margin=jmargin, mask=jm, cal_mask=jcm),
            pl.selm_loss(*args, kl_coef, *_j(margin, lc), 0.0, margin=jmargin, mask=jm),
            pl.vpo_loss(*args, kl_coef, jcal, jref, 0.0, 1, margin=jmargin, mask=jm, cal_mask=jcm),
            pl.vpo_loss(*args, kl_coef, jcal, jref, 0.0, -1, margin=jmargin, mask=jm, cal_mask=jcm),
            pl.dpo_with_likelihood_bonus(*args, kl_coef, jcal, jref, 0.0, 0.7, margin=jmargin, mask=jm,
                                         cal_mask=jcm)]
    for loss in same:
        assert float(loss) == float(dpo)
    # and a positive alpha does change it (the check above can fail)
    assert float(pl.xpo_loss(*args, kl_coef, jcal, 0.5, margin=jmargin, mask=jm, cal_mask=jcm)) != float(dpo)


@given(seeds, kl_coefs, st.floats(min_value=-2.0, max_value=2.0).filter(lambda d: abs(d) > 1e-3))
def test_invariant17_ipo_zero_iff_h_is_half_inverse_tau(seed, tau, delta):
    rng = np.random.default_rng(seed)
    ref_c, ref_r, lr = (jnp.asarray(-rng.exponential(1.0, 5)) for _ in range(3))
    target = 1.0 / (2.0 * tau)
    at_target = lr + target + ref_c - ref_r          # h = target up to rounding
    loss = pl.ipo_loss(at_target, lr, ref_c, ref_r, tau)
    assert float(loss) < 1e-24
    exact = jnp.full(5, target)                      # h = target exactly
    zeros = jnp.zeros(5)
    assert float(pl.ipo_loss(exact, zeros, zeros, zeros, tau)) == 0.0
    off = exact.at[2].add(delta)
    np.testing.assert_allclose(pl.ipo_loss(off, zeros, zeros, zeros, tau), delta ** 2 / 5, rtol=1e-10)
    assert float(pl.ipo_loss(off, zeros, zeros, zeros, tau)) > 0.0


@given(seeds, kl_coefs)
def test_dpo_gradient_matches_closed_form(seed, kl_coef):
    """d/du softplus(-u) = -sigmoid(-u), u = kl_coef h + margin; masked rows get exactly zero gradient."""
    lc, lr, rc, rr, margin, mask, *_ = _arrays(seed)
    u = kl_coef * ((lc - rc) - (lr - rr)) + margin
    g = -1.0 / (1.0 + np.exp(u)) * mask / mask.sum()
    grads = jax.grad(lambda *a: pl.dpo_loss(*a[:4], kl_coef, margin=a[4], mask=jnp.asarray(mask)),
                     argnums=(0, 1, 2, 3, 4))(*_j(lc, lr, rc, rr, margin))
    for got, want in zip(grads, (kl_coef * g, -kl_coef * g, -kl_coef * g, kl_coef * g, g)):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-15)
        assert np.all(np.asarray(got)[~mask] == 0.0)


def test_bonus_primitive_gradient_matches_finite_differences():
    lc, lr, rc, rr, margin, mask, cal, cal_ref, cal_mask = _arrays(7)
    inputs = _j(lc, lr, rc, rr, margin, cal, cal_ref)

    def loss(*a):
        return pl.dpo_with_likelihood_bonus(*a[:4], 0.7, a[5], a[6], 1.3, 0.4, margin=a[4],
                                            mask=jnp.asarray(mask), cal_mask=jnp.asarray(cal_mask))

    grads = jax.grad(loss, argnums=tuple(range(7)))(*inputs)
    eps = 1e-6
    for k, arr in enumerate(inputs):
        for i in range(arr.shape[0]):
            plus = list(inputs)
            minus = list(inputs)
            plus[k] = arr.at[i].add(eps)
            minus[k] = arr.at[i].add(-eps)
            fd = (float(loss(*plus)) - float(loss(*minus))) / (2 * eps)
            np.testing.assert_allclose(grads[k][i], fd, rtol=1e-6, atol=1e-9)


def test_masked_rows_with_non_finite_values_are_ignored():
    lc, lr, rc, rr, margin, mask, cal, cal_ref, cal_mask = _arrays(3)
    bad_lc, bad_cal = lc.copy(), cal.copy()
    bad_lc[~mask] = -np.inf
    bad_cal[~cal_mask] = np.nan
    jm, jcm = _j(mask, cal_mask)
    for fn in (lambda a, c: pl.dpo_loss(a, *_j(lr, rc, rr), 0.5, margin=jnp.asarray(margin), mask=jm),
               lambda a, c: pl.ipo_loss(a, *_j(lr, rc, rr), 0.5, mask=jm),
               lambda a, c: pl.vpo_loss(a, *_j(lr, rc, rr), 0.5, c, jnp.asarray(cal_ref), 2.0, mask=jm,
                                        cal_mask=jcm)):
        clean, dirty = fn(*_j(lc, cal)), fn(*_j(bad_lc, bad_cal))
        assert float(clean) == float(dirty)
        grad = jax.grad(fn, argnums=(0, 1))
        for a, bb in zip(grad(*_j(lc, cal)), grad(*_j(bad_lc, bad_cal))):
            np.testing.assert_array_equal(a, bb)
    none = jnp.zeros(N, bool)
    assert float(pl.dpo_loss(*_j(bad_lc, lr, rc, rr), 0.5, mask=none)) == 0.0


def test_traced_kl_coef_vmap_equals_loop_and_jit_equals_eager():
    lc, lr, rc, rr, margin, mask, *_ = _arrays(11)
    args, jm = _j(lc, lr, rc, rr), jnp.asarray(mask)
    grid = jnp.array([0.1, 0.5, 2.0])
    batched = jax.vmap(lambda eta: pl.dpo_loss(*args, eta, mask=jm))(grid)
    np.testing.assert_allclose(batched, [pl.dpo_loss(*args, float(eta), mask=jm) for eta in grid], rtol=1e-14)
    jitted = jax.jit(lambda *a: pl.ipo_loss(*a, 0.5, mask=jm))(*args)
    np.testing.assert_allclose(jitted, pl.ipo_loss(*args, 0.5, mask=jm), rtol=1e-14)


def test_validation_errors_name_field_value_and_allowed():
    z, z3 = jnp.zeros(4), jnp.zeros(3)
    with pytest.raises(ValueError, match=r"kl_coef=0\.0 is not allowed: kl_coef must be a finite number in \(0"):
        pl.dpo_loss(z, z, z, z, 0.0)
    with pytest.raises(ValueError, match=r"kl_coef=-1"):
        pl.dpo_with_likelihood_bonus(z, z, z, z, -1.0, z, z, 0.1)
    with pytest.raises(ValueError, match=r"tau=0"):
        pl.ipo_loss(z, z, z, z, 0)
    with pytest.raises(ValueError, match=r"ref_logp_rejected has shape \(3,\).*\(4,\)"):
        pl.dpo_loss(z, z, z, z3, 1.0)
    with pytest.raises(ValueError, match=r"mask has shape"):
        pl.dpo_loss(z, z, z, z, 1.0, mask=jnp.ones(3, bool))
    with pytest.raises(ValueError, match=r"sign=0 is not allowed: sign must be \+1"):
        pl.vpo_loss(z, z, z, z, 1.0, z, z, 1.0, 0)
    with pytest.raises(ValueError, match=r"alpha=-0\.5 is not allowed"):
        pl.selm_loss(z, z, z, z, 1.0, z, z, -0.5)
    with pytest.raises(ValueError, match=r"bonus_coef=nan"):
        pl.dpo_with_likelihood_bonus(z, z, z, z, 1.0, z, z, float("nan"))
    with pytest.raises(ValueError, match=r"cal_mask=None is not allowed"):
        pl.xpo_loss(z, z, z, z, 1.0, z3, 0.1, mask=jnp.ones(4, bool))
    with pytest.raises(ValueError, match=r"cal_ref_logp has shape"):
        pl.likelihood_bonus(z, z3)
