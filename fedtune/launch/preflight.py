"""Checks a run's settings before anything starts: a bad path fails in milliseconds, not after
the SuperLink, Ray and the client actors have started.

Paths are resolved exactly as the ServerApp will resolve them (``fedtune.data.sources``,
``fedtune.model.paths``, ``RunFolder.check_use``), relative to the directory the processes run
in (the project root). Only imports that cost milliseconds: no torch, transformers or datasets.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fedtune.config import ConfigError, RunConfig, from_run_config
from fedtune.data.sources import FILE_FORMATS, local_dataset, train_file
from fedtune.model.paths import resolve_model_path
from fedtune.outputs.run_folder import RunFolder, default_name
from fedtune.privacy.label_counts import check_count_release
from fedtune.project import project_defaults


@dataclass(frozen=True)
class Checked:
    cfg: RunConfig
    overrides: dict[str, Any]  # with output-dir filled in (absolute), so the run folder is known
    run_root: Path


def preflight(overrides: Mapping[str, Any], project: Path) -> Checked:
    """The validated settings and the run folder, or the first :class:`ConfigError`."""
    overrides = dict(overrides)
    cfg = from_run_config(project_defaults(project) | overrides)
    check_dataset(cfg, project)
    check_model(cfg, project)
    check_count_release(cfg)  # after the paths: it loads the accountant (torch, Opacus)
    root = Path(os.path.expanduser(cfg.output_dir or default_name()))
    if not root.is_absolute():
        root = project / root
    root = root.resolve()
    check_output_dir(root, cfg.resume)
    overrides["output-dir"] = str(root)
    return Checked(from_run_config(project_defaults(project) | overrides), overrides, root)


def check_dataset(cfg: RunConfig, base: Path) -> None:
    path = local_dataset(cfg, base)
    if path is None:  # a Hugging Face Hub id
        check_hub_id("dataset", cfg.dataset, base, "a local folder holding train.jsonl "
                     "(+ validation.jsonl) or a single .jsonl/.csv/.parquet file")
        return
    if path.is_dir():
        train_file(path, cfg)
    elif path.suffix.lower() not in FILE_FORMATS:
        raise ConfigError(f"run-config key 'dataset': unsupported file type '{path.suffix}' for "
                          f"{path}; use one of {', '.join(FILE_FORMATS)}")


def check_model(cfg: RunConfig, base: Path) -> None:
    resolved = resolve_model_path(cfg.model, base)
    folder = Path(resolved)
    if not folder.is_dir():  # a Hugging Face Hub id
        check_hub_id("model", cfg.model, base, "a local model folder (save_pretrained)")
        return
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise ConfigError(f"run-config key 'model': {folder} holds no config.json, so it is not a "
                          "Hugging Face model folder; point 'model' at the folder that "
                          "save_pretrained wrote, or give a hub id")


def check_output_dir(root: Path, resume: bool) -> None:
    RunFolder(root).check_use(resume)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"run-config key 'output-dir': {root} is a file; choose a folder")
    existing = root
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"run-config key 'output-dir': cannot create or write {root} "
                          f"({existing} is not a writable folder); choose a folder you can "
                          "write to")


def check_hub_id(kind: str, repo_id: str, base: Path, local_fix: str) -> None:
    """A hub id that is not in the local Hugging Face cache needs the Hub: when the Hub is
    clearly unreachable, say so now rather than after the SuperLink, Ray and a minute of
    retries."""
    if _hub_cached(kind, repo_id):
        return
    reason = _hub_unreachable(kind)
    if reason:
        raise ConfigError(f"run-config key '{kind}' = '{repo_id}': no such local path "
                          f"(relative to {base}), not in the Hugging Face cache, and the Hub is "
                          f"unreachable ({reason}); point '{kind}' at {local_fix}")


def _hf_home() -> Path:
    return Path(os.environ.get("HF_HOME") or "~/.cache/huggingface").expanduser()


def _hub_cached(kind: str, repo_id: str) -> bool:
    hub = Path(os.environ.get("HF_HUB_CACHE") or _hf_home() / "hub").expanduser()
    if (hub / f"{kind}s--{repo_id.replace('/', '--')}").is_dir():
        return True
    if kind == "dataset":  # the datasets library's own cache
        cache = Path(os.environ.get("HF_DATASETS_CACHE") or _hf_home() / "datasets").expanduser()
        return (cache / repo_id.replace("/", "___")).is_dir()
    return False


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _hub_unreachable(kind: str, timeout_s: float = 2.0) -> str | None:
    """Why the Hub cannot be reached, or None when it may be (or the lookup is slow)."""
    if _truthy("HF_HUB_OFFLINE") or (kind == "dataset" and _truthy("HF_DATASETS_OFFLINE")):
        return "HF_HUB_OFFLINE is set" if _truthy("HF_HUB_OFFLINE") else \
            "HF_DATASETS_OFFLINE is set"
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or ""
    failed: list[str] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
        except OSError as exc:
            failed.append(f"{host} does not resolve: {exc.strerror or exc}")

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return failed[0] if failed else None
