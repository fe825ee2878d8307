"""The message schema between ServerApp and ClientApp: every record and metric key, one reply type.

Keys on the wire follow Flower's spelling (``num-examples``, ``server-round``); a quantity that
also lands in a file (``metrics.jsonl``, the privacy report) is written under :func:`file_key` of
its wire key (``train-loss`` -> ``train_loss``), so each quantity has one name and one rule for
its file spelling. A training reply is decoded once, into :class:`Reply`, before the strategy
checks, logs or averages it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord, Message

from fedtune.arrays import Arrays, from_record, record_bytes
from fedtune.config import RunConfig

History = list[tuple[float, float, int]]  # Opacus accountant history: (sigma, q, steps)

# --- records in a message --------------------------------------------------------------------
ARRAYS = "arrays"  # the adapter tensors (server -> client, client -> server)
CONFIG = "config"  # the round's settings (server -> client)
METRICS = "metrics"  # the reply's numbers (client -> server)
PRIVACY = "privacy"  # the client's privacy state, PrivacyState.to_record (client -> server)
REFUSAL = "refusal"  # a privacy-budget refusal: {"reason"}, sent instead of arrays
# Client-local only (``context.state``), never in a message: the AdamW moments kept across rounds,
# and the (noisy) label counts of ``logit-adjustment``, drawn once per run.
OPTIMIZER_STATE = "optimizer-state"
LABEL_COUNTS = "label-counts"

# --- the round's config (server -> client) ---------------------------------------------------
SERVER_ROUND = "server-round"  # set by Flower's strategies
LABELS = "labels"  # the label set of the training split, in order
RUN_KEY = "run-key"  # the run folder: names a round's charge in a client's ledger
LORA_A_SHA256 = "lora-a-sha256"  # ffa: digest of the frozen, seed-shared LoRA A
RESUME_PRIVACY = "resume-privacy"  # JSON {client key: privacy state} on a resumed run
ASK = "ask"  # a query message: which node setting the server asks for (``lora-r``)

# --- reply metrics (client -> server) --------------------------------------------------------
NUM_EXAMPLES = "num-examples"  # Flower's weighting key; 0 on a refusal
UNIT_WEIGHT = "unit-weight"  # client-level DP weights every client alike: 1 (0 on a refusal)
TRAIN_LOSS = "train-loss"
EPSILON = "epsilon"  # the client's cumulative epsilon at DELTA (inf without DP)
DELTA = "delta"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
STEPS = "steps"  # DP-SGD steps of this round
TOTAL_STEPS = "total-steps"
ROUNDS_TRAINED = "rounds-trained"
ROUNDS_REFUSED = "rounds-refused"
PARTITION_ID = "partition-id"
DATASET_SIZE = "dataset-size"
LORA_R = "lora-r"

# --- secure aggregation (secagg+): what travels beside the masked update ---------------------
SECAGG_KEYS = "fedtune-keys"  # in the legacy FitIns config: the arrays' names, in order (JSON)
SECAGG_CLIPPED = "secagg-clipped"  # update values the clipping range cut (never silently)
SECAGG_VALUES = "secagg-values"  # update values the client masked
SECAGG_PRIVACY = "privacy-record"  # the PRIVACY record as JSON (legacy metrics take scalars)
SECAGG_REFUSAL = "refusal-reason"  # a refusal's reason (its update is zero, weight 0)

# --- what a strategy adds to a round's aggregated metrics ------------------------------------
EPSILON_MAX = "epsilon-max"

# Keys the round log adds to a reply's metrics (not sent by the client).
NODE = "node"
HISTORY = "history"  # the accountant history [(sigma, q, steps)], for the report
PRIVACY_STATE = "privacy-state"  # the privacy record as sent: a resumed run hands it back
CLIENT_KEY = "client-key"  # in a privacy record: whose state it is (the resume-privacy key)


def weight_key(cfg: RunConfig) -> str:
    """The metric a client's update is weighted by: ``num-examples``, or ``unit-weight`` under
    client-level DP (DP-FedAvg's sensitivity bound needs uniform weights)."""
    return UNIT_WEIGHT if cfg.client_dp_enabled else NUM_EXAMPLES


def file_key(key: str) -> str:
    """A wire key's spelling in the run folder's files."""
    return key.replace("-", "_")


@dataclass
class PrivacyState:
    """What one client must remember between rounds (and, on real hosts, between runs); it
    travels as a ConfigRecord in every training reply and, on a resumed run, back to the client."""

    noise_multiplier: float = 0.0
    sample_rate: float = 0.0
    history: History = field(default_factory=list)
    rounds_trained: int = 0
    rounds_refused: int = 0
    exhausted: bool = False
    plain_steps: int = 0  # steps trained without DP (dp=off): counted, never accounted
    client_key: str = ""  # who the state belongs to: a resumed run hands it back by this key
    history_lost: bool = False  # resumed or restarted with no state and no ledger: never trains
    # accountant steps in ``history`` that trained nothing: the noisy label counts of
    # logit-adjustment (one full-batch Gaussian release); counted in epsilon, not in steps
    release_steps: int = 0

    @property
    def total_steps(self) -> int:
        """Training steps: DP-SGD's (the history, less its releases) and plain ones."""
        return sum(n for _, _, n in self.history) - self.release_steps + self.plain_steps

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
            CLIENT_KEY: self.client_key,
            "history-lost": self.history_lost,
            "release-steps": self.release_steps,
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
            client_key=str(record.get(CLIENT_KEY, "")),
            history_lost=bool(record.get("history-lost", False)),
            release_steps=int(record.get("release-steps", 0)),
        )


class ReplyError(ValueError):
    """A reply that cannot be decoded: it is rejected with this reason, never averaged."""


@dataclass(frozen=True)
class Reply:
    """One training reply, decoded once: who sent it, what it says, what it carries."""

    node: int
    metrics: dict[str, Any]
    arrays: Arrays | None = None  # None for a refusal or an unreadable payload
    privacy: PrivacyState | None = None
    privacy_record: dict[str, Any] | None = None  # the record as sent (a resume hands it back)
    refusal: str | None = None  # the reason, for a privacy-budget refusal
    nbytes: int = 0  # payload bytes received (unreadable payloads count as 0)
    error: str | None = None  # why the reply is malformed, if it is
    records: tuple[int, int] = (0, 0)  # (ArrayRecords, MetricRecords) in the message

    @classmethod
    def decode(cls, msg: Message) -> Reply:
        """Decode a reply that carries content (errors are the caller's: ``msg.has_error()``)."""
        content = msg.content
        node = int(msg.metadata.src_node_id)
        metric_records = list(content.metric_records.values())
        metrics = dict(metric_records[0]) if metric_records else {}
        records = (len(content.array_records), len(metric_records))
        refusal = content.config_records.get(REFUSAL)
        privacy_record = content.config_records.get(PRIVACY)
        privacy = error = None
        if privacy_record is not None:
            try:
                privacy = PrivacyState.from_record(privacy_record)
            except (KeyError, TypeError, ValueError) as exc:
                error = f"unreadable privacy record ({type(exc).__name__}: {exc})"
        arrays, nbytes = None, 0
        if content.array_records:
            try:
                decoded = [from_record(r) for r in content.array_records.values()]
                arrays, nbytes = decoded[0], sum(record_bytes(d) for d in decoded)
            except Exception as exc:  # noqa: BLE001 - any undecodable payload is a reason
                error = f"unreadable arrays ({type(exc).__name__}: {exc})"
        return cls(node=node, metrics=metrics, arrays=arrays, privacy=privacy,
                   privacy_record=dict(privacy_record) if privacy_record is not None else None,
                   refusal=str(refusal["reason"]) if refusal is not None else None,
                   nbytes=nbytes, error=error, records=records)

    def info(self) -> dict[str, Any]:
        """The round log's entry: node id, the reply's metrics and, when sent, the accountant
        history (for the report) and the privacy record (what a resumed run hands back)."""
        out: dict[str, Any] = {NODE: self.node, **self.metrics}
        if self.privacy is not None:
            out[HISTORY] = [(float(s), float(q), int(n)) for s, q, n in self.privacy.history]
            out[PRIVACY_STATE] = self.privacy_record
        return out
