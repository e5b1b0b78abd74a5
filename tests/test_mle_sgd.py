"""The multi-epoch SGD MLE of P3's cost model (algorithms.onepass.mle_sgd) against a plain NumPy loop of the
same steps, and its limit, the regularised BT-MLE (scipy)."""
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize
from scipy.special import expit

from algorithms.onepass import estimators, mle_sgd


def numpy_rounds(z, y, lam, lr, epochs, batch, radius):
    """Round t appends row t, then ``epochs`` passes over blocks of ``batch`` consecutive stored rows."""
    theta = np.zeros(z.shape[1])
    for t in range(1, len(z) + 1):
        for _ in range(epochs):
            for start in range(0, t, batch):
                rows, labels = z[start:min(start + batch, t)], y[start:min(start + batch, t)]
                grad = (expit(rows @ theta) - labels) @ rows / len(rows) + lam / t * theta
                theta = theta - lr * grad
                if radius is not None and np.linalg.norm(theta) > radius:
                    theta = theta * radius / np.linalg.norm(theta)
    return theta


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([1, 3, 5]), st.sampled_from([1, 2]),
       st.sampled_from([None, 0.7]))
def test_rounds_equal_a_numpy_loop_of_the_same_steps(seed, batch, epochs, radius):
    rng = np.random.default_rng(seed)
    n, d, lam, lr = 7, 3, 0.5, 0.8
    z = rng.normal(size=(n, d))
    y = (rng.uniform(size=n) < 0.5).astype(float)
    opts = estimators.OnePassOptions(lam=lam, sgd_lr=lr, sgd_epochs=epochs, sgd_batch=batch)
    est = estimators.make_estimator("mle_sgd", d, opts, radius=radius, capacity=n)
    state = est.init()
    for i in range(n):
        state = est.update(state, jnp.asarray(z[i]), y[i])
    np.testing.assert_allclose(np.asarray(est.theta(state)), numpy_rounds(z, y, lam, lr, epochs, batch, radius),
                               rtol=1e-10, atol=1e-12)
    # V_t^{-1} is the MLE's design, the same as the Newton refit's
    np.testing.assert_allclose(np.asarray(est.inverse_design(state)), np.linalg.inv(lam * np.eye(d) + z.T @ z),
                               rtol=1e-9, atol=1e-12)


def test_many_epochs_reach_the_regularised_mle():
    """Full-batch steps with ``lr`` below ``2 / L`` converge to ``argmin (1/t) sum softplus + lam/(2t) ||theta||^2``."""
    rng = np.random.default_rng(3)
    n, d, lam = 40, 3, 1.0
    z = rng.normal(size=(n, d)) / np.sqrt(d)
    y = (rng.uniform(size=n) < expit(z @ np.array([1.0, -0.5, 0.3]))).astype(float)

    def loss(theta):
        margins = (2 * y - 1) * (z @ theta)
        return np.sum(np.logaddexp(0.0, -margins)) + 0.5 * lam * theta @ theta

    want = optimize.minimize(loss, np.zeros(d), method="BFGS", options={"gtol": 1e-12}).x
    theta = mle_sgd.sgd_epochs(jnp.zeros(d), jnp.asarray(z), jnp.asarray(y), n, lam, 1.0, 3000, n)
    np.testing.assert_allclose(np.asarray(theta), want, atol=1e-7)


def test_bad_options_name_the_field():
    for field, value in (("sgd_epochs", 0), ("sgd_lr", 0.0), ("sgd_batch", 0)):
        with pytest.raises(ValueError, match=field):
            estimators.OnePassOptions(**{field: value})
