"""Budgets in real runs (``flwr run`` against a SuperLink): refusals, ledgers, client-level DP."""

import json

import pytest

from fedtune.launch.simulation import run_simulation
from fedtune.privacy.accounting import epsilon


def _run(overrides, work, name):
    code = run_simulation(overrides, num_clients=3, workdir=work / name,
                          log_path=work / f"{name}.log", timeout_s=600)
    assert code == 0, (work / f"{name}.log").read_text()[-4000:]
    run = work / name / "run"
    report = json.loads((run / "privacy" / "report.json").read_text())
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return run, report, lines


@pytest.fixture(scope="module")
def ledger_runs(tiny_model, toy_data, tmp_path_factory):
    """Run A plans its budget for 1 of 2 rounds; run B reuses the same data and ledgers."""
    work = tmp_path_factory.mktemp("budget")
    base = {"model": str(tiny_model), "dataset": str(toy_data), "max-train-samples": 0,
            "max-length": 32, "batch-size": 16, "lr": 0.01, "target-epsilon": 4.0,
            "delta": 1e-3, "num-server-rounds": 2, "planned-rounds": 1,
            "ledger-dir": str(work / "ledgers")}
    a = _run({**base, "output-dir": str(work / "a" / "run")}, work, "a")
    b = _run({**base, "output-dir": str(work / "b" / "run"), "num-server-rounds": 1}, work, "b")
    return work, a, b


def test_a_client_over_budget_refuses_and_the_run_completes(ledger_runs):
    _, (run, report, lines), _ = ledger_runs
    assert [x["round"] for x in lines] == [0, 1, 2]
    assert lines[1]["clients"] == 3 and lines[1]["refused"] == []
    assert lines[2]["clients"] == 0 and len(lines[2]["refused"]) == 3
    assert "budget exhausted" in lines[2]["refused"][0]["reason"]
    for c in report["clients"]:
        assert c["rounds_trained"] == 1 and c["refused_rounds"] == [2]
        assert c["epsilon"] <= 4.0 and c["epsilon_per_round"] == [c["epsilon"]] * 2
        assert c["crosscheck"]["pld_epsilon"] == pytest.approx(c["epsilon"], rel=0.03)
    assert (run / "final" / "adapter_model.safetensors").is_file()
    md = (run / "privacy" / "report.md").read_text()
    assert "Refusals" in md and "budget exhausted" in md
    assert (run / "privacy" / "epsilon.png").stat().st_size > 0


def test_each_ledger_matches_the_report(ledger_runs):
    work, (run, report, _), _ = ledger_runs
    ledgers = [json.loads(p.read_text()) for p in sorted((work / "ledgers").glob("*.json"))]
    assert len(ledgers) == 3
    by_size = sorted(c["epsilon"] for c in report["clients"])
    from_ledgers = sorted(epsilon([tuple(h) for h in x["history"]], 1e-3, "prv")
                          for x in ledgers)
    assert from_ledgers == pytest.approx(by_size, rel=1e-9)
    for x in ledgers:  # one charge (A, round 1); refusals: A round 2 and B round 1
        assert [c["id"].rsplit("/", 1)[1] for c in x["charges"]] == ["round-1"]
        assert len(x["refusals"]) == 2


def test_a_second_run_on_the_same_data_starts_from_the_first_runs_spend(ledger_runs):
    _, (_, report_a, _), (_, report_b, lines_b) = ledger_runs
    spent_a = {c["num_examples"]: c["epsilon"] for c in report_a["clients"]}
    for c in report_b["clients"]:
        assert c["rounds_trained"] == 0 and c["refused_rounds"] == [1]
        assert c["epsilon"] == pytest.approx(spent_a[c["num_examples"]], rel=1e-9)
    assert lines_b[1]["clients"] == 0


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
