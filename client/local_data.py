"""A client's own tokenised rows: its partition of the run's dataset (simulation) or the files
its node config ``data-path`` names (real hosts, ``client-data = local``).

Cached per process: in a simulation, Ray keeps client workers alive across rounds, so each worker
reads and tokenises a partition once instead of once per message. A worker serves whichever
clients the simulation hands it, so the cache holds many partitions (together at most about one
copy of the tokenised training set, since partitions do not overlap).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from fedtune.config import ConfigError, RunConfig
from fedtune.data.loading import NODE_DATA_FIX, check_node_data, load_node_data
from fedtune.model.build import load_tokenizer
from fedtune.tasks.registry import task_for


@lru_cache(maxsize=2)
def _splits(cfg: RunConfig):
    return task_for(cfg).load_splits(cfg)


@lru_cache(maxsize=2)
def _tokenizer(cfg: RunConfig):
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
    tokenizer = _tokenizer(cfg)
    return task_for(cfg).encode(tokenizer, part, cfg), tokenizer.pad_token_id


@lru_cache(maxsize=8)
def node_data(cfg: RunConfig, data_path: str, split: str, labels: tuple[str, ...]
              ):
    """(rows, pad token id) for ``split`` of this host's own data (node config ``data-path``)."""
    splits = load_node_data(cfg, data_path, labels)
    part = splits.train if split == "train" else splits.eval
    tokenizer = _tokenizer(cfg)
    return task_for(cfg).encode(tokenizer, part, cfg), tokenizer.pad_token_id


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
        return (pid, *node_data(cfg, data_path, split, labels))
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
