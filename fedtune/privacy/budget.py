"""One client's privacy round, owned by one object: plan the noise, decide, refuse or charge,
then settle once the trainer has taken its steps.

The order is what makes it safe: decide on the composed history *including* this round, write the
charge durably, and only then train and release. ``context.state`` carries the history within a
run; the optional on-disk ledger carries it across runs and restarts. The ClientApp only calls
:meth:`ClientBudget.admit` before training and :meth:`ClientBudget.finish` after it; the trainer
only appends the DP-SGD steps it took to ``state.history`` (Opacus's accountant lives there).

Whom a client trusts (the threat model: an honest-but-curious server). With a ledger, the ledger
on the host's disk is the truth: every round re-reads it under the host's lock and decides and
charges in that same step, so runs that take turns on the same data cannot overspend it, and a
state the server sends back on a resumed run counts for nothing in the accounting. Without one,
that state may raise what the client counts, never lower it. A round is replayed for free only if
the digest of everything that determined its update matches the charged one. And the host's node
config has the last word over the run config: ``require-dp``, ``max-epsilon``, ``max-delta``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from fedtune.arrays import from_record
from fedtune.config import ConfigError, RunConfig
from fedtune.privacy.accounting import epsilon, merge_history
from fedtune.privacy.calibration import (
    batch_size_for,
    calibrate,
    check_delta,
    planned_rounds,
    sample_rate,
    steps_per_round,
)
from fedtune.privacy.ledger import Ledger, release_id
from fedtune.protocol import RESUME_PRIVACY, SERVER_ROUND, History, PrivacyState

TOLERANCE = 1e-9

# Run-config keys that never change what a training round computes (orchestration, evaluation,
# where files go); every other key is hashed into a round's update digest. ``num-server-rounds``
# enters through the planned rounds (the noise plan and the lr schedule) instead.
NOT_IN_UPDATE = frozenset({
    "resume", "output-dir", "round-timeout", "min-clients", "fraction-train",
    "fraction-evaluate", "client-evaluate", "eval-batch-size", "max-eval-samples", "eval-split",
    "client-threads", "ledger-dir", "fault-injection", "num-server-rounds",
})


@dataclass(frozen=True)
class RoundDecision:
    allowed: bool
    steps: int
    # the spend before this round, or how to compute it: only a refusal reports it, and on a
    # real host (a fresh process per message, nothing cached) a PRV epsilon costs about 0.45 s
    before: float | Callable[[], float]
    epsilon_after: float
    reason: str = ""
    replay: bool = False  # this very release was charged before (a restart): no new spend
    update: str = ""  # digest of the round's inputs, stored with its charge

    @functools.cached_property
    def epsilon_before(self) -> float:
        return self.before() if callable(self.before) else self.before


def _flag(node_config: Mapping[str, Any], key: str) -> bool:
    value = node_config.get(key, False)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ConfigError(f"node config '{key}' = {value!r} must be true or false")


def _limit(node_config: Mapping[str, Any], key: str) -> float | None:
    value = node_config.get(key)
    if value in (None, "", 0):
        return None
    try:
        limit = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"node config '{key}' = {value!r} must be a number") from None
    if not limit > 0:
        raise ConfigError(f"node config '{key}' = {value!r} must be > 0")
    return limit


@dataclass(frozen=True)
class HostPolicy:
    """What a host demands of every round it trains, whatever the server sends: node config
    ``require-dp`` (sample-level DP-SGD on this host), ``max-epsilon`` (caps the budget) and
    ``max-delta``. A host that sets a maximum epsilon or delta requires DP too: a round without
    it would release an update with no bound at all."""

    max_epsilon: float | None = None
    max_delta: float | None = None
    require_dp: bool = False

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> HostPolicy:
        return cls(max_epsilon=_limit(node_config, "max-epsilon"),
                   max_delta=_limit(node_config, "max-delta"),
                   require_dp=_flag(node_config, "require-dp"))

    def violation(self, cfg: RunConfig) -> str:
        """Why this host refuses every round of this run ("" if it does not)."""
        demands = [f"{key} = {value:g}" for key, value in (("max-epsilon", self.max_epsilon),
                                                           ("max-delta", self.max_delta))
                   if value is not None]
        if self.require_dp:
            demands.insert(0, "require-dp = true")
        if demands and not cfg.dp_enabled:
            return (f"this host requires sample-level DP (node config {', '.join(demands)}) but "
                    f"the run has dp = '{cfg.dp}': no update leaves it without DP-SGD; submit "
                    "the run with dp = 'sample' or 'both'")
        if self.max_delta is not None and cfg.delta > self.max_delta:
            return (f"run-config delta = {cfg.delta:g} is above this host's maximum (node config "
                    f"max-delta = {self.max_delta:g}); submit the run with delta <= "
                    f"{self.max_delta:g}")
        return ""


def client_key(cfg: RunConfig, node_config: Mapping[str, Any], node_id: int, pid: int) -> str:
    """Who this client is to a resumed run, the key of its state in ``resume-privacy``: its
    partition in a simulation; on a real host (``client-data = local``) its node config
    ``client-id`` if the host set one, else its Flower node id. The server numbers real hosts
    its own way, so the client sends this key with its state and the server hands the state back
    under it. (Flower 1.42 keeps a node id across SuperNode restarts only for a node registered
    with an auth key on a SuperLink whose state persists; ``client-id`` survives anything.)"""
    if cfg.client_data != "local":
        return str(pid)
    own = str(node_config.get("client-id", "") or "")
    return f"client-{own}" if own else f"node-{node_id}"


def claimed_state(config: Mapping[str, Any], key: str) -> PrivacyState | None:
    """The state the server says this client last reported (a resumed run), if it sent one
    under this client's key and it can be read."""
    text = config.get(RESUME_PRIVACY)
    if not text:
        return None
    try:
        record = json.loads(str(text)).get(key)
        return PrivacyState.from_record(record) if record else None
    except (AttributeError, KeyError, TypeError, ValueError):
        return None  # unreadable: as if none was sent


def trusted_state(own: PrivacyState | None, claimed: PrivacyState | None, *, ledger: bool,
                  delta: float, accountant: str) -> PrivacyState:
    """The state a client continues from: its own, which the server's claim may raise but never
    lower. With a ledger, history and noise come from the ledger (:meth:`ClientBudget.start`)
    and the claim counts only for the round counters (the lr schedule's position)."""
    if claimed is None:
        return own if own is not None else PrivacyState()
    if own is None and not ledger:
        return dataclasses.replace(claimed, client_key="")  # all there is, and above nothing
    base = own if own is not None else PrivacyState()
    counts = {"rounds_trained": max(base.rounds_trained, claimed.rounds_trained),
              "rounds_refused": max(base.rounds_refused, claimed.rounds_refused),
              "plain_steps": max(base.plain_steps, claimed.plain_steps)}
    if ledger:
        return dataclasses.replace(base, **counts)
    higher = epsilon(claimed.history, delta, accountant) > epsilon(base.history, delta, accountant)
    return dataclasses.replace(
        base, history=list(claimed.history) if higher else list(base.history),
        release_steps=(claimed if higher else base).release_steps,  # with its history
        exhausted=base.exhausted or claimed.exhausted,
        history_lost=base.history_lost or claimed.history_lost, **counts)


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """Digest of tensors by content (name, dtype, shape, bytes), whatever their order."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        h.update(f"{key}\x1f{value.dtype.str}\x1f{value.shape}\x1e".encode())
        h.update(value.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Release:
    """What the ClientApp was sent and trains with this round, beyond its run settings: the
    global adapter as received, the round's config, the seed of its noise and sampling, its
    LoRA rank, the digest of the rows it trains on, in order (the ledger's key is the records
    as a set). With the schedule position and noise these determine the update."""

    arrays: ArrayRecord
    config: Mapping[str, Any]
    seed: int
    rank: int
    rows: str = ""


class ClientBudget:
    """The way Opacus's ``PrivacyEngine`` owns its accountant, this owns a client's
    :class:`PrivacyState`: every change to it outside the trainer's steps happens here."""

    def __init__(self, cfg: RunConfig, state: PrivacyState, num_examples: int,
                 ledger: Ledger | None = None, cap: float | None = None,
                 policy: HostPolicy | None = None, releases: History | None = None):
        self.cfg, self.state, self.n, self.ledger = cfg, state, num_examples, ledger
        # mechanisms this round runs once before its DP-SGD steps (the noisy label counts of
        # ``logit-adjustment``): planned, decided and charged with the round
        self.releases: History = list(releases or [])
        self.policy = policy or HostPolicy(max_epsilon=cap)
        cap = self.policy.max_epsilon
        self.budget = min(cfg.target_epsilon, cap) if cap else cfg.target_epsilon
        self.batch_size = batch_size_for(cfg, num_examples)
        self.q = sample_rate(num_examples, self.batch_size)
        self.decision: RoundDecision | None = None  # this round's, once admitted or refused

    @classmethod
    def open(cls, cfg: RunConfig, saved: Mapping[str, Any] | None, num_examples: int,
             ledger: Ledger | None = None, cap: float | None = None, *, key: str = "",
             config: Mapping[str, Any] | None = None,
             policy: HostPolicy | None = None) -> ClientBudget:
        """The client's budget as it last saved it (``context.state``), or a fresh one; on a
        resumed run raised by the state the server sent back under ``key`` (``config`` is the
        round's config). A client that cannot know what it spent (a resumed run, or on a real
        host a round after the first, with neither its own state nor a ledger) never trains."""
        config = config or {}
        own = PrivacyState.from_record(saved) if saved is not None else None
        claimed = claimed_state(config, key)
        state = trusted_state(own, claimed, ledger=ledger is not None, delta=cfg.delta,
                              accountant=cfg.accountant)
        state.client_key = key
        resumed = RESUME_PRIVACY in config
        later = cfg.client_data == "local" and int(config.get(SERVER_ROUND, 1)) > 1
        if (cfg.dp_enabled and ledger is None and own is None and claimed is None
                and (resumed or later)):
            state.history_lost = True
        return cls(cfg, state, num_examples, ledger, cap, policy)

    def _spent(self) -> float:
        return epsilon(self.state.history, self.cfg.delta, self.cfg.accountant)

    @property
    def epsilon(self) -> float:
        """What the client has spent so far (infinite when it trained without DP)."""
        return self._spent() if self.cfg.dp_enabled else math.inf

    def admit(self, run_key: str, charge_id: str, release: Release | None = None
              ) -> RoundDecision:
        """Before training: check the host's demands, plan the noise (on the first round),
        decide on this round, and either record the refusal or charge the round durably;
        nothing is trained or released before. With a ledger, deciding and charging are one
        step under the host's ledger lock."""
        early = self.policy.violation(self.cfg) or self._lost()
        if early:
            self._read_ledger()
            self.decision = RoundDecision(False, 0, self.epsilon, self.epsilon, early)
            self.refuse(charge_id, self.decision)
            return self.decision
        if not self.cfg.dp_enabled:
            self.decision = RoundDecision(True, 0, math.inf, math.inf)
            return self.decision
        self.start(run_key)
        if self.ledger is None:
            self.decision = self.decide(charge_id)
            if not self.decision.allowed:
                self.refuse(charge_id, self.decision)
            elif self.releases:
                self.record_releases()
            return self.decision
        update = self.update_digest(release) if release is not None else ""
        with self.ledger.locked():
            self.decision = self.decide(charge_id, update)
            if self.decision.allowed:
                self.charge(charge_id, self.decision)
            else:
                self.refuse(charge_id, self.decision)
        return self.decision

    def record_releases(self) -> None:
        """Without a ledger: the run's releases enter the history now, before the trainer
        appends its DP-SGD steps after them; their steps are kept apart from the step totals."""
        self.state.history = merge_history([*self.state.history, *self.releases])
        self.state.release_steps += sum(n for _, _, n in self.releases)

    def finish(self, steps: int) -> None:
        """After training: take the ledger's count (the round's charge included), and count
        the round (and steps without DP, which are counted but never accounted)."""
        if self.cfg.dp_enabled:
            self.settle(self.decision)
        else:
            self.state.plain_steps += steps
        self.state.rounds_trained += 1

    def _lost(self) -> str:
        if not (self.cfg.dp_enabled and self.state.history_lost):
            return ""
        return ("this client cannot know what it has spent: the run was resumed (or this "
                "SuperNode restarted after round 1) and it has neither its own saved privacy "
                "state nor a privacy ledger, so no DP round can be accounted; give the host a "
                "ledger (node config ledger-dir, or run config ledger-dir in a simulation)")

    def _take_ledger(self) -> None:
        """The client's history is the ledger's (caller holds its lock), releases included."""
        self.state.history = merge_history(self.ledger.history)
        self.state.release_steps = self.ledger.release_steps

    def _read_ledger(self) -> None:
        """The client's history is the ledger's, as it is on disk now."""
        if self.ledger is not None:
            with self.ledger.locked():
                self._take_ledger()

    def start(self, run_key: str) -> None:
        """Every round: with a ledger, take its history; on this client's first round of the
        run, plan the noise (a ledger that knows the run keeps the noise it planned)."""
        if self.ledger is not None:
            with self.ledger.locked():
                self._take_ledger()
                known = self.ledger.runs.get(run_key, {})
            if "noise_multiplier" in known:
                self.state.noise_multiplier = float(known["noise_multiplier"])
                self.state.sample_rate = self.q
                return
        if self.state.noise_multiplier > 0 or self.state.exhausted:
            return
        check_delta(self.cfg.delta, self.n)
        prior = [*self.state.history, *self.releases]
        self.state.sample_rate = self.q
        sigma = calibrate(self.cfg, self.n, prior=prior, budget=self.budget)
        if sigma is not None and self.ledger is not None:
            self.ledger.remember_run(run_key, sigma, self.q)
        if sigma is None:
            self.state.exhausted = True
        else:
            self.state.noise_multiplier = sigma

    def update_digest(self, release: Release) -> str:
        """SHA-256 over everything that determines this round's update: the global adapter
        received, the data (ledger fingerprint), the schedule position (server round in the
        config, rounds trained, planned rounds), the noise and every setting that changes
        training. Equal digests mean the identical update, which may be released again; with
        secret noise (``reproducible-noise = false``) no two digests are equal, so a replayed
        round is always charged."""
        steps = steps_per_round(self.n, self.batch_size, self.cfg.local_epochs)
        doc = {
            "model": arrays_sha256(from_record(release.arrays)),
            "data": self.ledger.fingerprint if self.ledger is not None else "",
            "rows": release.rows,
            "num-examples": self.n,
            "config": {k: repr(v) for k, v in release.config.items() if k != RESUME_PRIVACY},
            "seed": int(release.seed),
            "lora-r": int(release.rank),
            "rounds-trained": self.state.rounds_trained,  # the lr schedule's position
            "steps-per-round": steps,
            "planned-rounds": planned_rounds(self.cfg),
            "noise-multiplier": self.state.noise_multiplier,
            "sample-rate": self.q,
            # Secret noise (the default) is drawn afresh from OS entropy on every try: a replay
            # releases a different update, so its digest never matches and it is charged again.
            "noise": "reproducible" if self.cfg.reproducible_noise else secrets.token_hex(16),
            "settings": {k: v for k, v in self.cfg.to_dict().items() if k not in NOT_IN_UPDATE},
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=repr).encode()).hexdigest()

    def decide(self, charge_id: str, update: str = "") -> RoundDecision:
        """This round against the ledger as it is on disk (or the client's own history)."""
        steps = steps_per_round(self.n, self.batch_size, self.cfg.local_epochs)
        self._read_ledger()
        # the spend so far, as of now: a refusal reports it; an admitted round never computes it
        before = functools.partial(epsilon, list(self.state.history), self.cfg.delta,
                                   self.cfg.accountant)
        if self.ledger is not None and self.ledger.has_charge(charge_id, update):
            spent = before()
            return RoundDecision(True, steps, spent, spent, replay=True, update=update)
        if self.state.exhausted:
            spent = before()
            return RoundDecision(False, steps, spent, spent, (
                f"privacy budget exhausted: spent epsilon {spent:.3f} of {self.budget:g} "
                "before this run; no noise level fits another round"), update=update)
        after = epsilon([*self.state.history, *self.releases,
                         (self.state.noise_multiplier, self.q, steps)],
                        self.cfg.delta, self.cfg.accountant)
        if after > self.budget + TOLERANCE:
            spent = before()
            return RoundDecision(False, steps, spent, after, (
                f"privacy budget exhausted: this round would take epsilon from {spent:.3f} to "
                f"{after:.3f}, above the budget {self.budget:g} (delta {self.cfg.delta:g})"),
                update=update)
        return RoundDecision(True, steps, before, after, update=update)

    def charge(self, charge_id: str, decision: RoundDecision) -> None:
        """Durably record the spend before any training or release (no-op without a ledger)."""
        if self.ledger is not None:
            for i, (sigma, q, steps) in enumerate(self.releases):  # the round's epsilon_after
                self.ledger.charge(release_id(charge_id, i), sigma, q, steps,
                                   decision.epsilon_after, self.cfg.delta, decision.update)
            self.ledger.charge(charge_id, self.state.noise_multiplier, self.q, decision.steps,
                               decision.epsilon_after, self.cfg.delta, decision.update)

    def settle(self, decision: RoundDecision) -> None:
        """After training: with a ledger, the client's count is the ledger's as charged (a
        replayed round released the same update again, which is free)."""
        if self.ledger is not None:
            self._take_ledger()

    def refuse(self, charge_id: str, decision: RoundDecision) -> None:
        self.state.rounds_refused += 1
        if self.ledger is not None:
            self.ledger.refuse(charge_id, decision.reason)
