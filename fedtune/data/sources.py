"""Where ``dataset`` points: a local file or folder (itself, or the known offline copy of a hub
dataset), or a Hugging Face Hub id.

Kept apart from ``loading`` (which imports ``datasets``) so that the launcher can check the setting
in milliseconds, before it starts anything; ``loading`` resolves the setting the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedtune.config import ConfigError, RunConfig

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
DATASET_SETTING = "run-config key 'dataset'"

# Hub datasets with a well-known local copy: used first, so the default run works offline.
LOCAL_MIRRORS = {
    "stanfordnlp/sst2": ("data/sst2", "../shared/data/sst2"),
}


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).suffix.lower() in FILE_FORMATS


def split_file(folder: Path, split: str) -> Path | None:
    for ext in FILE_FORMATS:
        candidate = folder / f"{split}{ext}"
        if candidate.is_file():
            return candidate
    return None


def train_file(folder: Path, cfg: RunConfig, setting: str = DATASET_SETTING) -> Path:
    """The training file of a dataset folder, or a :class:`ConfigError` naming the fix."""
    found = split_file(folder, cfg.train_split)
    if found is None:
        raise ConfigError(
            f"{setting}: folder {folder} has no '{cfg.train_split}' file "
            f"({', '.join(cfg.train_split + e for e in FILE_FORMATS)}); "
            "add one or set 'train-split'"
        )
    return found


def local_dataset(cfg: RunConfig, base: str | Path | None = None) -> Path | None:
    """The local file or folder that ``dataset`` names (or its offline copy), None for a hub id.

    Relative paths are taken from ``base`` (the processes' working directory; default the
    current one). A name that looks like a path but names nothing is a :class:`ConfigError`.
    """
    name = cfg.dataset
    for candidate in (name, *LOCAL_MIRRORS.get(name, ())):
        path = Path(os.path.expanduser(candidate))
        if base is not None and not path.is_absolute():
            path = Path(base) / path
        if path.is_dir() or path.is_file():
            return path
    if looks_like_path(name):
        where = "" if Path(os.path.expanduser(name)).is_absolute() else \
            f" (relative to {base if base is not None else os.getcwd()})"
        raise ConfigError(f"{DATASET_SETTING}: no such file or folder '{name}'{where}; give an "
                          "existing path or a Hugging Face Hub id")
    return None
