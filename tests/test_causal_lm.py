"""task = causal-lm in-process: data shapes, response-only labels, the per-row DP loss, LoRA
targets per architecture, DP training (fp32 and bf16) and the saved adapter."""

import math

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from client.trainer import _fp32_grad_samples, train_local
from fedtune.config import ConfigError, from_run_config
from fedtune.data.causal_batching import IGNORE_INDEX, CausalCollator, encode_pair
from fedtune.data.instructions import load_instruction_splits
from fedtune.data.prompts import render_prompt
from fedtune.data.toy import write_jsonl
from fedtune.model.adapter import adapter_state
from fedtune.model.build import load_tokenizer
from fedtune.model.lora_targets import resolve_targets
from fedtune.privacy.calibration import sample_rate
from fedtune.protocol import PrivacyState
from fedtune.tasks.causal_lm import causal_lm_loss
from fedtune.tasks.registry import task_for


def causal_cfg(model, data=None, **extra):
    return from_run_config({"task": "causal-lm", "model": str(model),
                            **({"dataset": str(data)} if data else {}), "max-length": 64,
                            "max-train-samples": 0, "batch-size": 16, "micro-batch-size": 8,
                            "delta": 1e-3, "lora-r": 4, **extra})


def rows_of(cfg):
    task = task_for(cfg)
    splits = task.load_splits(cfg)
    tok = load_tokenizer(cfg)
    return task, splits, tok, task.encode(tok, splits.train, cfg), task.encode(tok, splits.eval,
                                                                               cfg)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_only_response_tokens_are_labelled_token_by_token(arch, tiny_llama, tiny_gpt2):
    model = tiny_llama if arch == "llama" else tiny_gpt2
    tok = load_tokenizer(causal_cfg(model))
    prompt = render_prompt("alpaca", "Say the opposite of the word .", "good")
    ids, labels = encode_pair(tok, prompt, "bad", max_length=64)
    prompt_ids = tok(prompt, add_special_tokens=True)["input_ids"]
    assert (prompt_ids[0] == tok.bos_token_id) == (arch == "llama")  # Llama-style BOS only
    n = len(prompt_ids)
    assert ids[:n] == prompt_ids
    assert labels[:n] == [IGNORE_INDEX] * n
    assert labels[n:] == ids[n:] == [tok.convert_tokens_to_ids("bad"), tok.eos_token_id]
    short = encode_pair(tok, "Give the opposite of good .", "", max_length=64)
    batch = CausalCollator(tok.pad_token_id)([
        {"input_ids": torch.tensor(x), "labels": torch.tensor(y)} for x, y in ((ids, labels),
                                                                                 short)])
    row = batch["labels"][1]
    width, used = batch["input_ids"].shape[1], len(short[0])
    assert row[used - 1] == tok.eos_token_id  # the response's EOS is learnt ...
    assert row[used:].tolist() == [IGNORE_INDEX] * (width - used)  # ... padding never is
    if arch == "gpt2":
        assert tok.pad_token_id == tok.eos_token_id  # the case labels != pad would get wrong
        assert batch["input_ids"][1, used:].eq(tok.eos_token_id).all()
    assert batch["attention_mask"][1].tolist() == [1] * used + [0] * (width - used)
    assert batch["position_ids"][1, :used].tolist() == list(range(used))


def test_truncation_keeps_the_prompt_end_and_some_response(tiny_llama):
    tok = load_tokenizer(causal_cfg(tiny_llama))
    prompt = render_prompt("alpaca", "Give the opposite of good . " * 8)
    ids, labels = encode_pair(tok, prompt, "bad good " * 30, max_length=40)
    assert len(ids) == 40
    n_prompt = sum(x == IGNORE_INDEX for x in labels)
    assert n_prompt == 20  # half of max-length
    assert tok.decode(ids[:n_prompt]).endswith("### Response :")


def test_batch_loss_is_the_mean_of_per_row_means(tiny_llama, instruction_data):
    """Each row's loss must depend on that row only (DP-SGD clips per row): the batch loss of
    rows with different response lengths equals the mean of their losses alone."""
    cfg = causal_cfg(tiny_llama, instruction_data)
    task, _, tok, _, _ = rows_of(cfg)
    torch.manual_seed(0)
    model = task.build_model(cfg, 0)
    collate = CausalCollator(tok.pad_token_id)
    a = encode_pair(tok, "Give the opposite of good .", "bad", 64)
    b = encode_pair(tok, "Give the opposite of bad .", "good great lovely superb", 64)
    rows = [{"input_ids": torch.tensor(x), "labels": torch.tensor(y)} for x, y in (a, b)]
    with torch.no_grad():
        both = causal_lm_loss(cfg, model, collate(rows))
        alone = [causal_lm_loss(cfg, model, collate([r])) for r in rows]
        hf_token_mean = model(**{k: v for k, v in collate(rows).items()}).loss
    assert both == pytest.approx(float(sum(alone) / 2), rel=1e-5)
    # Hugging Face's loss weights rows by their response tokens instead: not per-row.
    tokens = [int((r["labels"][1:] != -100).sum()) for r in rows]
    weighted = sum(n * float(x) for n, x in zip(tokens, alone, strict=True)) / sum(tokens)
    assert tokens[0] != tokens[1] and not math.isclose(float(alone[0]), float(alone[1]))
    assert float(hf_token_mean) == pytest.approx(weighted, rel=1e-5)
    assert abs(float(both) - weighted) > 1e-3 * abs(float(alone[0]) - float(alone[1]))


def test_prompt_response_csv_and_plain_text_parquet(tmp_path, tiny_llama):
    import csv

    import pandas as pd

    folder = tmp_path / "pr"
    folder.mkdir()
    for split in ("train", "validation"):
        with open(folder / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["prompt", "completion"])
            w.writerows([["Give the opposite of good .", "bad"]] * 5)
    splits = load_instruction_splits(causal_cfg(tiny_llama, folder, **{"prompt-template":
                                                                         "plain"}))
    assert splits.form == "prompt-response" and splits.labels == ()
    assert splits.train[0] == {"prompt": "Give the opposite of good .\n", "response": "bad"}
    plain = tmp_path / "plain.parquet"
    pd.DataFrame({"text": ["the film was good"] * 20}).to_parquet(plain)
    cfg = causal_cfg(tiny_llama, plain)
    _, splits, tok, train, _ = rows_of(cfg)
    assert splits.form == "text" and splits.train[0]["prompt"] == ""
    ids, labels = train.input_ids[0], train.labels[0]
    assert ids[0] == tok.bos_token_id and labels[0] == IGNORE_INDEX  # only BOS is not learnt
    assert labels[1:] == ids[1:]


def test_rows_without_known_columns_are_refused_with_the_fix(tmp_path, tiny_llama):
    write_jsonl(tmp_path / "train.jsonl", [{"question": "q", "answer": "a"}] * 3)
    with pytest.raises(ConfigError, match="'instruction' \\+ 'output'.*set 'text-column'"):
        load_instruction_splits(causal_cfg(tiny_llama, tmp_path))
    write_jsonl(tmp_path / "train.jsonl", [{"instruction": "q", "output": None}] * 3)
    with pytest.raises(ConfigError, match="row 0: 'response' is None"):
        load_instruction_splits(causal_cfg(tiny_llama, tmp_path))


def test_lora_targets_default_per_architecture(tiny_llama, tiny_gpt2, tiny_model):
    assert resolve_targets(causal_cfg(tiny_llama), "llama") == ["q_proj", "v_proj"]
    assert resolve_targets(causal_cfg(tiny_gpt2), "gpt2") == ["c_attn"]
    assert resolve_targets(causal_cfg(tiny_llama), "qwen2") == ["q_proj", "v_proj"]
    explicit = causal_cfg(tiny_llama, **{"lora-targets": "q_proj,k_proj,v_proj"})
    assert resolve_targets(explicit, "llama") == ["q_proj", "k_proj", "v_proj"]
    seq_cls_auto = from_run_config({"model": str(tiny_model), "lora-targets": "auto"})
    assert resolve_targets(seq_cls_auto, "bert") == ["query", "value"]
    assert resolve_targets(from_run_config({}), "bert") == ["query", "value"]
    with pytest.raises(ConfigError, match="'lora-targets'.*no default for model type 'mamba9'"):
        resolve_targets(causal_cfg(tiny_llama), "mamba9")
    model = task_for(causal_cfg(tiny_gpt2)).build_model(causal_cfg(tiny_gpt2), 0)
    assert {k.split(".")[-3] for k in adapter_state(model)} == {"c_attn"}


@pytest.mark.parametrize(("extra", "key", "fragment"), [
    ({"task": "causal-lm", "partitioner": "dirichlet"}, "partitioner", "use partitioner = 'iid'"),
    ({"precision": "fp16"}, "precision", "auto | fp32 | tf32 | bf16"),
    ({"load-in-4bit": True}, "load-in-4bit", "for task = 'causal-lm'"),
    ({"task": "causal-lm", "prompt-template": "chatml"}, "prompt-template", "alpaca | plain"),
])
def test_invalid_causal_settings_name_the_key(extra, key, fragment):
    with pytest.raises(ConfigError) as err:
        from_run_config(extra)
    assert f"'{key}'" in str(err.value) and fragment in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only machine")
def test_4bit_without_cuda_fails_with_the_fix(tiny_llama):
    cfg = causal_cfg(tiny_llama, **{"load-in-4bit": True})
    with pytest.raises(ConfigError, match="'load-in-4bit' = true needs a CUDA GPU"):
        task_for(cfg).build_model(cfg, 0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_dp_training_lowers_the_eval_loss_on_a_learnable_set(arch, tiny_llama, tiny_gpt2,
                                                             instruction_data, tmp_path):
    model_dir = tiny_llama if arch == "llama" else tiny_gpt2
    # seeded noise: with the default secret noise the result would vary from run to run
    cfg = causal_cfg(model_dir, instruction_data, lr=0.05, **{"local-epochs": 1.0,
                                                               "lr-schedule": "constant",
                                                               "reproducible-noise": True})
    task, _, tok, train, evaluation = rows_of(cfg)
    torch.manual_seed(0)
    model = task.build_model(cfg, 0)
    before_state = adapter_state(model)
    before = task.evaluate(cfg, model, evaluation, tok.pad_token_id, 0)
    state = PrivacyState(noise_multiplier=0.5, sample_rate=sample_rate(len(train), 16))
    result = train_local(model, train, tok.pad_token_id, cfg, state, seed=1)
    after = task.evaluate(cfg, model, evaluation, tok.pad_token_id, 0)
    assert state.history and state.history[0][2] == result.steps == 15  # accounted
    assert after["loss"] < before["loss"] - 1.0, (before, after)
    assert after["perplexity"] == pytest.approx(math.exp(after["loss"]))
    trained = adapter_state(model)
    assert set(trained) == set(before_state) and all("lora_" in k for k in trained)  # no head
    assert any(not torch.equal(trained[k], before_state[k]) for k in trained if "lora_B" in k)
    model.save_pretrained(tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(str(model_dir))
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    assert task.evaluate(cfg, loaded, evaluation, tok.pad_token_id, 0)["loss"] == pytest.approx(
        after["loss"], rel=1e-5)


def test_bf16_dp_step_clips_in_fp32_and_trains_fp32_lora(tiny_llama, instruction_data):
    cfg = causal_cfg(tiny_llama, instruction_data, precision="bf16",
                     **{"max-train-samples": 64})
    task, _, tok, train, _ = rows_of(cfg)
    torch.manual_seed(0)
    model = task.build_model(cfg, 0)
    assert model.base_model.model.model.embed_tokens.weight.dtype == torch.bfloat16
    before = adapter_state(model)
    assert all(v.dtype == torch.float32 for v in before.values())
    state = PrivacyState(noise_multiplier=1.0, sample_rate=sample_rate(len(train), 16))
    result = train_local(model, train, tok.pad_token_id, cfg, state, seed=0)
    after = adapter_state(model)
    assert math.isfinite(result.train_loss)
    assert all(v.dtype == torch.float32 for v in after.values())
    assert any(not torch.equal(after[k], before[k]) for k in after if "lora_B" in k)
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad_sample = torch.ones(2, 3, dtype=torch.bfloat16)
    _fp32_grad_samples(torch.nn.ParameterList([p]))
    assert p.grad_sample.dtype == torch.float32


def test_hub_alpaca_with_only_a_train_split_gets_a_seeded_holdout(monkeypatch, tiny_llama):
    import datasets
    from causal_fixtures import opposite_rows

    hub = datasets.DatasetDict({"train": datasets.Dataset.from_list(opposite_rows(50, seed=3))})
    monkeypatch.setattr(datasets, "load_dataset", lambda name: hub)
    splits = load_instruction_splits(causal_cfg(tiny_llama, None, dataset="tatsu-lab/alpaca"))
    assert splits.source == "hub:tatsu-lab/alpaca" and splits.form == "alpaca"
    assert len(splits.train) == 45 and len(splits.eval) == 5
    assert splits.eval[0]["prompt"].startswith(render_prompt("alpaca", "x")[:40])


def test_gpt2_client_handler_trains_under_ffa_and_sends_only_b(tiny_gpt2, instruction_data):
    """The ClientApp's train handler, fed the server's own first-round messages (GPT-2, FFA)."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from strategy_helpers import FakeGrid, meta

    from client import client_app
    from fedtune.arrays import from_record, to_record
    from strategies.registry import build_strategy

    overrides = {"task": "causal-lm", "model": str(tiny_gpt2), "dataset": str(instruction_data),
                 "max-train-samples": 0, "max-length": 64, "num-server-rounds": 1,
                 "batch-size": 16, "delta": 1e-3, "lora-r": 4, "accountant": "rdp",
                 "aggregation": "ffa"}
    cfg = from_run_config(overrides)
    server_model = task_for(cfg).seeded_model(cfg, 0)
    strategy = build_strategy(cfg, num_clients=2)
    sent = strategy.configure_train(1, to_record(adapter_state(server_model)),
                                    ConfigRecord({"labels": []}), FakeGrid([1, 2]))
    replies = []
    for msg in sent:
        node = int(msg.metadata.dst_node_id)
        ctx = Context(run_id=1, node_id=node, state=RecordDict(), run_config=overrides,
                      node_config={"partition-id": node - 1, "num-partitions": 2})
        reply = client_app.train(msg, ctx)
        replies.append(Message(content=reply.content, metadata=meta(node)))
    back, out = from_record(replies[0].content["arrays"]), from_record(sent[0].content["arrays"])
    assert set(back) == set(out) and all(".lora_B." in k for k in back)
    assert any(not (back[k] == out[k]).all() for k in back)
    assert 0 < replies[0].content["metrics"]["epsilon"] <= 8.0
    strategy.aggregate_train(1, replies)
    assert strategy.rounds[1].clients == 2 and strategy.rounds[1].rejected == []
