"""Where a model runs (``device``) and in which precision (``precision``, ``load-in-4bit``).

CPU stays the default and runs in fp32. On CUDA, ``auto`` loads the frozen base in bf16 and runs
forward passes under bf16 autocast; PEFT keeps the LoRA factors in fp32 (its default
``autocast_adapter_dtype``), so the optimiser and the DP noise act on fp32 weights. ``bf16`` asks
for the same on any device (on CPU: slow, but it tests the GPU path's numerics).
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
