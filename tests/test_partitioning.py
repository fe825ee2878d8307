import pytest

from fedtune.config import ConfigError, from_run_config
from fedtune.data.loading import load_splits
from fedtune.data.partitioning import describe, load_partition


@pytest.fixture
def train(toy_data):
    return load_splits(from_run_config({"dataset": str(toy_data), "max-train-samples": 0})).train


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "pathological"])
def test_partitions_are_deterministic_and_cover_the_data(train, partitioner):
    cfg = from_run_config({"partitioner": partitioner, "dirichlet-alpha": 0.3, "seed": 7})
    first = [load_partition(train, cfg, i, 4)["text"] for i in range(4)]
    again = [load_partition(train, cfg, i, 4)["text"] for i in range(4)]
    assert first == again
    rows = describe(train, cfg, 4, 2)
    assert [r["num_examples"] for r in rows] == [len(p) for p in first]
    if partitioner != "pathological":
        assert sum(r["num_examples"] for r in rows) == len(train)


def test_dirichlet_depends_on_the_seed(train):
    a = describe(train, from_run_config({"partitioner": "dirichlet", "seed": 1}), 4, 2)
    b = describe(train, from_run_config({"partitioner": "dirichlet", "seed": 2}), 4, 2)
    assert a != b


def test_pathological_gives_one_class_per_client(train):
    rows = describe(train, from_run_config({"partitioner": "pathological"}), 4, 2)
    assert all(sum(1 for c in r["label_counts"] if c) == 1 for r in rows)


def test_more_clients_than_rows_is_a_clear_error(train):
    with pytest.raises(ConfigError, match="600 rows but there are 601 clients"):
        describe(train, from_run_config({}), 601, 2)
