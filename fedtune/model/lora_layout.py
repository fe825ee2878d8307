"""Which adapter tensor is which, by its PEFT state-dict key, and what travels for an aggregation.

PEFT names the factors of a LoRA module ``<module>.lora_A.weight`` (r x in) and
``<module>.lora_B.weight`` (out x r); everything else in the adapter state (the task head) is a
plain tensor. Server and client both decide from these names, so they cannot disagree about what
a message holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np

LORA_A = ".lora_A.weight"
LORA_B = ".lora_B.weight"


def is_lora_a(key: str) -> bool:
    return key.endswith(LORA_A)


def is_lora_b(key: str) -> bool:
    return key.endswith(LORA_B)


def lora_modules(keys: Iterable[str]) -> list[str]:
    """Module names that carry a LoRA pair, in key order."""
    return [k[: -len(LORA_A)] for k in keys if is_lora_a(k)]


def head_keys(keys: Iterable[str]) -> list[str]:
    """Keys that are not LoRA factors (the classification head): averaged as plain tensors."""
    return [k for k in keys if not (is_lora_a(k) or is_lora_b(k))]


def travelling_keys(keys: Iterable[str], aggregation: str) -> list[str]:
    """Keys a client sends back. Under FFA-LoRA A is frozen and seed-shared, so it stays home."""
    if aggregation == "ffa":
        return [k for k in keys if not is_lora_a(k)]
    return list(keys)


def lora_a_digest(state: Mapping[str, object]) -> str:
    """SHA-256 over every LoRA A tensor (float32, key order): FFA-LoRA is only exact if the
    server's and every client's frozen A are bit-identical, so they compare this."""
    digest = hashlib.sha256()
    for key in sorted(k for k in state if is_lora_a(k)):
        value = state[key]
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()
