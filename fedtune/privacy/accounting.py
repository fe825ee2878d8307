"""A client's cumulative privacy spend: the accountant history and its epsilon.

Opacus keeps the history as ``[(noise_multiplier, sample_rate, steps), ...]`` inside an accountant
that dies with its ``PrivacyEngine``. A client gets a fresh engine each round, so the history is
carried in ``context.state`` (a Flower ConfigRecord) and handed back to the next engine; epsilon is
always computed over every step the client has ever taken.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from flwr.app import ConfigRecord
from opacus.accountants import create_accountant

History = list[tuple[float, float, int]]


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


@dataclass
class PrivacyState:
    """What one client must remember between rounds (and, on real hosts, between runs)."""

    noise_multiplier: float = 0.0
    sample_rate: float = 0.0
    history: History = field(default_factory=list)
    rounds_trained: int = 0
    rounds_refused: int = 0
    exhausted: bool = False
    plain_steps: int = 0  # steps trained without DP (dp=off): counted, never accounted

    @property
    def total_steps(self) -> int:
        return sum(n for _, _, n in self.history) + self.plain_steps

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({
            "noise-multiplier": self.noise_multiplier,
            "sample-rate": self.sample_rate,
            "history-sigma": [float(s) for s, _, _ in self.history],
            "history-q": [float(q) for _, q, _ in self.history],
            "history-steps": [int(n) for _, _, n in self.history],
            "rounds-trained": self.rounds_trained,
            "rounds-refused": self.rounds_refused,
            "exhausted": self.exhausted,
            "plain-steps": self.plain_steps,
        })

    @classmethod
    def from_record(cls, record: ConfigRecord | None) -> PrivacyState:
        if record is None:
            return cls()
        history = list(zip(
            record.get("history-sigma", []), record.get("history-q", []),
            record.get("history-steps", []), strict=True,
        ))
        return cls(
            noise_multiplier=float(record["noise-multiplier"]),
            sample_rate=float(record["sample-rate"]),
            history=[(float(s), float(q), int(n)) for s, q, n in history],
            rounds_trained=int(record["rounds-trained"]),
            rounds_refused=int(record.get("rounds-refused", 0)),
            exhausted=bool(record.get("exhausted", False)),
            plain_steps=int(record.get("plain-steps", 0)),
        )
