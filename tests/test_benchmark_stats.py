"""The statistics the benchmarks report (the median's distribution-free confidence interval) and the order in which
they run their variants."""

from __future__ import annotations

import math

import pytest

from benchmarks.common import interleaved, median_interval, paired_ratio_intervals


def _coverage(n: int, k: int) -> float:
    """P(x_(k) <= median <= x_(n+1-k)) for n draws of a continuous distribution."""
    below = sum(math.comb(n, j) for j in range(k)) / 2**n
    return 1 - 2 * below


@pytest.mark.parametrize("n", range(1, 30))
def test_the_interval_is_the_narrowest_pair_of_order_statistics_with_95_percent_coverage(n: int) -> None:
    values = [float(v) for v in range(n, 0, -1)]  # unsorted on purpose
    low, high = median_interval(values)
    k = int(low)
    assert high == n + 1 - k  # symmetric order statistics
    if n >= 6:
        assert _coverage(n, k) >= 0.95
        assert k == (n + 1) // 2 or _coverage(n, k + 1) < 0.95  # no narrower pair qualifies
    else:
        assert (low, high) == (1, n)  # nothing reaches 95%: the whole range


def test_known_values() -> None:
    # n = 9: x_(2)..x_(8) covers 96.1%; n = 11: x_(2)..x_(10) covers 98.8% (x_(3)..x_(9) only 93.5%)
    assert median_interval([9, 1, 8, 2, 7, 3, 6, 4, 5]) == (2, 8)
    assert median_interval(list(range(1, 12))) == (2, 10)
    assert median_interval(list(range(1, 12)), level=0.9) == (3, 9)


def test_paired_ratio_intervals_are_taken_on_per_repeat_ratios() -> None:
    times = {"dense": [1.0, 2.0, 4.0, 1.0, 2.0, 4.0], "lottery": [1.1, 2.0, 4.4, 1.05, 2.2, 4.0]}
    assert paired_ratio_intervals(times, "dense") == {"dense": (1.0, 1.0), "lottery": (1.0, pytest.approx(1.1))}


@pytest.mark.parametrize("bad", [{"values": []}, {"values": [1.0], "level": 1.0}, {"values": [1.0], "level": 0}])
def test_bad_input_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match=r"median_interval needs|level must be"):
        median_interval(**bad)


def test_interleaved_runs_alternate_their_order_and_keep_each_variants_times_apart() -> None:
    calls: list[str] = []

    def variant(name: str, seconds: float):
        return lambda: calls.append(name) or seconds

    times = interleaved({"a": variant("a", 1.0), "b": variant("b", 2.0), "c": variant("c", 3.0)}, repeats=3, warmup=1)
    assert calls == list("abc" + "abc" + "cba" + "abc")  # warm-up, then A B C, C B A, A B C
    assert times == {"a": [1.0] * 3, "b": [2.0] * 3, "c": [3.0] * 3}


def test_rotated_start_orders_put_every_variant_in_every_position() -> None:
    from benchmarks.common import rotated

    orders = [rotated(["dense", "lottery", "prune"], i) for i in range(3)]
    assert orders == [["dense", "lottery", "prune"], ["lottery", "prune", "dense"], ["prune", "dense", "lottery"]]
    assert all(sorted(column) == ["dense", "lottery", "prune"] for column in zip(*orders))


def test_balanced_ratios_cancel_a_factor_of_the_start_position() -> None:
    from benchmarks.common import balanced_ratios

    true, bias = 1.03, 1.12  # the variant started second runs 12% slower, whatever it is
    ratios = [true * bias, true / bias] * 3 + [true * bias]  # the last pair has no partner: dropped
    assert balanced_ratios(ratios, 2) == pytest.approx([true] * 3)
    assert balanced_ratios([1.0, 4.0, 2.0], 1) == [1.0, 4.0, 2.0]
    with pytest.raises(ValueError, match="group"):
        balanced_ratios([1.0], 0)
