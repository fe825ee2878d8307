"""What the server does after every round, in order: evaluate, record, report, checkpoint.

It is the ``evaluate_fn`` of the round loop, which calls it at round 0 and after every round with
the new global adapter: the point at which everything about a round is known. The checkpoint comes
last because it commits the round: a resumed run starts after the newest intact checkpoint.
"""

from __future__ import annotations

import math
import time
from logging import INFO

from flwr.app import ArrayRecord, MetricRecord
from flwr.supercore import log

from fedtune.arrays import from_record, to_tensors
from fedtune.config import RunConfig
from fedtune.console import round_line
from fedtune.model.adapter import load_adapter_state
from fedtune.outputs.run_folder import RunFolder
from fedtune.privacy.client_level import client_level_report
from fedtune.privacy.report import build_report
from fedtune.protocol import EPSILON, EPSILON_MAX, NODE, PARTITION_ID, TRAIN_LOSS, file_key
from server.local_clients import LocalClients
from server.resume import state_writer
from strategies.client_dp import sampled_per_round
from strategies.round_log import RoundLog


class CentralEvaluation:
    """The server's copy of the model, scoring each global adapter on the held-out split."""

    def __init__(self, cfg: RunConfig, task, model, eval_set, pad_token_id: int,
                 num_labels: int):
        self.cfg, self.task, self.model = cfg, task, model
        self.eval_set, self.pad_token_id, self.num_labels = eval_set, pad_token_id, num_labels

    def __call__(self, arrays: ArrayRecord) -> dict[str, float]:
        load_adapter_state(self.model, to_tensors(arrays))
        return self.task.evaluate(self.cfg, self.model, self.eval_set, self.pad_token_id,
                                  self.num_labels)


class RoundEnd:
    def __init__(self, cfg: RunConfig, folder: RunFolder, evaluation: CentralEvaluation,
                 strategy, partitions: list[dict], num_clients: int,
                 resumed: dict | None = None, local: LocalClients | None = None):
        self.cfg, self.folder, self.evaluation, self.strategy = cfg, folder, evaluation, strategy
        self.partitions, self.num_clients = partitions, num_clients
        # The rounds as the run folder records them (under client-data=local, numbered by node);
        # the strategy's own logs stay as the strategy wrote them.
        self.rounds: dict[int, RoundLog] = dict(strategy.rounds)
        self.resumed = resumed  # written into the first line after a resume
        self.completed = resumed["from_round"] if resumed else -1  # last round written
        self.local = local
        self.started = self.last = time.monotonic()

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        metrics = self.evaluate(arrays)
        line = self.record(server_round, metrics)
        if server_round > 0:
            self.report(server_round)
            self.checkpoint(server_round, arrays)
        self.completed = server_round
        log(INFO, "%s", round_line(line, self.cfg.num_server_rounds))
        return MetricRecord({k: float(v) for k, v in metrics.items()})

    # --- the steps, in order ----------------------------------------------------------------

    def evaluate(self, arrays: ArrayRecord) -> dict[str, float]:
        return self.evaluation(arrays)

    def record(self, server_round: int, metrics: dict[str, float]) -> dict:
        """Append the round's line to ``metrics.jsonl``: central metrics, what the strategy saw,
        traffic and timing."""
        line: dict = {"round": server_round, **metrics}
        if server_round > 0:
            rlog = self.strategy.rounds.get(server_round, RoundLog())
            if self.local is not None:
                rlog = self.local.observe(rlog)
            self.rounds[server_round] = rlog
            line.update(round_fields(rlog))
        if self.resumed is not None:
            line["resumed"], self.resumed = self.resumed, None
        now = time.monotonic()
        line["wall_s"] = round(now - self.last, 3)
        line["elapsed_s"] = round(now - self.started, 3)
        self.last = now
        self.folder.append_metrics(line)
        return line

    def report(self, server_round: int, *, last: bool | None = None) -> None:
        """Rewrite the privacy report: complete after every round, even if the run stops.
        ``last``: this is the run's last report (dp-accounting cross-checks); by default, after
        the last planned round."""
        if last is None:
            last = server_round == self.cfg.num_server_rounds
        self.folder.write_privacy_report(build_report(
            self.cfg, self.partitions, self.rounds, self._client_level(server_round),
            crosscheck_now=last, node_ids=self.local.number if self.local is not None else None))

    def report_failure(self, server_round: int) -> None:
        """The privacy report after ``server_round`` stopped the run (too few replies, a crash
        in the round): this round end never ran for it, yet every client sent its adapter may
        have spent privacy on it. The strategy's log of the round is taken in and the report
        rewritten with it; nothing is evaluated or checkpointed (a resume reruns the round)."""
        if server_round < 1:
            return
        rlog = self.strategy.rounds.get(server_round)
        if rlog is not None:
            self.rounds[server_round] = self.local.observe(rlog) if self.local else rlog
        self.report(server_round, last=True)

    def checkpoint(self, server_round: int, arrays: ArrayRecord) -> None:
        """The adapter plus everything a resume needs; written last, it commits the round."""
        self.folder.save_adapter(
            self.evaluation.model, self.folder.checkpoint_dir(server_round),
            server_state=state_writer(server_round, from_record(arrays),
                                      self.strategy.state_arrays(), self.rounds),
            meta={"round": server_round})

    def _client_level(self, server_round: int) -> dict | None:
        if not self.cfg.client_dp_enabled:
            return None
        released = sum(1 for r, log_ in self.rounds.items() if r <= server_round and log_.released)
        return client_level_report(
            noise_multiplier=self.cfg.client_noise_multiplier,
            clipping_norm=self.cfg.client_clipping_norm,
            sampled=sampled_per_round(self.cfg, self.num_clients), population=self.num_clients,
            rounds=released, delta=self.cfg.delta, side=self.cfg.client_dp_side,
            server_optimizer=self.cfg.server_optimizer)


def round_fields(rlog: RoundLog) -> dict:
    """A round's ``metrics.jsonl`` fields from the strategy's log."""
    # A rejected reply's update is dropped, but its client spent the privacy all the same.
    eps = [float(r[EPSILON]) for r in rlog.replies + rlog.rejected_replies
           if isinstance(r.get(EPSILON), (int, float)) and not math.isnan(r[EPSILON])]
    fields = {
        file_key(TRAIN_LOSS): rlog.train_loss,
        "clients": rlog.clients,
        "sampled": rlog.sampled,
        "bytes_up": rlog.bytes_up,
        "bytes_down": rlog.bytes_down,
        file_key(EPSILON_MAX): max(eps) if eps and all(map(math.isfinite, eps)) else None,
        "failures": rlog.failures,
        "refused": [{NODE: r[NODE], file_key(PARTITION_ID): int(r[PARTITION_ID]),
                     "reason": r["reason"]} for r in rlog.refused],
        "rejected": rlog.rejected,
        **rlog.extra,
    }
    if rlog.client_eval is not None:
        fields["client_eval"] = rlog.client_eval
    return fields
