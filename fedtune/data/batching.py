"""Tokenised examples and per-batch padding.

Rows are tokenised once, without padding; each batch is padded to its own longest row. On SST-2
that is about twice as fast as padding everything to ``max-length`` (measured in ARCHITECTURE.md).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class TokenizedDataset(Dataset):
    """Variable-length token ids with an integer label per row."""

    def __init__(self, input_ids: list[list[int]], labels: list[int],
                 texts: list[str] | None = None):
        if len(input_ids) != len(labels):
            raise ValueError("input_ids and labels differ in length")
        self.input_ids = input_ids
        self.labels = labels
        self.texts = texts  # the raw rows, for the privacy ledger's data fingerprint

    @classmethod
    def from_texts(cls, tokenizer, texts: list[str], labels: list[int], max_length: int):
        texts = list(texts)
        encoded = tokenizer(texts, truncation=True, max_length=max_length)
        return cls(encoded["input_ids"], list(labels), texts)

    def __len__(self) -> int:
        return len(self.labels)

    def ledger_rows(self) -> tuple[list[str], list[int]]:
        """What the privacy ledger fingerprints: the raw rows, in order."""
        return self.texts, self.labels

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": torch.tensor(self.input_ids[i], dtype=torch.long),
            "labels": torch.tensor(self.labels[i], dtype=torch.long),
        }


class PadCollator:
    """Stack rows into a batch padded to the longest row, with its attention mask."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = r["input_ids"]
            mask[i, :n] = 1
        labels = torch.stack([r["labels"] for r in rows])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
