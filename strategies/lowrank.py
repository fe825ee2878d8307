"""LoRA factors <-> the weight update they stand for, for aggregating adapters of mixed rank.

A LoRA module of rank r adds delta-W = (alpha / r) · B · A to its frozen weight (PEFT's scaling,
without rsLoRA). Means of delta-W are exact whatever the ranks; going back to rank r keeps the best
rank-r approximation (Eckart-Young: truncated SVD).
"""

from __future__ import annotations

import zlib

import numpy as np


def lora_scaling(lora_alpha: float, rank: int) -> float:
    return float(lora_alpha) / rank


def lora_delta(b: np.ndarray, a: np.ndarray, scaling: float) -> np.ndarray:
    """delta-W = scaling · B · A, in float64 so that averaging adds no rounding of its own."""
    return scaling * (np.asarray(b, dtype=np.float64) @ np.asarray(a, dtype=np.float64))


def _fill_rows(count: int, width: int, against: np.ndarray, seed: int, name: str) -> np.ndarray:
    """``count`` unit rows, orthogonal to ``against`` (and each other) where the width allows,
    drawn from (seed, name) so that every round and every client of a rank gets the same ones."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    rows = rng.standard_normal((count, width))
    if len(against):
        rows -= (rows @ against.T) @ against
    if count + len(against) <= width:
        q, _ = np.linalg.qr(rows.T)
        return q.T[:count]
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def factorise(delta: np.ndarray, rank: int, scaling: float, *, seed: int = 0,
              name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(B, A) of rank ``rank`` with scaling · B · A = the best rank-``rank`` approximation of
    ``delta`` (exactly ``delta`` when its rank allows).

    The split is B = U·S / scaling, A = V^T: A keeps orthonormal rows, so B's gradient does not
    vanish when delta-W is small, as with PEFT's own init (B = 0, A random). Directions with no
    singular value (delta-W = 0 before the first round, or rank above delta-W's) get seeded random
    A rows orthogonal to the others and zero B columns: B·A is unchanged and those rows can learn.
    """
    delta = np.asarray(delta, dtype=np.float64)
    out_dim, in_dim = delta.shape
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    cutoff = (s[0] if s.size else 0.0) * max(delta.shape) * np.finfo(np.float64).eps
    keep = int(np.sum(s[:rank] > cutoff))
    b = np.zeros((out_dim, rank))
    a = np.zeros((rank, in_dim))
    b[:, :keep] = u[:, :keep] * (s[:keep] / scaling)
    a[:keep] = vt[:keep]
    if keep < rank:
        a[keep:] = _fill_rows(rank - keep, in_dim, vt[:keep], seed, name)
    return b.astype(np.float32), a.astype(np.float32)


def truncation_error(delta: np.ndarray, rank: int) -> float:
    """Relative Frobenius error of the best rank-``rank`` approximation of ``delta``."""
    s = np.linalg.svd(np.asarray(delta, dtype=np.float64), compute_uv=False)
    total = float(np.sum(s**2))
    return float(np.sqrt(np.sum(s[rank:] ** 2) / total)) if total > 0 else 0.0
