"""Tensors on the wire: one converter between Flower's ArrayRecord and numpy or torch.

The server aggregates in numpy (float64 sums, exact order), the client trains in torch; both sides
go through these functions so that a dtype or key-order quirk has one place to be fixed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

Arrays = dict[str, np.ndarray]


def to_record(arrays: Mapping) -> ArrayRecord:
    """numpy arrays or torch tensors (moved to the CPU) as one ArrayRecord, keys in order."""
    out = {}
    for key, value in arrays.items():
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        out[key] = Array(np.ascontiguousarray(value))
    return ArrayRecord(out)


def from_record(record: ArrayRecord) -> Arrays:
    return {k: v.numpy() for k, v in record.items()}


def to_tensors(record: ArrayRecord) -> dict:
    """The record as torch tensors (what ``set_peft_model_state_dict`` takes)."""
    import torch

    return {k: torch.from_numpy(np.array(v.numpy(), copy=True)) for k, v in record.items()}


def record_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Payload bytes of the tensors (what travels, without framing)."""
    return int(sum(np.asarray(v).nbytes for v in arrays.values()))
