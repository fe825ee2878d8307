"""Client-level DP-FedAvg around any strategy, with Flower's fixed-clipping wrappers.

Flower's wrappers ship their own accountant, but it only accepts an unmodified ``FedAvg``; ours
(``privacy/client_level.py``) accounts the same Gaussian releases for any inner strategy.
DP-FedAvg's sensitivity bound needs uniform client weights, so under client-level DP the inner
strategy averages by the ``unit-weight`` every client sends (1), not by ``num-examples``.
"""

from __future__ import annotations

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from fedtune.config import RunConfig
from fedtune.protocol import UNIT_WEIGHT  # noqa: F401 - the weight key the wrappers need


def sampled_per_round(cfg: RunConfig, num_clients: int) -> int:
    """What FedAvg samples: max(int(N * fraction-train), min-clients)."""
    return min(num_clients, max(int(num_clients * cfg.fraction_train), cfg.min_clients))


def wrap(strategy: Strategy, cfg: RunConfig, num_clients: int) -> Strategy:
    wrapper = (DifferentialPrivacyServerSideFixedClipping if cfg.client_dp_side == "server"
               else DifferentialPrivacyClientSideFixedClipping)
    return wrapper(strategy, noise_multiplier=cfg.client_noise_multiplier,
                   clipping_norm=cfg.client_clipping_norm,
                   num_sampled_clients=sampled_per_round(cfg, num_clients))
