"""Splitting one dataset into client partitions with flwr-datasets, deterministically by seed."""

from __future__ import annotations

from collections import Counter

import datasets
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    PathologicalPartitioner,
)
from flwr_datasets.partitioner.partitioner import Partitioner

from fedtune.config import ConfigError, RunConfig


def make_partitioner(cfg: RunConfig, num_partitions: int) -> Partitioner:
    if cfg.partitioner == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if cfg.partitioner == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_partitions, partition_by="label", alpha=cfg.dirichlet_alpha,
            min_partition_size=1, self_balancing=False, shuffle=True, seed=cfg.seed,
        )
    if cfg.partitioner == "pathological":
        return PathologicalPartitioner(
            num_partitions=num_partitions, partition_by="label",
            num_classes_per_partition=cfg.classes_per_client,
            class_assignment_mode="first-deterministic", shuffle=True, seed=cfg.seed,
        )
    raise ConfigError(f"run-config key 'partitioner' = '{cfg.partitioner}' is not implemented")


def partition(train: datasets.Dataset, cfg: RunConfig, num_partitions: int) -> Partitioner:
    """A partitioner bound to ``train``, with the size checks a user needs before training."""
    if num_partitions < 1:
        raise ConfigError("the federation has no clients (num-supernodes must be >= 1)")
    if len(train) < num_partitions:
        raise ConfigError(
            f"the training set has {len(train)} rows but there are {num_partitions} clients; "
            "raise 'max-train-samples' (0 = all) or use fewer clients (num-supernodes)"
        )
    partitioner = make_partitioner(cfg, num_partitions)
    partitioner.dataset = train
    return partitioner


def load_partition(train: datasets.Dataset, cfg: RunConfig, partition_id: int,
                   num_partitions: int) -> datasets.Dataset:
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(f"partition-id {partition_id} is outside [0, {num_partitions})")
    try:
        return partition(train, cfg, num_partitions).load_partition(partition_id)
    except ValueError as exc:  # flwr-datasets' own checks, e.g. too few classes
        raise ConfigError(f"run-config key 'partitioner' = '{cfg.partitioner}': {exc}") from exc


def describe(train: datasets.Dataset, cfg: RunConfig, num_partitions: int,
             num_labels: int) -> list[dict]:
    """Size and label histogram of every partition (written to ``partitions.json``); without
    labels (``num_labels`` = 0, causal-lm) the histogram is empty."""
    partitioner = partition(train, cfg, num_partitions)
    rows = []
    for pid in range(num_partitions):
        try:
            part = partitioner.load_partition(pid)
        except ValueError as exc:
            raise ConfigError(f"run-config key 'partitioner' = '{cfg.partitioner}': {exc}") from exc
        if len(part) == 0:
            raise ConfigError(
                f"run-config key 'partitioner' = '{cfg.partitioner}': partition {pid} of "
                f"{num_partitions} is empty ({len(train)} training rows); raise "
                "'dirichlet-alpha', use fewer clients or more rows ('max-train-samples')")
        counts = Counter(int(x) for x in part["label"]) if num_labels else Counter()
        rows.append({
            "partition_id": pid,
            "num_examples": len(part),
            "label_counts": [counts.get(i, 0) for i in range(num_labels)],
        })
    return rows
