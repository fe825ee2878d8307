"""Where a client's DP noise comes from: OS entropy, or (``reproducible-noise``) its seed.

One rule for every mechanism a client runs (DP-SGD's steps, the label counts' release): the
server knows the run's seed, the partition and the round (they are in the run folder), and
whoever can regenerate a noise draw can subtract it, and DP is gone. So by default the seed is
secret (``secrets.randbits``); ``reproducible-noise = true`` derives it from ``seed`` and the
mechanism's tag instead, for tests and benchmarks that compare runs bit for bit (the privacy
report says so).
"""

from __future__ import annotations

import hashlib
import secrets


def noise_seed(tag: str, seed: int, reproducible: bool) -> int:
    """A 63- or 64-bit seed for the mechanism ``tag``: secret unless ``reproducible``."""
    if not reproducible:
        return secrets.randbits(63)
    return int.from_bytes(hashlib.sha256(f"{tag}/{seed}".encode()).digest()[:8], "little")
