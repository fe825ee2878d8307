"""ClientApp: train the global adapter on local data with DP-SGD; evaluate it locally."""

from __future__ import annotations

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.local_data import client_data
from client.trainer import train_local
from config import from_run_config
from privacy.accounting import PrivacyState, epsilon
from privacy.budget import ClientBudget
from privacy.calibration import sample_rate
from privacy.ledger import Ledger, fingerprint
from strategies.client_dp import UNIT_WEIGHT, client_clipping_mod
from tasks.adapter import adapter_state, from_arrays, load_adapter_state, to_arrays
from tasks.evaluation import evaluate
from tasks.model import build_model

app = ClientApp(mods=[client_clipping_mod])


def _setup(msg: Message, context: Context, split: str):
    cfg = from_run_config(context.run_config)
    torch.set_num_threads(cfg.client_threads)
    pid = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    labels = tuple(msg.content["config"]["labels"])
    rows, pad_id = client_data(cfg, pid, num_partitions, split, labels)
    return cfg, pid, rows, pad_id, labels


def _ledger(cfg, context: Context, rows) -> Ledger | None:
    """On real hosts the node config names the ledger folder; in simulation the run config may."""
    folder = context.node_config.get("ledger-dir") or cfg.ledger_dir
    if not folder:
        return None
    return Ledger.open(folder, fingerprint(rows.texts, rows.labels), len(rows))


def _metrics(pid: int, n: int, state: PrivacyState, cfg, train_loss: float, steps: int,
             eps: float, refused: bool) -> MetricRecord:
    return MetricRecord({
        "num-examples": 0 if refused else n,
        "train-loss": train_loss,
        "epsilon": eps,
        "delta": cfg.delta,
        "noise-multiplier": state.noise_multiplier,
        "sample-rate": sample_rate(n, cfg.batch_size),
        "steps": steps,
        "total-steps": state.total_steps,
        "rounds-trained": state.rounds_trained,
        "rounds-refused": state.rounds_refused,
        "partition-id": pid,
        "dataset-size": n,
        UNIT_WEIGHT: 0 if refused else 1,
    })


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, pid, rows, pad_id, labels = _setup(msg, context, "train")
    config = msg.content["config"]
    server_round = int(config["server-round"])
    charge_id = f"{config.get('run-key', context.run_id)}/round-{server_round}"
    state = PrivacyState.from_record(context.state.get("privacy"))
    n = len(rows)
    budget = None
    if cfg.dp_enabled:
        cap = context.node_config.get("max-epsilon")
        budget = ClientBudget(cfg, state, n, _ledger(cfg, context, rows),
                              float(cap) if cap else None)
        budget.start(str(config.get("run-key", context.run_id)))
        decision = budget.decide(charge_id)
        if not decision.allowed:  # no update leaves the client; the reply says why
            budget.refuse(charge_id, decision)
            context.state["privacy"] = state.to_record()
            metrics = _metrics(pid, n, state, cfg, 0.0, 0, decision.epsilon_before, True)
            return Message(content=RecordDict({
                "metrics": metrics, "refusal": ConfigRecord({"reason": decision.reason}),
                "privacy": state.to_record(),
            }), reply_to=msg)
        budget.charge(charge_id, decision)
    model = build_model(cfg, len(labels))
    load_adapter_state(model, from_arrays(msg.content["arrays"]))
    result = train_local(model, rows, pad_id, cfg, state,
                         seed=cfg.seed * 1_000_003 + pid * 1_009 + server_round)
    if budget is not None:
        budget.settle(decision)
    state.rounds_trained += 1
    if not cfg.dp_enabled:
        state.plain_steps += result.steps
    context.state["privacy"] = state.to_record()
    eps = epsilon(state.history, cfg.delta, cfg.accountant) if cfg.dp_enabled else float("inf")
    metrics = _metrics(pid, n, state, cfg, result.train_loss, result.steps, eps, False)
    content = RecordDict({"arrays": to_arrays(adapter_state(model)), "metrics": metrics,
                          "privacy": state.to_record()})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_(msg: Message, context: Context) -> Message:
    cfg, pid, rows, pad_id, labels = _setup(msg, context, "eval")
    model = build_model(cfg, len(labels))
    load_adapter_state(model, from_arrays(msg.content["arrays"]))
    metrics = evaluate(model, rows, pad_id, cfg.eval_batch_size, len(labels))
    record = MetricRecord({"num-examples": len(rows), **metrics, "partition-id": pid})
    return Message(content=RecordDict({"metrics": record}), reply_to=msg)
