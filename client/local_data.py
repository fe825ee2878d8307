"""A client's own tokenised rows: its partition of the training set and of the evaluation set.

Cached per process: in a simulation, Ray keeps client workers alive across rounds, so each worker
reads and tokenises a partition once instead of once per message. A worker serves whichever
clients the simulation hands it, so the cache holds many partitions (together at most about one
copy of the tokenised training set, since partitions do not overlap).
"""

from __future__ import annotations

from functools import lru_cache

from config import ConfigError, RunConfig
from simulations.partitioning import load_partition
from tasks.batching import TokenizedDataset
from tasks.data import load_splits
from tasks.model import load_tokenizer


@lru_cache(maxsize=2)
def _splits(cfg: RunConfig):
    return load_splits(cfg)


@lru_cache(maxsize=2)
def _tokenizer(cfg: RunConfig):
    return load_tokenizer(cfg)


@lru_cache(maxsize=64)
def client_data(cfg: RunConfig, partition_id: int, num_partitions: int, split: str,
                labels: tuple[str, ...]) -> tuple[TokenizedDataset, int]:
    """(rows, pad token id) for ``split`` = ``train`` or ``eval`` of this client's partition."""
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
    rows = TokenizedDataset.from_texts(tokenizer, part["text"], part["label"], cfg.max_length)
    return rows, tokenizer.pad_token_id
