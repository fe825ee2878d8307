"""FedAvg over LoRA adapter tensors (A and B averaged separately, as in FedIT).

The baseline: every client sends its whole adapter (A, B and the head) and the server takes the
weighted mean of each tensor. Inexact for LoRA, since mean(B)·mean(A) != mean(B·A); ``ffa`` and
``hetero-rank`` are the exact alternatives. Under client-level DP the mean is DP-FedAvg's noised
sum of clipped updates over the sampled clients (``strategies/client_dp.py``), taken before the
server optimiser steps.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from fedtune.arrays import Arrays, from_record, to_record
from strategies.base import LoraStrategy, TooFewRepliesError, weighted_mean

__all__ = ["LoraFedAvg", "TooFewRepliesError"]


class LoraFedAvg(LoraStrategy):
    supports_client_dp = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.global_: Arrays | None = None  # the adapter sent this round

    def begin_round(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord) -> None:
        self.global_ = from_record(arrays)

    def sent_part(self, state: Arrays) -> Arrays:
        """The tensors that travel and are averaged (all of them for FedAvg)."""
        return state

    def payloads(self, server_round: int, node_ids: list[int], grid: Grid
                 ) -> tuple[dict[int, Arrays], list[dict]]:
        payload = self.sent_part(self.global_)  # one object: serialised once for all nodes
        return {node: payload for node in node_ids}, []

    def aggregate(self, server_round: int, accepted: list[tuple[int, Arrays, float]]
                  ) -> ArrayRecord:
        if self.client_dp is not None:
            if self.global_ is None:
                raise RuntimeError("client-level DP clips each update against the adapter sent "
                                   "this round: call configure_train first")
            # The Gaussian mechanism's output; the optimiser step below is post-processing.
            reference = self.sent_part(self.global_)
            canaries = (self.client_canaries.updates(server_round, reference)
                        if self.client_canaries is not None else [])
            mean = self.client_dp.noisy_mean(reference, [arrays for _, arrays, _ in accepted],
                                             canaries)
        else:
            mean = weighted_mean([(arrays, w) for _, arrays, w in accepted])
        if self.global_ is None:  # used without configure_train: nothing to step from
            return to_record(mean)
        new = self.optimizer.step(server_round, self.sent_part(self.global_), mean)
        return to_record({k: new.get(k, v) for k, v in self.global_.items()})
