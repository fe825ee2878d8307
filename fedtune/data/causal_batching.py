"""Causal-LM examples as token ids with per-token labels, and per-batch padding.

The prompt's tokens get label -100 (ignored), the response's tokens their own ids, so the loss
covers the response only. The two are tokenised apart and concatenated: the boundary is then exact
(a joint tokenisation can merge the prompt's last characters with the response's first) and is the
one the model sees at generation time, when it continues the tokenised prompt. Labels are built
here, never from ``input_ids != pad``: with GPT-2 style tokenizers pad is EOS, and the EOS that
ends every response must stay a learnt token.

No packing: under DP-SGD one row is one protected record, and a packed row would mix several
records into one clipped gradient. Batches are padded to their longest row instead (and the
trainer's length-sorted micro-batches keep that padding small).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100


def encode_pair(tokenizer, prompt: str, response: str, max_length: int
                ) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one example, at most ``max_length`` tokens.

    Too long: the prompt loses its beginning (its end says what to answer) down to half of
    ``max-length``, then the response loses its end.
    """
    p = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    r = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        r.append(tokenizer.eos_token_id)
    room = max(max_length - len(r), max_length // 2)
    if len(p) > room:
        p = p[len(p) - room:]
    r = r[: max_length - len(p)]
    return p + r, [IGNORE_INDEX] * len(p) + r


class CausalLMDataset(Dataset):
    """Variable-length examples; each row's labels mask its prompt."""

    def __init__(self, input_ids: list[list[int]], labels: list[list[int]], texts: list[str]):
        if not (len(input_ids) == len(labels) == len(texts)):
            raise ValueError("input_ids, labels and texts differ in length")
        self.input_ids, self.labels, self.texts = input_ids, labels, texts

    @classmethod
    def from_pairs(cls, tokenizer, prompts: list[str], responses: list[str], max_length: int):
        prompts, responses = list(prompts), list(responses)
        ids, labels = [], []
        for prompt, response in zip(prompts, responses, strict=True):
            i, lab = encode_pair(tokenizer, prompt, response, max_length)
            ids.append(i)
            labels.append(lab)
        texts = [f"{p}\x1d{r}" for p, r in zip(prompts, responses, strict=True)]
        return cls(ids, labels, texts)

    def __len__(self) -> int:
        return len(self.input_ids)

    def ledger_rows(self) -> tuple[list[str], list[int]]:
        """What the privacy ledger fingerprints: prompt and response of every row, in order."""
        return self.texts, [0] * len(self.texts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": torch.tensor(self.input_ids[i], dtype=torch.long),
            "labels": torch.tensor(self.labels[i], dtype=torch.long),
        }


class CausalCollator:
    """Right-pad to the longest row: ids with pad, labels with -100, plus the attention mask and
    explicit ``position_ids`` [B, T] (Opacus needs per-row position ids; implicit ones are built
    with batch size 1)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = r["input_ids"]
            labels[i, :n] = r["labels"]
            mask[i, :n] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                "labels": labels}
