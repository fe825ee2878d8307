"""The LoRA rank this client trains at: its own under ``hetero-rank``, the run's otherwise."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedtune.config import ConfigError, RunConfig


def client_rank(cfg: RunConfig, node_config: Mapping[str, Any]) -> int:
    """Node config ``lora-r`` (a host that knows its memory budget) wins; else ``hetero-ranks``
    cycled over partition ids; else ``lora-r`` of the run.

    Only ``hetero-rank`` can aggregate different ranks; under the other strategies every client
    must match the global adapter, so the run's ``lora-r`` is used whatever the node says.
    """
    if cfg.aggregation != "hetero-rank":
        return cfg.lora_r
    if "lora-r" in node_config:
        raw = node_config["lora-r"]
        try:
            rank = int(raw)
            whole = float(raw) == rank
        except (TypeError, ValueError):
            rank, whole = 0, False
        if not whole or rank < 1:
            raise ConfigError(f"node config 'lora-r' = {raw!r} is invalid: must be an integer >= 1")
        return rank
    if cfg.rank_rule:
        pid = int(node_config.get("partition-id", 0))
        return cfg.rank_rule[pid % len(cfg.rank_rule)]
    return cfg.lora_r
