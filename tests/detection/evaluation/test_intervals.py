"""Student's t quantiles against printed tables, and the paired t-interval by hand."""
import math

import pytest

from detection.evaluation.intervals import paired_t_interval, t_cdf, t_quantile


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
