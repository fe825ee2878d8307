"""The run folder contract (``runs/<name>/``), which other tools read exactly.

``config.json``, ``partitions.json`` + ``.png``, ``metrics.jsonl`` (one line per evaluated round)
+ ``metrics.png`` (redrawn from it at every append),
``checkpoints/round-NNN/`` and ``final/`` (PEFT adapters; a checkpoint also holds the server's
state for ``resume`` and a ``manifest.json`` of checksums), ``privacy/report.json``,
``failed.json`` while a run is stopped by an error (removed when a resume completes it); for
``task = causal-lm`` also ``samples.jsonl`` + ``samples.md`` (generations from fixed prompts by
the final adapter).

Files follow the user's umask (``fedtune.atomic``). An adapter's ``adapter_config.json`` names its
base model by the run-config ``model`` id (not the local folder it was loaded from, e.g. the
packaged default inside a virtual environment), so the adapter loads on another machine.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from fedtune.atomic import append_line, write_json, write_text
from fedtune.config import ConfigError, RunConfig
from fedtune.outputs.checkpoint import write_checkpoint
from fedtune.outputs.plots import metrics_png, partitions_png

logger = logging.getLogger(__name__)


def is_local_model(name: str) -> bool:
    """A run-config ``model`` that names a folder on this machine rather than a hub id."""
    return name.startswith((".", "/", "~")) or Path(name).expanduser().is_dir()


def name_base_model(adapter_dir: Path, model: str) -> None:
    """Point every ``adapter_config.json`` under ``adapter_dir`` (and PEFT's model card) at
    ``model`` instead of the path the base weights were loaded from."""
    for path in adapter_dir.rglob("adapter_config.json"):
        data = json.loads(path.read_text())
        old = data.get("base_model_name_or_path")
        if old == model:
            continue
        data["base_model_name_or_path"] = model
        write_text(path, json.dumps(data, indent=2, sort_keys=True))
        card = path.parent / "README.md"
        if old and card.is_file():
            text = card.read_text()
            write_text(card, text.replace(old, model))  # base_model, base_model:adapter: tag


def default_name() -> str:
    """``runs/<date>-<time>`` (relative: under the ServerApp's working directory)."""
    return str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))


class RunFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    @classmethod
    def create(cls, cfg: RunConfig) -> RunFolder:
        """Make a fresh run folder, or open the one to resume; a run is never overwritten."""
        folder = cls(cfg.output_dir or default_name())
        folder.check_use(cfg.resume)
        if not cfg.resume:
            folder.root.mkdir(parents=True, exist_ok=True)
        return folder

    def check_use(self, resume: bool) -> None:
        """A run to resume must exist (``config.json``); a new run never overwrites one
        (``metrics.jsonl``). The launcher checks this before it starts anything."""
        if resume:
            if not self.config_path.is_file():
                raise ConfigError(
                    f"run-config key 'resume' = true: {self.root} holds no run to resume "
                    "(config.json is missing); point output-dir at an earlier run folder, or "
                    "drop resume to start a new run")
            return
        if self.metrics_path.exists():
            raise ConfigError(
                f"run-config key 'output-dir': {self.root} already holds a run "
                "(metrics.jsonl exists); choose a new output-dir, or set resume=true to continue it"
            )

    config_path = property(lambda self: self.root / "config.json")
    metrics_path = property(lambda self: self.root / "metrics.jsonl")
    partitions_path = property(lambda self: self.root / "partitions.json")
    final_dir = property(lambda self: self.root / "final")
    privacy_dir = property(lambda self: self.root / "privacy")
    privacy_report_path = property(lambda self: self.root / "privacy" / "report.json")
    samples_path = property(lambda self: self.root / "samples.jsonl")

    failure_path = property(lambda self: self.root / "failed.json")

    def checkpoint_dir(self, server_round: int) -> Path:
        return self.root / "checkpoints" / f"round-{server_round:03d}"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(round, folder) of every checkpoint, newest first."""
        found = []
        for p in (self.root / "checkpoints").glob("round-*"):
            suffix = p.name.removeprefix("round-")
            if p.is_dir() and suffix.isdigit():
                found.append((int(suffix), p))
        return sorted(found, reverse=True)

    def write_config(self, config: dict[str, Any]) -> None:
        write_json(self.config_path, config)

    def write_partitions(self, rows: list[dict], labels: tuple[str, ...], source: str) -> None:
        write_json(self.partitions_path, {"source": source, "labels": list(labels),
                                          "partitions": rows})
        partitions_png(self.root / "partitions.png", rows, labels)

    metrics_png_path = property(lambda self: self.root / "metrics.png")

    def read_config(self) -> dict[str, Any]:
        """``config.json``, or ``{}`` before it is written (or if it cannot be read)."""
        try:
            return json.loads(self.config_path.read_text())
        except (OSError, ValueError):
            return {}

    def append_metrics(self, line: dict[str, Any]) -> None:
        append_line(self.metrics_path, json.dumps(line, allow_nan=False))
        self.draw_metrics()

    def draw_metrics(self) -> None:
        """Redraw ``metrics.png`` from ``metrics.jsonl`` (a few tens of ms). A figure is for
        people: if it cannot be drawn, the run goes on and the log says why."""
        try:
            metrics_png(self.metrics_png_path, self.read_metrics(), self.read_config())
        except Exception as exc:  # noqa: BLE001 - never lose a round to a plot
            logger.warning("metrics.png not updated: %s: %s", type(exc).__name__, exc)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every complete line; a torn last line (a crash mid-append) is dropped, not fatal."""
        if not self.metrics_path.exists():
            return []
        lines = []
        for x in self.metrics_path.read_text().splitlines():
            try:
                lines.append(json.loads(x))
            except ValueError:
                continue
        return lines

    def rewrite_metrics(self, lines: list[dict[str, Any]]) -> None:
        write_text(self.metrics_path,
                   "".join(json.dumps(x, allow_nan=False) + "\n" for x in lines))
        self.draw_metrics()

    def save_adapter(self, peft_model, target: Path, server_state=None, meta=None) -> None:
        """``save_pretrained`` (plus the server's state, if given) into a temp folder with a
        checksum manifest, then swap it in whole. The adapter names its base model by the
        run-config ``model`` id when that is a hub id; a local folder stays as PEFT wrote it."""
        # Imported here: the launcher's checks use this module before anything starts, and the
        # head's module pulls in torch and transformers (8 s on a cold 2-core machine).
        from fedtune.model.pooling import head_description, write_head_config

        model = self.read_config().get("model")

        def fill(tmp: Path) -> None:
            peft_model.save_pretrained(str(tmp))
            head = head_description(peft_model)
            if head is not None:
                labels = self.read_config().get("labels")
                write_head_config(tmp, head | ({"labels": labels} if labels else {}))
            if isinstance(model, str) and model and not is_local_model(model):
                name_base_model(tmp, model)
            if server_state is not None:
                server_state(tmp)

        write_checkpoint(target, fill, meta or {})

    def write_failure(self, info: dict[str, Any]) -> None:
        write_json(self.failure_path, info)

    def clear_failure(self) -> None:
        self.failure_path.unlink(missing_ok=True)

    def write_privacy_report(self, report: dict[str, Any]) -> None:
        """``report.json`` for machines, then ``report.md`` + ``epsilon.png`` for people."""
        from fedtune.outputs.privacy_report import write_human_report

        write_json(self.privacy_report_path, report)
        write_human_report(self.privacy_dir, report)

    def write_samples(self, samples: list[dict[str, str]]) -> None:
        """``samples.jsonl`` (one ``{"prompt", "reference", "generation"}`` per line), then
        ``samples.md`` for people."""
        write_text(self.samples_path, "".join(json.dumps(x) + "\n" for x in samples))
        parts = ["# Samples from the final adapter\n"]
        for i, x in enumerate(samples, 1):
            parts.append(f"## {i}\n\n**Prompt**\n\n```\n{x['prompt']}\n```\n\n"
                         f"**Generation**\n\n```\n{x['generation']}\n```\n\n"
                         f"**Reference**\n\n```\n{x['reference']}\n```\n")
        write_text(self.samples_path.with_suffix(".md"), "\n".join(parts))
