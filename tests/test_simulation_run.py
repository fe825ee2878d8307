"""The whole app through ``flwr run`` against a real SuperLink (simulation), 3 clients, 2 rounds."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from fedtune.cli import main as fedtune_cli
from fedtune.config import from_run_config
from fedtune.launch.simulation import run_simulation
from fedtune.privacy.calibration import planned_steps


@pytest.fixture(scope="module")
def finished_run(tiny_model, toy_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("sim")
    overrides = {
        "model": str(tiny_model), "dataset": str(toy_data), "max-train-samples": 0,
        "max-length": 32, "num-server-rounds": 2, "batch-size": 16, "lr": 0.01,
        "target-epsilon": 8.0, "delta": 1e-3, "output-dir": str(work / "run"),
        "fraction-evaluate": 1.0, "client-evaluate": True,
        "audit-canaries": 20, "audit-client": 0,
    }
    code = run_simulation(overrides, num_clients=3, workdir=work, log_path=work / "log.txt",
                          timeout_s=600)
    assert code == 0, (work / "log.txt").read_text()[-4000:]
    return work / "run", overrides


def test_metrics_jsonl_has_a_line_per_round(finished_run):
    run, _ = finished_run
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [0, 1, 2]
    for line in lines:
        assert 0.0 <= line["accuracy"] <= 1.0 and line["loss"] > 0 and line["wall_s"] >= 0
    for line in lines[1:]:
        assert line["clients"] == 3 and line["failures"] == []
        assert line["train_loss"] is None  # under DP no client sends a loss of private batches
        assert line["bytes_up"] > 0 and line["bytes_up"] == line["bytes_down"]
        assert 0.0 <= line["client_eval"]["accuracy"] <= 1.0  # @app.evaluate on every client


def test_final_and_checkpoints_load_with_peft(finished_run, tiny_model):
    run, _ = finished_run
    for folder in (run / "final", run / "checkpoints" / "round-001", run / "checkpoints" /
                   "round-002"):
        assert (folder / "adapter_config.json").is_file()
        assert (folder / "adapter_model.safetensors").is_file()
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=2)
    model = PeftModel.from_pretrained(base, str(run / "final"))
    final = load_file(str(run / "final" / "adapter_model.safetensors"))
    last = load_file(str(run / "checkpoints" / "round-002" / "adapter_model.safetensors"))
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    lora_b = [k for k in final if "lora_B" in k]
    assert lora_b and any(final[k].abs().sum() > 0 for k in lora_b), "LoRA B never trained"
    loaded = dict(model.named_parameters())
    assert any("lora_B" in name for name in loaded)


def test_privacy_report_matches_the_plan(finished_run):
    run, overrides = finished_run
    report = json.loads((run / "privacy" / "report.json").read_text())
    assert report["target_epsilon"] == 8.0 and report["delta"] == 1e-3
    assert report["accountant"] == "prv"
    clients = report["clients"]
    assert [c["partition_id"] for c in clients] == [0, 1, 2]
    cfg = from_run_config(overrides)
    for c in clients:
        assert c["rounds_trained"] == 2
        assert c["steps"] == planned_steps(cfg, c["num_examples"])
        assert 0.95 * 8.0 <= c["epsilon"] <= 8.0
        assert c["noise_multiplier"] > 0 and 0 < c["sample_rate"] <= 1
    assert report["max_epsilon"] == max(c["epsilon"] for c in clients)


def test_the_run_audits_itself_and_the_cli_agrees(finished_run, capsys):
    run, _ = finished_run
    audit = json.loads((run / "privacy" / "audit.json").read_text())["sample_level"]
    assert audit["m"] == 20 and audit["audit_client"] == 0
    assert 0 <= audit["correct"] <= audit["guesses"] <= 20
    assert audit["epsilon_lower_bound"] <= audit["reported_epsilon"] <= 8.0
    assert audit["verdict"].startswith("consistent")
    coins = run / "audit" / "canaries.json"  # the audit client's folder: owner-only
    assert coins.stat().st_mode & 0o077 == 0
    assert "## Empirical privacy audit" in (run / "privacy" / "report.md").read_text()
    assert fedtune_cli(["privacy", "audit", str(run), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)["sample_level"]
    assert {k: again[k] for k in ("correct", "guesses", "epsilon_lower_bound")} == {
        k: audit[k] for k in ("correct", "guesses", "epsilon_lower_bound")}


def test_config_and_partitions_are_written(finished_run):
    run, overrides = finished_run
    config = json.loads((run / "config.json").read_text())
    assert config["num-server-rounds"] == 2 and config["num-clients"] == 3
    parts = json.loads((run / "partitions.json").read_text())
    assert sum(p["num_examples"] for p in parts["partitions"]) == 600
    assert all(len(p["label_counts"]) == 2 for p in parts["partitions"])
    assert (run / "partitions.png").stat().st_size > 0


def test_a_failing_server_setup_fails_the_command(tiny_model, toy_data, tmp_path):
    overrides = {"model": str(tiny_model), "dataset": str(toy_data), "max-train-samples": 0,
                 "delta": 0.1, "output-dir": str(tmp_path / "run")}
    code = run_simulation(overrides, num_clients=3, workdir=tmp_path,
                          log_path=tmp_path / "log.txt", timeout_s=300)
    assert code != 0
    assert "'delta' = 0.1 must be below 1/n" in (tmp_path / "log.txt").read_text()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
