"""The seed of a client's DP noise and Poisson sampling for one round.

In a simulation the seed follows from the run's ``seed``, the partition and the round, so runs are
reproducible. On a real host that would be a hole: the server knows all three, could regenerate
the exact Gaussian noise and subtract it from the update, and DP would be gone. So a host with its
own data (``client-data = local``) mixes in a secret that never leaves it: kept next to its privacy
ledger (``ledger-dir/noise-secret``, mode 0600) so that a replayed round after a crash draws the
same noise and releases the same update (the ledger's "a replay is free" rule), or drawn per
process when there is no ledger.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from functools import lru_cache
from pathlib import Path

from fedtune.config import RunConfig

SECRET_FILE = "noise-secret"


@lru_cache(maxsize=4)
def node_secret(ledger_dir: str) -> str:
    """This host's secret: read from ``ledger_dir``, created there once; random without one."""
    if not ledger_dir:
        return secrets.token_hex(32)
    path = Path(ledger_dir).expanduser() / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
        f.flush()
        os.fsync(f.fileno())
    return path.read_text().strip()


def round_seed(cfg: RunConfig, pid: int, server_round: int, charge_id: str,
               ledger_dir: str = "") -> int:
    """A 63-bit seed for this client's round (``charge_id`` = run key + round)."""
    if cfg.client_data != "local":
        return cfg.seed * 1_000_003 + pid * 1_009 + server_round
    digest = hashlib.sha256(f"{node_secret(ledger_dir)}/{charge_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
