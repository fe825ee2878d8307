"""Dropout inside the frozen base model, which ``base-dropout`` can switch off for training.

Why off under DP: each client's gradient is already noised far above what dropout adds, and with
a frozen encoder dropout only makes the feature a head trains on differ from the one it is
evaluated on. Models read dropout two ways, so both are set: ``nn.Dropout`` modules (BERT also
reads their ``p`` for attention) and the config's rates, which attention kernels (Llama's
``attention_dropout``) copy at construction.
"""

from __future__ import annotations

import torch

from fedtune.config import RunConfig


def dropout_off(cfg: RunConfig) -> bool:
    if cfg.base_dropout == "auto":
        return cfg.dp in ("sample", "both")
    return cfg.base_dropout == "off"


def config_overrides(config) -> dict[str, float]:
    """``from_pretrained`` keyword arguments that set every dropout rate of ``config`` to 0."""
    return {key: 0.0 for key, value in config.to_dict().items()
            if isinstance(value, float) and ("dropout" in key or key.endswith("pdrop"))}


def zero_dropout_modules(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
