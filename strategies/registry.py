"""Strategies by name (run-config key ``aggregation``), each with the run's server optimiser,
wrapped for client-level DP on request."""

from __future__ import annotations

from flwr.serverapp.strategy import Strategy

from fedtune.config import RunConfig
from fedtune.privacy.audit.client_canaries import ClientCanaries
from fedtune.protocol import weight_key
from strategies import client_dp
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


def build_strategy(cfg: RunConfig, num_clients: int) -> Strategy:
    common = dict(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_clients,
        min_evaluate_nodes=cfg.min_clients if cfg.fraction_evaluate > 0 else 0,
        min_available_nodes=cfg.min_clients,
        min_replies=cfg.min_clients,
        server_optimizer=build_server_optimizer(cfg),
        max_update_norm=cfg.max_update_norm,
        weighted_by_key=weight_key(cfg),
        client_selection=cfg.client_selection,
    )
    if cfg.aggregation == "hetero-rank":
        common.update(lora_alpha=cfg.lora_alpha, global_rank=cfg.lora_r, seed=cfg.seed)
    strategy = STRATEGIES[cfg.aggregation](**common)
    if cfg.audit_canary_clients:
        rate = client_dp.sampled_per_round(cfg, num_clients) / num_clients
        strategy.client_canaries = ClientCanaries(cfg.audit_canary_clients, cfg.seed, rate,
                                                  cfg.client_clipping_norm)
    return client_dp.wrap(strategy, cfg, num_clients) if cfg.client_dp_enabled else strategy


def innermost(strategy: Strategy) -> Strategy:
    """The aggregation strategy inside any wrappers (it keeps the per-round logs)."""
    while hasattr(strategy, "strategy"):
        strategy = strategy.strategy
    return strategy
