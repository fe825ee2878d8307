"""ClientApp: train the global adapter on local data with DP-SGD; evaluate it locally."""

from __future__ import annotations

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.local_data import client_data
from client.trainer import train_local
from config import from_run_config
from privacy.accounting import PrivacyState, epsilon
from privacy.calibration import calibrate, check_delta, sample_rate
from tasks.adapter import adapter_state, from_arrays, load_adapter_state, to_arrays
from tasks.evaluation import evaluate
from tasks.model import build_model

app = ClientApp()


def _setup(msg: Message, context: Context, split: str):
    cfg = from_run_config(context.run_config)
    torch.set_num_threads(cfg.client_threads)
    pid = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    labels = tuple(msg.content["config"]["labels"])
    rows, pad_id = client_data(cfg, pid, num_partitions, split, labels)
    model = build_model(cfg, len(labels))
    load_adapter_state(model, from_arrays(msg.content["arrays"]))
    return cfg, pid, rows, pad_id, model


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, pid, rows, pad_id, model = _setup(msg, context, "train")
    server_round = int(msg.content["config"]["server-round"])
    state = PrivacyState.from_record(context.state.get("privacy"))
    n = len(rows)
    if cfg.dp_enabled and state.noise_multiplier == 0.0:
        check_delta(cfg.delta, n, f"client {pid}")
        state.noise_multiplier = calibrate(cfg, n)
        state.sample_rate = sample_rate(n, cfg.batch_size)
    result = train_local(model, rows, pad_id, cfg, state,
                         seed=cfg.seed * 1_000_003 + pid * 1_009 + server_round)
    state.rounds_trained += 1
    context.state["privacy"] = state.to_record()
    eps = epsilon(state.history, cfg.delta, cfg.accountant) if cfg.dp_enabled else float("inf")
    metrics = MetricRecord({
        "num-examples": n,
        "train-loss": result.train_loss,
        "epsilon": eps,
        "delta": cfg.delta,
        "noise-multiplier": state.noise_multiplier if cfg.dp_enabled else 0.0,
        "sample-rate": sample_rate(n, cfg.batch_size),
        "steps": result.steps,
        "total-steps": state.total_steps if cfg.dp_enabled else result.steps * state.rounds_trained,
        "rounds-trained": state.rounds_trained,
        "partition-id": pid,
    })
    content = RecordDict({"arrays": to_arrays(adapter_state(model)), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_(msg: Message, context: Context) -> Message:
    cfg, pid, rows, pad_id, model = _setup(msg, context, "eval")
    labels = msg.content["config"]["labels"]
    metrics = evaluate(model, rows, pad_id, cfg.eval_batch_size, len(labels))
    record = MetricRecord({"num-examples": len(rows), **metrics, "partition-id": pid})
    return Message(content=RecordDict({"metrics": record}), reply_to=msg)
