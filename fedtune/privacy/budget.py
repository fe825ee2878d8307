"""One client's privacy round, owned by one object: plan the noise, decide, refuse or charge,
then settle once the trainer has taken its steps.

The order is what makes it safe: decide on the composed history *including* this round, write the
charge durably, and only then train and release. ``context.state`` carries the history within a
run; the optional on-disk ledger carries it across runs and restarts. The ClientApp only calls
:meth:`ClientBudget.admit` before training and :meth:`ClientBudget.finish` after it; the trainer
only appends the DP-SGD steps it took to ``state.history`` (Opacus's accountant lives there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedtune.config import RunConfig
from fedtune.privacy.accounting import epsilon, merge_history
from fedtune.privacy.calibration import calibrate, check_delta, sample_rate, steps_per_round
from fedtune.privacy.ledger import Ledger
from fedtune.protocol import PrivacyState

TOLERANCE = 1e-9


@dataclass(frozen=True)
class RoundDecision:
    allowed: bool
    steps: int
    epsilon_before: float
    epsilon_after: float
    reason: str = ""
    replay: bool = False  # this round was charged before (a restart): no new spend


class ClientBudget:
    """The way Opacus's ``PrivacyEngine`` owns its accountant, this owns a client's
    :class:`PrivacyState`: every change to it outside the trainer's steps happens here."""

    def __init__(self, cfg: RunConfig, state: PrivacyState, num_examples: int,
                 ledger: Ledger | None = None, cap: float | None = None):
        self.cfg, self.state, self.n, self.ledger = cfg, state, num_examples, ledger
        self.budget = min(cfg.target_epsilon, cap) if cap else cfg.target_epsilon
        self.q = sample_rate(num_examples, cfg.batch_size)
        self.decision: RoundDecision | None = None  # this round's, once admitted or refused

    @classmethod
    def open(cls, cfg: RunConfig, saved: Mapping[str, Any] | None, num_examples: int,
             ledger: Ledger | None = None, cap: float | None = None) -> ClientBudget:
        """The client's budget as it last saved it (``context.state``), or a fresh one."""
        return cls(cfg, PrivacyState.from_record(saved), num_examples, ledger, cap)

    def _spent(self) -> float:
        return epsilon(self.state.history, self.cfg.delta, self.cfg.accountant)

    @property
    def epsilon(self) -> float:
        """What the client has spent so far (infinite when it trained without DP)."""
        return self._spent() if self.cfg.dp_enabled else math.inf

    def admit(self, run_key: str, charge_id: str) -> RoundDecision:
        """Before training: plan the noise (on the first round), decide on this round, and either
        record the refusal or charge the round durably; nothing is trained or released before."""
        if not self.cfg.dp_enabled:
            self.decision = RoundDecision(True, 0, math.inf, math.inf)
            return self.decision
        self.start(run_key)
        self.decision = self.decide(charge_id)
        if self.decision.allowed:
            self.charge(charge_id, self.decision)
        else:
            self.refuse(charge_id, self.decision)
        return self.decision

    def finish(self, steps: int) -> None:
        """After training: settle a replayed round, and count the round (and steps without DP,
        which are counted but never accounted)."""
        if self.cfg.dp_enabled:
            self.settle(self.decision)
        else:
            self.state.plain_steps += steps
        self.state.rounds_trained += 1

    def start(self, run_key: str) -> None:
        """First round of this client in this run: continue the ledger's spend, plan the noise."""
        if self.state.noise_multiplier > 0 or self.state.exhausted:
            return
        check_delta(self.cfg.delta, self.n)
        prior = list(self.ledger.history) if self.ledger else []
        self.state.history = merge_history(prior)
        self.state.sample_rate = self.q
        known = self.ledger.runs.get(run_key) if self.ledger else None
        if known:
            sigma = float(known["noise_multiplier"])
        else:
            sigma = calibrate(self.cfg, self.n, prior=prior, budget=self.budget)
            if sigma is not None and self.ledger is not None:
                self.ledger.remember_run(run_key, sigma, self.q)
        if sigma is None:
            self.state.exhausted = True
        else:
            self.state.noise_multiplier = sigma

    def decide(self, charge_id: str) -> RoundDecision:
        steps = steps_per_round(self.n, self.cfg.batch_size, self.cfg.local_epochs)
        before = self._spent()
        if self.ledger is not None and self.ledger.has_charge(charge_id):
            return RoundDecision(True, steps, before, before, replay=True)
        if self.state.exhausted:
            return RoundDecision(False, steps, before, before, (
                f"privacy budget exhausted: spent epsilon {before:.3f} of {self.budget:g} "
                "before this run; no noise level fits another round"))
        after = epsilon([*self.state.history, (self.state.noise_multiplier, self.q, steps)],
                        self.cfg.delta, self.cfg.accountant)
        if after > self.budget + TOLERANCE:
            return RoundDecision(False, steps, before, after, (
                f"privacy budget exhausted: this round would take epsilon from {before:.3f} to "
                f"{after:.3f}, above the budget {self.budget:g} (delta {self.cfg.delta:g})"))
        return RoundDecision(True, steps, before, after)

    def charge(self, charge_id: str, decision: RoundDecision) -> None:
        """Durably record the spend before any training or release (no-op without a ledger)."""
        if self.ledger is not None:
            self.ledger.charge(charge_id, self.state.noise_multiplier, self.q, decision.steps,
                               decision.epsilon_after, self.cfg.delta)

    def settle(self, decision: RoundDecision) -> None:
        """After training: a replayed round released the same update again, which is free."""
        if decision.replay and self.ledger is not None:
            self.state.history = merge_history(self.ledger.history)

    def refuse(self, charge_id: str, decision: RoundDecision) -> None:
        self.state.rounds_refused += 1
        if self.ledger is not None:
            self.ledger.refuse(charge_id, decision.reason)
