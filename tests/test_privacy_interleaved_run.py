"""Two runs taking turns on the same clients' data and ledgers, in real ``flwr run`` runs.

Run A trains round 1 of its two planned rounds and stops (``num-server-rounds = 1``); run B
trains both of its rounds on the same data and ledgers; then A is resumed for its round 2. The
order A1, B1, B2, A2 is the interleaving of issue 13 item 1, made deterministic by a resume
(two live runs cannot be made to take turns reliably). B planned its noise on top of A's round 1,
so B's two rounds bring each ledger up to the target: A's round 2 must be refused. Before the
fix, A checked only its own history (handed back by the server on resume) and each ledger ended
above the target while A's report showed its own share only.
"""

import json
from pathlib import Path

import pytest

from fedtune.launch.simulation import run_simulation
from fedtune.privacy.accounting import epsilon

TARGET = 4.0
DELTA = 1e-3


def _run(overrides, work, name):
    code = run_simulation(overrides, num_clients=3, workdir=work / f"{name}-work",
                          log_path=work / f"{name}.log", timeout_s=600)
    assert code == 0, (work / f"{name}.log").read_text()[-4000:]
    metrics = Path(overrides["output-dir"]) / "metrics.jsonl"
    return [json.loads(x) for x in metrics.read_text().splitlines()]


def test_a_run_resumed_after_another_spent_the_ledger_is_refused(tiny_model, toy_data, tmp_path):
    base = {"model": str(tiny_model), "dataset": str(toy_data), "max-train-samples": 0,
            "max-length": 32, "batch-size": 16, "lr": 0.01, "target-epsilon": TARGET,
            "delta": DELTA, "accountant": "rdp", "planned-rounds": 2,
            "ledger-dir": str(tmp_path / "ledgers")}
    a = {**base, "output-dir": str(tmp_path / "a"), "num-server-rounds": 1}
    _run(a, tmp_path, "a1")
    _run({**base, "output-dir": str(tmp_path / "b"), "num-server-rounds": 2}, tmp_path, "b")
    lines = _run({**a, "num-server-rounds": 2, "resume": True}, tmp_path, "a2")

    ledgers = [json.loads(p.read_text()) for p in sorted((tmp_path / "ledgers").glob("*.json"))]
    assert len(ledgers) == 3
    spent = sorted(epsilon([tuple(h) for h in x["history"]], DELTA, "rdp") for x in ledgers)
    for x in ledgers:  # A round 1, B rounds 1-2 charged; A round 2 refused
        assert len(x["charges"]) == 3 and len(x["refusals"]) == 1
    assert max(spent) <= TARGET
    assert [x["round"] for x in lines] == [0, 1, 2]
    assert lines[2]["clients"] == 0 and len(lines[2]["refused"]) == 3
    assert all("budget exhausted" in r["reason"] for r in lines[2]["refused"])
    report = json.loads((tmp_path / "a" / "privacy" / "report.json").read_text())
    reported = sorted(c["epsilon"] for c in report["clients"])
    assert reported == pytest.approx(spent, rel=1e-9)  # A reports the ledgers, B's share in
