"""``base-dropout``: the base model's own dropout can be switched off for training (``auto``: under
sample-level DP), for every way a model reads its rates, and the LoRA dropout stays its own."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, LlamaConfig

from fedtune.config import ConfigError, from_run_config
from fedtune.data.toy import make_tiny_sentence_transformer
from fedtune.model.build import build_model
from fedtune.model.dropout import config_overrides, dropout_off


@pytest.fixture(scope="module")
def tiny_sentence_model(tmp_path_factory):
    return make_tiny_sentence_transformer(tmp_path_factory.mktemp("tiny-st"))


BATCH = {"input_ids": torch.tensor([[2, 5, 9, 3, 7, 8, 3]]),
         "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1, 1]])}


def _two_forwards(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Two train-mode passes of the same batch; the zero head would hide any difference, so the
    encoder's token states are compared."""
    encoder = model.get_base_model().encoder
    torch.manual_seed(0)
    first = encoder(**BATCH).last_hidden_state
    second = encoder(**BATCH).last_hidden_state
    return first, second


@pytest.mark.parametrize(("setting", "dp", "off"), [
    ("model", "sample", False), ("off", "off", True), ("auto", "sample", True),
    ("auto", "both", True), ("auto", "off", False), ("auto", "client", False)])
def test_auto_switches_dropout_off_only_under_sample_level_dp(setting, dp, off):
    one_pass = {"local-epochs": 0.5, "num-server-rounds": 2}
    assert dropout_off(from_run_config({"base-dropout": setting, "dp": dp, **one_pass})) is off


@pytest.mark.parametrize(("epochs", "rounds", "planned", "off"), [
    (0.5, 10, 2, True),   # the main job: 10 rounds in turns, each client in 2 of them
    (1.0, 1, 0, True), (0.5, 2, 0, True),
    (1.0, 10, 4, False),  # TREC-6 in the benchmark: four passes over each client's rows
    (0.5, 3, 0, False)])
def test_auto_keeps_the_models_dropout_when_a_client_sees_its_rows_again(epochs, rounds,
                                                                         planned, off):
    cfg = from_run_config({"dp": "sample", "local-epochs": epochs, "num-server-rounds": rounds,
                           "planned-rounds": planned})
    assert dropout_off(cfg) is off


def test_off_makes_training_passes_deterministic_and_model_keeps_them_random(tiny_sentence_model):
    kept = build_model(from_run_config({"model": str(tiny_sentence_model),
                                        "base-dropout": "model"}), 2)
    assert kept.training
    first, second = _two_forwards(kept)
    assert not torch.equal(first, second), "the tiny BERT's own dropout (0.1) must act"

    off = build_model(from_run_config({"model": str(tiny_sentence_model), "base-dropout": "off",
                                       "lora-dropout": 0.2}), 2)
    assert off.training
    first, second = _two_forwards(off)
    assert torch.equal(first, second)
    base = off.get_base_model()
    assert base.encoder.config.hidden_dropout_prob == 0.0
    assert base.encoder.config.attention_probs_dropout_prob == 0.0
    lora_dropouts = [m.p for n, m in off.named_modules()
                     if "lora_dropout" in n and isinstance(m, torch.nn.Dropout)]
    assert lora_dropouts and set(lora_dropouts) == {0.2}, "lora-dropout is not the base's"


def test_every_rate_a_decoder_config_declares_is_zeroed():
    assert config_overrides(LlamaConfig(attention_dropout=0.3)) == {"attention_dropout": 0.0}
    assert set(config_overrides(GPT2Config())) >= {"resid_pdrop", "embd_pdrop", "attn_pdrop"}


def test_an_unknown_value_names_the_choices():
    with pytest.raises(ConfigError, match="'base-dropout'"):
        from_run_config({"base-dropout": "none"})
