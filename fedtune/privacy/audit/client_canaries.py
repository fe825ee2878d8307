"""Canary clients for the client-level audit (Andrew et al. 2024): each pushes one fixed random
unit direction, large enough that DP-FedAvg's clipping always cuts it to norm C.

Directions and participation follow from the run's ``seed``: the server (which aggregates, clips
and noises under client-level DP, so already sees every update) inserts them, and the audit
recomputes them. Canary j < k is inserted; canary k + j, never inserted, is the empirical null.
Each canary joins a round with the real clients' sampling rate, so the mechanism the audit
measures is the one the accountant describes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

OVERSHOOT = 10.0  # a canary's norm before clipping, in clipping norms


def direction(keys_shapes: Mapping[str, tuple[int, ...]], seed: int, j: int) -> dict:
    """Canary ``j``'s unit direction over the adapter's tensors (float64, sorted keys)."""
    rng = np.random.default_rng([seed, j, 0xC1A])
    parts = {k: rng.standard_normal(keys_shapes[k]) for k in sorted(keys_shapes)}
    norm = math.sqrt(sum(float(np.sum(v * v)) for v in parts.values()))
    return {k: v / norm for k, v in parts.items()}


def participates(seed: int, server_round: int, k: int, rate: float) -> np.ndarray:
    """Which of the ``k`` canaries join ``server_round`` (each with probability ``rate``)."""
    return np.random.default_rng([seed, server_round, 0xC1B]).random(k) < rate


class ClientCanaries:
    """What the strategy adds to a round's clipped sum under ``audit-canary-clients``."""

    def __init__(self, count: int, seed: int, rate: float, clipping_norm: float):
        self.count, self.seed, self.rate, self.clipping_norm = count, seed, rate, clipping_norm

    def updates(self, server_round: int, reference: Mapping[str, np.ndarray]) -> list[dict]:
        """The replies of the canaries joining this round: ``reference + 10 C u_j``."""
        shapes = {k: np.shape(v) for k, v in reference.items()}
        out = []
        for j in np.flatnonzero(participates(self.seed, server_round, self.count, self.rate)):
            u = direction(shapes, self.seed, int(j))
            out.append({k: np.asarray(reference[k], np.float64)
                        + OVERSHOOT * self.clipping_norm * u[k] for k in reference})
        return out


def cosines(delta: Mapping[str, np.ndarray], seed: int, count: int) -> tuple[list, list]:
    """Cosines of the final model delta with the ``count`` inserted directions and the ``count``
    never-inserted ones."""
    shapes = {k: np.shape(v) for k, v in delta.items()}
    norm = math.sqrt(sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in delta.values()))
    norm = norm or 1.0

    def cos(j: int) -> float:
        u = direction(shapes, seed, j)
        return sum(float(np.sum(np.asarray(delta[k], np.float64) * u[k])) for k in u) / norm

    return [cos(j) for j in range(count)], [cos(count + j) for j in range(count)]
