"""Student's t quantiles against printed tables, and the paired and Welch t-intervals by hand."""
import math

import pytest

from detection.evaluation.intervals import paired_t_interval, t_cdf, t_quantile, welch_t_interval


@pytest.mark.parametrize("df,want", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622),
                                     (30, 2.0423), (120, 1.9799)])
def test_the_975_quantile_matches_the_printed_table(df, want):
    assert t_quantile(0.975, df) == pytest.approx(want, abs=1e-4)


def test_cdf_of_one_degree_of_freedom_is_the_cauchy_cdf_and_quantiles_are_symmetric():
    for x in (-3.0, -0.5, 0.0, 1.0, 7.0):
        assert t_cdf(x, 1) == pytest.approx(0.5 + math.atan(x) / math.pi, abs=1e-9)
    assert t_quantile(0.025, 5) == pytest.approx(-t_quantile(0.975, 5), abs=1e-12)
    with pytest.raises(ValueError, match="p must be in"):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_cdf(1.0, 0)


def test_paired_t_interval_by_hand():
    # diffs -0.02, 0.01, -0.05: mean -0.02, sd 0.03, half width 4.3027 * 0.03 / sqrt(3) = 0.074524
    mean, lo, hi = paired_t_interval([-0.02, 0.01, -0.05])
    assert mean == pytest.approx(-0.02)
    assert (lo, hi) == pytest.approx((-0.02 - 0.0745241, -0.02 + 0.0745241), abs=1e-6)
    assert paired_t_interval([0.3]) is None
    assert paired_t_interval([0.1, 0.1]) == pytest.approx((0.1, 0.1, 0.1))


def test_welch_interval_by_hand():
    # equal variances and sizes: df = 2 (n - 1) = 4; diff 2, se sqrt(1/3 + 1/3), half 2.7764 * 0.81650 = 2.26693
    diff, lo, hi, df = welch_t_interval([1.0, 2.0, 3.0], [3.0, 4.0, 5.0])
    assert (diff, df) == pytest.approx((2.0, 4.0))
    assert (lo, hi) == pytest.approx((2.0 - 2.26693, 2.0 + 2.26693), abs=1e-4)
    # unequal variances: se^2 = 1/3 + 4/3, df = (5/3)^2 / ((1/3)^2 / 2 + (4/3)^2 / 2) = 50/17, between 2 and 3
    diff, lo, hi, df = welch_t_interval([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert diff == pytest.approx(2.0) and df == pytest.approx(50 / 17)
    half = hi - diff
    assert 3.1824 * math.sqrt(5 / 3) < half < 4.3027 * math.sqrt(5 / 3)
    assert t_cdf(half / math.sqrt(5 / 3), 50 / 17) == pytest.approx(0.975, abs=1e-7)
    assert diff - lo == pytest.approx(half)
    assert welch_t_interval([0.5], [0.4, 0.6]) is None
    assert welch_t_interval([0.5, 0.5], [0.7, 0.7]) == pytest.approx((0.2, 0.2, 0.2, 2.0))


def test_t_cdf_of_two_degrees_of_freedom_has_its_closed_form():
    for x in (-2.0, 0.3, 4.0):
        assert t_cdf(x, 2) == pytest.approx(0.5 + x / (2 * math.sqrt(2 + x * x)), abs=1e-9)
