"""Issue 13 item 3: the ledger is keyed by the host's data source, and the host fixes its holdout.

Before: a host with a single data file got its 10% holdout from the server's ``seed`` and a ledger
keyed by its training rows in order, so seed 42, seed 43 and the same file shuffled opened three
ledgers for the same records, each with a full budget.
"""

from __future__ import annotations

import random

import pytest

from client.local_data import client_rows, ledger_fingerprint, rows_digest
from fedtune.config import ConfigError, from_run_config
from fedtune.data.loading import load_node_data
from fedtune.data.toy import toy_rows, write_jsonl
from fedtune.privacy.ledger import Ledger, fingerprint

LABELS = ("0", "1")


def _host_files(tmp_path):
    rows = toy_rows(40, seed=3)
    shuffled = list(rows)
    random.Random(1).shuffle(shuffled)
    return (write_jsonl(tmp_path / "host.jsonl", rows),
            write_jsonl(tmp_path / "shuffled.jsonl", shuffled), rows)


def test_the_ledger_key_is_the_hosts_records_whatever_the_seed_or_order(tmp_path):
    path, shuffled, rows = _host_files(tmp_path)
    keys = set()
    for seed, file in ((42, path), (43, path), (42, shuffled)):
        cfg = from_run_config({"client-data": "local", "seed": seed})
        fp = ledger_fingerprint(cfg, {"data-path": str(file)}, None, LABELS)
        keys.add(Ledger.open(tmp_path / "ledgers", fp, 36).path.name)
    assert len(keys) == 1  # before: 3 ledgers for the same 40 records
    # The key covers the whole file, held-out rows included: another holdout is the same data.
    cfg = from_run_config({"client-data": "local"})
    other_holdout = ledger_fingerprint(cfg, {"data-path": str(path), "holdout-seed": 7}, None,
                                       LABELS)
    assert other_holdout == ledger_fingerprint(cfg, {"data-path": str(path)}, None, LABELS)
    # One record more is other data: the documented rule is to keep using the same ledger.
    grown = write_jsonl(tmp_path / "grown.jsonl", [*rows, {"text": "one more", "label": 1}])
    assert ledger_fingerprint(cfg, {"data-path": str(grown)}, None, LABELS) != other_holdout


def test_a_simulated_clients_key_ignores_row_order():
    texts, labels = [f"row {i}" for i in range(10)], [i % 2 for i in range(10)]
    assert fingerprint(texts, labels) == fingerprint(texts[::-1], labels[::-1])
    assert fingerprint(texts, labels) != fingerprint(texts, [1 - x for x in labels])
    assert fingerprint(texts + texts[:1], labels + labels[:1]) != fingerprint(texts, labels)


def test_the_hosts_holdout_does_not_follow_the_servers_seed(tmp_path):
    path, _, _ = _host_files(tmp_path)
    held = [sorted(load_node_data(from_run_config({"seed": s}), str(path), LABELS).eval["text"])
            for s in (42, 43)]
    assert held[0] == held[1] and len(held[0]) == 4  # before: no row in common
    own = load_node_data(from_run_config({"seed": 42}), str(path), LABELS, holdout_seed=7)
    assert sorted(own.eval["text"]) != held[0] and len(own.eval) == 4


def test_holdout_seed_comes_from_the_node_config(tiny_model, tmp_path):
    path, _, _ = _host_files(tmp_path)
    cfg = {"model": str(tiny_model), "client-data": "local"}
    evals = [client_rows(from_run_config({**cfg, "seed": s}), node, "eval", LABELS)[1]
             for s, node in ((42, {"data-path": str(path)}), (43, {"data-path": str(path)}),
                             (42, {"data-path": str(path), "holdout-seed": 5}))]
    assert rows_digest(evals[0]) == rows_digest(evals[1]) != rows_digest(evals[2])
    with pytest.raises(ConfigError, match="node config 'holdout-seed'"):
        client_rows(from_run_config(cfg), {"data-path": str(path), "holdout-seed": "x"}, "eval",
                    LABELS)


def test_reordered_rows_are_another_update_under_the_same_ledger(tiny_model, tmp_path):
    """The ledger key ignores order, but the replay digest must not: reordered rows train
    another update, which is no free replay."""
    from flwr.app import ArrayRecord

    from fedtune.privacy.budget import ClientBudget, Release

    cfg = from_run_config({"model": str(tiny_model)})
    budget = ClientBudget.open(cfg, None, 36)
    a = budget.update_digest(Release(ArrayRecord(), {}, 1, 4, "rows-a"))
    b = budget.update_digest(Release(ArrayRecord(), {}, 1, 4, "rows-b"))
    assert a != b
