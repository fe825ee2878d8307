"""Which modules get LoRA: the user's list, or a per-architecture default.

``lora-targets`` defaults to ``query,value``, the attention projections of BERT-style encoders (the
seq-cls default). Decoders name theirs differently (Llama/Qwen/Mistral ``q_proj``/``v_proj``,
GPT-2 ``c_attn``), so ``auto``, and for ``task = causal-lm`` also that untouched seq-cls default,
mean "the query/value projections of this architecture", looked up by the model's ``model_type``
in PEFT's own table (the modules PEFT itself picks when given none).
"""

from __future__ import annotations

from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

from fedtune.config import ConfigError, RunConfig

AUTO = ("auto",)
SEQ_CLS_DEFAULT = ("query", "value")


def wants_default(cfg: RunConfig) -> bool:
    return cfg.lora_targets == AUTO or (cfg.task == "causal-lm"
                                        and cfg.lora_targets == SEQ_CLS_DEFAULT)


def resolve_targets(cfg: RunConfig, model_type: str) -> list[str]:
    """The module names to wrap for a model of ``model_type``."""
    if not wants_default(cfg):
        return list(cfg.lora_targets)
    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if not targets:
        raise ConfigError(
            f"run-config key 'lora-targets' = '{','.join(cfg.lora_targets)}': there is no default "
            f"for model type '{model_type}'; name the modules, e.g. lora-targets='q_proj,v_proj'"
        )
    return list(targets)
