"""Seed statistics against values computed by hand."""

import math

import pytest

from dstcore.analysis.stats import (
    Interval,
    claim_status,
    interpolate_at,
    ordering_status,
    paired,
    relative,
    t_interval,
)


def test_t_interval_of_three_seeds():
    # mean 2, s = 1, t(0.975, 2) = 4.302653: half width 4.302653 / sqrt(3) = 2.484138
    ci = t_interval([1.0, 2.0, 3.0])
    assert (ci.mean, ci.n) == (2.0, 3)
    assert ci.low == pytest.approx(2 - 2.484138, abs=1e-6)
    assert ci.high == pytest.approx(2 + 2.484138, abs=1e-6)


def test_t_interval_of_two_seeds_uses_t_with_one_degree_of_freedom():
    # mean 11, s = sqrt(2), t(0.975, 1) = 12.706205: half width 12.706205 * sqrt(2) / sqrt(2)
    ci = t_interval([10.0, 12.0])
    assert ci.low == pytest.approx(11 - 12.706205, abs=1e-6)
    assert ci.high == pytest.approx(11 + 12.706205, abs=1e-6)


def test_t_interval_of_one_seed_has_no_bounds_and_nan_values_are_dropped():
    ci = t_interval([5.0, math.nan])
    assert ci.mean == 5.0 and ci.n == 1 and math.isnan(ci.low) and math.isnan(ci.high)
    empty = t_interval([])
    assert empty.n == 0 and math.isnan(empty.mean)


def test_equal_values_give_a_zero_width_interval():
    ci = t_interval([3.0, 3.0, 3.0])
    assert ci.low == ci.high == 3.0


def test_paired_differences_use_the_seeds_both_sides_have():
    a = {0: 10.0, 1: 12.0, 2: 11.0, 3: 9.0}
    b = {0: 8.0, 1: 9.0, 2: 11.0, 4: 1.0}
    assert paired(a, b) == {0: 2.0, 1: 3.0, 2: 0.0}
    # mean 5/3, s = sqrt(7/3) = 1.527525, half = 4.302653 * 1.527525 / sqrt(3) = 3.794583
    ci = t_interval(paired(a, b).values())
    assert ci.mean == pytest.approx(5 / 3)
    assert ci.high - ci.mean == pytest.approx(3.794583, abs=1e-6)


def test_relative_reading_divides_by_the_reference_of_the_same_seed():
    # LeNet5 numbers of the one-seed report: (82.68 - 56.69) / 56.69 = 45.85 %
    assert relative({0: 82.68 - 56.69}, {0: 56.69})[0] == pytest.approx(45.846, abs=1e-3)
    assert relative({0: 26.0, 1: 30.0}, {0: 52.0, 1: 60.0}) == {0: 50.0, 1: 50.0}
    assert relative({0: 1.0}, {0: 0.0}) == {}  # no relative gain over a reference of 0


def test_interpolation_between_the_bracketing_points():
    acc = [99.2, 99.0, 98.6, 97.8]
    spars = [56.0, 75.0, 82.0, 88.0]
    # 98.8 lies halfway between 99.0 and 98.6: 75 + 0.5 * 7
    assert interpolate_at(acc, spars, 98.8) == pytest.approx(78.5)
    assert interpolate_at(acc, spars, 99.0) == pytest.approx(75.0)  # a grid point exactly
    assert interpolate_at(acc, spars, 97.8) == pytest.approx(88.0)  # the last point exactly


def test_no_value_when_the_grid_does_not_reach_the_target_on_both_sides():
    acc = [99.2, 99.0, 98.6]
    spars = [56.0, 75.0, 82.0]
    assert math.isnan(interpolate_at(acc, spars, 98.0))  # never dropped that far: no extrapolation
    assert math.isnan(interpolate_at(acc, spars, 99.5))  # never that accurate
    assert math.isnan(interpolate_at([], [], 99.0))


def test_non_monotone_curves_take_the_largest_crossing():
    acc = [99.2, 98.7, 98.9, 98.0]
    spars = [50.0, 70.0, 75.0, 90.0]
    # crossings of 98.8: 50 + 0.8 * 20 = 66; 70 + 0.5 * 5 = 72.5; 75 + (1/9) * 15 = 76.667
    assert interpolate_at(acc, spars, 98.8) == pytest.approx(75 + 15 / 9)


def test_claim_status_rule():
    assert claim_status(44.04, Interval(40.0, 35.0, 45.0, 3)) == "reproduced"  # contains
    assert claim_status(44.04, Interval(50.0, 48.0, 52.0, 3)) == "reproduced"  # above
    assert claim_status(44.04, Interval(26.0, 24.0, 28.0, 3)) == "not reproduced"  # below
    assert claim_status(44.04, Interval(45.0, math.nan, math.nan, 1)) == "reproduced"
    assert claim_status(44.04, Interval(30.0, math.nan, math.nan, 1)) == "not reproduced"
    assert claim_status(44.04, Interval(math.nan, math.nan, math.nan, 0)) == "not run"


def test_ordering_status_rule():
    assert ordering_status(Interval(1.0, 0.2, 1.8, 3)) == "holds"
    assert ordering_status(Interval(-1.0, -1.5, -0.5, 3)) == "does not hold"
    assert ordering_status(Interval(0.5, -0.3, 1.3, 3)) == "undecided"
    assert ordering_status(Interval(2.0, math.nan, math.nan, 1)) == "undecided"


def test_t_power_matches_the_textbook_paired_t_sample_sizes():
    """Two-sided paired t at alpha 0.05: d_z = 1 needs 10 seeds for 80% power (0.803; 9 give
    0.748), d_z = 0.5 needs 34 (0.808; 33 give 0.795), as G*Power tabulates."""
    from dstcore.analysis.stats import t_power

    assert t_power(1.0, 10) == pytest.approx(0.803, abs=1e-3)
    assert t_power(1.0, 9) == pytest.approx(0.748, abs=1e-3)
    assert t_power(0.5, 34) == pytest.approx(0.808, abs=1e-3)
    assert t_power(0.5, 33) == pytest.approx(0.795, abs=1e-3)
    assert t_power(1.0, 1) == 0.0
    # where scipy's noncentral t returns nan for an underflowing tail (scipy 1.17: the lower
    # tail at df = 1, nc = 11.4, which made 2 architectures "decide" an undecided pooled row)
    # the power stays a number
    assert t_power(8.06, 2) == pytest.approx(0.629, abs=1e-3)
    assert t_power(12.65, 10) == 1.0 and t_power(-1.0, 10) == t_power(1.0, 10)


def test_seeds_needed_recovers_the_spread_from_the_interval():
    """Differences 0, 1, 2 (mean 1, s = 1, d_z = 1): 10 seeds; doubling the spread: d_z 0.5,
    34 seeds; no spread or one seed: not told."""
    from dstcore.analysis.stats import seeds_needed

    assert seeds_needed(t_interval([0.0, 1.0, 2.0])) == 10
    assert seeds_needed(t_interval([-1.0, 1.0, 3.0])) == 34
    assert seeds_needed(t_interval([-1.0, 1.0, 3.0]), power=0.9) > 34
    assert seeds_needed(t_interval([1.0, 1.0, 1.0])) is None
    assert seeds_needed(t_interval([1.0])) is None
    assert seeds_needed(t_interval([-1e-6, 1e-6 + 1e-9, 0.0])) is None  # beyond 10,000


def test_bootstrap_interval_by_hand():
    from dstcore.analysis.stats import bootstrap_interval

    # two seeds: resampled means 0, 0.5, 0.5, 1 -> 2.5% and 97.5% quantiles 0 and 1
    assert bootstrap_interval([0.0, 1.0]) == (0.0, 1.0)
    # five seeds, one of them 1: the resampled sum is Binomial(5, 1/5); its CDF is 0.328 at 0
    # and 0.942 at 2, 0.993 at 3: the interval of the mean is [0, 3/5]
    assert bootstrap_interval([0.0, 0.0, 0.0, 0.0, 1.0]) == (0.0, pytest.approx(0.6))
    # an 80% interval: its upper quantile 0.9 lies between the CDF at 1 (0.737) and at 2 (0.942)
    assert bootstrap_interval([0.0, 0.0, 0.0, 0.0, 1.0], confidence=0.8)[1] == \
        pytest.approx(0.4)
    assert all(math.isnan(v) for v in bootstrap_interval([3.0]))
    low, high = bootstrap_interval(list(range(10)))  # 10^10 resamples: 10,000 seeded draws
    assert 2.0 < low < 4.5 < high < 7.0 and (low, high) == bootstrap_interval(list(range(10)))


def test_claims_rows_carry_the_bootstrap_and_say_where_it_disagrees():
    from dstcore.analysis.claims import with_bootstrap
    from dstcore.analysis.stats import ordering_status

    # +1, +2, +3 pp: t interval [-0.48, 4.48] spans 0 (undecided); every resample mean >= 1
    row = {"reproduced_mean": 2.0, "ci_low": -0.48, "ci_high": 4.48, "status": "undecided",
           "detail": "TL1 minus ℓ1"}
    out = with_bootstrap(row, [1.0, 2.0, 3.0], ordering_status)
    assert (out["boot_low"], out["boot_high"]) == (1.0, 3.0)
    assert "bootstrap interval [1.00, 3.00] would say holds" in out["detail"]
    assert "width 2.00 vs the t interval's 4.96, 3 seeds" in out["detail"]
    same = with_bootstrap({**row, "status": "holds"}, [1.0, 2.0, 3.0], ordering_status)
    assert same["detail"] == "TL1 minus ℓ1"


def test_stratified_bootstrap_by_hand():
    from dstcore.analysis.stats import stratified_bootstrap_interval

    # group means resampled within groups: {0, 1, 1, 2} and {10} -> pooled {5, 5.5, 5.5, 6}
    assert stratified_bootstrap_interval([[0.0, 2.0], [10.0]]) == (5.0, 6.0)
    # {0, 1, 1, 2} x {0, 2, 2, 4}, halved: 16 equally likely means from 0 to 3, P(0) = P(3) = 1/16
    assert stratified_bootstrap_interval([[0.0, 2.0], [0.0, 4.0]]) == (0.0, 3.0)
    # a 50% interval: the 25% quantile is 1 (CDF 5/16 there), the 75% quantile 2 (CDF 13/16)
    assert stratified_bootstrap_interval([[0.0, 2.0], [0.0, 4.0]], confidence=0.5) == (1.0, 2.0)
    assert all(math.isnan(v) for v in stratified_bootstrap_interval([[1.0, 2.0]]))
    assert all(math.isnan(v) for v in stratified_bootstrap_interval([[1.0], [math.nan]]))
    big = [list(range(6)), list(range(6))]  # 6^6 squared resamples: seeded draws
    low, high = stratified_bootstrap_interval(big)
    assert 1.0 < low < 2.5 < high < 4.0 and (low, high) == stratified_bootstrap_interval(big)


def test_sign_test_and_t_test_by_hand():
    from dstcore.analysis.stats import sign_test_p, t_test_p

    assert sign_test_p([1.0, 2.0, -3.0]) == pytest.approx(0.5)  # P(X >= 2 | 3, 1/2) = 4/8
    assert sign_test_p([1.0, 2.0, 3.0, 0.0]) == pytest.approx(0.125)  # the zero is dropped
    assert sign_test_p([-1.0, -2.0]) == pytest.approx(1.0) and math.isnan(sign_test_p([0.0]))
    # 6, 8, -14 around 1.2857: sd = sqrt(296 / 2), t = 1.2857 / (sd / sqrt(3)); with two degrees
    # of freedom the two-sided p is 1 - t / sqrt(2 + t^2)
    values = [7.285714, 9.285714, -12.714286]
    t = (sum(values) / 3) / (math.sqrt(148) / math.sqrt(3))
    assert t_test_p(values) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)
    assert math.isnan(t_test_p([1.0])) and math.isnan(t_test_p([2.0, 2.0]))
