"""Client-level DP-FedAvg around any strategy, with Flower's fixed-clipping wrappers.

Flower's wrappers ship their own accountant, but it only accepts an unmodified ``FedAvg``; ours
(``privacy/client_level.py``) accounts the same Gaussian releases for any inner strategy.
DP-FedAvg's sensitivity bound needs uniform client weights, so under client-level DP the inner
strategy averages by the ``unit-weight`` every client sends (1), not by ``num-examples``.
"""

from __future__ import annotations

from flwr.app import Context, Message, MessageType
from flwr.clientapp.mod import fixedclipping_mod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from config import RunConfig

UNIT_WEIGHT = "unit-weight"


def sampled_per_round(cfg: RunConfig, num_clients: int) -> int:
    """What FedAvg samples: max(int(N * fraction-train), min-clients)."""
    return min(num_clients, max(int(num_clients * cfg.fraction_train), cfg.min_clients))


def wrap(strategy: Strategy, cfg: RunConfig, num_clients: int) -> Strategy:
    wrapper = (DifferentialPrivacyServerSideFixedClipping if cfg.client_dp_side == "server"
               else DifferentialPrivacyClientSideFixedClipping)
    return wrapper(strategy, noise_multiplier=cfg.client_noise_multiplier,
                   clipping_norm=cfg.client_clipping_norm,
                   num_sampled_clients=sampled_per_round(cfg, num_clients))


def client_clipping_mod(msg: Message, ctxt: Context, call_next):
    """Flower's ``fixedclipping_mod``, only when the server asked for client-side clipping.

    The plain mod fails every message that lacks a clipping norm (so every run without
    client-side DP), and it turns a privacy-budget refusal, which carries no arrays, into an error.
    """
    config = next(iter(msg.content.config_records.values()), {}) if msg.has_content() else {}
    if msg.metadata.message_type != MessageType.TRAIN or KEY_CLIPPING_NORM not in config:
        return call_next(msg, ctxt)
    seen: dict[str, Message] = {}

    def inner(m: Message, c: Context) -> Message:
        seen["reply"] = call_next(m, c)
        return seen["reply"]

    out = fixedclipping_mod(msg, ctxt, inner)
    reply = seen.get("reply")
    if reply is not None and not reply.has_error() and "refusal" in reply.content:
        return reply
    return out
