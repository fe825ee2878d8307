"""Moving the trainable part (LoRA tensors + head) in and out of a model, strictly.

PEFT's ``set_peft_model_state_dict`` loads with ``strict=False`` and silently ignores keys it does
not know; a renamed module would then train from scratch every round without anyone noticing. Here
a missing or unexpected key, or a wrong shape, is an error.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict


class AdapterMismatchError(ValueError):
    """An adapter state does not fit the model it is loaded into."""


def unwrap(model) -> PeftModel:
    """The PEFT model inside an Opacus ``GradSampleModule`` (or the model itself)."""
    return getattr(model, "_module", model)


def adapter_state(model) -> dict[str, torch.Tensor]:
    state = get_peft_model_state_dict(unwrap(model))
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def check_adapter_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise AdapterMismatchError(
            f"adapter keys do not match the model: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise AdapterMismatchError(
                f"adapter tensor '{key}' has shape {tuple(state[key].shape)}, "
                f"the model expects {tuple(ref.shape)}"
            )


def load_adapter_state(model, state: dict[str, torch.Tensor],
                       expected_keys: Iterable[str] | None = None) -> None:
    """Load ``state`` strictly; ``expected_keys`` narrows what must be there (FFA-LoRA sends no A,
    which the model already holds), it never widens it."""
    peft_model = unwrap(model)
    expected = adapter_state(peft_model)
    if expected_keys is not None:
        wanted = set(expected_keys)
        expected = {k: v for k, v in expected.items() if k in wanted}
    check_adapter_state(expected, state)
    result = set_peft_model_state_dict(peft_model, state)
    if getattr(result, "unexpected_keys", None):
        raise AdapterMismatchError(f"PEFT ignored adapter keys {result.unexpected_keys[:5]}")
