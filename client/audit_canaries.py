"""The audit client's training rows: its own rows plus the canaries its secret coins put in.

Only the client named by ``audit-client`` does this, and only under ``audit-canaries``. The coins
are drawn on its first round and kept in its audit folder; the canaries it trains on are records of
its database like any other (counted in its size, its sampling rate and its ledger), so its
reported epsilon covers them. Nothing about them is sent: the reply's size says how many rows the
client holds, never which.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ConfigRecord, Context

from client.local_data import tokenizer_for
from fedtune.config import ConfigError, RunConfig
from fedtune.data.batching import TokenizedDataset
from fedtune.privacy.audit.canaries import AuditFolder, canary_words, make_canaries
from fedtune.protocol import RUN_KEY

AUDIT_FOLDER = "audit"  # in the run folder, when neither node nor run config names one


def audit_folder(cfg: RunConfig, context: Context, config: ConfigRecord) -> Path:
    """Node config ``audit-dir`` (a real host's own disk: the only place a real host writes
    coins, never a folder the server names), else, in a simulation (server and clients share
    the disk), run config ``audit-dir`` or ``audit/`` in the run folder."""
    if own := str(context.node_config.get("audit-dir") or ""):
        return Path(own)
    if cfg.client_data == "local":
        raise ConfigError("audit-canaries is set but this host has no audit folder: start "
                          "flower-supernode with --node-config \"audit-dir='/path/on/this/host'\"")
    return Path(cfg.audit_dir or Path(str(config[RUN_KEY])) / AUDIT_FOLDER)


def with_canaries(cfg: RunConfig, context: Context, config: ConfigRecord, pid: int, rows,
                  labels: tuple[str, ...]):
    """``rows``, plus the inserted canaries when this is the audit client."""
    if not cfg.audit_canaries or pid != cfg.audit_client:
        return rows
    tokenizer = tokenizer_for(cfg)
    canaries = make_canaries(canary_words(tokenizer.get_vocab()), cfg.audit_canaries, cfg.seed,
                             len(labels))
    coins = AuditFolder(audit_folder(cfg, context, config)).coins(
        canaries, pid, create=True, seed=cfg.seed if cfg.reproducible_noise else None)
    texts = [t for t, c in zip(canaries.texts, coins, strict=True) if c]
    marks = [y for y, c in zip(canaries.labels, coins, strict=True) if c]
    extra = TokenizedDataset.from_texts(tokenizer, texts, marks, cfg.max_length)
    return TokenizedDataset(rows.input_ids + extra.input_ids, rows.labels + extra.labels,
                            list(rows.texts) + extra.texts)
