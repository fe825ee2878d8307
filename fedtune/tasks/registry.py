"""Everything that differs between task types, picked by ``task`` in one place.

The ServerApp, the ClientApp and the DP trainer are task-agnostic: they load splits, build the
model, encode rows, collate batches, compute the loss and evaluate through a :class:`Task`. The
privacy path (Opacus, Poisson sampling, micro-batches, accounting, ledger, reports) is shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fedtune.config import ConfigError, RunConfig
from fedtune.data.batching import PadCollator
from fedtune.data.causal_batching import CausalCollator
from fedtune.data.instructions import load_instruction_splits
from fedtune.data.loading import load_splits
from fedtune.model.build import build_model
from fedtune.tasks.causal_lm import (
    build_causal_lm,
    causal_lm_loss,
    causal_lm_settings,
    encode_causal_lm,
    evaluate_causal_lm,
)
from fedtune.tasks.samples import generate_samples
from fedtune.tasks.seq_cls import encode_seq_cls, evaluate_seq_cls, seq_cls_loss


def _no_samples(cfg, model, tokenizer, splits) -> list[dict]:
    return []


def _no_settings(cfg, model, splits) -> dict:
    return {}


@dataclass(frozen=True)
class Task:
    name: str
    load_splits: Callable[[RunConfig], Any]  # -> fedtune.data.loading.Splits
    build_model: Callable[[RunConfig, int], Any]  # (cfg, num_labels) -> PeftModel, train mode
    encode: Callable[[Any, Any, RunConfig], Any]  # (tokenizer, split rows, cfg) -> Dataset
    collator: Callable[[int], Callable]  # pad id -> collate_fn
    loss: Callable[[RunConfig, Any, dict], torch.Tensor]  # batch mean of per-row losses
    evaluate: Callable[..., dict]  # (cfg, model, dataset, pad id, num_labels) -> metrics
    samples: Callable[..., list[dict]] = _no_samples  # (cfg, model, tokenizer, splits)
    settings: Callable[..., dict] = _no_settings  # extra config.json entries

    def seeded_model(self, cfg: RunConfig, num_labels: int):
        """The initial global model: identical for a given seed, so runs are reproducible."""
        torch.manual_seed(cfg.seed)
        return self.build_model(cfg, num_labels)


TASKS: dict[str, Task] = {
    "seq-cls": Task("seq-cls", load_splits, build_model, encode_seq_cls, PadCollator,
                    seq_cls_loss, evaluate_seq_cls),
    "causal-lm": Task("causal-lm", load_instruction_splits, build_causal_lm, encode_causal_lm,
                      CausalCollator, causal_lm_loss, evaluate_causal_lm,
                      samples=generate_samples, settings=causal_lm_settings),
}


def task_for(cfg: RunConfig) -> Task:
    try:
        return TASKS[cfg.task]
    except KeyError:
        raise ConfigError(f"run-config key 'task' = '{cfg.task}' is not implemented") from None
