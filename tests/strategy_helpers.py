"""Hand-made Flower messages and a fake Grid, to drive strategies without a SuperLink."""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Error, Message, Metadata, MetricRecord, RecordDict

from fedtune.arrays import from_record, to_record

MODULES = ("enc.0.query", "enc.0.value", "enc.1.query", "enc.1.value")
HEAD = ("classifier.weight", "classifier.bias")


def meta(node: int, kind: str = "train") -> Metadata:
    return Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
                    reply_to_message_id="ins", group_id="1", created_at=0.0, ttl=60.0,
                    message_type=kind)


def adapter(rank: int, *, out: int = 6, inp: int = 6, seed: int = 0, b_zero: bool = False
            ) -> dict[str, np.ndarray]:
    """An adapter state shaped like PEFT's: A (r x in) and B (out x r) per module, and a head."""
    rng = np.random.default_rng(seed)
    state = {}
    for m in MODULES:
        state[f"{m}.lora_A.weight"] = rng.uniform(-0.4, 0.4, (rank, inp)).astype(np.float32)
        b = np.zeros((out, rank)) if b_zero else rng.normal(0, 0.1, (out, rank))
        state[f"{m}.lora_B.weight"] = b.astype(np.float32)
    state["classifier.weight"] = rng.normal(0, 0.1, (2, inp)).astype(np.float32)
    state["classifier.bias"] = np.zeros(2, dtype=np.float32)
    return state


def reply(node: int, arrays: dict[str, np.ndarray], n: int, loss: float = 0.5,
          epsilon: float = 1.0) -> Message:
    content = RecordDict({
        "arrays": to_record(arrays),
        "metrics": MetricRecord({"num-examples": n, "train-loss": loss, "epsilon": epsilon}),
    })
    return Message(content=content, metadata=meta(node))


def failed(node: int, reason: str = "client raised ValueError") -> Message:
    return Message(error=Error(code=0, reason=reason), metadata=meta(node))


def sent_arrays(msg: Message) -> dict[str, np.ndarray]:
    return from_record(msg.content["arrays"])


def train_like(sent: dict[str, np.ndarray], seed: int, *, touch_a: bool = True
               ) -> dict[str, np.ndarray]:
    """What a client might send back: every tensor moved by a little noise."""
    rng = np.random.default_rng(1000 + seed)
    return {k: (v + rng.normal(0, 0.05, v.shape)).astype(np.float32)
            if touch_a or ".lora_A." not in k else v.copy() for k, v in sent.items()}


class FakeGrid:
    """Nodes that are always there; answers hetero-rank's rank queries from ``ranks``."""

    def __init__(self, node_ids: list[int], ranks: dict[int, int] | None = None,
                 silent: tuple[int, ...] = ()):
        self.node_ids, self.ranks, self.silent = list(node_ids), ranks or {}, silent
        self.queries = 0

    def get_node_ids(self):
        return list(self.node_ids)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            node = int(msg.metadata.dst_node_id)
            self.queries += 1
            if node in self.silent:
                continue
            metrics = MetricRecord({"lora-r": self.ranks[node], "partition-id": node})
            replies.append(Message(content=RecordDict({"metrics": metrics}),
                                   metadata=meta(node, "query")))
        return replies


def start(strategy, arrays: dict[str, np.ndarray], grid: FakeGrid, server_round: int = 1):
    """configure_train as Flower's loop calls it; returns {node: message}."""
    messages = strategy.configure_train(server_round, to_record(arrays), ConfigRecord(), grid)
    return {int(m.metadata.dst_node_id): m for m in messages}

