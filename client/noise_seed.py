"""The seed of a client's Poisson sampling for one round (and of its DP noise only with
``reproducible-noise = true``).

In a simulation the seed follows from the run's ``seed``, the partition and the round, so the
sampled batches are reproducible. The DP noise does not come from it by default: the trainer
seeds the noise from OS entropy (``client/trainer.py``), because the server knows all three and
could otherwise regenerate the exact Gaussian noise and subtract it from the update. On a real
host (``client-data = local``) the seed also mixes in a secret that never leaves the host, kept
next to its privacy ledger (``ledger-dir/noise-secret``: 64 hex characters, mode 0600) so that its
sampling (and its noise, with ``reproducible-noise``) is hidden from the server yet the same when
a round is replayed after a crash; drawn per process when there is no ledger.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from functools import lru_cache
from pathlib import Path

from fedtune.config import RunConfig

SECRET_FILE = "noise-secret"
_SECRET = re.compile(r"[0-9a-fA-F]{64}")


class NoiseSecretError(RuntimeError):
    """The host's noise secret file holds something other than 64 hex characters."""


def _write_secret(path: Path) -> None:
    """A new secret at ``path``, all or nothing: written to a temporary file (0600), fsynced,
    then moved into place, so a crash never leaves a partial or empty secret behind. ``path``
    is taken with a hard link when it does not exist (another process that won the race keeps
    its secret) and replaced when it is empty."""
    tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            if path.read_text().strip() == "":
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@lru_cache(maxsize=4)
def node_secret(ledger_dir: str) -> str:
    """This host's secret: read from ``ledger_dir``, created there once; random without one.

    An empty file (a crash of older versions between creating and writing it) is replaced by a
    new secret: nothing can rely on it, since a round charged under the old one hashes its seed
    into the ledger's update digest, and a replay under the new secret is charged again. Any
    other content that is not 64 hex characters is refused, never used (a short or edited
    secret may be guessable), with the file and the fix named.
    """
    if not ledger_dir:
        return secrets.token_hex(32)
    path = Path(ledger_dir).expanduser() / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text().strip() == "":
        _write_secret(path)
    text = path.read_text().strip()
    if not _SECRET.fullmatch(text):
        raise NoiseSecretError(
            f"{path} must hold exactly 64 hex characters (this host's noise secret), it holds "
            f"{len(text)} characters that are not; delete the file and a new secret is created "
            "(the privacy ledger stays valid: a replay of an already charged round is then "
            "charged again)")
    return text


def round_seed(cfg: RunConfig, pid: int, server_round: int, charge_id: str,
               ledger_dir: str = "") -> int:
    """A 63-bit seed for this client's round (``charge_id`` = run key + round)."""
    if cfg.client_data != "local":
        return cfg.seed * 1_000_003 + pid * 1_009 + server_round
    digest = hashlib.sha256(f"{node_secret(ledger_dir)}/{charge_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
