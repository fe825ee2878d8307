"""Budgets across real ``flwr run`` runs that share the clients' data and ledgers.

Run A trains round 1 of its two planned rounds and stops (``num-server-rounds = 1``); run B
plans two rounds on the same data and ledgers and is asked for three; then A is resumed for its
round 2. The order A1, B1, B2, A2 is the interleaving of issue 13 item 1, made deterministic by a
resume (two live runs cannot be made to take turns reliably). B planned its noise on top of A's
round 1, so B's two rounds bring each ledger up to the target: B's own round 3 is refused inside
the run, and A's round 2 must be refused on resume. Before the fix, A checked only its own
history (handed back by the server on resume) and each ledger ended above the target while A's
report showed its own share only. The three runs are shared by every test here (each ``flwr
run`` costs half a minute of start-up).
"""

import json
from pathlib import Path

import pytest

from fedtune.launch.simulation import run_simulation
from fedtune.privacy.accounting import epsilon
from fedtune.privacy.ledger import RELEASE_MARK

TARGET = 4.0
DELTA = 1e-3


def _run(overrides, work, name):
    code = run_simulation(overrides, num_clients=3, workdir=work / f"{name}-work",
                          log_path=work / f"{name}.log", timeout_s=600)
    assert code == 0, (work / f"{name}.log").read_text()[-4000:]
    run = Path(overrides["output-dir"])
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return lines, json.loads((run / "privacy" / "report.json").read_text())


@pytest.fixture(scope="module")
def runs(tiny_model, toy_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("interleaved")
    base = {"model": str(tiny_model), "dataset": str(toy_data), "max-train-samples": 0,
            "max-length": 32, "batch-size": 16, "lr": 0.01, "target-epsilon": TARGET,
            "delta": DELTA, "accountant": "prv", "planned-rounds": 2,
            "ledger-dir": str(work / "ledgers")}
    a = {**base, "output-dir": str(work / "a"), "num-server-rounds": 1}
    a1 = _run(a, work, "a1")
    b = _run({**base, "output-dir": str(work / "b"), "num-server-rounds": 3}, work, "b")
    a2 = _run({**a, "num-server-rounds": 2, "resume": True}, work, "a2")
    ledgers = [json.loads(p.read_text()) for p in sorted((work / "ledgers").glob("*.json"))]
    return work, a1, b, a2, ledgers


def _spent(ledger) -> float:
    return epsilon([tuple(h) for h in ledger["history"]], DELTA, "prv")


def test_a_run_resumed_after_another_spent_the_ledger_is_refused(runs):
    work, _, _, (lines, report), ledgers = runs
    assert len(ledgers) == 3
    spent = sorted(_spent(x) for x in ledgers)
    for x in ledgers:  # A round 1, B rounds 1-2 charged; B round 3 and A round 2 refused
        rounds = [c["id"].rsplit("/", 1)[1] for c in x["charges"] if RELEASE_MARK not in c["id"]]
        assert rounds == ["round-1"] * 2 + ["round-2"]
        # each run drew its label counts once, charged with its first round
        assert sum(RELEASE_MARK in c["id"] for c in x["charges"]) == 2
        assert len(x["refusals"]) == 2
    assert max(spent) <= TARGET
    assert [x["round"] for x in lines] == [0, 1, 2]
    assert lines[2]["clients"] == 0 and len(lines[2]["refused"]) == 3
    assert all("budget exhausted" in r["reason"] for r in lines[2]["refused"])
    reported = sorted(c["epsilon"] for c in report["clients"])
    assert reported == pytest.approx(spent, rel=1e-9)  # A reports the ledgers, B's share in


def test_a_client_over_budget_refuses_and_the_run_completes(runs):
    work, _, (lines, report), _, _ = runs
    assert [x["round"] for x in lines] == [0, 1, 2, 3]
    assert lines[1]["clients"] == 3 and lines[1]["refused"] == []
    assert lines[3]["clients"] == 0 and len(lines[3]["refused"]) == 3
    assert "budget exhausted" in lines[3]["refused"][0]["reason"]
    for c in report["clients"]:
        assert c["rounds_trained"] == 2 and c["refused_rounds"] == [3]
        assert c["epsilon"] <= TARGET and c["epsilon_per_round"][1] == c["epsilon_per_round"][2]
        assert c["crosscheck"]["pld_epsilon"] == pytest.approx(c["epsilon"], rel=0.03)
    run = work / "b"
    assert (run / "final" / "adapter_model.safetensors").is_file()
    md = (run / "privacy" / "report.md").read_text()
    assert "Refusals" in md and "budget exhausted" in md
    assert (run / "privacy" / "epsilon.png").stat().st_size > 0


def test_a_second_run_on_the_same_data_starts_from_the_first_runs_spend(runs):
    _, (_, report_a1), (_, report_b), _, ledgers = runs
    spent_a1 = {c["num_examples"]: c["epsilon"] for c in report_a1["clients"]}
    for c in report_b["clients"]:  # B's first round adds to A's, not to zero
        assert c["epsilon_per_round"][0] > spent_a1[c["num_examples"]]
    assert sorted(c["epsilon"] for c in report_b["clients"]) == pytest.approx(
        sorted(_spent(x) for x in ledgers), rel=1e-9)
