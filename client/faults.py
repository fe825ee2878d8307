"""Deliberate client faults, to test (and demonstrate) what a run does when clients fail.

Off unless the run config sets ``fault-injection = "<partition>:<round>:<mode>[, ...]"``
(validated with the other settings; ``*`` as the round means every round): ``raise`` (the
ClientApp throws), ``garbage`` (the reply's tensors are NaN), ``hang`` (no reply until
``round-timeout`` has passed) or ``no-noise`` (DP-SGD without its noise while the accounting goes on
as if it were there: the broken-DP client the privacy audit must catch; applied by the trainer).
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType

from fedtune.config import from_run_config
from fedtune.protocol import CONFIG, SERVER_ROUND


class InjectedFault(RuntimeError):
    """Raised on purpose by ``fault-injection``."""


def planned_fault(spec: str, partition_id: int, server_round: int) -> str | None:
    for item in filter(None, (x.strip() for x in spec.split(","))):
        pid, rnd, mode = item.split(":")
        if int(pid) == partition_id and (rnd == "*" or int(rnd) == server_round):
            return mode
    return None


def fault_mod(msg: Message, ctxt: Context, call_next):
    if not ctxt.run_config.get("fault-injection") or msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    cfg = from_run_config(ctxt.run_config)
    pid = int(ctxt.node_config.get("partition-id", -1))
    server_round = int(msg.content[CONFIG][SERVER_ROUND])
    mode = planned_fault(cfg.fault_injection, pid, server_round)
    if mode == "raise":
        raise InjectedFault(f"injected fault: client {pid} raised in round {server_round}")
    if mode == "hang":
        time.sleep(cfg.round_timeout + 5.0)
    reply = call_next(msg, ctxt)
    if mode == "garbage" and not reply.has_error():
        for name, record in list(reply.content.array_records.items()):
            reply.content[name] = ArrayRecord({
                k: Array(np.full(v.shape, np.nan, dtype=np.float32)) for k, v in record.items()})
    return reply
