"""A client's privacy ledger on its own disk: what its dataset has spent, across rounds and runs.

``context.state`` forgets everything when a run ends (and on real hosts when a SuperNode restarts);
the budget belongs to the *data*, so the ledger is keyed by a fingerprint of the client's records
(on a real host its whole data file, before any holdout; :func:`fingerprint`) and lives in
``ledger-dir`` on the client's host. A round's spend is charged *before* the client trains
and releases its update, with an atomic write: a crash at any point leaves the ledger at or above
what was released, never below.

The ledger on disk is the truth, and more than one client process may use it at once (two runs on
the same host data, a restarted SuperNode next to the old one): every read-decide-charge happens
under an exclusive ``flock`` on the ledger's folder (:meth:`Ledger.locked`), which first re-reads
the file, so a decision always sees every charge made before it. The folder, not a lock file
beside the ledger, is what is locked: the ledger folder then holds only ledgers (and the host's
noise secret), and the lock cannot be lost to the ledger's atomic replace.

Each charge has an id (run key + round) and the digest of everything that determined its update
(:func:`fedtune.privacy.budget.ClientBudget.update_digest`). Charging the same id with the same
digest again is a no-op: training is deterministic given those inputs, so re-running the round
releases the identical update, which costs no further privacy. The same id with another digest is
another release, and is charged as one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedtune.atomic import write_json
from fedtune.privacy.accounting import merge_history
from fedtune.protocol import History

LEDGER_VERSION = 1


def fingerprint(texts: Iterable[str], labels: Iterable[Any]) -> str:
    """SHA-256 over the *multiset* of records (text, label): the same records give the same
    ledger file, in any order and whatever run reads them. Each record is hashed on its own and
    the hashes are sorted before they are combined, so shuffling rows, a new ``seed`` or another
    holdout of the same file never opens a fresh ledger. A record added, removed or edited does:
    see docs/privacy.md for what a host must do when its data changes."""
    rows = sorted(hashlib.sha256(text.encode("utf-8") + b"\x1f" + str(label).encode()).digest()
                  for text, label in zip(texts, labels, strict=True))
    h = hashlib.sha256(b"fedtune-records-v2\x1e")
    for row in rows:
        h.update(row)
    return h.hexdigest()


# in a charge's id: a mechanism a round runs besides its DP-SGD steps (``<round>/release-<i>``:
# the noisy label counts of logit-adjustment), charged with the round, counted in no step total
RELEASE_MARK = "/release-"


def release_id(charge_id: str, index: int) -> str:
    """The charge id of the round ``charge_id``'s ``index``-th release."""
    return f"{charge_id}{RELEASE_MARK}{index}"


def is_release(charge: Mapping[str, Any]) -> bool:
    """A release's charge (:func:`release_id`), not a round's DP-SGD steps."""
    return RELEASE_MARK in charge["id"]


@dataclass
class Ledger:
    path: Path
    fingerprint: str
    num_examples: int
    history: History = field(default_factory=list)
    charges: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    # run key -> sigma, q (and the run's noisy label counts, once drawn)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    _held: int = field(default=0, init=False, repr=False, compare=False)  # locked() depth

    @classmethod
    def open(cls, ledger_dir: str | Path, fp: str, num_examples: int) -> Ledger:
        path = Path(ledger_dir).expanduser() / f"ledger-{fp[:16]}.json"
        ledger = cls(path=path, fingerprint=fp, num_examples=num_examples)
        ledger.reload()
        return ledger

    def reload(self) -> None:
        """Read the ledger as it is on disk now (a missing file is an empty ledger)."""
        if not self.path.exists():
            return
        data = json.loads(self.path.read_text())
        if data.get("fingerprint") != self.fingerprint:
            raise ValueError(f"privacy ledger {self.path} belongs to other data "
                             f"(fingerprint {data.get('fingerprint', '?')[:16]}...)")
        self.num_examples = int(data["num_examples"])
        self.history = [(float(s), float(q), int(n)) for s, q, n in data["history"]]
        self.charges = list(data.get("charges", []))
        self.refusals = list(data.get("refusals", []))
        self.runs = dict(data.get("runs", {}))

    @contextmanager
    def locked(self) -> Iterator[Ledger]:
        """Hold the host's ledger lock and see the ledger as it is on disk: taken, it re-reads
        the file; everything done inside (decide, charge, refuse) is one step for every other
        process using this folder. Re-entrant for this object (a charge inside an admit)."""
        if self._held:
            self._held += 1
            try:
                yield self
            finally:
                self._held -= 1
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._held = 1
            self.reload()
            yield self
        finally:
            self._held = 0
            os.close(fd)  # releases the lock

    def has_charge(self, charge_id: str, update: str = "") -> bool:
        """Was this very release (round id and update digest) charged before?"""
        return any(c["id"] == charge_id and c.get("update", "") == update for c in self.charges)

    def charge(self, charge_id: str, sigma: float, q: float, steps: int, epsilon: float,
               delta: float, update: str = "") -> None:
        """Record a round's spend durably; the same release (id and ``update`` digest) is not
        charged twice."""
        with self.locked():
            if self.has_charge(charge_id, update):
                return
            self.history = merge_history([*self.history, (sigma, q, steps)])
            self.charges.append({"id": charge_id, "update": update, "noise_multiplier": sigma,
                                 "sample_rate": q, "steps": steps, "epsilon_after": epsilon,
                                 "delta": delta, "time": time.time()})
            self.save()

    def refuse(self, charge_id: str, reason: str) -> None:
        with self.locked():
            self.refusals.append({"id": charge_id, "reason": reason, "time": time.time()})
            self.save()

    def save(self) -> None:
        """Write the ledger atomically; callers hold :meth:`locked` (read-modify-write)."""
        write_json(self.path, {
            "version": LEDGER_VERSION,
            "fingerprint": self.fingerprint,
            "num_examples": self.num_examples,
            "history": [list(h) for h in self.history],
            "charges": self.charges,
            "refusals": self.refusals,
            "runs": self.runs,
        })

    def remember_run(self, run_key: str, sigma: float, q: float) -> None:
        """A restarted client of the same run reuses its noise instead of re-planning."""
        with self.locked():
            self.runs.setdefault(run_key, {}).update(noise_multiplier=sigma, sample_rate=q)
            self.save()

    def remember_counts(self, run_key: str, counts: list[float]) -> None:
        """The run's noisy label counts (``logit-adjustment``), paid for once: a restarted
        client or a resumed run of the same run key reuses them instead of drawing (and paying
        for) new ones. They stay on the host's disk, as the ledger does."""
        with self.locked():
            self.runs.setdefault(run_key, {})["label_counts"] = [float(c) for c in counts]
            self.save()

    @property
    def release_steps(self) -> int:
        return sum(int(c["steps"]) for c in self.charges if is_release(c))

    def kept_counts(self, run_key: str) -> list[float] | None:
        return self.runs.get(run_key, {}).get("label_counts")
