"""A client's privacy ledger on its own disk: what its dataset has spent, across rounds and runs.

``context.state`` forgets everything when a run ends (and on real hosts when a SuperNode restarts);
the budget belongs to the *data*, so the ledger is keyed by a fingerprint of the client's rows and
lives in ``ledger-dir`` on the client's host. A round's spend is charged *before* the client trains
and releases its update, with an atomic write: a crash at any point leaves the ledger at or above
what was released, never below. Each charge has an id (run key + round): charging the same id twice
is a no-op, because the client's training is deterministic for a given round, so re-running that
round releases the identical update again, which costs no further privacy.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedtune.atomic import write_json
from fedtune.privacy.accounting import merge_history
from fedtune.protocol import History

LEDGER_VERSION = 1


def fingerprint(texts: list[str], labels: list[int]) -> str:
    """SHA-256 over the rows in order: the same local data gives the same ledger file."""
    h = hashlib.sha256()
    for text, label in zip(texts, labels, strict=True):
        h.update(text.encode("utf-8"))
        h.update(b"\x1f")
        h.update(str(int(label)).encode())
        h.update(b"\x1e")
    return h.hexdigest()


@dataclass
class Ledger:
    path: Path
    fingerprint: str
    num_examples: int
    history: History = field(default_factory=list)
    charges: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    runs: dict[str, dict[str, float]] = field(default_factory=dict)  # run key -> sigma, q

    @classmethod
    def open(cls, ledger_dir: str | Path, fp: str, num_examples: int) -> Ledger:
        path = Path(ledger_dir).expanduser() / f"ledger-{fp[:16]}.json"
        if not path.exists():
            return cls(path=path, fingerprint=fp, num_examples=num_examples)
        data = json.loads(path.read_text())
        if data.get("fingerprint") != fp:
            raise ValueError(f"privacy ledger {path} belongs to other data "
                             f"(fingerprint {data.get('fingerprint', '?')[:16]}...)")
        return cls(
            path=path, fingerprint=fp, num_examples=int(data["num_examples"]),
            history=[(float(s), float(q), int(n)) for s, q, n in data["history"]],
            charges=list(data.get("charges", [])), refusals=list(data.get("refusals", [])),
            runs=dict(data.get("runs", {})),
        )

    def has_charge(self, charge_id: str) -> bool:
        return any(c["id"] == charge_id for c in self.charges)

    def charge(self, charge_id: str, sigma: float, q: float, steps: int, epsilon: float,
               delta: float) -> None:
        """Record a round's spend durably; a repeated ``charge_id`` is not charged again."""
        if self.has_charge(charge_id):
            return
        self.history = merge_history([*self.history, (sigma, q, steps)])
        self.charges.append({"id": charge_id, "noise_multiplier": sigma, "sample_rate": q,
                             "steps": steps, "epsilon_after": epsilon, "delta": delta,
                             "time": time.time()})
        self.save()

    def refuse(self, charge_id: str, reason: str) -> None:
        self.refusals.append({"id": charge_id, "reason": reason, "time": time.time()})
        self.save()

    def save(self) -> None:
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
        self.runs[run_key] = {"noise_multiplier": sigma, "sample_rate": q}
        self.save()
