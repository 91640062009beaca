"""Intervals over seeds: Student's t, and the paired difference's verdict."""

import math

import pytest

from mvptr.eval.stats import format_interval, mean_interval, paired_difference


def test_mean_interval_is_students_t():
    d = mean_interval([1.0, 2.0, 3.0])
    # sd 1, n 3: t(0.975, 2) = 4.3027 -> 4.3027 / sqrt(3)
    assert d["mean"] == 2.0 and d["n"] == 3
    assert d["half_width"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert format_interval(d) == "2.00 ± 2.48"


@pytest.mark.parametrize("values", [[], [1.0], [1.0, float("nan")]])
def test_no_interval_from_one_value_or_nan(values):
    with pytest.raises(ValueError):
        mean_interval(values)


def test_a_difference_counts_only_when_its_interval_excludes_zero():
    assert paired_difference([2.0, 3.0, 4.0], [1.0, 2.0, 3.1])["verdict"] == "a higher"
    assert paired_difference([1.0, 2.0, 3.0], [2.0, 3.0, 4.5])["verdict"] == "b higher"
    noisy = paired_difference([1.0, 5.0, 2.0], [2.0, 1.0, 3.0])
    lo, hi = noisy["mean"] - noisy["half_width"], noisy["mean"] + noisy["half_width"]
    assert noisy["verdict"] == "undecided" and lo < 0 < hi
    # identical settings (a broken comparison) decide nothing
    assert paired_difference([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])["verdict"] == "undecided"
    with pytest.raises(ValueError, match="equal counts"):
        paired_difference([1.0, 2.0], [1.0])
