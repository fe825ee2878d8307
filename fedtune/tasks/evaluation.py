"""Evaluation of a classifier: loss, accuracy, and macro-F1 when there are more than 2 labels."""

from __future__ import annotations

import contextlib

import torch
from torch.utils.data import DataLoader, Subset

from fedtune.data.batching import PadCollator, TokenizedDataset


@torch.no_grad()
def evaluate(model, dataset: TokenizedDataset, pad_token_id: int, batch_size: int,
             num_labels: int, precision=None) -> dict[str, float]:
    """``precision``: device -> the context forward passes run in (the run's autocast)."""
    was_training = model.training
    model.eval()
    # Rows in length order: each batch pads to its own longest row, so sorting removes most of
    # the padding (SST-2's validation sentences run from 3 to 60 tokens); the metrics do not
    # depend on the order.
    order = sorted(range(len(dataset)), key=lambda i: len(dataset.input_ids[i]))
    loader = DataLoader(Subset(dataset, order), batch_size=batch_size,
                        collate_fn=PadCollator(pad_token_id))
    total_loss, correct, seen = 0.0, 0, 0
    confusion = torch.zeros((num_labels, num_labels), dtype=torch.long)
    device = next(model.parameters()).device
    for batch in loader:
        with precision(device) if precision is not None else contextlib.nullcontext():
            out = model(**{k: v.to(device) for k, v in batch.items()})
        n = batch["labels"].shape[0]
        total_loss += float(out.loss) * n
        pred = out.logits.argmax(dim=-1).cpu()
        correct += int((pred == batch["labels"]).sum())
        seen += n
        confusion += torch.bincount(batch["labels"] * num_labels + pred,
                                    minlength=num_labels * num_labels).view(num_labels, num_labels)
    if was_training:
        model.train()
    metrics = {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1)}
    metrics["macro_f1"] = macro_f1(confusion)
    return metrics


def macro_f1(confusion: torch.Tensor) -> float:
    """Mean F1 over the labels that occur (as truth or prediction); rows are true labels, columns
    predictions.

    A label that is neither in the evaluated rows nor predicted is left out, as scikit-learn's
    ``f1_score(average="macro")`` does: TREC-50's test split holds 42 of its 50 labels, and
    counting the other 8 as zero would cap macro-F1 at 0.84. A label in the rows that is never
    predicted (or predicted but absent) counts as zero."""
    tp = confusion.diag().double()
    present = (confusion.sum(0) + confusion.sum(1)) > 0
    precision = tp / confusion.sum(0).clamp(min=1)
    recall = tp / confusion.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return float(f1[present].mean()) if bool(present.any()) else 0.0
