"""``pooling``: the head reads the feature the base model was trained to produce, starts at zero,
and the saved adapter (PEFT folder + ``fedtune_head.json``) reloads into the same predictions."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertForSequenceClassification

from fedtune.config import ConfigError, from_run_config
from fedtune.data.toy import make_tiny_sentence_transformer
from fedtune.model.build import build_model, load_classifier
from fedtune.model.pooling import HEAD_FILE, PooledClassifier, declared_pooling, pool
from fedtune.outputs.run_folder import RunFolder


@pytest.fixture(scope="module")
def sentence_model(tmp_path_factory):
    return make_tiny_sentence_transformer(tmp_path_factory.mktemp("tiny-st"))


def _cfg(model, **extra):
    return from_run_config({"model": str(model), **extra})


def _base(peft_model):
    return peft_model.get_base_model()


def test_auto_picks_mean_pooling_for_a_sentence_transformers_folder(sentence_model):
    assert declared_pooling(str(sentence_model)) == "mean"
    base = _base(build_model(_cfg(sentence_model), 3))
    assert isinstance(base, PooledClassifier) and base.pooling == "mean"


def test_auto_keeps_the_standard_head_for_a_plain_bert_folder(tiny_model):
    assert declared_pooling(str(tiny_model)) is None
    assert isinstance(_base(build_model(_cfg(tiny_model), 2)), BertForSequenceClassification)


def test_a_declared_cls_pooling_and_explicit_settings_win(tmp_path, tiny_model):
    cls_model = make_tiny_sentence_transformer(tmp_path / "cls", pooling="cls")
    assert _base(build_model(_cfg(cls_model), 2)).pooling == "cls"
    assert _base(build_model(_cfg(tiny_model, pooling="mean"), 2)).pooling == "mean"
    assert isinstance(_base(build_model(_cfg(cls_model, pooling="pooler"), 2)),
                      BertForSequenceClassification)
    with pytest.raises(ConfigError, match="'pooling'"):
        _cfg(tiny_model, pooling="max")


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_every_head_starts_at_zero_and_trains(tiny_model, pooling):
    model = build_model(_cfg(tiny_model, pooling=pooling), 5)
    head = {n: p for n, p in model.named_parameters() if "classifier" in n and p.requires_grad}
    assert head, "the head must train"
    assert all(float(p.abs().max()) == 0.0 for p in head.values())
    batch = {"input_ids": torch.tensor([[2, 5, 9, 3, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0]])}
    logits = model(**batch).logits
    assert logits.shape == (1, 5) and torch.equal(logits, torch.zeros(1, 5))


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(pool(hidden, mask, "mean"), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(pool(hidden, mask, "cls"), torch.tensor([[1.0, 2.0]]))


@pytest.mark.parametrize("pooling", ["mean", "pooler"])
def test_the_saved_adapter_reloads_and_predicts_the_same(tmp_path, sentence_model, pooling):
    cfg = _cfg(sentence_model, pooling=pooling)
    model = build_model(cfg, 3)
    torch.manual_seed(0)
    with torch.no_grad():  # a "trained" adapter: every trainable tensor away from its init
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    model.eval()
    folder = RunFolder(tmp_path / "run")
    folder.write_config({**cfg.to_dict(), "labels": ["a", "b", "c"]})
    folder.save_adapter(model, folder.final_dir)
    head = json.loads((folder.final_dir / HEAD_FILE).read_text())
    assert head == {"pooling": pooling, "num_labels": 3, "labels": ["a", "b", "c"]}

    reloaded = load_classifier(str(folder.final_dir), model=str(sentence_model))
    batch = {"input_ids": torch.tensor([[2, 5, 9, 3, 0], [2, 12, 3, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])}
    with torch.no_grad():
        expected, got = model(**batch).logits, reloaded(**batch).logits
    assert float(expected.abs().max()) > 0
    torch.testing.assert_close(got, expected)


def test_lora_on_every_dense_layer_trains_under_dp_with_a_token_pooling(sentence_model,
                                                                         tmp_path):
    """`lora-targets = query,key,value,dense` also matches BERT's pooler, which mean pooling
    never reads: it is dropped, so no LoRA tensor is left without a per-sample gradient (Opacus
    stopped the client mid-run with "Per sample gradient is not initialized")."""
    from client.trainer import train_local
    from fedtune.data.batching import TokenizedDataset
    from fedtune.data.loading import load_splits
    from fedtune.data.toy import make_toy_dataset
    from fedtune.model.adapter import adapter_state
    from fedtune.model.build import load_tokenizer
    from fedtune.protocol import PrivacyState

    cfg = _cfg(sentence_model, dataset=str(make_toy_dataset(tmp_path / "data")),
               **{"max-train-samples": 60, "batch-size": 12, "delta": 1e-3, "max-length": 32,
                  "lora-targets": "query,key,value,dense"})
    model = build_model(cfg, 2)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("intermediate.dense.lora_A" in n for n in names)
    assert not any("pooler" in n for n in names)
    splits, tok = load_splits(cfg), load_tokenizer(cfg)
    rows = TokenizedDataset.from_texts(tok, splits.train["text"], splits.train["label"], 32)
    before = adapter_state(model)
    train_local(model, rows, tok.pad_token_id, cfg,
                PrivacyState(noise_multiplier=1.0, sample_rate=0.2), seed=1)
    after = adapter_state(model)
    assert any(not torch.equal(before[k], after[k]) for k in after if "intermediate" in k)
