"""A fedtune strategy as the legacy ``Strategy`` Flower's ``SecAggPlusWorkflow`` drives.

SecAgg+ exists only on Flower's legacy path: the workflow asks a legacy strategy for
``configure_fit`` and hands ``aggregate_fit`` every client's ``FitRes`` with its numbers but with
the parameters replaced by the unmasked *aggregate*. This adapter turns fedtune's own round
(``configure_train``: sampling, payloads, the round log) into ``FitIns`` and the aggregate back
into the strategy's :meth:`~strategies.base.LoraStrategy.aggregate_secure`, which logs each
client's numbers for the privacy report and steps from the weighted mean update. No individual
update ever reaches this side in clear.
"""

from __future__ import annotations

import json

from flwr.app import ArrayRecord, ConfigRecord
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.serverapp import Grid

from fedtune.protocol import (
    ARRAYS,
    CONFIG,
    SECAGG_CLIPPED,
    SECAGG_KEYS,
    SECAGG_PRIVACY,
    SECAGG_REFUSAL,
    SECAGG_VALUES,
    PrivacyState,
    Reply,
)


def quantization_error_bound(clients: int, total_weight: float, *, clipping_range: float,
                             quantization_range: int, max_weight: float, **_) -> float:
    """The largest error of one value of the weighted mean update: each client's weighted value
    w/W * u is rounded (stochastically) to a grid of step 2 c / Q, and the sum of the rounded
    values is divided by the sum of the weights w/W."""
    if total_weight <= 0:
        return 0.0
    return clients * (2 * clipping_range / quantization_range) * max_weight / total_weight


class SecAggRound(LegacyStrategy):
    """One round at a time: :meth:`begin` with the global adapter, then the workflow runs."""

    def __init__(self, strategy, inner, grid: Grid, run_id: int, train_config: ConfigRecord,
                 protocol: dict):
        self.strategy, self.inner, self.grid, self.run_id = strategy, inner, grid, run_id
        self.train_config = train_config
        self.protocol = protocol  # clipping_range, quantization_range, max_weight, ...
        self.arrays: ArrayRecord | None = None
        self.keys: list[str] = []
        self.result: ArrayRecord | None = None
        self.done = False

    def begin(self, arrays: ArrayRecord) -> None:
        self.arrays, self.result, self.done = arrays, None, False

    def configure_fit(self, server_round, parameters, client_manager):
        messages = self.strategy.configure_train(server_round, self.arrays, self.train_config,
                                                 self.grid)
        out = []
        for msg in messages:
            record = msg.content[ARRAYS]
            self.keys = list(record.keys())  # fedavg and ffa send every node the same tensors
            config = dict(msg.content[CONFIG])
            config[SECAGG_KEYS] = json.dumps(self.keys)
            fitins = FitIns(ndarrays_to_parameters([record[k].numpy() for k in self.keys]),
                            config)
            out.append((GridClientProxy(int(msg.metadata.dst_node_id), self.grid, self.run_id),
                        fitins))
        return out

    def aggregate_fit(self, server_round, results, failures):
        replies, clipped, values = [], 0, 0
        for proxy, fitres in results:
            metrics = dict(fitres.metrics)
            record = json.loads(str(metrics.pop(SECAGG_PRIVACY))) if SECAGG_PRIVACY in metrics \
                else None
            refusal = metrics.pop(SECAGG_REFUSAL, None)
            clipped += int(metrics.pop(SECAGG_CLIPPED, 0))
            values += int(metrics.pop(SECAGG_VALUES, 0))
            privacy = PrivacyState.from_record(ConfigRecord(record)) if record else None
            replies.append(Reply(node=int(proxy.node_id), metrics=metrics, privacy=privacy,
                                 privacy_record=record,
                                 refusal=str(refusal) if refusal is not None else None))
        mean = None
        if results:
            mean = dict(zip(self.keys, parameters_to_ndarrays(results[0][1].parameters),
                            strict=True))
        weight = sum(float(r.metrics.get(self.inner.weighted_by_key, 0)) for r in replies
                     if r.refusal is None)
        self.result = self.inner.aggregate_secure(
            server_round, replies, mean, errors=[str(f) for f in failures],
            extra={"secure_aggregation": {
                **self.protocol, "clients": len(results), "masked_values": values,
                "clipped_values": clipped,
                "quantization_error_bound": quantization_error_bound(
                    len(results), weight, **self.protocol)}})
        self.done = True
        return ndarrays_to_parameters([]), {}

    # The workflow only trains; fedtune evaluates at the round's end itself.
    def initialize_parameters(self, client_manager):
        return None

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None
