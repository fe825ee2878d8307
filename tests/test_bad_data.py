"""Bad data stops the run before training, with the file, the row or line, and the fix."""

import datasets
import pytest

from fedtune.config import ConfigError, from_run_config
from fedtune.data import partitioning
from fedtune.data.loading import load_splits
from fedtune.data.partitioning import describe
from fedtune.data.toy import toy_rows, write_jsonl


def _folder(tmp_path, train_text: bytes | None = None):
    write_jsonl(tmp_path / "validation.jsonl", toy_rows(10, seed=2))
    if train_text is None:
        write_jsonl(tmp_path / "train.jsonl", toy_rows(20, seed=1))
    else:
        (tmp_path / "train.jsonl").write_bytes(train_text)
    return from_run_config({"dataset": str(tmp_path)})


def test_undecodable_bytes_name_the_file_and_line(tmp_path):
    good = b'{"text": "fine", "label": 1}\n'
    cfg = _folder(tmp_path, good * 3 + b'{"text": "caf\xe9", "label": 0}\n' + good)
    with pytest.raises(ConfigError, match=r"train.jsonl, line 4: byte 0xe9 .* not valid UTF-8; "
                                          r"re-save the file as UTF-8"):
        load_splits(cfg)


def test_a_broken_json_line_is_named(tmp_path):
    cfg = _folder(tmp_path, b'{"text": "a", "label": 1}\n{"text": "b", "label": \n')
    with pytest.raises(ConfigError, match=r"train.jsonl, line 2: not valid JSON"):
        load_splits(cfg)


def test_an_empty_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"train.jsonl is empty"):
        load_splits(_folder(tmp_path, b""))


def test_a_row_without_a_label_is_named(tmp_path):
    cfg = _folder(tmp_path, b'{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n'
                            b'{"text": "c"}\n')
    with pytest.raises(ConfigError, match=r"\(train\) row 2: the label \('label'\) is missing"):
        load_splits(cfg)


def test_a_missing_text_column_is_named(tmp_path):
    cfg = _folder(tmp_path, b'{"body": "a", "label": 1}\n{"body": "b", "label": 0}\n')
    with pytest.raises(ConfigError, match=r"'text-column': none of text, .* columns are "
                                          r"body, label; set 'text-column'"):
        load_splits(cfg)


def test_a_text_that_is_not_a_string_names_the_row(tmp_path):
    cfg = _folder(tmp_path, b'{"text": "a", "label": 1}\n{"text": 5, "label": 0}\n')
    with pytest.raises(ConfigError, match=r"row 1: text is .*expected a string"):
        load_splits(cfg)


def test_an_empty_partition_stops_the_run_with_the_fix(monkeypatch):
    class Lopsided(partitioning.IidPartitioner):
        def load_partition(self, partition_id):
            part = super().load_partition(0)
            return part.select([]) if partition_id == 1 else part

    monkeypatch.setattr(partitioning, "make_partitioner",
                        lambda cfg, n: Lopsided(num_partitions=n))
    train = datasets.Dataset.from_dict({"text": ["a", "b", "c", "d"], "label": [0, 1, 0, 1]})
    with pytest.raises(ConfigError, match=r"partition 1 of 2 is empty .* use fewer clients"):
        describe(train, from_run_config({}), 2, 2)

