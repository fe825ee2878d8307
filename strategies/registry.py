"""Strategies by name (run-config key ``aggregation``)."""

from __future__ import annotations

from config import RunConfig
from strategies.fedavg import LoraFedAvg


def build_strategy(cfg: RunConfig) -> LoraFedAvg:
    common = dict(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_clients,
        min_evaluate_nodes=cfg.min_clients if cfg.fraction_evaluate > 0 else 0,
        min_available_nodes=cfg.min_clients,
        min_replies=cfg.min_clients,
    )
    strategies = {"fedavg": LoraFedAvg}
    return strategies[cfg.aggregation](**common)
