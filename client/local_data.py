"""A client's own tokenised rows: its partition of the run's dataset (simulation) or the files
its node config ``data-path`` names (real hosts, ``client-data = local``).

Cached per process: in a simulation, Ray keeps client workers alive across rounds, so each worker
reads and tokenises a partition once instead of once per message. A worker serves whichever
clients the simulation hands it, so the cache holds many partitions (together at most about one
copy of the tokenised training set, since partitions do not overlap).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from fedtune.config import ConfigError, RunConfig
from fedtune.data.loading import (
    HOST_HOLDOUT_SEED,
    NODE_DATA_FIX,
    check_node_data,
    load_node_data,
)
from fedtune.model.build import load_tokenizer
from fedtune.privacy.ledger import fingerprint
from fedtune.tasks.registry import task_for


@lru_cache(maxsize=2)
def _splits(cfg: RunConfig):
    return task_for(cfg).load_splits(cfg)


@lru_cache(maxsize=2)
def tokenizer_for(cfg: RunConfig):
    return load_tokenizer(cfg)


@lru_cache(maxsize=64)
def client_data(cfg: RunConfig, partition_id: int, num_partitions: int, split: str,
                labels: tuple[str, ...]):
    """(rows, pad token id) for ``split`` = ``train`` or ``eval`` of this client's partition."""
    # Imported here: flwr-datasets pulls in matplotlib, seaborn and scipy, which a real host
    # (its own data, no partitioner) never needs and would import at every message.
    from fedtune.data.partitioning import load_partition

    splits = _splits(cfg)
    if splits.labels != labels:
        raise ConfigError(f"client labels {splits.labels} differ from the server's {labels}: "
                          "client and server must read the same dataset")
    source = splits.train if split == "train" else splits.eval
    if split == "train":
        part = load_partition(source, cfg, partition_id, num_partitions)
    else:  # an even share of the evaluation rows, for federated evaluation
        part = source.shard(num_shards=num_partitions, index=partition_id, contiguous=True)
    tokenizer = tokenizer_for(cfg)
    return task_for(cfg).encode(tokenizer, part, cfg), tokenizer.pad_token_id


@lru_cache(maxsize=4)
def _node_splits(cfg: RunConfig, data_path: str, labels: tuple[str, ...], holdout_seed: int):
    return load_node_data(cfg, data_path, labels, holdout_seed)


@lru_cache(maxsize=8)
def node_data(cfg: RunConfig, data_path: str, split: str, labels: tuple[str, ...],
              holdout_seed: int = HOST_HOLDOUT_SEED):
    """(rows, pad token id) for ``split`` of this host's own data (node config ``data-path``)."""
    splits = _node_splits(cfg, data_path, labels, holdout_seed)
    part = splits.train if split == "train" else splits.eval
    tokenizer = tokenizer_for(cfg)
    return task_for(cfg).encode(tokenizer, part, cfg), tokenizer.pad_token_id


def holdout_seed(node_config: Mapping[str, Any]) -> int:
    """The host's own holdout seed (node config ``holdout-seed``): which 10% of a single data
    file it keeps for evaluation is the host's choice, never the server's ``seed``."""
    value = node_config.get("holdout-seed", HOST_HOLDOUT_SEED)
    try:
        if isinstance(value, bool) or float(value) != int(value):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"node config 'holdout-seed' = {value!r}: expected an integer "
                          f"(default {HOST_HOLDOUT_SEED})") from None


def ledger_fingerprint(cfg: RunConfig, node_config: Mapping[str, Any], rows,
                       labels: tuple[str, ...]) -> str:
    """What this client's privacy ledger is keyed by: the protected database. On a real host
    (``client-data = local``) the records of its whole training file, read before any holdout,
    so the server's ``seed``, the host's holdout or the rows' order never open a fresh ledger;
    in a simulation the records of the client's partition (``rows``), in any order."""
    if cfg.client_data == "local":
        data_path = str(node_config.get("data-path", "") or "")
        return fingerprint(*_node_splits(cfg, data_path, labels, holdout_seed(node_config))
                           .database)
    return fingerprint(*rows.ledger_rows())


def rows_digest(rows) -> str:
    """SHA-256 over the rows a client trains on, in order: unlike the ledger key, this changes
    when the rows are reordered or another holdout is taken, which changes the update."""
    h = hashlib.sha256()
    texts, labels = rows.ledger_rows()
    for text, label in zip(texts, labels, strict=True):
        h.update(hashlib.sha256(f"{text}\x1f{label}".encode()).digest())
    return h.hexdigest()


def client_rows(cfg: RunConfig, node_config: Mapping[str, Any], split: str,
                labels: tuple[str, ...]) -> tuple:
    """(partition id, rows, pad token id): the node's own ``data-path`` under ``client-data =
    local``, its ``partition-id`` share of ``dataset`` otherwise. On a real host the partition id
    is only a label (-1 when unset); the server numbers clients by node."""
    pid = int(node_config.get("partition-id", -1))
    data_path = str(node_config.get("data-path", "") or "")
    if cfg.client_data == "local":
        if not data_path:
            raise ConfigError("run-config key 'client-data' = 'local' but this node has no node "
                              "config 'data-path'; start flower-supernode with --node-config "
                              f"\"data-path='/path/to/data'\" ({NODE_DATA_FIX})")
        check_node_data(data_path)
        return (pid, *node_data(cfg, data_path, split, labels, holdout_seed(node_config)))
    if data_path:
        raise ConfigError(f"node config 'data-path' = {data_path!r} is set but the run was "
                          "submitted with client-data = 'partition' (a share of the server's "
                          "dataset); submit with --run-config \"client-data='local'\" "
                          "(python -m fedtune.deploy submit does) or drop data-path")
    if "num-partitions" not in node_config or pid < 0:
        raise ConfigError("this node has neither node config 'data-path' nor 'partition-id' + "
                          "'num-partitions'; on a real host start flower-supernode with "
                          "--node-config \"data-path='/path/to/data'\" and submit with "
                          "client-data='local'")
    return (pid, *client_data(cfg, pid, int(node_config["num-partitions"]), split, labels))
