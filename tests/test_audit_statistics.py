"""The audit's statistics against values computed independently: the one-run bound (Steinke,
Nasr, Jagielski 2023) in closed form and by exact binomial sums, and epsilon between Gaussians by
the Gaussian mechanism's formula and by numerical integration."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from fedtune.privacy.audit.gaussian import epsilon_between, estimate_from_cosines, hockey_stick
from fedtune.privacy.audit.one_run import (
    audit_scores,
    epsilon_lower_bound,
    guess,
    p_value,
)


def _p_value_exact(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The paper's Appendix D bound from binomial terms summed by hand (no scipy): beta +
    2 m delta max_i (P[Bin >= v - i] - beta) / i."""
    p = math.exp(eps) / (1 + math.exp(eps))
    pmf = [math.comb(r, j) * p**j * (1 - p) ** (r - j) for j in range(r + 1)]

    def tail(k: int) -> float:
        return math.fsum(pmf[max(k, 0):])

    beta = tail(v)
    alpha = max(((tail(v - i) - beta) / i for i in range(1, v + 1)), default=0.0)
    return min(1.0, beta + alpha * delta * 2 * m)


@pytest.mark.parametrize("r", [10, 24, 60])
def test_all_guesses_right_without_delta_matches_the_closed_form(r):
    # P[all r right] = p^r <= 0.05  <=>  p <= 0.05^(1/r): epsilon = logit(0.05^(1/r))
    q = 0.05 ** (1 / r)
    assert epsilon_lower_bound(1000, r, r, 0.0) == pytest.approx(math.log(q / (1 - q)), abs=1e-6)


def test_no_correct_guess_and_chance_level_give_zero():
    assert epsilon_lower_bound(1000, 100, 0, 1e-5) == 0.0
    assert epsilon_lower_bound(1000, 100, 50, 1e-5) == 0.0
    assert epsilon_lower_bound(1000, 0, 0, 1e-5) == 0.0


@pytest.mark.parametrize("m,r,v,eps,delta", [
    (1000, 100, 90, 1.5, 1e-5), (200, 40, 38, 2.0, 1e-3), (50, 20, 15, 0.5, 1e-2),
    (1000, 120, 118, 3.0, 1e-5), (100, 10, 3, 0.2, 1e-4)])
def test_p_value_with_delta_matches_exact_sums(m, r, v, eps, delta):
    assert p_value(m, r, v, eps, delta) == pytest.approx(_p_value_exact(m, r, v, eps, delta),
                                                         rel=1e-7, abs=1e-12)


def test_the_bound_is_the_largest_refuted_epsilon():
    m, r, v, delta = 1000, 100, 95, 1e-5
    eps = epsilon_lower_bound(m, r, v, delta)
    assert 2.0 < eps < 2.3  # 95 of 100 right: about 2.17
    assert _p_value_exact(m, r, v, eps - 1e-4, delta) <= 0.05 < _p_value_exact(
        m, r, v, eps + 1e-3, delta)
    assert epsilon_lower_bound(m, r, v, 1e-2) < eps  # a weaker claim is harder to refute


def test_guess_counts_top_in_and_bottom_out():
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    coins = np.array([True, False, True, False, False, True])
    assert guess(scores, coins, 2, 2) == 1 + 1  # top: in, out; bottom: out, in
    assert guess(scores, coins, 1, 0) == 1


def test_perfect_scores_reach_the_best_bound_and_random_scores_do_not():
    rng = np.random.default_rng(0)
    coins = rng.random(1000) < 0.5
    perfect = audit_scores(coins.astype(float), coins, 1e-5)
    assert perfect["correct"] == perfect["guesses"] >= 500  # every guess right
    assert perfect["epsilon_lower_bound"] > 4  # delta's term, 2 m delta, caps it near 4.7
    assert perfect["significance_per_try"] == pytest.approx(0.05 / 4)  # Bonferroni over 4 tries
    noise = audit_scores(rng.standard_normal(1000), coins, 1e-5)
    assert noise["epsilon_lower_bound"] < 0.3


def test_epsilon_between_equal_gaussians_is_the_gaussian_mechanism():
    for mu, eps in ((2.0, 1.5), (0.5, 0.2), (4.0, 6.0)):
        delta = norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)
        assert epsilon_between(0.0, 1.0, mu, 1.0, delta) == pytest.approx(eps, abs=1e-6)
        assert epsilon_between(0.0, 3.0, 3 * mu, 3.0, delta) == pytest.approx(eps, abs=1e-6)


@pytest.mark.parametrize("mp,sp,mq,sq,eps", [(1, 0.5, 0, 1, 0.7), (0, 1, 1, 0.5, 0.7),
                                            (0.3, 2.0, 0, 1, 0.1)])
def test_hockey_stick_matches_numerical_integration(mp, sp, mq, sq, eps):
    x = np.linspace(-40, 40, 2_000_001)
    gap = norm.pdf(x, mp, sp) - math.exp(eps) * norm.pdf(x, mq, sq)
    assert hockey_stick(mp, sp, mq, sq, eps) == pytest.approx(
        float(np.trapezoid(np.clip(gap, 0, None), x)), abs=1e-7)


def test_cosines_like_the_null_estimate_little_and_separated_ones_much():
    rng = np.random.default_rng(1)
    d = 10_000
    null_like = rng.normal(0, 1 / math.sqrt(d), 50)
    assert estimate_from_cosines(null_like, d, 1e-5)["epsilon_estimate"] < 1.5
    far = rng.normal(10 / math.sqrt(d), 1 / math.sqrt(d), 50)
    assert estimate_from_cosines(far, d, 1e-5)["epsilon_estimate"] > 20
