import json

import pytest

from fedtune.config import ConfigError, from_run_config
from fedtune.data.loading import load_splits
from fedtune.data.toy import toy_rows, write_jsonl


def test_folder_jsonl_loads_with_inferred_labels(toy_data):
    splits = load_splits(from_run_config({"dataset": str(toy_data), "max-train-samples": 0}))
    assert len(splits.train) == 600 and len(splits.eval) == 120
    assert splits.labels == ("0", "1") and splits.num_labels == 2
    assert set(splits.train["label"]) == {0, 1}


def test_cap_and_shuffle_are_deterministic(toy_data):
    cfg = from_run_config({"dataset": str(toy_data), "max-train-samples": 100, "seed": 3})
    a, b = load_splits(cfg), load_splits(cfg)
    assert len(a.train) == 100 and a.train["text"] == b.train["text"]
    other = load_splits(from_run_config({"dataset": str(toy_data), "max-train-samples": 100}))
    assert other.train["text"] != a.train["text"]


def test_csv_folder_string_labels_and_custom_columns(tmp_path):
    import csv

    for split, n in (("train", 40), ("validation", 10)):
        with open(tmp_path / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sentence", "sentiment"])
            for r in toy_rows(n, seed=n):
                w.writerow([r["text"], ["neg", "pos"][r["label"]]])
    cfg = from_run_config({"dataset": str(tmp_path), "label-column": "sentiment",
                           "max-train-samples": 0})
    splits = load_splits(cfg)
    assert splits.labels == ("neg", "pos")
    assert len(splits.train) == 40  # text column 'sentence' found automatically


def test_single_file_gets_a_seeded_holdout(tmp_path):
    path = write_jsonl(tmp_path / "all.jsonl", toy_rows(200, seed=5))
    splits = load_splits(from_run_config({"dataset": str(path), "max-train-samples": 0}))
    assert len(splits.train) == 180 and len(splits.eval) == 20


def test_eval_label_outside_training_labels_names_the_row(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", toy_rows(20, seed=1))
    rows = toy_rows(5, seed=2)
    rows[3]["label"] = 7
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match=r"row 3: label 7 is not among"):
        load_splits(from_run_config({"dataset": str(tmp_path)}))


def test_missing_label_column_is_named(toy_data):
    with pytest.raises(ConfigError, match="'label-column' = 'stars'"):
        load_splits(from_run_config({"dataset": str(toy_data), "label-column": "stars"}))
