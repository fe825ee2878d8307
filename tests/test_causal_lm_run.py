"""task = causal-lm through ``flwr run`` (simulation): 2 clients, 2 rounds of DP-LoRA on a tiny
random Llama, then the run folder a user gets."""

import json
import math

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from fedtune.launch.simulation import run_simulation


@pytest.fixture(scope="module")
def causal_run(tiny_llama, instruction_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("causal-sim")
    overrides = {
        "task": "causal-lm", "model": str(tiny_llama), "dataset": str(instruction_data),
        "max-train-samples": 120, "max-eval-samples": 16, "max-length": 64,
        "num-server-rounds": 2, "batch-size": 16, "micro-batch-size": 8, "local-epochs": 1.0,
        "lr": 0.05, "lora-r": 4, "target-epsilon": 8.0, "delta": 1e-3, "accountant": "rdp",
        "output-dir": str(work / "run"),
    }
    code = run_simulation(overrides, num_clients=2, workdir=work, log_path=work / "log.txt",
                          timeout_s=600)
    assert code == 0, (work / "log.txt").read_text()[-4000:]
    return work / "run"


def test_rounds_report_loss_and_perplexity_under_dp(causal_run):
    lines = [json.loads(x) for x in (causal_run / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [0, 1, 2]
    for line in lines:
        assert "accuracy" not in line
        assert line["perplexity"] == pytest.approx(math.exp(line["loss"]))
    for line in lines[1:]:
        assert line["clients"] == 2 and line["failures"] == [] and line["rejected"] == []
        assert line["train_loss"] is None and line["bytes_up"] > 0  # no loss sent under DP
    assert lines[2]["epsilon_max"] <= 8.0
    assert lines[2]["loss"] < 0.9 * lines[0]["loss"]  # the toy set is being learnt, under DP
    report = json.loads((causal_run / "privacy" / "report.json").read_text())
    assert [c["rounds_trained"] for c in report["clients"]] == [2, 2]
    for c in report["clients"]:
        assert 0.95 * 8.0 <= c["epsilon"] <= 8.0 and c["num_examples"] == 60
    config = json.loads((causal_run / "config.json").read_text())
    assert config["task"] == "causal-lm" and config["labels"] == []
    assert config["data-format"] == "alpaca" and config["lora-targets-resolved"] == "q_proj,v_proj"
    parts = json.loads((causal_run / "partitions.json").read_text())["partitions"]
    assert [p["num_examples"] for p in parts] == [60, 60] and parts[0]["label_counts"] == []


def test_final_adapter_loads_with_peft_and_has_no_head(causal_run, tiny_llama):
    final = causal_run / "final"
    weights = load_file(str(final / "adapter_model.safetensors"))
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)
    assert any(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k), "B never trained"
    assert json.loads((final / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_llama)),
                                      str(final))
    loaded = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert len(loaded) == sum("lora_B" in k for k in weights)
    assert any(p.abs().sum() > 0 for p in loaded.values())
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[2, 5, 6]])).logits).all()


def test_samples_from_fixed_prompts_are_written(causal_run):
    samples = [json.loads(x) for x in (causal_run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4
    for s in samples:
        assert set(s) == {"prompt", "reference", "generation"}
        assert s["prompt"].endswith("### Response:\n") and s["reference"]
    assert "### Response:" in (causal_run / "samples.md").read_text()
