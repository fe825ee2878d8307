"""The epsilon lower bound of a one-run audit (Steinke, Nasr, Jagielski, NeurIPS 2023,
"Privacy auditing with one (1) training run", arXiv 2305.08846).

m canaries are each put into the training data with probability 1/2 (a secret coin). The auditor
looks only at the trained model, guesses "in" for the k+ highest-scoring canaries and "out" for the
k- lowest, abstains on the rest, and counts the correct guesses. Under (epsilon, delta)-DP the
number of correct guesses out of r = k+ + k- is stochastically dominated by Binomial(r,
e^eps / (1 + e^eps)), up to a delta term (their Theorem 3.1 and Appendix D). An epsilon whose
p-value for the observed count is below the significance level is refuted: the largest such
epsilon is the lower bound. It says "at least this much leaks", never "at most".

Trying several (k+, k-), or several scores, and keeping the best would be a multiple test;
:func:`audit_scores` pays for it with a Bonferroni correction (significance / number of tries).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom

SIGNIFICANCE = 0.05
# The guesses tried, as fractions of m guessed in all, half in (top) and half out (bottom).
GUESS_FRACTIONS = (0.1, 0.2, 0.5, 1.0)


def p_value(m: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """P[at least ``correct`` of ``guesses`` right] under (epsilon, delta)-DP, as bounded in the
    paper's Appendix D: beta + alpha * 2 m delta, with beta the binomial tail at
    p = e^eps / (1 + e^eps) and alpha = max_i (P[Bin >= correct - i] - beta) / i."""
    if correct <= 0:
        return 1.0
    p = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(binom.sf(correct - 1, guesses, p))
    if delta == 0:
        return beta
    i = np.arange(1, correct + 1)
    alpha = float(np.max((binom.sf(correct - i - 1, guesses, p) - beta) / i, initial=0.0))
    return min(1.0, beta + alpha * delta * 2 * m)


def epsilon_lower_bound(m: int, guesses: int, correct: int, delta: float,
                        significance: float = SIGNIFICANCE, high: float = 100.0) -> float:
    """The largest epsilon whose p-value is at most ``significance`` (0 when none is): the
    p-value grows with epsilon, so bisect on [0, high]."""
    if guesses <= 0 or p_value(m, guesses, correct, 0.0, delta) > significance:
        return 0.0
    low = 0.0
    if p_value(m, guesses, correct, high, delta) <= significance:
        return high
    for _ in range(60):
        mid = (low + high) / 2
        if p_value(m, guesses, correct, mid, delta) <= significance:
            low = mid
        else:
            high = mid
    return low


def guess(scores: np.ndarray, coins: np.ndarray, k_plus: int, k_minus: int) -> int:
    """Correct guesses when the ``k_plus`` highest scores are called in and the ``k_minus``
    lowest out (ties broken by index, so the count is deterministic)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    coins = np.asarray(coins, dtype=bool)
    top, bottom = order[:k_plus], order[len(order) - k_minus:] if k_minus else order[:0]
    return int(coins[top].sum() + (~coins[bottom]).sum())


def audit_scores(scores, coins, delta: float, significance: float = SIGNIFICANCE,
                 fractions: tuple[float, ...] = GUESS_FRACTIONS) -> dict:
    """The audit of canaries with secret ``coins`` under one or more scorings (``scores``: an
    array, higher = more likely trained on, or ``{name: array}``). Every (scoring, k) with
    2k = fraction * m guesses is tried at significance / (number of tries) (Bonferroni), so the
    best of them is still a 95% bound; the best and every try, for ``audit.json``."""
    named = scores if isinstance(scores, dict) else {"score": scores}
    coins = np.asarray(coins, dtype=bool)
    m = len(coins)
    for values in named.values():
        if np.shape(values) != coins.shape or coins.ndim != 1:
            raise ValueError("one score and one coin per canary")
    ks = sorted({max(1, int(f * m / 2)) for f in fractions if int(f * m / 2) * 2 <= m})
    level = significance / max(len(ks) * len(named), 1)
    tries = []
    for name, values in named.items():
        for k in ks:
            correct = guess(np.asarray(values, dtype=np.float64), coins, k, k)
            bound = epsilon_lower_bound(m, 2 * k, correct, delta, level)
            tries.append({"score": name, "k_plus": k, "k_minus": k, "correct": correct,
                          "epsilon_lower_bound": bound})
    best = max(tries, key=lambda g: (g["epsilon_lower_bound"], -g["k_plus"]), default=None)
    empty = {"score": None, "k_plus": 0, "k_minus": 0, "correct": 0, "epsilon_lower_bound": 0.0}
    best = best or empty
    return {
        "m": m, "inserted": int(coins.sum()), "delta": delta,
        "confidence": 1 - significance, "significance_per_try": level,
        "score": best["score"], "k_plus": best["k_plus"], "k_minus": best["k_minus"],
        "guesses": best["k_plus"] + best["k_minus"], "correct": best["correct"],
        "epsilon_lower_bound": best["epsilon_lower_bound"], "tries": tries,
    }
