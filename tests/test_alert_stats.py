"""The errors rule's statistics: exact binomial tails and bounds, and what fires and
resolves at the sample counts of real windows (pure functions, no servers)."""

from __future__ import annotations

import math

import pytest

from collector.alerts.rules.base import at_least, at_most, bounds
from collector.alerts.rules.errors import SPANS, ErrorsSettings, fires, resolves, split

RULE = ErrorsSettings()


def exact_tail(f: int, n: int, p: float) -> float:
    """P(X >= f), summed with integers: the reference."""
    return sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(f, n + 1))


@pytest.mark.parametrize(
    ("f", "n", "p"), [(0, 10, 0.05), (3, 10, 0.05), (14, 90, 0.05), (2, 225, 0.05), (60, 900, 0.05)]
)
def test_the_tails_are_the_binomials(f: int, n: int, p: float) -> None:
    assert at_least(f, n, p) == pytest.approx(exact_tail(f, n, p), rel=1e-9, abs=1e-15)
    assert at_most(f, n, p) == pytest.approx(1 - exact_tail(f + 1, n, p), rel=1e-9, abs=1e-15)


def test_the_bounds_are_clopper_pearsons() -> None:
    """0 of 10 at 5 %: the upper bound solves (1 - p)^10 = 0.05; f of n: the tails at
    the bounds are the chance asked for."""
    assert bounds(0, 10, 0.05) == (0.0, pytest.approx(1 - 0.05 ** (1 / 10), abs=1e-12))
    lower, upper = bounds(7, 90, 0.01)
    assert at_least(7, 90, lower) == pytest.approx(0.01, rel=1e-6)
    assert at_most(7, 90, upper) == pytest.approx(0.01, rel=1e-6)
    assert lower < 7 / 90 < upper


def test_a_ratio_at_the_threshold_neither_fires_nor_resolves() -> None:
    """5 % of 900 samples (each span holding its share): no span proves it above or
    below; 10 % fires, 1 % resolves."""

    def counts(ratio: float) -> list[tuple[int, int]]:
        return [(round(ratio * share * 900), round(share * 900)) for share in SPANS]

    assert fires(counts(0.05), RULE) is None
    assert resolves(counts(0.05), RULE) is None
    assert fires(counts(0.10), RULE) is not None
    assert resolves(counts(0.01), RULE) is not None


def test_a_small_window_resolves_when_clean_and_an_outage_fires() -> None:
    """15 samples (3 probes at 60 s in 300 s) cannot prove any ratio below 5 %: clean,
    it resolves; one failure holds. Three failures of the last quarter's three samples
    fire (two of the last 30 s's two are not enough)."""
    assert resolves([(0, 2), (0, 3), (0, 8), (0, 15)], RULE) is not None
    assert resolves([(0, 2), (0, 3), (0, 8), (1, 15)], RULE) is None
    lower = bounds(3, 3, split(RULE.confidence))[0]
    assert fires([(2, 2), (3, 3), (3, 8), (3, 15)], RULE) == (1, pytest.approx(lower))
