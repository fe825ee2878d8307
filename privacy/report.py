"""The privacy-budget report: what each client spent, and the federation's guarantee (the max)."""

from __future__ import annotations

import math
from typing import Any

from config import RunConfig

_REPLY_KEYS = ("partition-id", "num-examples", "noise-multiplier", "sample-rate", "total-steps",
               "rounds-trained", "epsilon")


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def build_report(cfg: RunConfig, partitions: list[dict],
                 rounds: dict[int, Any]) -> dict[str, Any]:
    """Latest cumulative spend per client from the training replies of every round so far.

    Clients report their cumulative epsilon; the latest reply of a client is its total. Clients
    never sampled spent nothing and are listed with ``rounds_trained = 0``. Replies the server
    rejected count too: their update was dropped after the client had spent the privacy.
    """
    clients: dict[int, dict[str, Any]] = {
        p["partition_id"]: {
            "partition_id": p["partition_id"], "num_examples": p["num_examples"],
            "noise_multiplier": None, "sample_rate": None, "steps": 0, "rounds_trained": 0,
            "epsilon": 0.0 if cfg.dp_enabled else None,
        }
        for p in partitions
    }
    for server_round in sorted(rounds):
        rlog = rounds[server_round]
        for reply in rlog.replies + rlog.rejected_replies:
            if not all(k in reply for k in _REPLY_KEYS):
                continue  # a malformed (rejected) reply: nothing trustworthy to report
            pid = int(reply["partition-id"])
            clients[pid] = {
                "partition_id": pid,
                "num_examples": int(reply["num-examples"]),
                "noise_multiplier": _finite(reply["noise-multiplier"]),
                "sample_rate": float(reply["sample-rate"]),
                "steps": int(reply["total-steps"]),
                "rounds_trained": int(reply["rounds-trained"]),
                "epsilon": _finite(reply["epsilon"]),
            }
    rows = [clients[k] for k in sorted(clients)]
    eps = [c["epsilon"] for c in rows if c["epsilon"] is not None]
    return {
        "dp": cfg.dp,
        "target_epsilon": cfg.target_epsilon,
        "delta": cfg.delta,
        "accountant": cfg.accountant,
        "max_grad_norm": cfg.max_grad_norm,
        "max_epsilon": (max(eps) if eps else 0.0) if cfg.dp_enabled else None,
        "clients": rows,
    }
