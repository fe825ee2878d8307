"""Client-level DP in a real run (``flwr run`` against a SuperLink). Refusals and ledgers shared
between real runs: ``test_privacy_interleaved_run.py``."""

import json

import pytest

from fedtune.launch.simulation import run_simulation


def _run(overrides, work, name):
    code = run_simulation(overrides, num_clients=3, workdir=work / name,
                          log_path=work / f"{name}.log", timeout_s=600)
    assert code == 0, (work / f"{name}.log").read_text()[-4000:]
    run = work / name / "run"
    report = json.loads((run / "privacy" / "report.json").read_text())
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return run, report, lines


def test_client_level_dp_is_reported_separately(tiny_model, toy_data, tmp_path):
    overrides = {"model": str(tiny_model), "dataset": str(toy_data), "max-train-samples": 0,
                 "max-length": 32, "batch-size": 16, "lr": 0.01, "delta": 1e-3,
                 "num-server-rounds": 2, "dp": "both", "client-noise-multiplier": 0.8,
                 "client-clipping-norm": 0.5, "client-dp-side": "client",
                 "audit-canary-clients": 4, "output-dir": str(tmp_path / "c" / "run")}
    run, report, lines = _run(overrides, tmp_path, "c")
    level = report["client_level"]
    assert level["rounds"] == 2 and level["sample_rate"] == 1.0
    assert level["epsilon"] == pytest.approx(level["crosscheck_rdp_epsilon"], rel=0.01)
    assert report["max_epsilon"] <= 8.0  # sample-level epsilon, reported on its own
    assert all(x["clients"] == 3 for x in lines[1:])
    assert "Client-level DP" in (run / "privacy" / "report.md").read_text()
    audit = json.loads((run / "privacy" / "audit.json").read_text())["client_level"]
    assert audit["canary_clients"] == 4 and audit["rounds_joined"] == [2, 2, 2, 2]
    assert len(audit["cosines"]) == len(audit["null_cosines"]) == 4
    assert audit["epsilon_estimate"] >= 0 and audit["reported_epsilon"] == level["epsilon"]
