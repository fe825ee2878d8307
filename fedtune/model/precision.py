"""Where a model runs (``device``) and in which precision (``precision``, ``load-in-4bit``).

CPU stays the default and runs in fp32. On CUDA, ``auto`` runs forward passes under bf16
autocast with TF32 matmuls for what stays in fp32 (measured on an H200: TF32 alone is 3.9x fp32
for a BERT-large-sized classifier); ``causal-lm`` also loads its frozen base in bf16. PEFT keeps
the LoRA factors (and the head) in fp32, so the optimiser and the DP noise act on fp32 weights,
and the trainer clips per-sample gradients in fp32. ``tf32`` is fp32 weights and activations
with TF32 matmuls; ``bf16`` asks for autocast on any device (on CPU: slow, but it tests the GPU
path's numerics).
"""

from __future__ import annotations

import contextlib
import importlib.util

import torch

from fedtune.config import ConfigError, RunConfig


def resolve_device(cfg: RunConfig) -> torch.device:
    """``auto``: the GPU when this process sees one, else the CPU.

    In a simulation Ray hides the GPUs from a ClientApp unless the federation config gives each
    client a share (``client-resources-num-gpus``), so ``auto`` is safe on any machine.
    """
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("run-config key 'device' = 'cuda': this process sees no CUDA device; "
                          "use device='auto' or 'cpu', or give simulated clients a GPU share "
                          "(--federation-config 'client-resources-num-gpus=0.5')")
    return torch.device("cuda")


def uses_bf16(cfg: RunConfig) -> bool:
    return cfg.precision == "bf16" or (cfg.precision == "auto"
                                       and resolve_device(cfg).type == "cuda")


def uses_tf32(cfg: RunConfig) -> bool:
    return cfg.precision in ("auto", "tf32") and resolve_device(cfg).type == "cuda"


def apply_matmul_precision(cfg: RunConfig) -> None:
    """TF32 for fp32 matmuls and convolutions on CUDA when the run asks for it (``auto``,
    ``tf32``), plain fp32 otherwise. A process-wide torch switch: set where each model is
    built, so the run's own setting is the one in force."""
    if resolve_device(cfg).type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = uses_tf32(cfg)
    torch.backends.cudnn.allow_tf32 = uses_tf32(cfg)


def autocast(cfg: RunConfig, on: torch.device):
    """bf16 autocast on ``on`` when the run uses bf16, else a no-op context."""
    if not uses_bf16(cfg):
        return contextlib.nullcontext()
    return torch.autocast(device_type=on.type, dtype=torch.bfloat16)


def load_kwargs(cfg: RunConfig) -> dict:
    """``from_pretrained`` arguments for the base weights: bf16, or 4-bit NF4 (QLoRA)."""
    if cfg.load_in_4bit:
        if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(
                "run-config key 'load-in-4bit' = true needs a CUDA GPU and the 'bitsandbytes' "
                "package (pip install bitsandbytes); set load-in-4bit = false on this machine"
            )
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if uses_bf16(cfg) else torch.float32
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)
        return {"quantization_config": quant, "device_map": {"": torch.cuda.current_device()}}
    if uses_bf16(cfg):
        return {"dtype": torch.bfloat16}
    return {}
