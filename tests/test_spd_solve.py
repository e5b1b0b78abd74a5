"""The plain-XLA SPD solver against NumPy/SciPy references, under jit and vmap (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithms.core import spd_solve

SETTINGS = settings(deadline=None, max_examples=15)


def _spd(seed: int, d: int, cond_scale: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(d, d))
    return m @ m.T + cond_scale * np.eye(d)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), d=st.sampled_from([1, 3, 8]), cond_scale=st.sampled_from([1e-3, 1.0, 10.0]))
def test_cholesky_and_solves_match_scipy(seed, d, cond_scale):
    a = _spd(seed, d, cond_scale)
    b = np.random.default_rng(seed + 1).normal(size=(d, 2))
    chol = np.asarray(spd_solve.cholesky(jnp.asarray(a)))
    ref = np.linalg.cholesky(a)
    np.testing.assert_allclose(chol, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())
    assert np.all(np.triu(chol, 1) == 0.0)
    x = np.asarray(spd_solve.spd_solve(jnp.asarray(a), jnp.asarray(b)))
    np.testing.assert_allclose(x, scipy.linalg.cho_solve((ref, True), b), rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(a @ x, b, rtol=1e-8, atol=1e-9)
    y = np.asarray(spd_solve.solve_lower(jnp.asarray(ref), jnp.asarray(b[:, 0])))
    np.testing.assert_allclose(y, scipy.linalg.solve_triangular(ref, b[:, 0], lower=True), rtol=1e-9, atol=1e-12)
    z = np.asarray(spd_solve.solve_upper_transposed(jnp.asarray(ref), jnp.asarray(b[:, 0])))
    np.testing.assert_allclose(z, scipy.linalg.solve_triangular(ref.T, b[:, 0], lower=False), rtol=1e-9,
                               atol=1e-12)
    inv = np.asarray(spd_solve.lower_inverse(jnp.asarray(ref)))
    np.testing.assert_allclose(inv @ ref, np.eye(d), atol=1e-9)


def test_only_the_lower_triangle_is_read_and_indefinite_gives_nan():
    a = _spd(0, 4, 1.0)
    garbage_upper = np.tril(a) + np.triu(np.full((4, 4), 7.0), 1)
    np.testing.assert_allclose(np.asarray(spd_solve.cholesky(jnp.asarray(garbage_upper))), np.linalg.cholesky(a),
                               rtol=1e-12)
    indefinite = np.diag([1.0, -1.0, 2.0])
    assert np.isnan(np.asarray(spd_solve.cholesky(jnp.asarray(indefinite)))).any()


def test_vmap_and_jit_equal_the_loop():
    mats = np.stack([_spd(s, 5, 0.5) for s in range(6)])
    rhs = np.random.default_rng(9).normal(size=(6, 5))
    batched = np.asarray(jax.jit(jax.vmap(spd_solve.spd_solve))(jnp.asarray(mats), jnp.asarray(rhs)))
    for i in range(6):
        np.testing.assert_allclose(batched[i], np.linalg.solve(mats[i], rhs[i]), rtol=1e-9, atol=1e-12)
