"""A few generations from fixed prompts at the end of a causal-LM run, for people to read.

The prompts are the first rows of the (seed-shuffled, capped) evaluation split, so two runs on the
same data and seed are compared on the same questions. Decoding is greedy: the samples show what
the adapter learnt, not the sampler's luck. Plain-text rows have no prompt; their first words are
the prompt and the rest is the reference.
"""

from __future__ import annotations

import torch

from fedtune.config import RunConfig
from fedtune.data.loading import Splits
from fedtune.model.precision import autocast
from fedtune.tasks.causal_lm import model_device

NUM_SAMPLES = 4
MAX_NEW_TOKENS = 48
PLAIN_TEXT_PROMPT_WORDS = 8


def fixed_prompts(splits: Splits, count: int = NUM_SAMPLES) -> list[tuple[str, str]]:
    """(prompt, reference) pairs from the first ``count`` evaluation rows."""
    rows = splits.eval.select(range(min(count, len(splits.eval))))
    pairs = []
    for prompt, response in zip(rows["prompt"], rows["response"], strict=True):
        if not prompt:
            words = response.split()
            prompt = " ".join(words[:PLAIN_TEXT_PROMPT_WORDS])
            response = " ".join(words[PLAIN_TEXT_PROMPT_WORDS:])
        pairs.append((prompt, response))
    return pairs


@torch.no_grad()
def generate_samples(cfg: RunConfig, model, tokenizer, splits: Splits,
                     max_new_tokens: int = MAX_NEW_TOKENS) -> list[dict]:
    """``[{"prompt", "reference", "generation"}]``, one prompt at a time (no padding to get
    wrong)."""
    was_training = model.training
    model.eval()
    on = model_device(model)
    samples = []
    for prompt, reference in fixed_prompts(splits):
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=True)["input_ids"]], device=on)
        with autocast(cfg, on):
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        samples.append({"prompt": prompt, "reference": reference, "generation": text})
    if was_training:
        model.train()
    return samples
