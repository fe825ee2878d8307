"""Strategies by name (run-config key ``aggregation``), each with the run's server optimiser."""

from __future__ import annotations

from config import RunConfig
from strategies.base import LoraStrategy
from strategies.fedavg import LoraFedAvg
from strategies.ffa import FfaLora
from strategies.hetero_rank import HeteroRankLora
from strategies.server_optimizers import build_server_optimizer

STRATEGIES: dict[str, type[LoraStrategy]] = {
    "fedavg": LoraFedAvg,
    "ffa": FfaLora,
    "hetero-rank": HeteroRankLora,
}


def build_strategy(cfg: RunConfig) -> LoraStrategy:
    common = dict(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_clients,
        min_evaluate_nodes=cfg.min_clients if cfg.fraction_evaluate > 0 else 0,
        min_available_nodes=cfg.min_clients,
        min_replies=cfg.min_clients,
        server_optimizer=build_server_optimizer(cfg),
        max_update_norm=cfg.max_update_norm,
    )
    if cfg.aggregation == "hetero-rank":
        common.update(lora_alpha=cfg.lora_alpha, global_rank=cfg.lora_r, seed=cfg.seed)
    return STRATEGIES[cfg.aggregation](**common)
