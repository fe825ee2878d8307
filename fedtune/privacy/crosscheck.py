"""An independent second opinion on a client's epsilon: Google's ``dp-accounting``.

Opacus's accountants and ``dp-accounting`` are separate implementations; agreement between
them (PRV vs PLD, RDP vs RDP) is evidence that the history was recorded and composed correctly.
"""

from __future__ import annotations

import functools

import dp_accounting
from dp_accounting import pld, rdp

from fedtune.protocol import History


def dp_event(history: History) -> dp_accounting.DpEvent:
    """DP-SGD as composed Poisson-subsampled Gaussian steps."""
    return dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
        for sigma, q, steps in history if steps > 0
    ])


def crosscheck(history: History, delta: float) -> dict[str, float]:
    return dict(_crosscheck(tuple((float(s), float(q), int(n)) for s, q, n in history),
                            float(delta)))


@functools.lru_cache(maxsize=256)
def _crosscheck(history: tuple[tuple[float, float, int], ...], delta: float
                ) -> tuple[tuple[str, float], ...]:
    """Cached: about a second per client, and clients of equal size share one history."""
    event = dp_event(list(history))
    pld_acc = pld.PLDAccountant()
    pld_acc.compose(event)
    rdp_acc = rdp.RdpAccountant()
    rdp_acc.compose(event)
    return (("pld_epsilon", float(pld_acc.get_epsilon(delta))),
            ("rdp_epsilon", float(rdp_acc.get_epsilon(delta))))
