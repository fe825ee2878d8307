"""The fast noise search gives bit for bit Opacus's answer, from fewer accountant calls."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import utils as opacus_utils
from opacus.accountants.analysis import rdp as rdp_analysis

from fedtune.privacy.accounting import epsilon
from fedtune.privacy.calibration import noise_multiplier, noise_multiplier_after, sample_rate
from fedtune.privacy.noise_search import (
    gdp_guess,
    search_after,
    search_like_opacus,
    shared_rdp_terms,
)


class _Counted:
    """A smooth, falling epsilon(sigma) that counts its calls."""

    def __init__(self, scale: float, power: float, floor: float = 0.0):
        self.scale, self.power, self.floor, self.calls = scale, power, floor, 0
        self.sigmas: list[float] = []

    def __call__(self, sigma: float) -> float:
        self.calls += 1
        self.sigmas.append(float(sigma))
        return self.floor + self.scale / float(sigma) ** self.power


def _opacus_on(f, target: float, monkeypatch) -> float:
    """Opacus's own get_noise_multiplier, its accountant replaced by ``f``."""

    class Accountant:
        history: list = []

        def get_epsilon(self, delta, **kwargs):
            return f(self.history[0][0])

    monkeypatch.setattr(opacus_utils, "create_accountant", lambda mechanism: Accountant())
    return opacus_utils.get_noise_multiplier(target_epsilon=target, target_delta=1e-5,
                                             sample_rate=0.01, steps=100, accountant="prv")


def _reference_after(f, target: float, tolerance: float) -> float | None:
    """The bisection of calibration.noise_multiplier_after before it was sped up."""
    low, high = 0.0, 10.0
    while f(high) > target:
        high *= 2
        if high > opacus_utils.MAX_SIGMA:
            return None
    eps_high = f(high)
    while target - eps_high > tolerance:
        mid = (low + high) / 2
        eps = f(mid)
        if eps < target:
            high, eps_high = mid, eps
        else:
            low = mid
        if high - low < 1e-6:
            break
    return high


def _outcome(search):
    try:
        return search()
    except ValueError as exc:
        return str(exc)


@settings(max_examples=300, deadline=None)
@given(scale=st.floats(0.05, 50.0), power=st.floats(0.5, 4.0), target=st.floats(0.05, 30.0),
       guess=st.floats(0.01, 100.0), slope=st.floats(-6.0, -0.2))
def test_same_answer_as_opacus_for_any_falling_epsilon_and_any_guess(scale, power, target,
                                                                       guess, slope):
    with pytest.MonkeyPatch.context() as mp:
        expected = _outcome(lambda: _opacus_on(_Counted(scale, power), target, mp))
    assert _outcome(lambda: search_like_opacus(_Counted(scale, power), target, 0.01,
                                               (guess, slope))) == expected
    assert (search_after(_Counted(scale, power), target, 0.01, (guess, slope))
            == _reference_after(_Counted(scale, power), target, 0.01))


def test_a_hopeless_target_fails_like_opacus(monkeypatch):
    f = _Counted(1.0, 0.1, floor=5.0)  # never below 5
    with pytest.raises(ValueError, match="privacy budget is too low"):
        _opacus_on(f, 1.0, monkeypatch)
    with pytest.raises(ValueError, match="privacy budget is too low"):
        search_like_opacus(f, 1.0, 0.01, (1.0, -1.0))
    assert search_after(f, 1.0, 0.01, (1.0, -1.0)) is None


def test_a_good_guess_needs_few_accountant_calls(monkeypatch):
    direct, fast = _Counted(8.0, 2.5), _Counted(8.0, 2.5)
    expected = _opacus_on(direct, 3.0, monkeypatch)
    assert search_like_opacus(fast, 3.0, 0.01, (1.5, -2.0)) == expected
    assert direct.calls >= 12 and fast.calls <= 7, (direct.calls, fast.calls)


def test_a_bad_guess_costs_calls_but_never_strays_far_from_the_answer(monkeypatch):
    """PRV gets slow (and memory-hungry) at small sigma; Opacus itself never goes below about
    half the answer, and the seeding stays within a factor 4 of what it has seen."""
    expected = _opacus_on(_Counted(8.0, 2.5), 3.0, monkeypatch)
    for guess in [(100.0, -0.2), (0.9 * expected, -30.0), (5 * expected, -0.05)]:
        f = _Counted(8.0, 2.5)
        assert search_like_opacus(f, 3.0, 0.01, guess) == expected
        assert min(f.sigmas[1:]) >= min(expected / 4, guess[0]), (guess, f.sigmas)


def test_an_accountant_error_while_seeding_is_left_to_the_replay(monkeypatch):
    expected = _opacus_on(_Counted(8.0, 2.5), 3.0, monkeypatch)

    def fails_at_the_guess(sigma):
        if sigma == 0.123:
            raise OverflowError("too small")
        return 8.0 / float(sigma) ** 2.5

    assert search_like_opacus(fails_at_the_guess, 3.0, 0.01, (0.123, -1.0)) == expected


@pytest.mark.parametrize(("n", "batch", "steps", "target", "delta", "accountant"), [
    (100, 10, 10, 1.0, 1e-4, "prv"),
    (5000, 64, 316, 3.0, 1e-5, "rdp"),
])
def test_real_accountants_give_opacus_noise_exactly(n, batch, steps, target, delta, accountant):
    expected = opacus_utils.get_noise_multiplier(
        target_epsilon=target, target_delta=delta, sample_rate=sample_rate(n, batch),
        steps=steps, accountant=accountant)
    noise_multiplier.cache_clear()
    assert noise_multiplier(target_epsilon=target, delta=delta, num_examples=n,
                            batch_size=batch, steps=steps, accountant=accountant) == expected


def test_search_after_a_prior_spend_matches_the_plain_bisection():
    prior = [(0.8, 0.02, 100)]

    def f(sigma):
        return epsilon([*prior, (sigma, 0.02, 100)], 1e-5, "rdp")

    assert noise_multiplier_after(prior, target_epsilon=8.0, delta=1e-5, q=0.02, steps=100,
                                  accountant="rdp") == _reference_after(f, 8.0, 0.01)


def test_shared_rdp_terms_change_no_bit_and_are_undone():
    original = rdp_analysis._compute_rdp
    history = [(0.9, 0.02, 50)]
    plain = rdp_analysis.compute_rdp(q=0.02, noise_multiplier=0.9, steps=50, orders=[1.5, 2, 32])
    with shared_rdp_terms():
        assert rdp_analysis._compute_rdp is not original
        shared = rdp_analysis.compute_rdp(q=0.02, noise_multiplier=0.9, steps=50,
                                          orders=[1.5, 2, 32])
        with shared_rdp_terms():  # nesting is harmless
            again = rdp_analysis.compute_rdp(q=0.02, noise_multiplier=0.9, steps=50,
                                             orders=[1.5, 2, 32])
    assert rdp_analysis._compute_rdp is original
    assert list(plain) == list(shared) == list(again)
    assert epsilon(history, 1e-5, "rdp") > 0


def test_gdp_guess_is_close_and_falls_back_on_nonsense():
    sigma, slope = gdp_guess(8.0, 1e-5, 0.02, 100)
    assert 0.4 < sigma < 0.7 and slope < 0  # the exact answer is 0.536
    assert gdp_guess(8.0, 1e-5, 0.02, 100, prior=[(0.1, 1.0, 1000)]) == (10.0, -1.0)
    assert all(math.isfinite(x) for x in gdp_guess(1e-9, 0.5, 1.0, 1))
