"""Opacus's noise search, the same answer from a third of the accountant calls.

``opacus.accountants.utils.get_noise_multiplier`` doubles sigma from 20 until epsilon is at most
the target, then bisects from [0, sigma] until epsilon is within the tolerance below the target:
about 17 accountant calls, and a PRV epsilon costs 0.2-1 s (the planner took 15 s for one client).

The answer is fixed by the search's path, and the path by comparisons only: is epsilon at this
sigma below the target, and below target - tolerance? Epsilon falls as sigma grows, so one exact
epsilon on the right side of a threshold decides every comparison beyond it. So we first evaluate
a few sigmas right around the answer (a Gaussian-DP guess, then secant steps), then replay the
search step by step, calling the accountant only for a comparison those points cannot decide.
Same comparisons, same path, bit for bit the same sigma; 5-7 calls instead of ~17
(``tests/test_noise_search.py`` checks it against Opacus itself).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator

from opacus.accountants.utils import MAX_SIGMA

EpsilonAt = Callable[[float], float]
MONOTONE_MARGIN = 1e-6  # room a deduction needs; PRV's numerical jitter in sigma is far below


class Epsilons:
    """Exact epsilons at the sigmas evaluated so far, and what monotonicity says about others.

    Each question is answered exactly as a direct evaluation would answer it: from a stored exact
    value, from a stored value on the far side of the threshold (by at least the margin), or by
    calling the accountant.
    """

    def __init__(self, epsilon_at: EpsilonAt):
        self.epsilon_at = epsilon_at
        self.known: dict[float, float] = {}

    def value(self, sigma: float) -> float:
        if sigma not in self.known:
            self.known[sigma] = float(self.epsilon_at(sigma))
        return self.known[sigma]

    def _side(self, sigma: float, threshold: float) -> int:
        """-1: epsilon(sigma) surely < threshold; +1: surely > threshold; 0: not known."""
        if sigma in self.known:
            return 0
        for s, eps in self.known.items():
            if s <= sigma and eps < threshold - MONOTONE_MARGIN:
                return -1
            if s >= sigma and eps > threshold + MONOTONE_MARGIN:
                return 1
        return 0

    def below(self, sigma: float, threshold: float) -> bool:
        """``epsilon(sigma) < threshold``."""
        side = self._side(sigma, threshold)
        return side < 0 if side else self.value(sigma) < threshold

    def above(self, sigma: float, threshold: float) -> bool:
        """``epsilon(sigma) > threshold``."""
        side = self._side(sigma, threshold)
        return side > 0 if side else self.value(sigma) > threshold

    def gap_exceeds(self, sigma: float, target: float, tolerance: float) -> bool:
        """``target - epsilon(sigma) > tolerance``: the bisection goes on."""
        side = self._side(sigma, target - tolerance)
        return side < 0 if side else target - self.value(sigma) > tolerance

    def seed(self, guess: tuple[float, float], target: float, tolerance: float,
             calls: int = 6) -> None:
        """Evaluate a few sigmas close to the answer. The search ends in the band where epsilon
        is in [target - tolerance, target), so aim one point just above the target and one just
        below target - tolerance; with both in hand the replay decides almost every step alone.
        ``guess``: a first sigma and the slope of log epsilon over log sigma there.

        Only a speed-up: each new point stays inside what the points so far bracket (at most a
        factor 4 beyond them), so no sigma far from the answer is tried, and an accountant
        error here just ends the seeding (the replay then meets it where Opacus would)."""
        aim_above, aim_below = target + tolerance / 2, target - 1.5 * tolerance
        sigma, slope = guess
        for _ in range(calls):
            if not (0 < sigma < MAX_SIGMA and math.isfinite(sigma)):
                return
            try:
                self.value(sigma)
            except Exception:  # a guess must never fail the search
                return
            above = {s: e for s, e in self.known.items() if e > target + MONOTONE_MARGIN}
            below = {s: e for s, e in self.known.items()
                     if e < target - tolerance - MONOTONE_MARGIN}
            near_above = bool(above) and min(above.values()) <= target + tolerance
            near_below = bool(below) and max(below.values()) >= target - 2 * tolerance
            if near_above and near_below:
                return
            if near_above:
                aim = aim_below
            elif near_below or not above:
                aim = aim_above
            elif not below:
                aim = aim_below
            else:  # far on both sides: move the side farther from its aim
                far_above = min(above.values()) / aim_above > aim_below / max(below.values())
                aim = aim_above if far_above else aim_below
            if aim <= 0:
                return
            sigma = self._clamp(self._predict(aim, slope), max(above, default=None),
                                min(below, default=None))

    @staticmethod
    def _clamp(sigma: float, low: float | None, high: float | None) -> float:
        """Keep a prediction strictly between the sigmas known to be too small (``low``) and too
        large (``high``), and within a factor 4 of them."""
        if not math.isfinite(sigma):
            return sigma
        if low is not None and high is not None:
            return sigma if low < sigma < high else math.sqrt(low * high)
        if low is not None:
            return min(sigma, 4 * low) if sigma > low else 2 * low
        if high is not None:
            return max(sigma, high / 4) if sigma < high else high / 2
        return sigma

    def _predict(self, aim: float, slope: float) -> float:
        """Sigma where epsilon = ``aim`` on the secant (log-log) through the two known points
        nearest to it; with one point, along ``slope``."""
        pts = sorted((p for p in self.known.items() if p[1] > 0),
                     key=lambda p: abs(math.log(p[1] / aim)))
        if not pts:
            return math.nan
        s1, e1 = pts[0]
        if len(pts) > 1 and pts[1][0] != s1:
            s2, e2 = pts[1]
            fitted = (math.log(e1) - math.log(e2)) / (math.log(s1) - math.log(s2))
            if math.isfinite(fitted) and fitted < 0:
                slope = fitted
        return s1 * math.exp((math.log(aim) - math.log(e1)) / slope)


def search_like_opacus(epsilon_at: EpsilonAt, target: float, tolerance: float,
                       guess: tuple[float, float]) -> float:
    """``get_noise_multiplier(target_epsilon=target, epsilon_tolerance=tolerance, ...)``, step for
    step, where ``epsilon_at(sigma)`` is the accountant's epsilon. Raises ``ValueError`` as it does
    when no sigma up to ``MAX_SIGMA`` reaches the target."""
    known = Epsilons(epsilon_at)
    known.seed(guess, target, tolerance)
    low, high = 0, 10
    while True:
        high = 2 * high
        if high > MAX_SIGMA:
            raise ValueError("The privacy budget is too low.")
        if not known.above(high, target):
            break
    while known.gap_exceeds(high, target, tolerance):
        mid = (low + high) / 2
        if known.below(mid, target):
            high = mid
        else:
            low = mid
    return high


def search_after(epsilon_at: EpsilonAt, target: float, tolerance: float,
                 guess: tuple[float, float]) -> float | None:
    """The same search for a client that already spent part of its budget
    (``calibration.noise_multiplier_after``): from 10, a stop when the bracket is below 1e-6, and
    ``None`` past ``MAX_SIGMA``."""
    known = Epsilons(epsilon_at)
    known.seed(guess, target, tolerance)
    low, high = 0.0, 10.0
    while known.above(high, target):
        high *= 2
        if high > MAX_SIGMA:
            return None
    while known.gap_exceeds(high, target, tolerance):
        mid = (low + high) / 2
        if known.below(mid, target):
            high = mid
        else:
            low = mid
        if high - low < 1e-6:
            break
    return high


_RDP_LOCK = threading.RLock()


@contextlib.contextmanager
def shared_rdp_terms() -> Iterator[None]:
    """Within this block Opacus computes each RDP term (q, sigma, order) once.

    The PRV accountant sizes its grid with two RDP bounds of the same (q, sigma), one for all steps
    and one for a single step (``compute_safe_domain_size``), and each costs a series per
    fractional order: most of a PRV epsilon's time. The term is a pure function of its arguments,
    so memoising it changes no bit of any epsilon. The original is restored on exit.
    """
    try:
        from opacus.accountants.analysis import rdp as rdp_analysis
    except ImportError:  # pragma: no cover - a future Opacus layout: just compute everything
        yield
        return
    with _RDP_LOCK:
        original = getattr(rdp_analysis, "_compute_rdp", None)
        if original is None or getattr(original, "fedtune_memo", False):
            yield
            return
        memo: dict[tuple, float] = {}

        def memoised(q, sigma, alpha):
            key = (q, sigma, alpha)
            if key not in memo:
                memo[key] = original(q, sigma, alpha)
            return memo[key]

        memoised.fedtune_memo = True
        rdp_analysis._compute_rdp = memoised
        try:
            yield
        finally:
            rdp_analysis._compute_rdp = original


def gdp_guess(target: float, delta: float, q: float, steps: int,
              prior: list[tuple[float, float, int]] | None = None) -> tuple[float, float]:
    """A first sigma from Gaussian DP (the central-limit view of DP-SGD, Dong, Roth and Su 2019:
    mu^2 = sum over steps of q^2 (exp(1/sigma^2) - 1)), and the slope of log epsilon over log
    sigma there. Only a starting point: the search above decides the answer."""
    try:
        spent = sum(qq * qq * n * math.expm1(1 / (s * s)) for s, qq, n in prior or [] if s > 0)

        def mu_at(sigma: float) -> float:
            return math.sqrt(spent + q * q * steps * math.expm1(1 / (sigma * sigma)))

        mu2 = _gdp_mu(target, delta) ** 2 - spent
        if mu2 <= 0:
            return 10.0, -1.0
        sigma = 1 / math.sqrt(math.log1p(mu2 / (q * q * steps)))
        e1, e2 = _gdp_epsilon(mu_at(sigma), delta), _gdp_epsilon(mu_at(1.01 * sigma), delta)
        slope = (math.log(e2) - math.log(e1)) / math.log(1.01)
        return sigma, (slope if math.isfinite(slope) and slope < 0 else -1.0)
    except (ValueError, OverflowError, ZeroDivisionError):
        return 1.0, -1.0


def _gdp_delta(eps: float, mu: float) -> float:
    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2))

    return phi(-eps / mu + mu / 2) - math.exp(eps) * phi(-eps / mu - mu / 2)


def _gdp_mu(eps: float, delta: float) -> float:
    """The mu of mu-GDP whose privacy curve has ``delta`` at ``eps`` (delta grows with mu)."""
    low, high = 1e-6, 1.0
    while _gdp_delta(eps, high) < delta:
        low, high = high, 2 * high
        if high > 1e3:
            raise ValueError("no mu reaches this delta")
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if _gdp_delta(eps, mid) < delta else (low, mid)
    return high


def _gdp_epsilon(mu: float, delta: float) -> float:
    """The epsilon of mu-GDP at ``delta`` (delta falls as epsilon grows)."""
    low, high = 0.0, 1.0
    while _gdp_delta(high, mu) > delta:
        low, high = high, 2 * high
        if high > 500:
            raise ValueError("no epsilon reaches this delta")
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if _gdp_delta(mid, mu) > delta else (low, mid)
    return high
