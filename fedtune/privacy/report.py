"""The privacy-budget report: what each client spent, and the federation's guarantee (the max).

Built from the training replies of every round (clients report their cumulative spend), so it is
rewritten after each round and is complete even if the run stops early. Every client's epsilon is
recomputed independently with Google's ``dp-accounting`` (PLD and RDP) as a cross-check of the
Opacus accountant that the client used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedtune.config import RunConfig
from fedtune.privacy.accounting import epsilon
from fedtune.privacy.calibration import batch_size_for, steps_per_round
from fedtune.privacy.crosscheck import crosscheck
from fedtune.protocol import (
    DATASET_SIZE,
    EPSILON,
    HISTORY,
    NODE,
    NOISE_MULTIPLIER,
    PARTITION_ID,
    PRIVACY_STATE,
    ROUNDS_TRAINED,
    SAMPLE_RATE,
    TOTAL_STEPS,
)

_REPLY_KEYS = (PARTITION_ID, DATASET_SIZE, NOISE_MULTIPLIER, SAMPLE_RATE, TOTAL_STEPS,
               ROUNDS_TRAINED, EPSILON)


NOISE_SECRET = (
    "secret (OS entropy): each client seeds its DP noise generator from OS entropy, apart from "
    "its seeded Poisson sampling; torch's generator is not a CSPRNG (Opacus secure_mode, which "
    "needs torchcsprng, is off)")
NOISE_REPRODUCIBLE = (
    "reproducible from seed (test/benchmark setting: anyone with the run folder can regenerate "
    "it)")


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _new_client(pid: int, n: int, dp: bool) -> dict[str, Any]:
    return {
        "partition_id": pid, "num_examples": n, "noise_multiplier": None, "sample_rate": None,
        "steps": 0, "rounds_trained": 0, "epsilon": 0.0 if dp else None,
        "epsilon_per_round": [], "refused_rounds": [], "refusal_reasons": [], "history": None,
    }


@dataclass
class _Last:
    """A client's latest trustworthy reply: the round, and whether it can still spend."""

    round: int
    history: list | None
    can_spend: bool  # False after a refusal: the same history refuses every later round


def build_report(cfg: RunConfig, partitions: list[dict], rounds: dict[int, Any],
                 client_level: dict[str, Any] | None = None,
                 crosscheck_now: bool = True,
                 node_ids: Mapping[int, int] | None = None) -> dict[str, Any]:
    """Latest cumulative spend per client from the training replies of every round so far, and an
    upper bound that counts every round a client was sent but never confirmed.

    Clients report their cumulative epsilon; the latest reply of a client is its total. Clients
    never sampled spent nothing and are listed with ``rounds_trained = 0``. Replies the server
    rejected count too: their update was dropped after the client had spent the privacy; so do
    refusals, which report the spend so far. ``crosscheck_now=False`` skips the dp-accounting
    check (about a second per client), as the server does after every round but the last.

    A client that was sent a round's adapter may have spent that round even if its reply never
    arrived (timeout, crash, error), could not be read, or was never logged. Such rounds after a
    client's latest trustworthy reply are its ``unconfirmed_rounds``; ``epsilon_upper_bound`` adds
    one round of its own steps at its own sigma and q per unconfirmed round to the accountant
    history it last reported (nothing after a refusal: the same history refuses again), or is the
    target epsilon, the budget every client enforces, for a client that never reported one. A
    node the server cannot map to a partition (``node_ids``, or an earlier reply) is listed under
    ``unattributed`` with that budget. ``max_epsilon`` is the max over these upper bounds;
    ``max_epsilon_reported`` the max over what the clients reported.
    """
    clients: dict[int, dict[str, Any]] = {
        p["partition_id"]: _new_client(p["partition_id"], p["num_examples"], cfg.dp_enabled)
        for p in partitions
    }
    pid_of: dict[int, int] = dict(node_ids or {})
    last: dict[int, _Last] = {}
    unheard: dict[int, list[int]] = {}  # node -> rounds it was sent without a trustworthy reply
    for server_round in sorted(rounds):
        log = rounds[server_round]
        confirmed: set[int] = set()
        for reply in [*log.replies, *log.rejected_replies, *log.refused]:
            if NODE in reply and PARTITION_ID in reply:
                pid_of.setdefault(int(reply[NODE]), int(reply[PARTITION_ID]))
            if not all(k in reply for k in _REPLY_KEYS):
                continue  # a malformed (rejected) reply: nothing trustworthy to report
            pid = int(reply[PARTITION_ID])
            if NODE in reply:
                confirmed.add(int(reply[NODE]))
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
            refused = "reason" in reply or bool((reply.get(PRIVACY_STATE) or {}).get("exhausted"))
            last[pid] = _Last(server_round, reply.get(HISTORY), not refused)
        for node in getattr(log, "sent", []):
            if int(node) not in confirmed:
                unheard.setdefault(int(node), []).append(server_round)
        for reply in log.refused:
            c = clients[int(reply[PARTITION_ID])]
            c["refused_rounds"].append(server_round)
            c["refusal_reasons"].append(reply["reason"])
        for c in clients.values():  # cumulative: a round a client sat out carries its spend
            c["epsilon_per_round"].append(c["epsilon"])
    pending: dict[int, set[int]] = {}
    unattributed = []
    for node, node_rounds in sorted(unheard.items()):
        pid = pid_of.get(node)
        if pid is None:
            unattributed.append({"node": node, "unconfirmed_rounds": node_rounds,
                                 "epsilon_upper_bound": cfg.target_epsilon
                                 if cfg.dp_enabled else None})
            continue
        after = last[pid].round if pid in last else 0
        pending.setdefault(pid, set()).update(r for r in node_rounds if r > after)
    rows = [clients[k] for k in sorted(clients)]
    for c in rows:
        history = c.pop("history", None)
        pid = c["partition_id"]
        c["unconfirmed_rounds"] = sorted(pending.get(pid, ()))
        c["epsilon_upper_bound"] = _upper_bound(cfg, c, last.get(pid), len(c["unconfirmed_rounds"]))
        if cfg.dp_enabled:
            c["crosscheck"] = crosscheck(history, cfg.delta) if history and crosscheck_now \
                else None
    eps = [c["epsilon"] for c in rows if c["epsilon"] is not None]
    bounds = [x["epsilon_upper_bound"] for x in [*rows, *unattributed]
              if x["epsilon_upper_bound"] is not None]
    report = {
        "dp": cfg.dp,
        "target_epsilon": cfg.target_epsilon,
        "delta": cfg.delta,
        "accountant": cfg.accountant,
        "max_grad_norm": cfg.max_grad_norm,
        "reproducible_noise": cfg.reproducible_noise,
        "noise": NOISE_REPRODUCIBLE if cfg.reproducible_noise else NOISE_SECRET,
        "max_epsilon": (max(bounds) if bounds else 0.0) if cfg.dp_enabled else None,
        "max_epsilon_reported": (max(eps) if eps else 0.0) if cfg.dp_enabled else None,
        "rounds": max(rounds) if rounds else 0,
        "clients": rows,
        "unattributed": unattributed,
    }
    if client_level is not None:
        report["client_level"] = client_level
    if cfg.secure_aggregation != "off":
        report["secure_aggregation"] = _secure_aggregation(cfg, rounds)
    return report


def _secure_aggregation(cfg: RunConfig, rounds: dict[int, Any]) -> dict[str, Any]:
    """What the server saw of the updates: only their weighted sum, with the protocol's
    settings, the quantisation error bound (the largest of the rounds) and the values the
    clipping range cut (summed over clients and rounds; each client counts its own)."""
    logs = [getattr(rounds[r], "extra", {}).get("secure_aggregation") for r in sorted(rounds)]
    logs = [x for x in logs if x]
    out: dict[str, Any] = {"protocol": cfg.secure_aggregation, "rounds": len(logs)}
    if logs:
        out.update({k: v for k, v in logs[-1].items()
                    if k not in ("clients", "masked_values", "clipped_values",
                                 "quantization_error_bound")})
        out["quantization_error_bound"] = max(x["quantization_error_bound"] for x in logs)
        out["masked_values"] = sum(int(x["masked_values"]) for x in logs)
        out["clipped_values"] = sum(int(x["clipped_values"]) for x in logs)
    return out


def _upper_bound(cfg: RunConfig, c: dict[str, Any], last: _Last | None,
                 unconfirmed: int) -> float | None:
    """The client's epsilon if every round it was sent but never confirmed was spent."""
    if not cfg.dp_enabled:
        return None
    reported = c["epsilon"]
    if not unconfirmed:
        return reported
    if last is None or last.history is None:  # never reported a spend: the budget it enforces
        return max(cfg.target_epsilon, reported or 0.0)
    sigma, q = c["noise_multiplier"], c["sample_rate"]
    if not last.can_spend or reported is None or not sigma or not q:
        return reported  # refused (and would again), or no finite spend to add to
    steps = steps_per_round(c["num_examples"], batch_size_for(cfg, c["num_examples"]),
                            cfg.local_epochs)
    history = [*map(tuple, last.history), *[(sigma, q, steps)] * unconfirmed]
    return max(reported, epsilon(history, cfg.delta, cfg.accountant))
