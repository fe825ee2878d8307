"""Strategies by name (run-config key ``aggregation``), wrapped for client-level DP on request."""

from __future__ import annotations

from flwr.serverapp.strategy import Strategy

from config import RunConfig
from strategies import client_dp
from strategies.fedavg import LoraFedAvg


def build_strategy(cfg: RunConfig, num_clients: int) -> Strategy:
    common = dict(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_clients,
        min_evaluate_nodes=cfg.min_clients if cfg.fraction_evaluate > 0 else 0,
        min_available_nodes=cfg.min_clients,
        min_replies=cfg.min_clients,
    )
    if cfg.client_dp_enabled:
        common["weighted_by_key"] = client_dp.UNIT_WEIGHT
    strategies = {"fedavg": LoraFedAvg}
    strategy = strategies[cfg.aggregation](**common)
    return client_dp.wrap(strategy, cfg, num_clients) if cfg.client_dp_enabled else strategy


def innermost(strategy: Strategy) -> Strategy:
    """The aggregation strategy inside any wrappers (it keeps the per-round logs)."""
    while hasattr(strategy, "strategy"):
        strategy = strategy.strategy
    return strategy
