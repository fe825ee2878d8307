"""What a strategy saw in one training round, for ``metrics.jsonl`` and the privacy report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RoundLog:
    sampled: int = 0
    # Every node sent a train message: each may have spent privacy on it, whether or not its
    # reply arrived, passed the checks or was logged before the round stopped.
    sent: list[int] = field(default_factory=list)
    bytes_down: int = 0
    bytes_up: int = 0  # every reply received, rejected ones included: that traffic happened
    train_loss: float | None = None
    replies: list[dict[str, Any]] = field(default_factory=list)  # node id + reply metrics
    failures: list[dict[str, Any]] = field(default_factory=list)  # {"node", "reason"}
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {"node", "reason"}
    # Metrics of rejected replies: their update is dropped, but the client spent privacy on it.
    rejected_replies: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # strategy-specific, added to the line
    refused: list[dict[str, Any]] = field(default_factory=list)  # budget refusals: metrics+reason
    client_eval: dict[str, float] | None = None  # weighted federated evaluation, if any
    released: bool = False  # a new global adapter came out of this round

    @property
    def clients(self) -> int:
        return len(self.replies)
