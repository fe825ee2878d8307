"""The round mechanics every LoRA strategy shares, around Flower's FedAvg.

Flower's FedAvg samples the clients. Around that, a DP-LoRA run needs: one payload per node (they
differ under ``hetero-rank``), every reply checked against what its node was sent before anything
is averaged, a round with fewer valid replies than ``min-clients`` stopping the run (Flower would
carry on with an empty model), the server optimiser applied to what the strategy really averages,
and each round's traffic, replies, failures and rejections logged for the run folder. Subclasses
say what they send and how they average. A client that refuses a round because its privacy budget
is spent is not a failure: it is left out, and a round that only refusals leave short of
``min-clients`` keeps the global adapter.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from flwr.supercore import log

from fedtune.arrays import Arrays, record_bytes, to_record
from fedtune.protocol import EPSILON, EPSILON_MAX, PARTITION_ID, TRAIN_LOSS, Reply
from strategies.round_log import RoundLog
from strategies.server_optimizers import ServerOptimizer
from strategies.validation import check_reply, common_layout


class TooFewRepliesError(RuntimeError):
    """Fewer valid replies than the minimum: averaging would silently degrade the model."""


def weighted_mean(items: list[tuple[Arrays, float]]) -> Arrays:
    """Weighted mean per key, accumulated in float64 and returned in each tensor's own dtype."""
    total = sum(w for _, w in items)
    first = items[0][0]
    out = {k: np.zeros(np.shape(v), dtype=np.float64) for k, v in first.items()}
    for arrays, weight in items:
        for k in out:
            out[k] += np.asarray(arrays[k], dtype=np.float64) * (weight / total)
    return {k: v.astype(np.asarray(first[k]).dtype) for k, v in out.items()}


def cyclic_turn(node_ids: Iterable[int], size: int, server_round: int) -> list[int]:
    """Round ``server_round``'s ``size`` nodes of the cycle over the sorted ids: round 1 takes
    the first ``size``, round 2 the next, wrapping around; a run resumed at round r picks what
    an uninterrupted one would."""
    ids = sorted(node_ids)
    start = (server_round - 1) * size
    return [ids[(start + j) % len(ids)] for j in range(min(size, len(ids)))]


class LoraStrategy(FedAvg):
    """Subclasses implement :meth:`begin_round`, :meth:`payloads` and :meth:`aggregate`."""

    # Whether :meth:`aggregate` applies ``client_dp`` (strategies.client_dp.ClientLevelDP), set
    # by the client-level DP wrappers: clip, sum over the sampled clients, noise, then optimise.
    supports_client_dp = False

    def __init__(self, *, min_replies: int, server_optimizer: ServerOptimizer | None = None,
                 max_update_norm: float = 0.0, client_selection: str = "random", **kwargs):
        super().__init__(**kwargs)
        self.client_selection = client_selection
        self.client_dp = None
        # The client-level audit's canary clients (``audit-canary-clients``), added to the
        # clipped sum by strategies that apply ``client_dp``.
        self.client_canaries = None
        self.min_replies = min_replies
        self.optimizer = server_optimizer or ServerOptimizer()
        self.max_update_norm = max_update_norm
        self.rounds: dict[int, RoundLog] = {}
        self._sent: dict[int, dict[int, Arrays]] = {}  # round -> node -> what it was sent
        self._messages: dict[int, list[Message]] = {}  # round -> the train messages sent

    # --- what subclasses define -------------------------------------------------------------

    @abstractmethod
    def begin_round(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord) -> None:
        """Take the global adapter Flower passes in (and add to the round's config)."""

    @abstractmethod
    def payloads(self, server_round: int, node_ids: list[int], grid: Grid
                 ) -> tuple[dict[int, Arrays], list[dict]]:
        """What each sampled node is sent, and ``{"node", "reason"}`` for nodes left out."""

    @abstractmethod
    def aggregate(self, server_round: int, accepted: list[tuple[int, Arrays, float]]
                  ) -> ArrayRecord:
        """The new global adapter from (node, arrays, weight) of the valid replies."""

    # --- resuming ---------------------------------------------------------------------------

    def state_arrays(self) -> Arrays:
        """Server-side state beyond the global adapter, saved in every checkpoint."""
        return {f"optimizer/{k}": v for k, v in self.optimizer.state().items()}

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray],
                          global_arrays: Mapping[str, np.ndarray]) -> None:
        self.optimizer.load_state({k.removeprefix("optimizer/"): v for k, v in arrays.items()
                                   if k.startswith("optimizer/")})

    # --- the round --------------------------------------------------------------------------

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.client_selection == "cyclic":
            sampled = self._cyclic_messages(server_round, arrays, config, grid)
        else:
            sampled = list(super().configure_train(server_round, arrays, config, grid))
        self.begin_round(server_round, arrays, config)
        log_ = self.rounds[server_round] = RoundLog(sampled=len(sampled))
        nodes = [int(m.metadata.dst_node_id) for m in sampled]
        payloads, left_out = self.payloads(server_round, nodes, grid)
        log_.failures.extend({"kind": "left-out", **x} for x in left_out)
        self._sent[server_round] = payloads
        log_.sent = sorted(payloads)
        log_.bytes_down = sum(record_bytes(p) for p in payloads.values())
        records: dict[int, ArrayRecord] = {}  # one record per distinct payload, not per node
        messages = []
        for node, payload in payloads.items():
            if id(payload) not in records:
                records[id(payload)] = to_record(payload)
            record = records[id(payload)]
            content = RecordDict({self.arrayrecord_key: record, self.configrecord_key: config})
            messages.append(Message(content=content, message_type=MessageType.TRAIN,
                                    dst_node_id=node))
        self._messages[server_round] = messages  # the grid fills in their ids when it sends
        return messages

    def _cyclic_messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                         grid: Grid) -> list[Message]:
        """FedAvg's ``configure_train`` with the sample replaced by the next clients in a fixed
        cycle (``client-selection = cyclic``). Why: under sample-level DP at a fixed budget a
        client's steps are few, and a federation whose every client trains every round makes as
        many sequential steps as one client does; taking turns multiplies the sequential steps
        by clients/sampled at the same compute and the same per-client epsilon (docs/results.md,
        "Accuracy under DP")."""
        size = max(int(len(list(grid.get_node_ids())) * self.fraction_train),
                   self.min_train_nodes)
        _, every = sample_nodes(grid, self.min_available_nodes, size)
        nodes = cyclic_turn(every, size, server_round)
        log(INFO, "configure_train: nodes %s take their turn (cyclic, %d of %d)",
            nodes, len(nodes), len(every))
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return list(self._construct_messages(record, nodes, MessageType.TRAIN))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        log_ = self.rounds.setdefault(server_round, RoundLog())
        # Flower's own consistency check raises on one odd reply; ours drops it instead.
        contents, errors = self._check_and_log_replies(replies, is_train=True, validate=False)
        decoded = [Reply.decode(m) for m in contents]  # once per reply
        refusals = self._log_refusals(server_round, decoded, log_)
        # An error the SuperLink raised for a node (e.g. "Node Unavailable" after a crash) comes
        # from the SuperLink's own id: name the node that the failed message was sent to.
        dst = {m.metadata.message_id: int(m.metadata.dst_node_id)
               for m in self._messages.pop(server_round, [])}

        def node_of(m: Message) -> int:
            return dst.get(m.metadata.reply_to_message_id, int(m.metadata.src_node_id))

        log_.failures.extend(
            {"node": node_of(m), "kind": "error", "reason": m.error.reason} for m in errors
        )
        sent = self._sent.pop(server_round, None)
        log_.failures.extend(_missing(sent, {node_of(m) for m in replies}, len(replies),
                                      log_.sampled))
        accepted = self._validate([r for r in decoded if r.refusal is None], sent, log_)
        if not self._enough(server_round, accepted, refusals, log_):
            return None, None
        weights = self._weights_and_loss(accepted, log_)
        # Summed in node order: the result does not depend on the order replies arrived in.
        items = sorted(((r.node, r.arrays, w) for r, w in zip(accepted, weights, strict=True)),
                       key=lambda x: x[0])
        arrays = self.aggregate(server_round, items)
        log_.released = True
        return arrays, self._round_metrics(server_round, accepted, log_)

    def aggregate_secure(self, server_round: int, replies: list[Reply],
                         mean_update: Arrays | None, *, errors: list[str], extra: dict
                         ) -> ArrayRecord | None:
        """The round under secure aggregation: each client's numbers (no arrays) and the
        weighted mean of their updates, which is all the server learns. Nothing can be checked
        per update; fedavg and ffa step from ``sent + mean`` (under client-level DP: the sum of
        the client-clipped updates, noised and divided by the sampled m)."""
        log_ = self.rounds.setdefault(server_round, RoundLog())
        refusals = self._log_refusals(server_round, replies, log_)
        self._messages.pop(server_round, None)
        sent = self._sent.pop(server_round, None)
        log_.failures.extend({"node": None, "kind": "error", "reason": e} for e in errors)
        log_.failures.extend(_missing(sent, {r.node for r in replies}, len(replies),
                                      log_.sampled))
        accepted = [r for r in replies if r.refusal is None]
        log_.extra.update(extra)
        if not self._enough(server_round, accepted, refusals, log_):
            return None
        if mean_update is None or self.global_ is None:
            raise RuntimeError(f"round {server_round}: secure aggregation returned no aggregate")
        self._weights_and_loss(accepted, log_)
        reference = self.sent_part(self.global_)
        if self.client_dp is not None:  # unit weights: the sum is the mean times the count
            mean = self.client_dp.noisy_mean_of_sum(
                reference, {k: np.asarray(v, np.float64) * len(accepted)
                            for k, v in mean_update.items()})
        else:
            mean = {k: (np.asarray(reference[k], np.float64) + np.asarray(mean_update[k],
                    np.float64)).astype(np.asarray(reference[k]).dtype) for k in reference}
        new = self.optimizer.step(server_round, reference, mean)
        log_.released = True
        self._round_metrics(server_round, accepted, log_)
        return to_record({k: new.get(k, v) for k, v in self.global_.items()})

    def _log_refusals(self, server_round: int, replies: list[Reply], log_: RoundLog
                      ) -> list[Reply]:
        refusals = [r for r in replies if r.refusal is not None]
        log_.refused = [{**r.info(), "reason": r.refusal} for r in refusals]
        for r in log_.refused:
            log(WARNING, "round %s: client %s refused: %s", server_round, r[PARTITION_ID],
                r["reason"])
        return refusals

    def _enough(self, server_round: int, accepted: list[Reply], refusals: list[Reply],
                log_: RoundLog) -> bool:
        """False: only budget refusals leave the round short (the global adapter is kept);
        raises when failures do."""
        # Logged before anything can stop the round: each of these clients spent privacy on it,
        # and the privacy report counts it even if the round releases nothing.
        log_.replies = [r.info() for r in accepted]
        if len(accepted) < self.min_replies <= len(accepted) + len(refusals):
            log(WARNING, "round %s: %s valid replies, %s budget refusals: global adapter kept",
                server_round, len(accepted), len(refusals))
            return False
        if len(accepted) < self.min_replies:
            reasons = "; ".join(f"node {f['node']}: {f['reason']}" for f in log_.failures)
            raise TooFewRepliesError(
                f"round {server_round}: {len(accepted)} valid replies of {log_.sampled} sampled, "
                f"below min-clients = {self.min_replies}. {reasons or 'No error was reported.'}"
            )
        return True

    def _weights_and_loss(self, accepted: list[Reply], log_: RoundLog) -> list[float]:
        weights = [float(r.metrics[self.weighted_by_key]) for r in accepted]
        # Only clients without DP send a training loss; under DP the round has none (null).
        losses = [(w, float(r.metrics[TRAIN_LOSS])) for r, w in zip(accepted, weights, strict=True)
                  if TRAIN_LOSS in r.metrics]
        loss_weight = sum(w for w, _ in losses)
        log_.train_loss = (sum(w * x for w, x in losses) / loss_weight if loss_weight > 0
                           else None)
        return weights

    def _round_metrics(self, server_round: int, accepted: list[Reply], log_: RoundLog
                       ) -> MetricRecord:
        eps = [float(r.metrics[EPSILON]) for r in accepted]
        loss = {TRAIN_LOSS: log_.train_loss} if log_.train_loss is not None else {}
        if any(math.isinf(e) for e in eps):
            log(WARNING, "round %s: trained without DP (epsilon = inf)", server_round)
        return MetricRecord({**loss, EPSILON_MAX: max(eps) if eps else 0.0})

    def _validate(self, contents: list[Reply], sent: dict[int, Arrays] | None,
                  log_: RoundLog) -> list[Reply]:
        layout = common_layout(contents) if sent is None else None
        accepted = []
        for reply in contents:
            node = reply.node
            log_.bytes_up += reply.nbytes
            if sent is not None and node not in sent:
                reason = "reply from a node that was not sent this round's adapter"
            else:
                reason = check_reply(reply, sent[node] if sent is not None else None,
                                     max_update_norm=self.max_update_norm,
                                     weighted_by_key=self.weighted_by_key, layout=layout)
            if reason is None:
                accepted.append(reply)
                continue
            log(WARNING, "rejected the reply of node %s: %s", node, reason)
            log_.rejected.append({"node": node, "reason": reason})
            log_.failures.append({"node": node, "kind": "invalid", "reason": reason})
            # The client spent privacy on it all the same: keep it for the report.
            log_.rejected_replies.append(reply.info())
        if log_.rejected:
            log(INFO, "%s of %s replies passed validation", len(accepted), len(contents))
        return accepted

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        metrics = super().aggregate_evaluate(server_round, replies)
        if metrics is not None:
            self.rounds.setdefault(server_round, RoundLog()).client_eval = {
                k: float(v) for k, v in metrics.items() if k != PARTITION_ID
            }
        return metrics


def _missing(sent: dict[int, Arrays] | None, replied: set[int], num_replies: int,
             sampled: int) -> list[dict]:
    """One failure per node that was sent the adapter but never replied (crashed or too slow)."""
    if sent is None:
        n = sampled - num_replies
        return [{"node": None, "kind": "timeout", "reason": f"{n} sampled client(s) did not "
                 "reply within round-timeout"}] if n > 0 else []
    return [{"node": node, "kind": "timeout",
             "reason": "no reply within round-timeout (the client crashed, hung or was too slow)"}
            for node in sent if node not in replied]
