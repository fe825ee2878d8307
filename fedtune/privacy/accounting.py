"""A client's cumulative privacy spend: the accountant history and its epsilon.

Opacus keeps the history as ``[(noise_multiplier, sample_rate, steps), ...]`` inside an accountant
that dies with its ``PrivacyEngine``. A client gets a fresh engine each round, so the history is
carried in ``context.state`` (a Flower ConfigRecord) and handed back to the next engine; epsilon is
always computed over every step the client has ever taken.
"""

from __future__ import annotations

import functools

from opacus.accountants import create_accountant

from fedtune.protocol import History


def merge_history(history: History) -> History:
    """Collapse entries with the same (sigma, q): PRV cost grows with the number of entries."""
    merged: dict[tuple[float, float], int] = {}
    for sigma, q, steps in history:
        merged[(float(sigma), float(q))] = merged.get((float(sigma), float(q)), 0) + int(steps)
    return [(s, q, n) for (s, q), n in merged.items()]


def epsilon(history: History, delta: float, accountant: str) -> float:
    if not history:
        return 0.0
    return _epsilon(tuple(merge_history(history)), float(delta), accountant)


@functools.lru_cache(maxsize=256)
def _epsilon(history: tuple[tuple[float, float, int], ...], delta: float,
             accountant: str) -> float:
    """Cached: a PRV epsilon costs 0.2-0.5 s, and a client asks for the same one several times
    a round (spent so far, after this round, reported), as do equal-size clients sharing a
    simulation worker."""
    acc = create_accountant(mechanism=accountant)
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta))
