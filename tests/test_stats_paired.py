"""The paired interval of per-seed differences (experiments.engine.stats.paired_interval, paired_summary)
against scipy.stats.t and scipy's paired t-test."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from experiments.engine import stats


@settings(max_examples=10)
@given(n=st.integers(2, 30), level=st.sampled_from([0.9, 0.95, 0.99]), seed=st.integers(0, 2**16))
def test_paired_interval_is_the_student_t_interval_of_the_differences(n, level, seed):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=n)
    y = base + 0.3 + 0.5 * rng.normal(size=n)
    mean, half = stats.paired_interval(y, base, level)
    d = y - base
    want = scipy_stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / np.sqrt(n)
    np.testing.assert_allclose(mean, d.mean(), rtol=1e-12)
    np.testing.assert_allclose(half, want, rtol=1e-12)
    low, high = scipy_stats.ttest_rel(y, base).confidence_interval(level)
    np.testing.assert_allclose([mean - half, mean + half], [low, high], rtol=1e-10, atol=1e-12)


def test_paired_interval_is_narrower_than_marginal_under_common_noise():
    rng = np.random.default_rng(0)
    noise = rng.normal(scale=10.0, size=40)   # shared by both methods (common random numbers)
    base, y = noise, noise - 0.1 + 0.01 * rng.normal(size=40)
    _, paired = stats.paired_interval(y, base)
    assert paired < 0.01 * stats.t_interval(y)[1]


def test_paired_summary_entries():
    y, base = np.array([1.0, 2.0, 0.5, 3.0]), np.array([1.5, 1.0, 1.0, 3.5])
    s = stats.paired_summary("p/q", y, base)
    mean, half = stats.paired_interval(y, base)
    assert set(s) == {"p/q/diff", "p/q/diff_low", "p/q/diff_high", "p/q/below_frac"}
    assert s["p/q/diff"] == pytest.approx(-0.125) and s["p/q/below_frac"] == 0.75
    assert (s["p/q/diff_low"], s["p/q/diff_high"]) == pytest.approx((mean - half, mean + half))
    one = stats.paired_summary("p", [1.0], [2.0])    # one seed: no interval, the difference itself kept
    assert one["p/diff"] == -1.0 and np.isnan(one["p/diff_low"]) and np.isnan(one["p/diff_high"])
    with pytest.raises(ValueError, match="paired_interval needs one value per seed on both sides"):
        stats.paired_summary("p", [1.0, 2.0], [1.0])
