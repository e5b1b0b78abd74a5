"""Uncertainty-based active selection (docs/theory.md §4.4): hand-built pools with a known answer and NumPy
brute force over all (x, a, a') triplets."""
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithms.onepass import active_selection as act


def test_hand_built_pool_picks_the_most_uncertain_available_comparison():
    """A^{-1} = diag(1, 100): uncertainty is dominated by the second coordinate."""
    inv = jnp.diag(jnp.asarray([1.0, 100.0]))
    pool = jnp.asarray([[3.0, 0.0],     # u = 3
                        [0.0, 0.5],     # u = 5   (largest)
                        [1.0, 0.4],     # u = sqrt(17) ~ 4.12
                        [0.0, -0.45]])  # u = 4.5
    np.testing.assert_allclose(act.uncertainty(pool, inv), [3.0, 5.0, np.sqrt(17.0), 4.5])
    assert int(act.select_max_uncertainty(pool, inv, jnp.ones(4, bool))) == 1
    assert int(act.select_max_uncertainty(pool, inv, jnp.asarray([True, False, True, True]))) == 3
    assert int(act.select_max_uncertainty(pool, inv, jnp.asarray([True, False, True, False]))) == 2
    # Euclidean uncertainty (A = I) would pick row 0 instead: the design matters.
    assert int(act.select_max_uncertainty(pool, jnp.eye(2), jnp.ones(4, bool))) == 0
    np.testing.assert_array_equal(act.top_fraction(act.uncertainty(pool, inv), 2), [1, 3])
    np.testing.assert_array_equal(act.top_fraction(act.uncertainty(pool, inv), 2,
                                                   jnp.asarray([True, False, True, True])), [3, 2])


def test_hand_built_contexts_triplet():
    """Context 1 holds the farthest pair along the uncertain axis: (x, a, a') = (1, 0, 2) (or its mirror)."""
    phi = jnp.asarray([[[1.0, 0.0], [-1.0, 0.0], [0.0, 0.1]],
                       [[0.0, 0.3], [0.5, 0.0], [0.0, -0.3]]])
    inv = jnp.diag(jnp.asarray([1.0, 100.0]))
    x, a, b = act.max_uncertainty_triplet(phi, inv)
    assert (int(x), int(a), int(b)) == (1, 0, 2)
    x, a, b = act.max_uncertainty_triplet(phi, inv, jnp.asarray([True, False]))
    assert int(x) == 0 and {int(a), int(b)} == {0, 1}   # u = 2 vs sqrt(2) for the others


@settings(max_examples=10)
@given(st.integers(0, 10**6))
def test_triplet_and_pair_uncertainty_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_x, k, d = 3, 5, 3
    phi = rng.standard_normal((n_x, k, d))
    a = rng.standard_normal((d, d))
    inv = np.linalg.inv(a @ a.T + 0.2 * np.eye(d))
    best, arg = -1.0, None
    for x in range(n_x):
        for i in range(k):
            for j in range(k):
                diff = phi[x, i] - phi[x, j]
                u = np.sqrt(diff @ inv @ diff)
                assert abs(float(act.pair_uncertainty(jnp.asarray(phi[x]), jnp.asarray(inv))[i, j]) - u) < 1e-7
                if u > best + 1e-12:
                    best, arg = u, (x, i, j)
    x, i, j = act.max_uncertainty_triplet(jnp.asarray(phi), jnp.asarray(inv))
    diff = phi[int(x), int(i)] - phi[int(x), int(j)]
    np.testing.assert_allclose(np.sqrt(diff @ inv @ diff), best, rtol=1e-10)


def test_top_fraction_refuses_bad_sizes():
    with pytest.raises(ValueError, match="num_select=0"):
        act.top_fraction(jnp.ones(4), 0)
    with pytest.raises(ValueError, match="num_select=5"):
        act.top_fraction(jnp.ones(4), 5)
