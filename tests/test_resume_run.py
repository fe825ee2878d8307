"""A run stopped mid-way and resumed ends exactly where an uninterrupted run ends.

Run A goes straight through 3 rounds; client 1 raises in round 2 (``fault-injection``), and with
``min-clients = 2`` the round completes without it. Run B is the same run with ``min-clients = 3``:
round 2 falls below the minimum and the run stops, after clients 0 and 2 had already been charged
for round 2 and had released their updates. Run C resumes B with ``min-clients = 2``. C must not
charge anyone twice, and its report, ledgers, metrics and final adapter must match A's. All three
use ``reproducible-noise``: a bit-for-bit comparison needs the same noise, and only a replay of
the same noise is the same release, which is free (with secret noise it is charged again), and
``optimizer-state = reset``: the moments a client keeps between rounds live in the run's
``context.state`` and do not survive into the resumed run.
"""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedtune.launch.simulation import run_simulation
from fedtune.privacy.ledger import RELEASE_MARK


def _run(overrides, work, name):
    code = run_simulation(overrides, num_clients=3, workdir=work / f"{name}-work",
                          log_path=work / f"{name}.log", timeout_s=600)
    return code, (work / f"{name}.log").read_text()


def _lines(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tiny_model, toy_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("resume")
    base = {"model": str(tiny_model), "dataset": str(toy_data), "max-length": 32,
            "batch-size": 16, "lr": 0.01, "target-epsilon": 4.0, "delta": 1e-3,
            "num-server-rounds": 3, "fault-injection": "1:2:raise", "reproducible-noise": True,
            # a resumed run is a new Flower run: each client's kept AdamW moments (context.state)
            # start afresh, so a bit-for-bit comparison trains without them
            "optimizer-state": "reset"}
    a = {**base, "output-dir": str(work / "a"), "ledger-dir": str(work / "ledgers-a")}
    code, log = _run(a, work, "a")
    assert code == 0, log[-4000:]
    b = {**base, "output-dir": str(work / "b"), "ledger-dir": str(work / "ledgers-b"),
         "min-clients": 3}
    code_b, log_b = _run(b, work, "b")
    b_state = {
        "lines": _lines(work / "b"),
        "failed": json.loads((work / "b" / "failed.json").read_text()),
        "checkpoints": sorted(p.name for p in (work / "b" / "checkpoints").iterdir()),
        "ledgers": [json.loads(p.read_text()) for p in sorted((work / "ledgers-b").glob("*"))],
    }
    code_c, log_c = _run({**b, "min-clients": 2, "resume": True}, work, "c")
    assert code_c == 0, log_c[-4000:]
    return work, code_b, b_state


def test_below_min_clients_the_run_stops_with_a_clear_error_and_a_checkpoint(runs):
    _, code_b, b = runs
    assert code_b != 0
    assert [x["round"] for x in b["lines"]] == [0, 1]
    assert b["checkpoints"] == ["round-001"]
    assert b["failed"]["round"] == 2
    assert "below min-clients = 3" in b["failed"]["error"]
    assert "injected fault: client 1 raised" in b["failed"]["error"]
    assert "resume=true" in b["failed"]["resume"]
    # Clients 0 and 2 were charged for round 2 before the server gave up on it.
    charged = sorted(sum(RELEASE_MARK not in c["id"] for c in x["charges"])
                     for x in b["ledgers"])
    assert charged == [1, 2, 2]


def test_a_failing_client_is_recorded_and_the_round_completes(runs):
    work, _, _ = runs
    lines = _lines(work / "a")
    assert [x["round"] for x in lines] == [0, 1, 2, 3]
    (failure,) = lines[2]["failures"]
    assert failure["kind"] == "error" and "injected fault: client 1" in failure["reason"]
    assert lines[2]["clients"] == 2 and lines[2]["sampled"] == 3
    assert lines[1]["failures"] == [] and lines[3]["failures"] == []


def test_resume_continues_without_charging_anyone_twice(runs):
    work, _, _ = runs
    a, c = _lines(work / "a"), _lines(work / "b")
    assert [x["round"] for x in c] == [0, 1, 2, 3]
    assert c[2]["resumed"] == {"from_round": 1, "damaged_checkpoints": []}
    assert not (work / "b" / "failed.json").exists()
    for x, y in zip(a, c, strict=True):  # same clients, same updates, same evaluation
        assert x["accuracy"] == pytest.approx(y["accuracy"], abs=1e-9)
        assert x.get("epsilon_max") == pytest.approx(y.get("epsilon_max"), rel=1e-9)
    report_a = json.loads((work / "a" / "privacy" / "report.json").read_text())
    report_c = json.loads((work / "b" / "privacy" / "report.json").read_text())
    for ca, cc in zip(report_a["clients"], report_c["clients"], strict=True):
        assert cc["epsilon"] == pytest.approx(ca["epsilon"], rel=1e-9)
        assert cc["rounds_trained"] == ca["rounds_trained"]
        assert cc["steps"] == ca["steps"]
    for ledgers in ("ledgers-a", "ledgers-b"):  # each round charged once, round 2 not by client 1
        charges = [json.loads(p.read_text())["charges"] for p in (work / ledgers).glob("*")]
        ids = sorted(sorted(ch["id"].rsplit("/", 1)[1] for ch in x if RELEASE_MARK not in ch["id"])
                     for x in charges)
        assert ids == [["round-1", "round-2", "round-3"]] * 2 + [["round-1", "round-3"]]
        # the label counts were paid for once: the resumed run took them from the ledger
        assert [sum(RELEASE_MARK in ch["id"] for ch in x) for x in charges] == [1, 1, 1]


def test_resumed_final_adapter_equals_the_uninterrupted_one(runs):
    work, _, _ = runs
    a = load_file(str(work / "a" / "final" / "adapter_model.safetensors"))
    c = load_file(str(work / "b" / "final" / "adapter_model.safetensors"))
    assert a.keys() == c.keys()
    for k in a:
        np.testing.assert_allclose(a[k], c[k], atol=1e-6, err_msg=k)
