"""How strongly the final model remembers each canary: a black-box score from its logits."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from fedtune.data.batching import PadCollator, TokenizedDataset
from fedtune.privacy.audit.canaries import Canaries


@torch.no_grad()
def canary_scores(model, tokenizer, canaries: Canaries, max_length: int,
                  batch_size: int = 64) -> np.ndarray:
    """The logit margin of each canary's own label over the best other label, centred on the
    median margin of the canaries that share its label.

    Training on a canary raises its margin. The centring takes out what the model predicts for
    gibberish in general (a bias towards one label would otherwise rank every canary of that
    label first); it uses no coin, so the guesses stay a function of the model alone."""
    data = TokenizedDataset.from_texts(tokenizer, list(canaries.texts), list(canaries.labels),
                                       max_length)
    loader = DataLoader(data, batch_size=batch_size, collate_fn=PadCollator(tokenizer.pad_token_id))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    margins = []
    for batch in loader:
        labels = batch.pop("labels")
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
        own = logits.gather(1, labels[:, None]).squeeze(1)
        others = logits.scatter(1, labels[:, None], float("-inf")).max(dim=1).values
        margins.append(own - others)
    if was_training:
        model.train()
    scores = torch.cat(margins).numpy().astype(np.float64)
    labels = np.asarray(canaries.labels)
    for y in np.unique(labels):
        scores[labels == y] -= np.median(scores[labels == y])
    return scores


def gradient_alignment_scores(model, initial: dict[str, torch.Tensor], tokenizer,
                              canaries: Canaries, max_length: int) -> np.ndarray:
    """White box: how far the run moved the adapter in the direction that raises each canary's
    margin.

    The final adapter minus the initial one (``initial``: the run's seeded round-0 adapter) is the
    sum of every step the run took, and a step on a canary moved it so as to raise that canary's
    margin. Each canary's margin gradient at the final model (its label's logit minus the best
    other's), less the mean of those of the canaries with the same label (what gibberish with
    that label has in common), is compared with it by cosine. The margin's gradient, unlike the
    loss's, does not vanish on a canary the model has learnt well. No coin is used."""
    from fedtune.model.adapter import adapter_state

    final = adapter_state(model)
    keys = [k for k in final if k in initial]
    delta = torch.cat([(final[k] - initial[k]).flatten().double() for k in keys])
    params = _params_for(model, keys, dict(model.named_parameters()))
    trainable = [p.requires_grad for p in params]  # a loaded PeftModel has them frozen
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    grads = []
    try:
        for p in params:
            p.requires_grad_(True)
        for text, label in zip(canaries.texts, canaries.labels, strict=True):
            enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            logits = model(**{k: v.to(device) for k, v in enc.items()}).logits[0].float()
            others = logits.clone().detach()
            others[label] = float("-inf")
            margin = logits[label] - logits[int(others.argmax())]
            g = torch.autograd.grad(margin, params, allow_unused=True)  # e.g. a pooler
            grads.append(torch.cat([(x if x is not None else torch.zeros_like(p)).flatten()
                                    .double().cpu() for x, p in zip(g, params, strict=True)]))
    finally:
        for p, flag in zip(params, trainable, strict=True):
            p.requires_grad_(flag)
        if was_training:
            model.train()
    grads = torch.stack(grads)
    labels = torch.tensor(canaries.labels)
    for y in labels.unique():
        grads[labels == y] -= grads[labels == y].mean(dim=0)
    scores = (grads @ delta) / grads.norm(dim=1).clamp(min=1e-30)
    return scores.numpy()


def _params_for(model, keys: list[str], named: dict) -> list[torch.nn.Parameter]:
    """The trainable parameters behind ``adapter_state``'s keys, in the same order (PEFT names
    them without the adapter name: ``...lora_A.weight`` is ``...lora_A.default.weight``)."""
    out = []
    for k in keys:
        match = [p for n, p in named.items() if n == k or n.replace(".default", "") == k
                 or n.replace(".modules_to_save.default", "") == k]
        if len(match) != 1:
            raise KeyError(f"no single trainable parameter for adapter tensor {k}")
        out.append(match[0])
    return out
