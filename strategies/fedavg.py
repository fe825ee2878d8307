"""FedAvg over LoRA adapter tensors (A and B averaged separately, as in FedIT).

Flower's FedAvg does the weighted mean; this subclass adds what a DP-LoRA run needs around it: a
round with fewer valid replies than ``min-clients`` stops the run (Flower would carry on with an
empty model), and each round's bytes, replies and failures are logged for the run folder.
A client that refuses a round because its privacy budget is spent is not a failure: it is left
out, and a round that only refusals leave short of ``min-clients`` keeps the global adapter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from logging import WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore import log

from strategies.round_log import RoundLog
from tasks.adapter import num_bytes


class TooFewRepliesError(RuntimeError):
    """Fewer valid replies than the minimum: averaging would silently degrade the model."""


def _reply_metrics(msg: Message) -> dict:
    """Node id, reply metrics and, when sent, the client's accountant history (for the report)."""
    metrics = next(iter(msg.content.metric_records.values()))
    out = {"node": int(msg.metadata.src_node_id), **dict(metrics)}
    privacy = msg.content.config_records.get("privacy")
    if privacy is not None:
        out["history"] = [(float(s), float(q), int(n)) for s, q, n in zip(
            privacy["history-sigma"], privacy["history-q"], privacy["history-steps"], strict=True)]
    return out


def is_refusal(msg: Message) -> bool:
    return not msg.has_error() and "refusal" in msg.content.config_records


class LoraFedAvg(FedAvg):
    def __init__(self, *, min_replies: int, **kwargs):
        super().__init__(**kwargs)
        self.min_replies = min_replies
        self.rounds: dict[int, RoundLog] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.rounds[server_round] = RoundLog(
            sampled=len(messages), bytes_down=num_bytes(arrays) * len(messages)
        )
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        log_ = self.rounds.setdefault(server_round, RoundLog())
        refusals = [m for m in replies if is_refusal(m)]
        log_.refused = [{**_reply_metrics(m), "reason": m.content["refusal"]["reason"]}
                        for m in refusals]
        for r in log_.refused:
            log(WARNING, "round %s: client %s refused: %s", server_round, r["partition-id"],
                r["reason"])
        valid, errors = self._check_and_log_replies(
            [m for m in replies if not is_refusal(m)], is_train=True)
        log_.failures = [
            {"node": int(m.metadata.src_node_id), "reason": m.error.reason} for m in errors
        ]
        missing = log_.sampled - len(replies)
        if missing > 0:
            log_.failures.append({"node": None, "reason": f"{missing} sampled client(s) did not "
                                                          "reply before the timeout"})
        if len(valid) < self.min_replies and len(valid) + len(refusals) >= self.min_replies:
            log(WARNING, "round %s: %s valid replies, %s budget refusals: global adapter kept",
                server_round, len(valid), len(refusals))
            log_.replies = [_reply_metrics(m) for m in valid]
            return None, None
        if len(valid) < self.min_replies:
            reasons = "; ".join(f"node {f['node']}: {f['reason']}" for f in log_.failures)
            raise TooFewRepliesError(
                f"round {server_round}: {len(valid)} valid replies of {log_.sampled} sampled, "
                f"below min-clients = {self.min_replies}. {reasons or 'No error was reported.'}"
            )
        contents = [m.content for m in valid]
        log_.replies = [_reply_metrics(m) for m in valid]
        log_.bytes_up = sum(num_bytes(next(iter(c.array_records.values()))) for c in contents)
        weights = [float(r[self.weighted_by_key]) for r in log_.replies]
        losses = [float(r["train-loss"]) for r in log_.replies]
        log_.train_loss = sum(w * x for w, x in zip(weights, losses, strict=True)) / sum(weights)
        arrays = aggregate_arrayrecords(contents, self.weighted_by_key)
        log_.released = True
        eps = [float(r["epsilon"]) for r in log_.replies]
        metrics = MetricRecord({"train-loss": log_.train_loss,
                                "epsilon-max": max(eps) if eps else 0.0})
        if any(math.isinf(e) for e in eps):
            log(WARNING, "round %s: trained without DP (epsilon = inf)", server_round)
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        metrics = super().aggregate_evaluate(server_round, replies)
        if metrics is not None:
            self.rounds.setdefault(server_round, RoundLog()).client_eval = {
                k: float(v) for k, v in metrics.items() if k != "partition-id"
            }
        return metrics
