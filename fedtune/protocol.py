"""The message schema between ServerApp and ClientApp: record and metric keys."""

from __future__ import annotations

# DP-FedAvg's sensitivity bound needs uniform client weights: under client-level DP every client
# sends this weight (1; 0 for a refusal) and the strategy averages by it, not by num-examples.
UNIT_WEIGHT = "unit-weight"
