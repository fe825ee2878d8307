"""What a checkpoint holds beyond the PEFT adapter, and how a run continues from one.

Continuing exactly needs more than the adapter: the strategy's own state (server-optimiser
moments, hetero-rank's full delta-W), the round logs (the metrics and the privacy report are built
from them), Python's ``random`` state (Flower samples clients with it) and every client's privacy
state. Clients keep theirs in ``context.state``, which a new ``flwr run`` does not have, so the
server hands each client its last reported state back (``resume-privacy``), under the key the
client sent with it. The client treats it as a claim: with an on-disk ledger the ledger decides
(a replayed round is free only if its inputs hash the same), without one the claim may raise its
count, never lower it.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from logging import WARNING
from pathlib import Path

import numpy as np
from flwr.supercore import log

from fedtune.config import ConfigError, RunConfig
from fedtune.outputs.checkpoint import (
    damage,
    missing_server_state,
    read_server_state,
    write_server_state,
)
from fedtune.outputs.run_folder import RunFolder
from fedtune.protocol import CLIENT_KEY, PARTITION_ID, PRIVACY_STATE
from strategies.round_log import RoundLog

# Settings a resumed run may change; every other one must match the run's config.json.
MAY_CHANGE = {"resume", "num-server-rounds", "round-timeout", "min-clients", "output-dir",
              "eval-batch-size", "client-threads", "fraction-evaluate",
              "client-evaluate"}


def state_writer(server_round: int, arrays: dict[str, np.ndarray],
                 strategy_state: dict[str, np.ndarray], rounds: dict[int, RoundLog]):
    """The ``server_state`` callback for :meth:`RunFolder.save_adapter`."""

    def write(folder: Path) -> None:
        write_server_state(folder, server_round, arrays, strategy_state,
                           {str(r): dataclasses.asdict(x) for r, x in rounds.items()
                            if r <= server_round}, random.getstate())

    return write


@dataclass
class ResumePoint:
    round: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # empty: start from the model
    strategy_state: dict[str, np.ndarray] = field(default_factory=dict)
    rounds: dict[int, RoundLog] = field(default_factory=dict)
    random_state: tuple | None = None
    skipped: list[dict] = field(default_factory=list)  # damaged checkpoints: round + reason

    def client_states(self) -> dict[str, dict]:
        """client key -> the privacy state that client last reported (a refusal included).

        The key is the one the client sent with its state (``client-key``: its partition in a
        simulation, its node or node-config ``client-id`` on a real host, where the server's
        own numbering means nothing to the client); the partition id for older checkpoints."""
        out: dict[str, dict] = {}
        for r in sorted(self.rounds):
            log_ = self.rounds[r]
            for reply in log_.replies + log_.rejected_replies + log_.refused:
                state = reply.get(PRIVACY_STATE)
                if not state:
                    continue
                key = str(state.get(CLIENT_KEY) or "")
                if not key and PARTITION_ID in reply:
                    key = str(int(reply[PARTITION_ID]))
                if key:
                    out[key] = state
        return out

    def describe(self) -> dict:
        return {"from_round": self.round, "damaged_checkpoints": self.skipped}


def check_settings(run: RunFolder, cfg: RunConfig, num_clients: int) -> dict:
    """The stored config.json, after checking the resumed run changes nothing it must not."""
    stored = json.loads(run.config_path.read_text())
    for key, value in cfg.to_dict().items():
        if key in MAY_CHANGE or key not in stored or stored[key] == value:
            continue
        raise ConfigError(
            f"run-config key '{key}' = {value!r} differs from the run being resumed "
            f"({stored[key]!r} in {run.config_path}); a resumed run must keep it: set it back, "
            "or start a new run without resume")
    if int(stored.get("num-clients", num_clients)) != num_clients:
        raise ConfigError(
            f"resume: the run had {stored['num-clients']} clients and this federation has "
            f"{num_clients}; partitions (and privacy budgets) follow the client count, so "
            "resume with the same number of clients (num-supernodes)")
    return stored


def load_resume_point(run: RunFolder) -> ResumePoint:
    """The newest intact checkpoint; damaged ones are reported and skipped."""
    skipped = []
    for server_round, folder in run.checkpoints():
        reason = damage(folder) or missing_server_state(folder)
        if reason:
            log(WARNING, "resume: checkpoint round %s is damaged (%s); trying the one before",
                server_round, reason)
            skipped.append({"round": server_round, "reason": reason})
            continue
        state = read_server_state(folder)
        return ResumePoint(
            round=state["round"], arrays=state["arrays"], strategy_state=state["strategy_state"],
            rounds={r: RoundLog(**x) for r, x in state["rounds"].items()},
            random_state=state["random_state"], skipped=skipped)
    return ResumePoint(round=0, skipped=skipped)
