"""Paired statistics for the gates: the candidate and the live model answer the same
prompts, so what counts is the discordant pairs (``b``: records only the candidate gets
right, ``c``: records only the live model gets right). Exact binomial arithmetic with
``math`` alone, so the gates need no scientific stack."""

from __future__ import annotations

import math


def discordant(baseline: list[int], candidate: list[int]) -> tuple[int, int]:
    """``(b, c)``: records the candidate gets right and the baseline wrong, and the reverse."""
    if len(baseline) != len(candidate):
        raise ValueError(f"paired outcomes differ in length: {len(baseline)} vs {len(candidate)}")
    b = sum(1 for x, y in zip(baseline, candidate) if not x and y)
    c = sum(1 for x, y in zip(baseline, candidate) if x and not y)
    return b, c


def mcnemar_p(wins: int, losses: int) -> float:
    """One-sided exact McNemar p-value that ``wins`` of ``wins + losses`` discordant pairs
    going one way is more than chance: P(X >= wins) for X ~ Binomial(wins + losses, 1/2).
    With no discordant pair it is 1 (no evidence)."""
    n = wins + losses
    if n == 0:
        return 1.0
    # Integer numerator over 2**n: exact until the final (correctly rounded) division.
    return sum(math.comb(n, i) for i in range(wins, n + 1)) / 2**n


def fewest_discordant(alpha: float) -> int:
    """The fewest discordant pairs with which the test can reach p < alpha at all (all of
    them one way: p = 2**-m). Fewer than this and no outcome can show a difference."""
    m = 1
    while 0.5**m >= alpha:
        m += 1
    return m


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), in log space so large n cannot overflow."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    return min(1.0, sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                                 + i * log_p + (n - i) * log_q) for i in range(k + 1)))


def drop_upper_bound(b: int, c: int, n: int, alpha: float) -> float:
    """The one-sided ``1 - alpha`` upper confidence bound of the drop ``(c - b) / n``, as a
    fraction of the ``n`` records. Conditional on the ``b + c`` discordant pairs, ``c`` is
    Binomial(b + c, theta); theta's Clopper-Pearson upper bound gives the drop's."""
    m = b + c
    if m == 0 or n == 0:
        return 0.0
    if c == m:
        theta = 1.0
    else:
        low, high = c / m, 1.0
        for _ in range(60):  # bisection: P(X <= c; theta) falls as theta grows
            mid = (low + high) / 2
            low, high = (mid, high) if _binomial_cdf(c, m, mid) > alpha else (low, mid)
        theta = high
    return m * (2 * theta - 1) / n
