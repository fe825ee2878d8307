"""``hetero-rank`` end to end through ``flwr run``: 3 clients at ranks 2, 4, 2; 2 rounds."""

import json

from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from fedtune.launch.simulation import run_simulation


def test_hetero_rank_run_end_to_end(tiny_model, toy_data, tmp_path):
    overrides = {
        "model": str(tiny_model), "dataset": str(toy_data), "max-train-samples": 0,
        "max-length": 32, "num-server-rounds": 2, "batch-size": 16, "lr": 0.01,
        "target-epsilon": 8.0, "delta": 1e-3, "output-dir": str(tmp_path / "run"),
        "aggregation": "hetero-rank", "hetero-ranks": "2,4", "lora-r": 4,
        "server-optimizer": "fedavgm", "proximal-mu": 0.01, "max-update-norm": 1e4,
        "accountant": "rdp", "fraction-evaluate": 1.0, "client-evaluate": True,
    }
    code = run_simulation(overrides, num_clients=3, workdir=tmp_path,
                          log_path=tmp_path / "log.txt", timeout_s=600)
    assert code == 0, (tmp_path / "log.txt").read_text()[-4000:]
    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [0, 1, 2]
    for line in lines[1:]:
        assert line["clients"] == 3 and line["failures"] == [] and line["rejected"] == []
        assert line["client_ranks"] == [2, 4] and line["global_rank"] == 4
        assert line["global_truncation_error"] >= 0.0
        assert 0.0 <= line["client_eval"]["accuracy"] <= 1.0  # clients score the rank-4 global
        # ranks 2, 4, 2 both ways: 8 rank-units of (32 + 32) floats per module, 4 modules
        head = (2 * 32 + 2) * 4
        assert line["bytes_up"] == line["bytes_down"] == 8 * 64 * 4 * 4 + 3 * head
    config = json.loads((run / "final" / "adapter_config.json").read_text())
    assert config["r"] == 4  # the global adapter has rank lora-r
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=2)
    PeftModel.from_pretrained(base, str(run / "final"))
    final = load_file(str(run / "final" / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in final.items() if "lora_B" in k)
    report = json.loads((run / "privacy" / "report.json").read_text())
    assert all(c["rounds_trained"] == 2 for c in report["clients"])
    assert report["max_epsilon"] <= 8.0
