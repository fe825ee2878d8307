"""Clients that bring their own data (``client-data = local``): numbered by node, sized by replies.

On real hosts the server never sees a client's rows, so it cannot partition anything. It numbers
the clients 0..N-1 by node id (the privacy report and ``refused`` need a small, stable number per
client; node-config ``partition-id`` is only a label a host may or may not set) and learns each
client's size from its training replies, which already carry it. No label histogram is asked
for: that would leak more about a client's data than training needs.
"""

from __future__ import annotations

import dataclasses

from fedtune.outputs.run_folder import RunFolder
from fedtune.protocol import DATASET_SIZE, NODE, PARTITION_ID
from strategies.round_log import RoundLog


class LocalClients:
    def __init__(self, node_ids: list[int], run: RunFolder, labels: tuple[str, ...], source: str):
        self.number = {node: i for i, node in enumerate(sorted(node_ids))}
        self.run, self.labels, self.source = run, labels, source
        self.partitions = [self._row(node) for node in sorted(node_ids)]

    def _row(self, node: int) -> dict:
        return {"partition_id": self.number[node], "node_id": node, "num_examples": 0,
                "label_counts": None}

    def write(self) -> None:
        self.run.write_partitions(self.partitions, self.labels, self.source)

    def observe(self, rlog: RoundLog) -> RoundLog:
        """The round's log with every reply numbered by its node (the strategy's own log is left
        as it is), recording the sizes the clients sent."""
        changed = False

        def numbered(reply: dict) -> dict:
            nonlocal changed
            node = reply.get(NODE)
            if node is None:
                return reply
            if node not in self.number:  # joined after the start
                self.number[node] = len(self.number)
                self.partitions.append(self._row(node))
            pid = self.number[node]
            size = reply.get(DATASET_SIZE)
            if isinstance(size, (int, float)) and self.partitions[pid]["num_examples"] != size:
                self.partitions[pid]["num_examples"] = int(size)
                changed = True
            return {**reply, PARTITION_ID: pid}

        out = dataclasses.replace(
            rlog, replies=[numbered(r) for r in rlog.replies],
            rejected_replies=[numbered(r) for r in rlog.rejected_replies],
            refused=[numbered(r) for r in rlog.refused])
        if changed:
            self.write()
        return out
