"""ClientApp: train the global adapter on local data with DP-SGD; evaluate it locally.

Under ``ffa`` the client keeps LoRA A frozen at the seed-shared init and sends only B and the head;
under ``hetero-rank`` it trains at its own rank (node config ``lora-r`` or the ``hetero-ranks``
rule) and tells the server that rank through a query message.
"""

from __future__ import annotations

import dataclasses
import json

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.faults import fault_mod
from client.local_data import client_rows
from client.mods import client_clipping_mod
from client.noise_seed import round_seed
from client.rank import client_rank
from client.trainer import train_local
from fedtune.config import RunConfig, from_run_config
from fedtune.console import quiet_libraries
from fedtune.model.adapter import (
    AdapterMismatchError,
    adapter_state,
    from_arrays,
    load_adapter_state,
    to_arrays,
)
from fedtune.model.lora_layout import lora_a_digest, travelling_keys
from fedtune.privacy.accounting import PrivacyState, epsilon
from fedtune.privacy.budget import ClientBudget
from fedtune.privacy.calibration import sample_rate
from fedtune.privacy.ledger import Ledger, fingerprint
from fedtune.protocol import UNIT_WEIGHT
from fedtune.tasks.registry import task_for

app = ClientApp(mods=[fault_mod, client_clipping_mod])


def _data(msg: Message, context: Context, cfg: RunConfig, split: str):
    torch.set_num_threads(cfg.client_threads)
    labels = tuple(msg.content["config"]["labels"])
    pid, rows, pad_id = client_rows(cfg, context.node_config, split, labels)
    return pid, rows, pad_id, labels


def _model(msg: Message, cfg: RunConfig, num_labels: int, split: str, rank: int | None = None):
    """A model holding the received adapter, at ``rank`` (this client's own under
    ``hetero-rank``) or the run's ``lora-r`` (evaluation scores the global adapter)."""
    model = task_for(cfg).build_model(dataclasses.replace(cfg, lora_r=rank or cfg.lora_r),
                                      num_labels)
    received = from_arrays(msg.content["arrays"])
    if split == "train" and cfg.aggregation == "ffa":
        _check_shared_a(model, str(msg.content["config"].get("lora-a-sha256", "")))
        load_adapter_state(model, received,
                           expected_keys=travelling_keys(adapter_state(model), cfg.aggregation))
    else:
        load_adapter_state(model, received)
    return model


def _check_shared_a(model, expected: str) -> None:
    """FFA-LoRA is exact only if this client's frozen A is the server's, bit for bit."""
    mine = lora_a_digest(adapter_state(model))
    if expected and mine != expected:
        raise AdapterMismatchError(
            f"FFA-LoRA: this client's frozen LoRA A (sha256 {mine[:12]}) differs from the "
            f"server's ({expected[:12]}); client and server must use the same seed, model and "
            "torch version"
        )


def _ledger_dir(cfg: RunConfig, context: Context) -> str:
    """On real hosts the node config names the ledger folder; in simulation the run config may."""
    return str(context.node_config.get("ledger-dir") or cfg.ledger_dir)


def _ledger(cfg: RunConfig, context: Context, rows) -> Ledger | None:
    folder = _ledger_dir(cfg, context)
    if not folder:
        return None
    return Ledger.open(folder, fingerprint(*rows.ledger_rows()), len(rows))


def _resumed_state(config: ConfigRecord, pid: int) -> dict | None:
    """A resumed run starts with empty ``context.state``: take the privacy state this client
    last reported, as the server checkpointed it (its on-disk ledger, if any, still decides
    which rounds were already charged)."""
    text = config.get("resume-privacy")
    return json.loads(text).get(str(pid)) if text else None


def _metrics(pid: int, n: int, rank: int, state: PrivacyState, cfg: RunConfig,
             train_loss: float, steps: int, eps: float, refused: bool) -> MetricRecord:
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
        "lora-r": rank,
        UNIT_WEIGHT: 0 if refused else 1,
    })


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which LoRA rank this node trains at (``hetero-rank``), without loading
    any model or data."""
    quiet_libraries()
    cfg = from_run_config(context.run_config)
    record = MetricRecord({"lora-r": client_rank(cfg, context.node_config),
                           "partition-id": int(context.node_config.get("partition-id", -1))})
    return Message(content=RecordDict({"metrics": record}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    quiet_libraries()
    cfg = from_run_config(context.run_config)
    rank = client_rank(cfg, context.node_config)
    pid, rows, pad_id, labels = _data(msg, context, cfg, "train")
    config = msg.content["config"]
    server_round = int(config["server-round"])
    run_key = str(config.get("run-key", context.run_id))
    charge_id = f"{run_key}/round-{server_round}"
    state = PrivacyState.from_record(context.state.get("privacy")
                                     or _resumed_state(config, pid))
    n = len(rows)
    budget = None
    if cfg.dp_enabled:
        cap = context.node_config.get("max-epsilon")
        budget = ClientBudget(cfg, state, n, _ledger(cfg, context, rows),
                              float(cap) if cap else None)
        budget.start(run_key)
        decision = budget.decide(charge_id)
        if not decision.allowed:  # no update leaves the client; the reply says why
            budget.refuse(charge_id, decision)
            context.state["privacy"] = state.to_record()
            metrics = _metrics(pid, n, rank, state, cfg, 0.0, 0, decision.epsilon_before, True)
            return Message(content=RecordDict({
                "metrics": metrics, "refusal": ConfigRecord({"reason": decision.reason}),
                "privacy": state.to_record(),
            }), reply_to=msg)
        budget.charge(charge_id, decision)
    model = _model(msg, cfg, len(labels), "train", rank)
    seed = round_seed(cfg, pid, server_round, charge_id, _ledger_dir(cfg, context))
    result = train_local(model, rows, pad_id, cfg, state, seed=seed)
    if budget is not None:
        budget.settle(decision)
    state.rounds_trained += 1
    if not cfg.dp_enabled:
        state.plain_steps += result.steps
    context.state["privacy"] = state.to_record()
    eps = epsilon(state.history, cfg.delta, cfg.accountant) if cfg.dp_enabled else float("inf")
    metrics = _metrics(pid, n, rank, state, cfg, result.train_loss, result.steps, eps, False)
    weights = adapter_state(model)
    sent = {k: weights[k] for k in travelling_keys(weights, cfg.aggregation)}
    content = RecordDict({"arrays": to_arrays(sent), "metrics": metrics,
                          "privacy": state.to_record()})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_(msg: Message, context: Context) -> Message:
    quiet_libraries()
    cfg = from_run_config(context.run_config)
    pid, rows, pad_id, labels = _data(msg, context, cfg, "eval")
    model = _model(msg, cfg, len(labels), "eval")
    metrics = task_for(cfg).evaluate(cfg, model, rows, pad_id, len(labels))
    record = MetricRecord({"num-examples": len(rows), **metrics, "partition-id": pid})
    return Message(content=RecordDict({"metrics": record}), reply_to=msg)
