"""Epsilon between two Gaussians: the one-shot estimate of client-level privacy (Andrew et al.,
ICLR 2024, "One-shot empirical privacy estimation for federated learning", arXiv 2302.03098).

Canary clients each push one random unit direction. In d dimensions the cosine between the final
model delta and a direction that was never inserted is about N(0, 1/d) (the null); the cosines of
the inserted canaries are fitted with a Gaussian N(mu, s^2). The estimate is the epsilon at delta
of the Gaussian mechanism with sensitivity mu / s: how well one observation tells an inserted
canary from a fresh one when both spread alike. (Fitting the two variances separately lets the
sampling noise of a few dozen canaries' std decide epsilon at delta = 1e-5, through the tails:
50 cosines drawn from the null itself then "estimate" epsilon 2.) It is an estimate from a fitted
model, not a confidence bound.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm


def _mass(intervals: list[tuple[float, float]], mu: float, s: float) -> float:
    return sum(float(norm.cdf(hi, mu, s) - norm.cdf(lo, mu, s)) for lo, hi in intervals)


def hockey_stick(mu_p: float, s_p: float, mu_q: float, s_q: float, epsilon: float) -> float:
    """H_eps(P || Q) = P(A) - e^eps Q(A), exactly: A, where log p - log q > eps, is where a
    quadratic in x is positive (an interval, its complement, or a half-line)."""
    a = 1 / (2 * s_q**2) - 1 / (2 * s_p**2)
    b = mu_p / s_p**2 - mu_q / s_q**2
    c = mu_q**2 / (2 * s_q**2) - mu_p**2 / (2 * s_p**2) + math.log(s_q / s_p) - epsilon
    inf = math.inf
    if abs(a) < 1e-12 * max(1 / s_p**2, 1 / s_q**2):
        if b == 0:
            region = [(-inf, inf)] if c > 0 else []
        else:
            root = -c / b
            region = [(root, inf)] if b > 0 else [(-inf, root)]
    else:
        disc = b * b - 4 * a * c
        if disc <= 0:
            region = [(-inf, inf)] if a > 0 else []
        else:
            r1, r2 = sorted(((-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)))
            region = [(-inf, r1), (r2, inf)] if a > 0 else [(r1, r2)]
    return max(0.0, _mass(region, mu_p, s_p) - math.exp(epsilon) * _mass(region, mu_q, s_q))


def _epsilon_one_way(mu_p: float, s_p: float, mu_q: float, s_q: float, delta: float) -> float:
    if hockey_stick(mu_p, s_p, mu_q, s_q, 0.0) <= delta:
        return 0.0
    low, high = 0.0, 1.0
    while hockey_stick(mu_p, s_p, mu_q, s_q, high) > delta:
        low, high = high, high * 2
        if high > 1e4:
            return math.inf
    for _ in range(50):
        mid = (low + high) / 2
        if hockey_stick(mu_p, s_p, mu_q, s_q, mid) > delta:
            low = mid
        else:
            high = mid
    return high


def epsilon_between(mu0: float, s0: float, mu1: float, s1: float, delta: float) -> float:
    """The smallest epsilon with H_eps <= delta in both directions between N(mu0, s0^2) and
    N(mu1, s1^2)."""
    if s0 <= 0 or s1 <= 0:
        raise ValueError("both standard deviations must be positive")
    return max(_epsilon_one_way(mu1, s1, mu0, s0, delta), _epsilon_one_way(mu0, s0, mu1, s1, delta))


def estimate_from_cosines(cosines, dim: int, delta: float) -> dict:
    """Fit N(mu, s^2) to the inserted canaries' cosines and compare it with the null N(0, 1/d)."""
    c = np.asarray(cosines, dtype=np.float64)
    if len(c) < 2:
        raise ValueError("the estimate needs at least 2 canary cosines")
    mu, s = float(c.mean()), max(float(c.std(ddof=1)), 1e-12)
    null_s = 1.0 / math.sqrt(dim)
    return {"canary_cosine_mean": mu, "canary_cosine_std": s, "null_cosine_std": null_s,
            "epsilon_estimate": epsilon_between(0.0, s, abs(mu), s, delta)}
