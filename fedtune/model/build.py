"""The base transformer plus its LoRA adapter (PEFT); the classification head trains and travels.

``load_base`` and ``wrap_with_lora`` are shared with the causal-LM task (``tasks/causal_lm``).
"""

from __future__ import annotations

import zlib

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)
from transformers.utils import logging as hf_logging

from fedtune.config import ConfigError, RunConfig
from fedtune.model.dropout import config_overrides, dropout_off, zero_dropout_modules
from fedtune.model.lora_targets import resolve_targets
from fedtune.model.paths import resolve_model_path
from fedtune.model.pooling import PooledClassifier, read_head_config, resolve_pooling, zero_head
from fedtune.model.precision import apply_matmul_precision, resolve_device


def load_tokenizer(cfg: RunConfig):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg.model))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_model(cfg: RunConfig, num_labels: int) -> PeftModel:
    """Base model with a fresh, zero ``num_labels`` head on the ``pooling`` feature, wrapped with
    LoRA; only LoRA + head train.

    The model lives on ``device``. The result is in train mode: Opacus needs that for its hooks,
    and ``from_pretrained`` leaves models in eval mode.
    """
    return wrap_with_lora(classifier_base(cfg, num_labels), cfg, TaskType.SEQ_CLS)


def classifier_base(cfg: RunConfig, num_labels: int, pooling: str | None = None):
    """The un-adapted classifier: the architecture's own head (``pooler``), or the plain encoder
    with a linear head on the mean / [CLS] token state (``model/pooling``)."""
    pooling = pooling or resolve_pooling(cfg.pooling, resolve_model_path(cfg.model))
    if pooling == "pooler":
        # A checkpoint that already has a head of another size (a fine-tuned classifier) loads
        # too: the head is replaced by a zero one either way.
        base = load_base(AutoModelForSequenceClassification, cfg, num_labels=num_labels,
                         ignore_mismatched_sizes=True)
        zero_head(standard_head(base))
        return base
    return PooledClassifier(load_base(AutoModel, cfg), num_labels, pooling)


def standard_head(model):
    """The last linear layer of an architecture's classification head (BERT ``classifier``,
    RoBERTa ``classifier.out_proj``, decoders ``score``)."""
    head = getattr(model, "classifier", None) or getattr(model, "score", None)
    head = getattr(head, "out_proj", head)
    if not isinstance(head, torch.nn.Linear):
        raise ConfigError(f"run-config key 'pooling': {type(model).__name__} has no linear "
                          "classification head; set pooling = mean or cls")
    return head


def load_classifier(adapter_dir: str, model: str | None = None, device: str = "cpu"):
    """A saved ``final/`` (or checkpoint) adapter as a ready classifier, in eval mode.

    The folder holds PEFT's adapter (LoRA + the trained head) and ``fedtune_head.json`` (the
    pooling and the number of labels); ``model`` overrides the base model the adapter names.
    """
    from peft import PeftConfig

    head = read_head_config(adapter_dir)
    peft_config = PeftConfig.from_pretrained(adapter_dir)
    cfg = RunConfig(model=model or peft_config.base_model_name_or_path, device=device)
    num_labels = int(head.get("num_labels", 2))
    base = classifier_base(cfg, num_labels, pooling=head["pooling"]).to(device)
    loaded = PeftModel.from_pretrained(base, adapter_dir)
    return loaded.eval()


def load_base(auto_class, cfg: RunConfig, **kwargs):
    """``auto_class.from_pretrained`` on ``model``; a model that cannot be loaded is a setting to
    fix, not a stack trace."""
    path = resolve_model_path(cfg.model)
    no_dropout = dropout_off(cfg)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialised head" is expected, not news
    try:
        if no_dropout:
            kwargs = {**config_overrides(AutoConfig.from_pretrained(path)), **kwargs}
        base = auto_class.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ConfigError(f"run-config key 'model': cannot load '{cfg.model}' ({exc})") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    if no_dropout:
        zero_dropout_modules(base)
    return base


def wrap_with_lora(base, cfg: RunConfig, task_type: TaskType) -> PeftModel:
    """``base`` (already on its device) with LoRA on ``lora-targets``; only LoRA (+ a task head)
    trains; FFA-LoRA's shared A is drawn and frozen here. Returned in train mode."""
    if base.config.pad_token_id is None:
        base.config.pad_token_id = base.config.eos_token_id
    base.to(resolve_device(cfg))  # before get_peft_model: LoRA layers are created beside it
    apply_matmul_precision(cfg)
    lora = LoraConfig(
        task_type=task_type,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=resolve_targets(cfg, base.config.model_type),
    )
    try:
        model = get_peft_model(base, lora)
    except ValueError as exc:
        raise ConfigError(
            f"run-config key 'lora-targets' = '{','.join(cfg.lora_targets)}': {exc}"
        ) from exc
    if cfg.aggregation == "ffa":
        freeze_shared_lora_a(model, cfg.seed)
    model.train()
    return model


def freeze_shared_lora_a(model: PeftModel, seed: int) -> None:
    """FFA-LoRA: re-draw every LoRA A from ``seed`` and the module's name, and freeze it.

    Server and clients build their models independently, in different processes; a generator per
    module, seeded by (seed, name), gives them bit-identical A whatever else consumed the global
    RNG before. The draw is PEFT's own init (Kaiming-uniform, a = sqrt(5): U(-1/sqrt(in),
    1/sqrt(in))). Freezing A means Opacus clips and noises only B and the head.
    """
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, torch.nn.ModuleDict):
            continue
        for adapter in lora_a.values():
            weight = adapter.weight
            generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            bound = 1.0 / weight.shape[1] ** 0.5
            with torch.no_grad():
                weight.copy_(torch.rand(weight.shape, generator=generator) * 2 * bound - bound)
            weight.requires_grad_(False)
