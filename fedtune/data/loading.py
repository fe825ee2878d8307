"""Loading a labelled text dataset from a local folder, a local file or the Hugging Face Hub.

The server and every simulated client call :func:`load_splits` with the same settings and get the
same rows in the same order (shuffled once by ``seed``, then capped), which is what makes the
partitions identical on both sides without shipping them around.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import datasets

from fedtune.config import ConfigError, RunConfig
from fedtune.data.file_checks import check_data_file
from fedtune.data.sources import (
    DATASET_SETTING,
    FILE_FORMATS,
    local_dataset,
    split_file,
    train_file,
)

TEXT_COLUMN_GUESSES = ("text", "sentence", "content", "review", "document")
HOLDOUT_FRACTION = 0.1
# A real host's holdout is the host's to fix (node config ``holdout-seed``), never the server's
# ``seed``: the same file then always trains on the same rows, whatever run it joins.
HOST_HOLDOUT_SEED = 0


@dataclass(frozen=True)
class Splits:
    """Train and evaluation rows with their text/label columns resolved and labels as ints."""

    train: datasets.Dataset
    eval: datasets.Dataset
    labels: tuple[str, ...]
    source: str
    form: str = "labelled"  # causal-lm: "alpaca", "prompt-response" or "text"
    # A real host's whole training source (texts, label names), read before any holdout: the
    # protected database its privacy ledger is keyed by. Empty for the server's dataset.
    database: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    @property
    def num_labels(self) -> int:
        return len(self.labels)


def _load_file(path: Path, setting: str = DATASET_SETTING) -> datasets.Dataset:
    builder = FILE_FORMATS.get(path.suffix.lower())
    if builder is None:
        raise ConfigError(
            f"{setting}: unsupported file type '{path.suffix}' for {path}; "
            f"use one of {', '.join(FILE_FORMATS)}"
        )
    check_data_file(path)
    ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    if len(ds) == 0:
        raise ConfigError(f"data file {path} has no rows; add rows or point 'dataset' elsewhere")
    return ds


def _read_local(path: Path, cfg: RunConfig, setting: str
                ) -> tuple[datasets.Dataset, datasets.Dataset | None, str] | None:
    """(train, eval or None, source) from a folder of split files or a single file, before any
    holdout; None if no such path."""
    if path.is_dir():
        train_path = train_file(path, cfg, setting)
        eval_file = split_file(path, cfg.eval_split)
        train = _load_file(train_path, setting)
        evaluation = _load_file(eval_file, setting) if eval_file is not None else None
        return train, evaluation, str(path.resolve())
    if path.is_file():
        return _load_file(path, setting), None, str(path.resolve())
    return None


def _load_local(path: Path, cfg: RunConfig, setting: str
                ) -> tuple[datasets.Dataset, datasets.Dataset, str] | None:
    """(train, eval, source) from a folder of split files or a single file; None if no such path.
    Without an evaluation split, 10% is held out by ``seed`` (the server's own dataset)."""
    read = _read_local(path, cfg, setting)
    if read is None:
        return None
    train, evaluation, source = read
    if evaluation is None:
        return *_holdout(train, cfg.seed), source
    return train, evaluation, source


def load_raw(cfg: RunConfig) -> tuple[datasets.Dataset, datasets.Dataset, str]:
    """Return (train, eval, source) before column handling."""
    name = cfg.dataset
    local = local_dataset(cfg)
    if local is not None:
        return _load_local(local, cfg, DATASET_SETTING)
    try:
        hub = datasets.load_dataset(name)
    except Exception as exc:  # network, auth or a bad id: say which setting to change
        raise ConfigError(
            f"run-config key 'dataset': could not load '{name}' from the Hugging Face Hub "
            f"({type(exc).__name__}: {exc}); offline, point 'dataset' at a local folder "
            "holding train.jsonl and validation.jsonl"
        ) from exc
    if cfg.eval_split not in hub and list(hub) == [cfg.train_split]:
        # Only a training split (e.g. tatsu-lab/alpaca): hold out 10%, as for a single file.
        return *_holdout(hub[cfg.train_split], cfg.seed), f"hub:{name}"
    for split in (cfg.train_split, cfg.eval_split):
        if split not in hub:
            raise ConfigError(
                f"run-config key '{'train-split' if split == cfg.train_split else 'eval-split'}'"
                f": dataset '{name}' has no split '{split}'; it has {', '.join(hub)}"
            )
    return hub[cfg.train_split], hub[cfg.eval_split], f"hub:{name}"


def _holdout(ds: datasets.Dataset, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """A single file has no validation split: hold out a seeded 10% for central evaluation."""
    parts = ds.train_test_split(test_size=HOLDOUT_FRACTION, seed=seed)
    return parts["train"], parts["test"]


def _text_column(ds: datasets.Dataset, cfg: RunConfig, source: str) -> str:
    if cfg.text_column:
        if cfg.text_column not in ds.column_names:
            raise ConfigError(
                f"run-config key 'text-column' = '{cfg.text_column}': no such column in {source}; "
                f"columns are {', '.join(ds.column_names)}"
            )
        return cfg.text_column
    for guess in TEXT_COLUMN_GUESSES:
        if guess in ds.column_names:
            return guess
    raise ConfigError(
        f"run-config key 'text-column': none of {', '.join(TEXT_COLUMN_GUESSES)} found in {source};"
        f" columns are {', '.join(ds.column_names)}; set 'text-column'"
    )


def _standardise(ds: datasets.Dataset, text_col: str, label_col: str, index: dict[str, int],
                 source: str, split: str) -> datasets.Dataset:
    """Rename to ``text``/``label`` and map labels to ints, failing on a label outside the set."""
    if label_col not in ds.column_names:
        raise ConfigError(
            f"run-config key 'label-column' = '{label_col}': no such column in the {split} split of"
            f" {source}; columns are {', '.join(ds.column_names)}"
        )
    texts = list(ds[text_col])
    labels = list(ds[label_col])
    out_labels = []
    for row, (text, label) in enumerate(zip(texts, labels, strict=True)):
        if not isinstance(text, str):
            raise ConfigError(f"{source} ({split}) row {row}: text is {text!r}, expected a string;"
                              " remove or fix the row")
        if str(label) not in index:
            raise ConfigError(
                f"{source} ({split}) row {row}: label {label!r} is not among the training labels "
                f"{sorted(index)}; fix the row or the label column"
            )
        out_labels.append(index[str(label)])
    return datasets.Dataset.from_dict({"text": texts, "label": out_labels})


def label_names(values: list) -> tuple[str, ...]:
    """Labels in a stable order: numerically for integer labels, lexically otherwise."""
    unique = set(values)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in unique):
        return tuple(str(v) for v in sorted(unique))
    return tuple(sorted(str(v) for v in unique))


def load_splits(cfg: RunConfig) -> Splits:
    """Load, standardise, shuffle (by seed) and cap the train/eval rows named by ``cfg``."""
    train, evaluation, source = load_raw(cfg)
    text_col = _text_column(train, cfg, source)
    if cfg.label_column not in train.column_names:
        raise ConfigError(
            f"run-config key 'label-column' = '{cfg.label_column}': no such column in {source}; "
            f"columns are {', '.join(train.column_names)}"
        )
    raw_labels = list(train[cfg.label_column])
    if None in raw_labels:
        raise ConfigError(
            f"{source} ({cfg.train_split}) row {raw_labels.index(None)}: the label "
            f"('{cfg.label_column}') is missing; fix or remove the row")
    labels = label_names(raw_labels)
    if len(labels) < 2:
        raise ConfigError(f"{source}: the training split has {len(labels)} distinct label(s); "
                          "classification needs at least 2")
    index = {name: i for i, name in enumerate(labels)}
    train = _standardise(train, text_col, cfg.label_column, index, source, cfg.train_split)
    evaluation = _standardise(evaluation, text_col, cfg.label_column, index, source, cfg.eval_split)
    train, evaluation = shuffle_and_cap(train, evaluation, cfg)
    return Splits(train=train, eval=evaluation, labels=labels, source=source)


def shuffle_and_cap(train: datasets.Dataset, evaluation: datasets.Dataset, cfg: RunConfig
                    ) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Shuffle the training rows once by ``seed``, then apply ``max-train/eval-samples``."""
    train = train.shuffle(seed=cfg.seed).flatten_indices()
    if cfg.max_train_samples:
        train = train.select(range(min(cfg.max_train_samples, len(train))))
    if cfg.max_eval_samples:
        evaluation = evaluation.select(range(min(cfg.max_eval_samples, len(evaluation))))
    return train, evaluation


NODE_DATA_SETTING = "node config 'data-path'"
NODE_DATA_FIX = ("point data-path at a folder holding train.jsonl (+ validation.jsonl) or at a "
                 f"single {'/'.join(FILE_FORMATS)} file on this host")


def check_node_data(data_path: str) -> Path:
    """The node's ``data-path`` as an existing file or folder, or a :class:`ConfigError`."""
    path = Path(os.path.expanduser(str(data_path)))
    if not str(data_path).strip() or not (path.is_dir() or path.is_file()):
        raise ConfigError(f"{NODE_DATA_SETTING} = {str(data_path)!r}: no such file or folder "
                          f"(relative to {os.getcwd()}); {NODE_DATA_FIX}")
    if path.is_file() and path.suffix.lower() not in FILE_FORMATS:
        raise ConfigError(f"{NODE_DATA_SETTING} = {str(data_path)!r}: unsupported file type "
                          f"'{path.suffix}'; {NODE_DATA_FIX}")
    return path


def load_node_data(cfg: RunConfig, data_path: str, labels: tuple[str, ...],
                   holdout_seed: int = HOST_HOLDOUT_SEED) -> Splits:
    """A real host's own rows (node config ``data-path``), labelled in the server's label order.

    Read with the same rules as ``dataset`` (a folder of split files, or one file with 10% held
    out for federated evaluation), but never shuffled or capped: every local row is the client's
    database. The holdout is fixed by the host (``holdout_seed``, node config ``holdout-seed``),
    never by the server's ``seed``. ``database`` is the whole training source as read, before
    any holdout: what the host's privacy ledger is keyed by. A label outside the server's set is
    an error, not a new class.
    """
    path = check_node_data(data_path)
    whole, evaluation, source = _read_local(path, cfg, NODE_DATA_SETTING)
    text_col = _text_column(whole, cfg, source)
    index = {name: i for i, name in enumerate(labels)}
    whole = _standardise(whole, text_col, cfg.label_column, index, source, cfg.train_split)
    database = (tuple(whole["text"]), tuple(labels[i] for i in whole["label"]))
    if evaluation is None:
        train, evaluation = _holdout(whole, holdout_seed)
    else:
        train = whole
        evaluation = _standardise(evaluation, text_col, cfg.label_column, index, source,
                                  cfg.eval_split)
    if len(train) == 0:
        raise ConfigError(f"{NODE_DATA_SETTING}: {source} has no training rows; {NODE_DATA_FIX}")
    return Splits(train=train, eval=evaluation, labels=tuple(labels), source=source,
                  database=database)
