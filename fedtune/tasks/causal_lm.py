"""``task = causal-lm``: a decoder with LoRA (no task head), its DP-safe loss and its evaluation.

The loss is computed here from the logits, not taken from the model: Hugging Face's causal-LM loss
is the mean over every response token *in the batch*, so one row's gradient would be scaled by the
other rows' token counts, and its clipped contribution would depend on other records. DP-SGD needs
each row's loss to be a function of that row alone: the mean over its own response tokens. The
batch loss is the mean of those per-row losses, the reduction Opacus expects (``loss_reduction =
"mean"``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from peft import PeftModel, TaskType, prepare_model_for_kbit_training
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

from fedtune.config import RunConfig
from fedtune.data.causal_batching import IGNORE_INDEX, CausalCollator, CausalLMDataset
from fedtune.model.build import load_base, wrap_with_lora
from fedtune.model.precision import autocast, load_kwargs, resolve_device

# exp() overflows a float64 past ~709; a perplexity this large only says "untrained" anyway.
MAX_LOG_PERPLEXITY = 700.0


def build_causal_lm(cfg: RunConfig, num_labels: int = 0) -> PeftModel:
    """The base decoder (bf16 or 4-bit on CUDA when asked) with LoRA on its attention
    projections; ``num_labels`` is unused (there is no head) and kept for one task interface."""
    kwargs = load_kwargs(cfg)
    base = load_base(AutoModelForCausalLM, cfg, **kwargs)
    if cfg.load_in_4bit:
        # Frozen 4-bit weights, norms upcast to fp32; no gradient checkpointing (it re-runs
        # forwards, which Opacus' per-sample hooks would record twice).
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    else:
        base.to(resolve_device(cfg))
    return wrap_with_lora(base, cfg, TaskType.CAUSAL_LM)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def _forward_losses(cfg: RunConfig, model, batch: dict[str, torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token losses, number of response tokens) per row; the next token is predicted
    from each position, so logits and labels are shifted by one."""
    on = model_device(model)
    batch = {k: v.to(on) for k, v in batch.items()}
    with autocast(cfg, on):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"], use_cache=False).logits
    logits = logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    token_loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX,
                                 reduction="none")
    return token_loss.sum(dim=1), (labels != IGNORE_INDEX).sum(dim=1)


def causal_lm_loss(cfg: RunConfig, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over rows of each row's mean response-token loss (a row with no response token left
    after truncation contributes 0)."""
    total, count = _forward_losses(cfg, model, batch)
    return (total / count.clamp(min=1)).mean()


@torch.no_grad()
def evaluate_causal_lm(cfg: RunConfig, model, dataset: CausalLMDataset, pad_token_id: int,
                       num_labels: int = 0) -> dict[str, float]:
    """``loss``: mean token loss over every response token of ``dataset``;
    ``perplexity``: exp(loss)."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=cfg.eval_batch_size,
                        collate_fn=CausalCollator(pad_token_id))
    total, tokens = 0.0, 0
    for batch in loader:
        row_total, row_count = _forward_losses(cfg, model, batch)
        total += float(row_total.sum())
        tokens += int(row_count.sum())
    if was_training:
        model.train()
    loss = total / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, MAX_LOG_PERPLEXITY))}


def encode_causal_lm(tokenizer, rows, cfg: RunConfig) -> CausalLMDataset:
    """``prompt``/``response`` rows -> token ids with the prompt masked out of the labels."""
    return CausalLMDataset.from_pairs(tokenizer, rows["prompt"], rows["response"], cfg.max_length)


def causal_lm_settings(cfg: RunConfig, model, splits) -> dict:
    """What ``config.json`` should say beyond the run config: the data's shape and the modules
    that really got LoRA (``lora-targets`` may have asked for the architecture's default)."""
    targets = unwrap_targets(model)
    return {"data-format": splits.form, "lora-targets-resolved": ",".join(sorted(targets))}


def unwrap_targets(model) -> set[str]:
    return set(model.peft_config["default"].target_modules)
