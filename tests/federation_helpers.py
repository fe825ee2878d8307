"""A federation in one process: the ClientApp's own train handler and the run's strategy, without
the Flower runtime (it adds start-up time, not behaviour), for tests of what a run learns or
leaks."""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Context, Message, RecordDict
from strategy_helpers import FakeGrid, meta

from client import client_app
from fedtune.arrays import to_record, to_tensors
from fedtune.config import from_run_config
from fedtune.data.loading import load_splits
from fedtune.model.adapter import adapter_state, load_adapter_state
from fedtune.model.build import load_tokenizer
from fedtune.protocol import EPSILON, LABELS, METRICS, RUN_KEY
from fedtune.tasks.registry import task_for
from strategies.registry import build_strategy


@dataclass
class Federation:
    """What a run did: accuracy after each round, the largest epsilon a client reported, every
    message each way, and the final model and tokenizer."""

    accuracy: list[float] = field(default_factory=list)
    epsilon: float = 0.0
    sent: list[Message] = field(default_factory=list)
    replies: list[Message] = field(default_factory=list)
    model: object = None
    tokenizer: object = None


def federate(overrides: dict, clients: int, rounds: int, run_key: str | None = None
             ) -> Federation:
    """``rounds`` rounds of ``clients`` clients (partition ids 0..clients-1, node ids 1..)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as a ServerApp
    try:
        return _federate(overrides, clients, rounds, run_key)
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _federate(overrides: dict, clients: int, rounds: int, run_key: str | None) -> Federation:
    cfg = from_run_config(overrides)
    task = task_for(cfg)
    splits = load_splits(cfg)
    labels = list(splits.labels)
    model = task.seeded_model(cfg, len(labels))
    tokenizer = load_tokenizer(cfg)
    eval_set = task.encode(tokenizer, splits.eval, cfg)
    strategy = build_strategy(cfg, num_clients=clients)
    grid = FakeGrid(list(range(1, clients + 1)))
    contexts = {n: Context(run_id=1, node_id=n, state=RecordDict(), run_config=overrides,
                           node_config={"partition-id": n - 1, "num-partitions": clients})
                for n in grid.node_ids}
    arrays, out = to_record(adapter_state(model)), Federation(model=model, tokenizer=tokenizer)
    for rnd in range(1, rounds + 1):
        config = ConfigRecord({LABELS: labels, **({RUN_KEY: run_key} if run_key else {})})
        msgs = list(strategy.configure_train(rnd, arrays, config, grid))
        out.sent += msgs
        replies = []
        for msg in msgs:
            node = int(msg.metadata.dst_node_id)
            reply = client_app.train(msg, contexts[node])
            out.epsilon = max(out.epsilon, float(reply.content[METRICS][EPSILON]))
            replies.append(Message(content=reply.content, metadata=meta(node)))
        out.replies += replies
        new, _ = strategy.aggregate_train(rnd, replies)
        arrays = new if new is not None else arrays  # None: every client refused
        load_adapter_state(model, to_tensors(arrays))
        out.accuracy.append(task.evaluate(cfg, model, eval_set, tokenizer.pad_token_id,
                                          len(labels))["accuracy"])
    return out
