"""Heterogeneous-rank LoRA (the FlexLoRA / HetLoRA idea): clients train at their own rank.

Factors of different ranks cannot be averaged, but the updates they stand for can: the server keeps
the exact global delta-W = mean_k (alpha / r_k) · B_k · A_k per module (full matrices) plus the
averaged head as its true state, and sends each client the best rank-r_k approximation of it
(truncated SVD), one message per node. It learns a node's rank once, by a query message that the
ClientApp answers from its node config or the ``hetero-ranks`` rule.

The global adapter that is evaluated, checkpointed and saved in ``final/`` is the best rank-
``lora-r`` approximation of the global delta-W (a valid PEFT adapter of rank ``lora-r``); each
metrics line says how much of delta-W that truncation dropped (``global_truncation_error``).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedtune.arrays import Arrays, from_record, to_record
from fedtune.model.lora_layout import LORA_A, LORA_B, head_keys, is_lora_a, lora_modules
from fedtune.protocol import ASK, CONFIG, LORA_R
from strategies.base import LoraStrategy, weighted_mean
from strategies.lowrank import factorise, lora_delta, lora_scaling, truncation_error

DELTA = ".delta_w"  # key suffix of a module's delta-W in the state the optimiser steps on


class HeteroRankLora(LoraStrategy):
    def __init__(self, *, lora_alpha: float, global_rank: int, seed: int = 0,
                 query_timeout: float = 600.0, **kwargs):
        super().__init__(**kwargs)
        self.lora_alpha, self.global_rank, self.seed = lora_alpha, global_rank, seed
        self.query_timeout = query_timeout
        self.keys: list[str] = []
        self.delta_w: dict[str, np.ndarray] | None = None  # module -> (out, in), float64
        self.head: Arrays = {}
        self.node_rank: dict[int, int] = {}

    # --- state ------------------------------------------------------------------------------

    def begin_round(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord) -> None:
        """Only the initial adapter is read: afterwards the arrays Flower passes back are the
        rank-``lora-r`` truncation, and the exact delta-W lives here."""
        if self.delta_w is not None:
            return
        state = from_record(arrays)
        self.keys = list(state)
        self.delta_w = {}
        for module in lora_modules(state):
            a, b = state[module + LORA_A], state[module + LORA_B]
            self.delta_w[module] = lora_delta(b, a, lora_scaling(self.lora_alpha, a.shape[0]))
        self.head = {k: state[k] for k in head_keys(state)}

    def state_arrays(self) -> Arrays:
        """The exact delta-W (the checkpointed adapter is only its rank-``lora-r`` truncation)."""
        out = super().state_arrays()
        if self.delta_w is not None:
            out.update({f"delta-w/{m}": d for m, d in self.delta_w.items()})
            out.update({f"head/{k}": v for k, v in self.head.items()})
        return out

    def load_state_arrays(self, arrays, global_arrays) -> None:
        super().load_state_arrays(arrays, global_arrays)
        delta = {k.removeprefix("delta-w/"): np.asarray(v, dtype=np.float64)
                 for k, v in arrays.items() if k.startswith("delta-w/")}
        if delta:
            self.delta_w = delta
            self.head = {k.removeprefix("head/"): np.asarray(v) for k, v in arrays.items()
                         if k.startswith("head/")}
            self.keys = list(global_arrays)

    def factors(self, rank: int) -> Arrays:
        """The global state as a rank-``rank`` adapter, in the model's key order."""
        scaling = lora_scaling(self.lora_alpha, rank)
        parts: Arrays = dict(self.head)
        for module, delta in self.delta_w.items():
            b, a = factorise(delta, rank, scaling, seed=self.seed, name=module)
            parts[module + LORA_A], parts[module + LORA_B] = a, b
        return {k: parts[k] for k in self.keys}

    # --- sending ----------------------------------------------------------------------------

    def payloads(self, server_round: int, node_ids: list[int], grid: Grid
                 ) -> tuple[dict[int, Arrays], list[dict]]:
        unknown = [n for n in node_ids if n not in self.node_rank]
        left_out = self._ask_ranks(unknown, grid) if unknown else []
        by_rank: dict[int, Arrays] = {}
        payloads = {}
        for node in node_ids:
            if node not in self.node_rank:
                continue
            rank = self.node_rank[node]
            if rank not in by_rank:  # one SVD per rank per round, shared by its nodes
                by_rank[rank] = self.factors(rank)
            payloads[node] = by_rank[rank]
        return payloads, left_out

    def _ask_ranks(self, nodes: list[int], grid: Grid) -> list[dict]:
        """One query round trip for nodes seen for the first time; a node that does not answer
        with a valid rank sits this round out (listed as a failure) and is asked again later."""
        questions = [
            Message(content=RecordDict({CONFIG: ConfigRecord({ASK: LORA_R})}),
                    message_type=MessageType.QUERY, dst_node_id=node)
            for node in nodes
        ]
        reasons = {node: "did not answer the LoRA-rank query" for node in nodes}
        for reply in grid.send_and_receive(questions, timeout=self.query_timeout):
            node = int(reply.metadata.src_node_id)
            if reply.has_error():
                reasons[node] = f"LoRA-rank query failed: {reply.error.reason}"
                continue
            metrics = next(iter(reply.content.metric_records.values()), {})
            rank = metrics.get(LORA_R)
            if isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1:
                self.node_rank[node] = rank
            else:
                reasons[node] = f"reported an invalid LoRA rank {rank!r}"
        return [{"node": n, "reason": reasons[n]} for n in nodes if n not in self.node_rank]

    # --- averaging --------------------------------------------------------------------------

    def _as_delta(self, arrays: Arrays) -> Arrays:
        out: Arrays = {}
        for module in self.delta_w:
            a, b = arrays[module + LORA_A], arrays[module + LORA_B]
            out[module + DELTA] = lora_delta(b, a, lora_scaling(self.lora_alpha, a.shape[0]))
        out.update({k: arrays[k] for k in self.head})
        return out

    def aggregate(self, server_round: int, accepted: list[tuple[int, Arrays, float]]
                  ) -> ArrayRecord:
        if self.delta_w is None:
            raise RuntimeError("hetero-rank aggregates against the state set in configure_train")
        mean = weighted_mean([(self._as_delta(arrays), w) for _, arrays, w in accepted])
        current = {m + DELTA: d for m, d in self.delta_w.items()} | self.head
        new = self.optimizer.step(server_round, current, mean)
        self.delta_w = {m: np.asarray(new[m + DELTA], dtype=np.float64) for m in self.delta_w}
        self.head = {k: new[k] for k in self.head}
        errors = [truncation_error(d, self.global_rank) for d in self.delta_w.values()]
        log_ = self.rounds.get(server_round)
        if log_ is not None:
            log_.extra.update({"global_rank": self.global_rank,
                               "global_truncation_error": round(max(errors, default=0.0), 6),
                               "client_ranks": sorted({a[k].shape[0] for _, a, _ in accepted
                                                       for k in a if is_lora_a(k)})})
        return to_record(self.factors(self.global_rank))

