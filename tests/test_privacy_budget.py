"""Ledger, enforcement, planner, cross-checks and client-level accounting."""

import json
import os

import pytest

from fedtune.cli import main as fedtune
from fedtune.config import ConfigError, from_run_config
from fedtune.privacy.accounting import epsilon
from fedtune.privacy.budget import ClientBudget
from fedtune.privacy.client_level import client_level_report
from fedtune.privacy.crosscheck import crosscheck
from fedtune.privacy.ledger import Ledger, fingerprint
from fedtune.privacy.planner import plan
from fedtune.protocol import PrivacyState


@pytest.mark.parametrize(("sigma", "q", "steps"),
                         [(0.5, 0.01, 100), (0.8, 0.02, 300), (1.1, 0.005, 1000), (0.6, 0.1, 20)])
def test_opacus_and_dp_accounting_agree(sigma, q, steps):
    history = [(sigma, q, steps)]
    check = crosscheck(history, 1e-5)
    opacus_rdp = epsilon(history, 1e-5, "rdp")
    assert opacus_rdp == pytest.approx(check["rdp_epsilon"], rel=0.01)
    assert epsilon(history, 1e-5, "prv") <= opacus_rdp
    assert epsilon(history, 1e-5, "prv") == pytest.approx(check["pld_epsilon"], rel=0.03)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_planner_noise_reaches_target_within_5_percent(accountant):
    result = plan(num_examples=5000, batch_size=64, local_epochs=1, rounds=4,
                  target_epsilon=3.0, delta=1e-5, accountant=accountant)
    final = epsilon([(result["noise_multiplier"], result["sample_rate"], result["steps"])],
                    1e-5, accountant)
    assert 0.95 * 3.0 <= final <= 3.0
    assert result["epsilon_per_round"][-1] == pytest.approx(final)
    assert result["epsilon_per_round"] == sorted(result["epsilon_per_round"])


def test_planner_cli_json_and_infeasible_requests(capsys):
    assert fedtune(["privacy", "plan", "--num-examples", "2000", "--batch-size", "50",
                    "--rounds", "3", "--target-epsilon", "8", "--delta", "1e-5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"noise_multiplier", "sample_rate", "steps", "epsilon", "epsilon_per_round"} <= set(out)
    assert out["steps"] == 120 and len(out["epsilon_per_round"]) == 3
    assert fedtune(["privacy", "plan", "--num-examples", "100", "--batch-size", "10",
                    "--rounds", "1", "--target-epsilon", "1", "--delta", "0.05"]) == 2
    assert "1/N = 0.01" in capsys.readouterr().err
    assert fedtune(["privacy", "plan", "--num-examples", "100", "--batch-size", "10",
                    "--rounds", "1", "--target-epsilon", "0", "--delta", "1e-4"]) == 2
    assert "must be > 0" in capsys.readouterr().err


def _budget(tmp_path, **overrides):
    cfg = from_run_config({"batch-size": 10, "num-server-rounds": 3, "delta": 1e-3,
                           "target-epsilon": 4.0, **overrides})
    ledger = Ledger.open(tmp_path, fingerprint(["a", "b"], [0, 1]), 200)
    return cfg, ClientBudget(cfg, PrivacyState(), 200, ledger)


def test_rounds_beyond_the_plan_are_refused(tmp_path):
    cfg, budget = _budget(tmp_path, **{"planned-rounds": 1})
    budget.start("run-a")
    first = budget.decide("run-a/round-1")
    assert first.allowed and first.epsilon_after <= 4.0
    budget.charge("run-a/round-1", first)
    budget.state.history = list(budget.ledger.history)  # what training adds
    second = budget.decide("run-a/round-2")
    assert not second.allowed and "budget exhausted" in second.reason
    assert second.epsilon_after > 4.0


def test_ledger_is_charged_before_release_and_survives_a_crash(tmp_path):
    cfg, budget = _budget(tmp_path)
    budget.start("run-a")
    decision = budget.decide("run-a/round-1")
    budget.charge("run-a/round-1", decision)
    # the client dies here, after the charge and before any reply: the spend is on disk
    reopened = Ledger.open(tmp_path, fingerprint(["a", "b"], [0, 1]), 200)
    assert epsilon(reopened.history, cfg.delta, cfg.accountant) == pytest.approx(
        decision.epsilon_after)
    # charging the same round again (a restart replays it) does not double count
    reopened.charge("run-a/round-1", 1.0, 0.05, 20, 9.9, cfg.delta)
    assert reopened.history == budget.ledger.history


def test_a_torn_ledger_write_leaves_the_old_ledger(tmp_path, monkeypatch):
    cfg, budget = _budget(tmp_path)
    budget.start("run-a")
    budget.charge("run-a/round-1", budget.decide("run-a/round-1"))
    before = budget.ledger.path.read_text()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        budget.charge("run-a/round-2", budget.decide("run-a/round-2"))
    assert budget.ledger.path.read_text() == before  # complete old version, no torn file
    assert [p.name for p in tmp_path.iterdir()] == [budget.ledger.path.name]


def test_a_second_run_continues_from_the_ledger(tmp_path):
    cfg, budget = _budget(tmp_path)
    budget.start("run-a")
    for r in (1, 2, 3):
        budget.charge(f"run-a/round-{r}", budget.decide(f"run-a/round-{r}"))
        budget.state.history = list(budget.ledger.history)
    spent = epsilon(budget.ledger.history, cfg.delta, cfg.accountant)
    assert spent <= 4.0
    ledger = Ledger.open(tmp_path, fingerprint(["a", "b"], [0, 1]), 200)
    second = ClientBudget(cfg, PrivacyState(), 200, ledger)
    second.start("run-b")
    assert epsilon(second.state.history, cfg.delta, cfg.accountant) == pytest.approx(spent)
    decision = second.decide("run-b/round-1")
    assert not decision.allowed


def test_a_ledger_for_other_data_is_not_reused(tmp_path):
    Ledger.open(tmp_path, "ab" * 32, 10).save()
    with pytest.raises(ValueError, match="belongs to other data"):
        Ledger.open(tmp_path, "ab" * 8 + "cd" * 24, 10)


def test_client_level_epsilon_matches_dp_accounting():
    rep = client_level_report(noise_multiplier=1.2, clipping_norm=0.5, sampled=5,
                              population=50, rounds=20, delta=1e-5, side="server")
    assert rep["sample_rate"] == 0.1
    assert rep["epsilon"] == pytest.approx(rep["crosscheck_rdp_epsilon"], rel=0.01)
    full = client_level_report(noise_multiplier=1.2, clipping_norm=0.5, sampled=50,
                               population=50, rounds=20, delta=1e-5, side="server")
    assert full["epsilon"] > rep["epsilon"]  # no amplification without client sampling


def test_config_rejects_bad_client_dp_settings():
    with pytest.raises(ConfigError, match="client-dp-side"):
        from_run_config({"client-dp-side": "both"})
    with pytest.raises(ConfigError, match="client-noise-multiplier"):
        from_run_config({"client-noise-multiplier": 0})


def test_report_cli_rebuilds_markdown_and_plot(tmp_path, capsys):
    report = {
        "dp": "sample", "target_epsilon": 8.0, "delta": 1e-5, "accountant": "prv",
        "max_grad_norm": 1.0, "max_epsilon": 7.9, "rounds": 2,
        "clients": [{"partition_id": 0, "num_examples": 100, "noise_multiplier": 0.7,
                     "sample_rate": 0.1, "steps": 20, "rounds_trained": 1, "epsilon": 7.9,
                     "epsilon_per_round": [7.9, 7.9], "refused_rounds": [2],
                     "refusal_reasons": ["privacy budget exhausted: ..."],
                     "crosscheck": {"pld_epsilon": 7.8, "rdp_epsilon": 9.1}}],
    }
    (tmp_path / "privacy").mkdir()
    (tmp_path / "privacy" / "report.json").write_text(json.dumps(report))
    assert fedtune(["privacy", "report", str(tmp_path)]) == 0
    md = (tmp_path / "privacy" / "report.md").read_text()
    assert "| 0 | 100 | 0.700 |" in md and "7.900" in md and "Refusals" in md
    assert (tmp_path / "privacy" / "epsilon.png").read_bytes()[:4] == b"\x89PNG"
    assert fedtune(["privacy", "report", str(tmp_path / "nope")]) == 2
