"""``task = seq-cls``: the classification pieces behind the task interface of ``tasks/registry``.

Thin adapters over the modules that have always done the work (``tasks/model``, ``tasks/batching``,
``tasks/evaluation``), so the classification path computes exactly what it did before.
"""

from __future__ import annotations

import torch

from fedtune.config import RunConfig
from fedtune.data.batching import TokenizedDataset
from fedtune.model.precision import autocast
from fedtune.tasks.evaluation import evaluate


def encode_seq_cls(tokenizer, rows, cfg: RunConfig) -> TokenizedDataset:
    return TokenizedDataset.from_texts(tokenizer, rows["text"], rows["label"], cfg.max_length)


def seq_cls_loss(cfg: RunConfig, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's own cross-entropy: a mean over rows, one label per row (under bf16 autocast
    the logits are bf16; autocast computes the cross-entropy in fp32)."""
    with autocast(cfg, next(model.parameters()).device):
        return model(**batch).loss


def evaluate_seq_cls(cfg: RunConfig, model, dataset: TokenizedDataset, pad_token_id: int,
                     num_labels: int) -> dict[str, float]:
    return evaluate(model, dataset, pad_token_id, cfg.eval_batch_size, num_labels,
                    precision=lambda on: autocast(cfg, on))
