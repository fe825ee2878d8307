"""The privacy-budget report: what each client spent, and the federation's guarantee (the max).

Built from the training replies of every round (clients report their cumulative spend), so it is
rewritten after each round and is complete even if the run stops early. Every client's epsilon is
recomputed independently with Google's ``dp-accounting`` (PLD and RDP) as a cross-check of the
Opacus accountant that the client used.
"""

from __future__ import annotations

import math
from typing import Any

from fedtune.config import RunConfig
from fedtune.privacy.crosscheck import crosscheck
from fedtune.protocol import (
    DATASET_SIZE,
    EPSILON,
    HISTORY,
    NOISE_MULTIPLIER,
    PARTITION_ID,
    ROUNDS_TRAINED,
    SAMPLE_RATE,
    TOTAL_STEPS,
)

_REPLY_KEYS = (PARTITION_ID, DATASET_SIZE, NOISE_MULTIPLIER, SAMPLE_RATE, TOTAL_STEPS,
               ROUNDS_TRAINED, EPSILON)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _new_client(pid: int, n: int, dp: bool) -> dict[str, Any]:
    return {
        "partition_id": pid, "num_examples": n, "noise_multiplier": None, "sample_rate": None,
        "steps": 0, "rounds_trained": 0, "epsilon": 0.0 if dp else None,
        "epsilon_per_round": [], "refused_rounds": [], "refusal_reasons": [], "history": None,
    }


def build_report(cfg: RunConfig, partitions: list[dict], rounds: dict[int, Any],
                 client_level: dict[str, Any] | None = None,
                 crosscheck_now: bool = True) -> dict[str, Any]:
    """Latest cumulative spend per client from the training replies of every round so far.

    Clients report their cumulative epsilon; the latest reply of a client is its total. Clients
    never sampled spent nothing and are listed with ``rounds_trained = 0``. Replies the server
    rejected count too: their update was dropped after the client had spent the privacy; so do
    refusals, which report the spend so far. ``crosscheck_now=False`` skips the dp-accounting
    check (about a second per client), as the server does after every round but the last.
    """
    clients: dict[int, dict[str, Any]] = {
        p["partition_id"]: _new_client(p["partition_id"], p["num_examples"], cfg.dp_enabled)
        for p in partitions
    }
    for server_round in sorted(rounds):
        log = rounds[server_round]
        for reply in [*log.replies, *log.rejected_replies, *log.refused]:
            if not all(k in reply for k in _REPLY_KEYS):
                continue  # a malformed (rejected) reply: nothing trustworthy to report
            pid = int(reply[PARTITION_ID])
            c = clients.setdefault(pid, _new_client(pid, int(reply[DATASET_SIZE]),
                                                    cfg.dp_enabled))
            c.update({
                "num_examples": int(reply[DATASET_SIZE]),
                "noise_multiplier": _finite(reply[NOISE_MULTIPLIER]) if cfg.dp_enabled else None,
                "sample_rate": float(reply[SAMPLE_RATE]),
                "steps": int(reply[TOTAL_STEPS]),
                "rounds_trained": int(reply[ROUNDS_TRAINED]),
                "epsilon": _finite(reply[EPSILON]),
                "history": reply.get(HISTORY),
            })
        for reply in log.refused:
            c = clients[int(reply[PARTITION_ID])]
            c["refused_rounds"].append(server_round)
            c["refusal_reasons"].append(reply["reason"])
        for c in clients.values():  # cumulative: a round a client sat out carries its spend
            c["epsilon_per_round"].append(c["epsilon"])
    rows = [clients[k] for k in sorted(clients)]
    for c in rows:
        history = c.pop("history", None)
        if cfg.dp_enabled:
            c["crosscheck"] = crosscheck(history, cfg.delta) if history and crosscheck_now \
                else None
    eps = [c["epsilon"] for c in rows if c["epsilon"] is not None]
    report = {
        "dp": cfg.dp,
        "target_epsilon": cfg.target_epsilon,
        "delta": cfg.delta,
        "accountant": cfg.accountant,
        "max_grad_norm": cfg.max_grad_norm,
        "max_epsilon": (max(eps) if eps else 0.0) if cfg.dp_enabled else None,
        "rounds": max(rounds) if rounds else 0,
        "clients": rows,
    }
    if client_level is not None:
        report["client_level"] = client_level
    return report
