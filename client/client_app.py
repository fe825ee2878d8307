"""ClientApp: train the global adapter on local data with DP-SGD; evaluate it locally.

What a client receives and sends depends on the aggregation: the whole adapter (``fedavg``), B and
the head only with A rebuilt from the seed (``ffa``), or the global update factorised to this
client's own rank (``hetero-rank``, which asks each node its rank with a query message first).
"""

from __future__ import annotations

import dataclasses

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.local_data import client_data
from client.rank import client_rank
from client.trainer import train_local
from config import RunConfig, from_run_config
from privacy.accounting import PrivacyState, epsilon
from privacy.calibration import calibrate, check_delta, sample_rate
from tasks.adapter import (
    AdapterMismatchError,
    adapter_state,
    from_arrays,
    load_adapter_state,
    to_arrays,
)
from tasks.evaluation import evaluate
from tasks.lora_layout import lora_a_digest, travelling_keys
from tasks.model import build_model

app = ClientApp()


def _setup(msg: Message, context: Context, cfg: RunConfig, split: str, rank: int | None = None):
    """Local rows and a model holding the received adapter, at ``rank`` (this client's own under
    ``hetero-rank``) or the run's ``lora-r`` (evaluation scores the global adapter)."""
    torch.set_num_threads(cfg.client_threads)
    pid = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    labels = tuple(msg.content["config"]["labels"])
    rows, pad_id = client_data(cfg, pid, num_partitions, split, labels)
    model = build_model(dataclasses.replace(cfg, lora_r=rank or cfg.lora_r), len(labels))
    received = from_arrays(msg.content["arrays"])
    if split == "train" and cfg.aggregation == "ffa":
        _check_shared_a(model, str(msg.content["config"].get("lora-a-sha256", "")))
        load_adapter_state(model, received,
                           expected_keys=travelling_keys(adapter_state(model), cfg.aggregation))
    else:
        load_adapter_state(model, received)
    return pid, rows, pad_id, model


def _check_shared_a(model, expected: str) -> None:
    """FFA-LoRA is exact only if this client's frozen A is the server's, bit for bit."""
    mine = lora_a_digest(adapter_state(model))
    if expected and mine != expected:
        raise AdapterMismatchError(
            f"FFA-LoRA: this client's frozen LoRA A (sha256 {mine[:12]}) differs from the "
            f"server's ({expected[:12]}); client and server must use the same seed, model and "
            "torch version"
        )


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which LoRA rank this node trains at (``hetero-rank``), without loading
    any model or data."""
    cfg = from_run_config(context.run_config)
    record = MetricRecord({"lora-r": client_rank(cfg, context.node_config),
                           "partition-id": int(context.node_config.get("partition-id", -1))})
    return Message(content=RecordDict({"metrics": record}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = from_run_config(context.run_config)
    rank = client_rank(cfg, context.node_config)
    pid, rows, pad_id, model = _setup(msg, context, cfg, "train", rank)
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
        "lora-r": rank,
    })
    weights = adapter_state(model)
    sent = {k: weights[k] for k in travelling_keys(weights, cfg.aggregation)}
    content = RecordDict({"arrays": to_arrays(sent), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_(msg: Message, context: Context) -> Message:
    cfg = from_run_config(context.run_config)
    pid, rows, pad_id, model = _setup(msg, context, cfg, "eval")
    labels = msg.content["config"]["labels"]
    metrics = evaluate(model, rows, pad_id, cfg.eval_batch_size, len(labels))
    record = MetricRecord({"num-examples": len(rows), **metrics, "partition-id": pid})
    return Message(content=RecordDict({"metrics": record}), reply_to=msg)
