import pytest
import torch

from fedtune.arrays import to_record, to_tensors
from fedtune.config import from_run_config
from fedtune.model.adapter import AdapterMismatchError, adapter_state, load_adapter_state
from fedtune.model.build import build_model


@pytest.fixture
def cfg(tiny_model):
    return from_run_config({"model": str(tiny_model), "lora-r": 4})


def test_only_lora_and_head_travel_and_round_trip_exactly(cfg):
    source = build_model(cfg, 2)
    with torch.no_grad():
        for p in source.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    state = adapter_state(source)
    assert all(("lora_" in k) or ("classifier" in k) for k in state)
    assert any("lora_A" in k for k in state) and any("classifier" in k for k in state)
    target = build_model(cfg, 2)
    load_adapter_state(target, to_tensors(to_record(state)))
    for key, value in adapter_state(target).items():
        assert torch.equal(value, state[key]), key


def test_unexpected_key_fails(cfg):
    model = build_model(cfg, 2)
    state = adapter_state(model)
    state["base_model.model.bert.encoder.layer.0.attention.self.key.lora_A.weight"] = torch.zeros(1)
    with pytest.raises(AdapterMismatchError, match="unexpected"):
        load_adapter_state(model, state)


def test_missing_key_fails(cfg):
    model = build_model(cfg, 2)
    state = adapter_state(model)
    state.pop(next(k for k in state if "lora_B" in k))
    with pytest.raises(AdapterMismatchError, match="missing"):
        load_adapter_state(model, state)


def test_wrong_shape_fails(cfg, tiny_model):
    model = build_model(cfg, 2)
    other = adapter_state(build_model(from_run_config({"model": str(tiny_model), "lora-r": 2}), 2))
    with pytest.raises(AdapterMismatchError, match="shape"):
        load_adapter_state(model, other)
