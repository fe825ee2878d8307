"""Secure aggregation (SecAgg+) in one process: Flower's SecAggPlusWorkflow on the server side,
the real ClientApp (with its mods) on every node, and a grid that carries the messages between
them. Compared with the same round without it, on the same seeds."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from client.client_app import app as client_app
from fedtune.arrays import from_record, to_record
from fedtune.config import ConfigError, from_run_config
from fedtune.data.loading import load_splits
from fedtune.model.adapter import adapter_state
from fedtune.outputs.privacy_report import render
from fedtune.privacy.report import build_report
from fedtune.protocol import LABELS
from fedtune.tasks.registry import task_for
from server.secure_rounds import SecureAggregationError, run_secure_rounds
from strategies.registry import build_strategy, innermost


class ClientGrid:
    """Delivers each message to the ClientApp of its node, in this process; records what the
    server receives."""

    def __init__(self, overrides: dict, clients: int):
        self.contexts = {n: Context(run_id=1, node_id=n, state=RecordDict(), run_config=overrides,
                                    node_config={"partition-id": n - 1,
                                                 "num-partitions": clients})
                         for n in range(1, clients + 1)}
        self.received: list[Message] = []

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            node = int(msg.metadata.dst_node_id)
            delivered = copy.deepcopy(msg)  # as sent over the wire: the workflow shares records
            try:
                reply = client_app(delivered, self.contexts[node])
            except Exception as exc:  # noqa: BLE001 - what a SuperLink reports for a crash
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"),
                                reply_to=delivered)
            replies.append(reply)
        self.received += [copy.deepcopy(r) for r in replies]  # as they travelled
        return replies


def _settings(base: dict, **extra) -> dict:
    return {**base, "num-server-rounds": 1, "reproducible-noise": True, "accountant": "rdp",
            "local-epochs": 1.0, **extra}


def _seeded(strategy):
    """Client-level DP's server noise from a fixed seed, so that two runs can be compared."""
    if innermost(strategy).client_dp is not None:
        innermost(strategy).client_dp.rng = np.random.default_rng(0)
    return strategy


def _plain(overrides: dict, clients: int) -> tuple[dict, object]:
    cfg = from_run_config(overrides)
    labels = list(load_splits(cfg).labels)
    model = task_for(cfg).seeded_model(cfg, len(labels))
    strategy = _seeded(build_strategy(cfg, clients))
    grid = ClientGrid(overrides, clients)
    msgs = strategy.configure_train(1, to_record(adapter_state(model)),
                                    ConfigRecord({LABELS: labels}), grid)
    arrays, _ = strategy.aggregate_train(1, grid.send_and_receive(msgs))
    return from_record(arrays), strategy


def _secure(overrides: dict, clients: int) -> tuple[dict, object, ClientGrid]:
    cfg = from_run_config(overrides)
    labels = list(load_splits(cfg).labels)
    model = task_for(cfg).seeded_model(cfg, len(labels))
    strategy = _seeded(build_strategy(cfg, clients))
    grid = ClientGrid(overrides, clients)
    context = Context(run_id=1, node_id=0, state=RecordDict(), run_config=overrides,
                      node_config={})
    arrays = run_secure_rounds(strategy, grid, context, to_record(adapter_state(model)),
                               cfg=cfg, partitions=[{"num_examples": 200}], first_round=1,
                               last_round=1, train_config=ConfigRecord({LABELS: labels}),
                               evaluate_config=ConfigRecord({LABELS: labels}),
                               evaluate_fn=lambda r, a: None)
    return from_record(arrays), strategy, grid


def _bound(strategy) -> float:
    return innermost(strategy).rounds[1].extra["secure_aggregation"]["quantization_error_bound"]


@pytest.mark.parametrize("aggregation", ["fedavg", "ffa"])
def test_the_aggregate_equals_plain_fedavg_within_the_quantisation_bound(base_config,
                                                                         aggregation):
    overrides = _settings(base_config, aggregation=aggregation)
    plain, _ = _plain(overrides, 3)
    secure, strategy, _ = _secure({**overrides, "secure-aggregation": "secagg+"}, 3)
    bound = _bound(strategy)
    assert 0 < bound < 1e-5
    diff = max(float(np.max(np.abs(plain[k] - secure[k]))) for k in plain)
    moved = max(float(np.max(np.abs(plain[k]))) for k in plain if "lora_B" in k)
    assert moved > 100 * bound  # the round really trained
    assert diff <= bound + 1e-7, (diff, bound)  # + float32 rounding of the result
    log_ = innermost(strategy).rounds[1]
    assert len(log_.replies) == 3 and all(r["epsilon"] > 0 for r in log_.replies)
    report = build_report(from_run_config(overrides | {"secure-aggregation": "secagg+"}), [],
                          innermost(strategy).rounds)
    assert [c["rounds_trained"] for c in report["clients"]] == [1, 1, 1]  # every client counted
    assert all(c["epsilon"] > 0 and c["crosscheck"] for c in report["clients"])
    secure = report["secure_aggregation"]
    assert secure["protocol"] == "secagg+" and secure["quantization_error_bound"] == bound
    assert secure["clipped_values"] == 0 < secure["masked_values"]
    text = render(report)
    assert "## Secure aggregation (SecAgg+)" in text and "values cut by the clipping range: 0" \
        in text


def test_the_server_receives_masked_vectors_only(base_config):
    overrides = _settings(base_config, **{"secure-aggregation": "secagg+"})
    _, _, grid = _secure(overrides, 3)
    masked = []
    for reply in grid.received:
        assert all(len(record) == 0 for record in reply.content.array_records.values())
        configs = reply.content.config_records.get(RECORD_KEY_CONFIGS, {})
        if Key.MASKED_PARAMETERS in configs:
            masked.append([bytes_to_ndarray(b) for b in configs[Key.MASKED_PARAMETERS]])
    assert len(masked) == 3
    assert all(a.dtype == np.uint32 for vector in masked for a in vector)  # 4 bytes a value
    # a masked vector is uniform over the modulus: nothing like an update quantised near the
    # middle of the range (2^21 for a value of 0)
    values = np.concatenate([np.ravel(a) for a in masked[0][1:]]).astype(np.float64)
    assert values.std() > 0.2 * 2**32 and abs(values.mean() - 2**31) < 0.1 * 2**32


def test_a_client_dropping_after_key_sharing_is_recovered(base_config):
    overrides = _settings(base_config, **{"secure-aggregation": "secagg+",
                                          "fault-injection": "1:1:raise", "min-clients": 3})
    secure, strategy, _ = _secure(overrides, 4)
    log_ = innermost(strategy).rounds[1]
    assert len(log_.replies) == 3 and log_.released
    assert any("injected fault" in f["reason"] for f in log_.failures)
    plain, _ = _plain({**overrides, "secure-aggregation": "off"}, 4)
    diff = max(float(np.max(np.abs(plain[k] - secure[k]))) for k in plain)
    assert diff <= _bound(strategy) + 1e-7


def test_below_the_reconstruction_threshold_the_round_fails_clearly(base_config):
    overrides = _settings(base_config, **{"secure-aggregation": "secagg+",
                                          "secagg-reconstruction-threshold": 3,
                                          "fault-injection": "1:1:raise"})
    with pytest.raises(SecureAggregationError, match="reconstruction threshold"):
        _secure(overrides, 3)


def test_client_level_dp_with_client_side_clipping_composes(base_config):
    overrides = _settings(base_config, dp="both", **{"client-dp-side": "client",
                                                     "client-clipping-norm": 0.05,
                                                     "client-noise-multiplier": 0.5})
    plain, _ = _plain(overrides, 3)
    secure, strategy, _ = _secure({**overrides, "secure-aggregation": "secagg+"}, 3)
    protocol = innermost(strategy).rounds[1].extra["secure_aggregation"]
    assert protocol["max_weight"] == 1.0  # unit weights under client-level DP
    diff = max(float(np.max(np.abs(plain[k] - secure[k]))) for k in plain)
    assert diff <= _bound(strategy) + 1e-6, (diff, _bound(strategy))


@pytest.mark.parametrize("extra, names", [
    ({"aggregation": "hetero-rank"}, ("secure-aggregation", "aggregation")),
    ({"max-update-norm": 1.0}, ("secure-aggregation", "max-update-norm")),
    ({"dp": "client"}, ("secure-aggregation", "client-dp-side")),
    ({"client-data": "local"}, ("secagg-max-weight", "client-data")),
])
def test_combinations_that_cannot_work_fail_fast_naming_both_keys(extra, names):
    with pytest.raises(ConfigError) as err:
        from_run_config({"secure-aggregation": "secagg+", **extra})
    for name in names:
        assert name in str(err.value)
