"""What the server does after every round: evaluate centrally, checkpoint, log, report privacy.

It is the ``evaluate_fn`` of ``Strategy.start``, which Flower calls at round 0 and after every
round, with the new global adapter: the natural point at which everything about a round is known.
"""

from __future__ import annotations

import math
import time
from logging import INFO

from flwr.app import ArrayRecord, MetricRecord
from flwr.supercore import log

from fedtune.config import RunConfig
from fedtune.console import round_line
from fedtune.model.adapter import from_arrays, load_adapter_state
from fedtune.outputs.run_folder import RunFolder
from fedtune.privacy.client_level import client_level_report
from fedtune.privacy.report import build_report
from fedtune.tasks.registry import task_for
from server.local_clients import LocalClients
from server.resume import state_writer
from strategies.base import from_record
from strategies.client_dp import sampled_per_round
from strategies.round_log import RoundLog


class RoundEnd:
    def __init__(self, cfg: RunConfig, run: RunFolder, model, eval_set,
                 pad_token_id: int, num_labels: int, strategy, partitions: list[dict],
                 num_clients: int, latest: ArrayRecord, resumed: dict | None = None,
                 local: LocalClients | None = None):
        self.cfg, self.run, self.model = cfg, run, model
        self.eval_set, self.pad_token_id, self.num_labels = eval_set, pad_token_id, num_labels
        self.strategy, self.partitions, self.num_clients = strategy, partitions, num_clients
        self.rounds: dict[int, RoundLog] = strategy.rounds
        self.latest = latest  # Flower's Result.arrays stays empty if no round released one
        self.resumed = resumed  # written into the first line after a resume
        self.completed = resumed["from_round"] if resumed else -1  # last round written
        self.local = local  # clients with their own data: numbered by node, sized by replies
        self.started = self.last = time.monotonic()

    def _client_level(self, server_round: int) -> dict | None:
        if not self.cfg.client_dp_enabled:
            return None
        released = sum(1 for r, log_ in self.rounds.items() if r <= server_round and log_.released)
        return client_level_report(
            noise_multiplier=self.cfg.client_noise_multiplier,
            clipping_norm=self.cfg.client_clipping_norm,
            sampled=sampled_per_round(self.cfg, self.num_clients), population=self.num_clients,
            rounds=released, delta=self.cfg.delta, side=self.cfg.client_dp_side)

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        load_adapter_state(self.model, from_arrays(arrays))
        self.latest = arrays
        metrics = task_for(self.cfg).evaluate(self.cfg, self.model, self.eval_set,
                                              self.pad_token_id, self.num_labels)
        line: dict = {"round": server_round, **metrics}
        if server_round > 0:
            rlog = self.rounds.get(server_round, RoundLog())
            if self.local is not None:
                self.local.observe(rlog)
            # A rejected reply's update is dropped, but its client spent the privacy all the same.
            eps = [float(r["epsilon"]) for r in rlog.replies + rlog.rejected_replies
                   if isinstance(r.get("epsilon"), (int, float)) and not math.isnan(r["epsilon"])]
            line.update({
                "train_loss": rlog.train_loss,
                "clients": rlog.clients,
                "sampled": rlog.sampled,
                "bytes_up": rlog.bytes_up,
                "bytes_down": rlog.bytes_down,
                "epsilon_max": max(eps) if eps and all(map(math.isfinite, eps)) else None,
                "failures": rlog.failures,
                "refused": [{"node": r["node"], "partition_id": int(r["partition-id"]),
                             "reason": r["reason"]} for r in rlog.refused],
                "rejected": rlog.rejected,
                **rlog.extra,
            })
            if rlog.client_eval is not None:
                line["client_eval"] = rlog.client_eval
            self.run.write_privacy_report(build_report(
                self.cfg, self.partitions, self.rounds, self._client_level(server_round),
                crosscheck_now=server_round == self.cfg.num_server_rounds))
        if self.resumed is not None:
            line["resumed"], self.resumed = self.resumed, None
        now = time.monotonic()
        line["wall_s"] = round(now - self.last, 3)
        line["elapsed_s"] = round(now - self.started, 3)
        self.last = now
        self.run.append_metrics(line)
        if server_round > 0:  # last: the checkpoint commits the round (resume starts after it)
            self.run.save_adapter(
                self.model, self.run.checkpoint_dir(server_round),
                server_state=state_writer(server_round, from_record(arrays),
                                          self.strategy.state_arrays(), self.rounds),
                meta={"round": server_round})
        self.completed = server_round
        log(INFO, "%s", round_line(line, self.cfg.num_server_rounds))
        return MetricRecord({k: float(v) for k, v in metrics.items()})
