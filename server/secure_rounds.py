"""The round loop under ``secure-aggregation = secagg+``: Flower's ``SecAggPlusWorkflow``, one
round at a time, around fedtune's strategy.

Each round the workflow runs SecAgg+'s four stages (setup, share keys, collect masked vectors,
unmask) with the sampled clients; the server ends up with the weighted sum of their quantised
updates and nothing else. A client that drops after sharing its keys is unmasked from its
neighbours' shares as long as ``secagg-reconstruction-threshold`` of them answer; below it the
workflow halts and so does the run, with the same failure record and ``resume`` as any round.
Evaluation, records, reports and checkpoints are the usual round end.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.common import bytes_to_ndarray, ndarray_to_bytes
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.server import ServerConfig
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid
from flwr.supercore import log

from fedtune.config import RunConfig
from server.progress import exchange, send_and_receive
from strategies.registry import innermost
from strategies.secure_aggregation import SecAggRound


def content_bytes(message: Message) -> int:
    """Bytes a message carries: array data, and bytes or text in its config records (the
    protocol's keys, shares and masked vectors travel as bytes); numbers count 8 each."""
    if not message.has_content():
        return 0
    total = 0
    for record in message.content.array_records.values():
        total += sum(len(a.data) for a in record.values())
    for record in (*message.content.config_records.values(),
                   *message.content.metric_records.values()):
        for value in record.values():
            for item in value if isinstance(value, list) else [value]:
                total += len(item) if isinstance(item, (bytes, str)) else 8
    return total


class CountingGrid:
    """The grid, counting the bytes of every message each way (all four SecAgg+ stages)."""

    def __init__(self, grid: Grid):
        self.grid, self.up, self.down = grid, 0, 0

    def __getattr__(self, name):
        return getattr(self.grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.down += sum(content_bytes(m) for m in messages)
        replies = exchange(self.grid, messages, timeout=timeout)
        self.up += sum(content_bytes(m) for m in replies)
        for reply in replies:
            widen_masked(reply)
        return replies


def widen_masked(reply: Message) -> None:
    """Masked vectors arrive as uint32 (``client/secure_aggregation.py``: half the bytes of
    Flower's int64); the workflow adds them as int64, as Flower's mod would have sent them."""
    if not reply.has_content() or RECORD_KEY_CONFIGS not in reply.content.config_records:
        return
    configs = reply.content.config_records[RECORD_KEY_CONFIGS]
    if Key.MASKED_PARAMETERS in configs:
        configs[Key.MASKED_PARAMETERS] = [
            ndarray_to_bytes(bytes_to_ndarray(raw).astype(np.int64))
            for raw in configs[Key.MASKED_PARAMETERS]]


class SecureAggregationError(RuntimeError):
    """A round's secure aggregation could not finish (too few clients for the threshold)."""


def max_weight(cfg: RunConfig, partitions: list[dict]) -> float:
    """The weight every client's is divided by before quantising: ``secagg-max-weight``, or the
    largest partition (plus the audit's canaries, which count as rows); 1 under client-level DP
    (unit weights)."""
    if cfg.client_dp_enabled:
        return 1.0
    if cfg.secagg_max_weight > 0:
        return cfg.secagg_max_weight
    return float(max(int(p["num_examples"]) for p in partitions) + cfg.audit_canaries)


def protocol_settings(cfg: RunConfig, partitions: list[dict]) -> dict:
    """The SecAgg+ parameters, as the report and the workflow take them."""
    shares = cfg.secagg_num_shares
    threshold = cfg.secagg_reconstruction_threshold
    return {"protocol": "secagg+",
            "num_shares": float(shares) if shares <= 1 else int(shares),
            "reconstruction_threshold": float(threshold) if threshold <= 1 else int(threshold),
            "clipping_range": cfg.secagg_clipping_range,
            "quantization_range": cfg.secagg_quantization_range,
            "modulus_range": 2**32, "max_weight": max_weight(cfg, partitions)}


def run_secure_rounds(strategy, grid: Grid, context: Context, arrays: ArrayRecord, *,
                      cfg: RunConfig, partitions: list[dict], first_round: int, last_round: int,
                      train_config: ConfigRecord, evaluate_config: ConfigRecord,
                      evaluate_fn: Callable[[int, ArrayRecord], object]) -> ArrayRecord:
    """Rounds ``first_round``..``last_round`` under SecAgg+; returns the last global arrays."""
    protocol = protocol_settings(cfg, partitions)
    workflow = SecAggPlusWorkflow(
        num_shares=protocol["num_shares"],
        reconstruction_threshold=protocol["reconstruction_threshold"],
        max_weight=protocol["max_weight"], clipping_range=protocol["clipping_range"],
        quantization_range=protocol["quantization_range"],
        modulus_range=protocol["modulus_range"], timeout=cfg.round_timeout)
    counting = CountingGrid(grid)
    inner = innermost(strategy)
    adapter = SecAggRound(strategy, inner, counting, context.run_id, train_config,
                          {k: v for k, v in protocol.items() if k != "protocol"})
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=last_round,
                                                        round_timeout=cfg.round_timeout),
                           strategy=adapter)
    if first_round == 1:
        evaluate_fn(0, arrays)
    for server_round in range(first_round, last_round + 1):
        log(INFO, "[ROUND %s/%s] secure aggregation (SecAgg+)", server_round, last_round)
        adapter.begin(arrays)
        legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {WorkflowKey.CURRENT_ROUND: server_round})
        legacy.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()  # the adapter holds it
        counting.up = counting.down = 0
        workflow(counting, legacy)
        if server_round in inner.rounds:  # every stage's messages, not only the payloads
            inner.rounds[server_round].bytes_up = counting.up
            inner.rounds[server_round].bytes_down = counting.down
        if not adapter.done:
            raise SecureAggregationError(
                f"round {server_round}: secure aggregation halted before the aggregate was "
                "unmasked: fewer clients completed the protocol than the reconstruction "
                "threshold (secagg-reconstruction-threshold) needs; bring clients back, then "
                "resume the run")
        if adapter.result is not None:
            arrays = adapter.result
        # client evaluation (client-evaluate) needs no secrecy of the global adapter: as usual
        replies = send_and_receive(
            grid, strategy.configure_evaluate(server_round, arrays, evaluate_config, grid),
            timeout=cfg.round_timeout, server_round=server_round, num_rounds=last_round,
            phase="evaluate")
        strategy.aggregate_evaluate(server_round, replies)
        evaluate_fn(server_round, arrays)
    return arrays
