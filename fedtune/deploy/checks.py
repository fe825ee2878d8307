"""What a finished deployment run must have left behind, on the server and on every host.

Returns the problems found (empty = all good), so the demo can print them and the tests can
assert on them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from fedtune.privacy.accounting import epsilon
from fedtune.privacy.ledger import is_release


def check_run_folder(run: Path, rounds: int, clients: int) -> list[str]:
    problems = []
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return [f"{metrics} is missing"]
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    if [x["round"] for x in lines] != list(range(rounds + 1)):
        problems.append(f"metrics.jsonl rounds are {[x['round'] for x in lines]}")
    for line in lines[1:]:
        if line.get("clients") != clients:
            problems.append(f"round {line['round']}: {line.get('clients')} clients, "
                            f"expected {clients} (failures: {line.get('failures')})")
    for path in ("config.json", "partitions.json", "privacy/report.json",
                 "final/adapter_model.safetensors", "final/adapter_config.json",
                 f"checkpoints/round-{rounds:03d}/adapter_model.safetensors"):
        if not (run / path).is_file():
            problems.append(f"{run / path} is missing")
    return problems


def check_ledgers(run: Path, ledger_dirs: list[Path], delta: float, accountant: str = "prv"
                  ) -> list[str]:
    """Each host's ledger exists on that host and its spend is the report's for that client
    (matched by dataset size, which the demo makes differ between hosts)."""
    report_path = run / "privacy" / "report.json"
    if not report_path.is_file():
        return [f"{report_path} is missing"]
    report = json.loads(report_path.read_text())
    by_size = {c["num_examples"]: c for c in report["clients"]}
    problems = []
    for folder in ledger_dirs:
        files = sorted(Path(folder).glob("ledger-*.json"))
        if len(files) != 1:
            problems.append(f"{folder}: {len(files)} ledger files, expected 1")
            continue
        ledger = json.loads(files[0].read_text())
        client = by_size.get(ledger["num_examples"])
        if client is None:
            problems.append(f"{files[0]}: no client of {ledger['num_examples']} examples in the "
                            "report")
            continue
        spent = epsilon([tuple(h) for h in ledger["history"]], delta, accountant)
        if not math.isclose(spent, client["epsilon"], rel_tol=1e-6):
            problems.append(f"{files[0]}: epsilon {spent} but the report says {client['epsilon']}")
        # one charge per round trained; a round's extra releases (the noisy label counts of
        # logit-adjustment, '<round>/release-<i>') are charged apart and counted in the epsilon
        rounds = [c for c in ledger["charges"] if not is_release(c)]
        if len(rounds) != client["rounds_trained"]:
            problems.append(f"{files[0]}: {len(rounds)} round charges but the report says "
                            f"{client['rounds_trained']} rounds trained")
    return problems


def check_secure_aggregation(run: Path, rounds: int) -> list[str]:
    """Under SecAgg+: the report says so, for every round, with its error bound."""
    report = json.loads((run / "privacy" / "report.json").read_text())
    secure = report.get("secure_aggregation") or {}
    if secure.get("protocol") != "secagg+" or secure.get("rounds") != rounds:
        return [f"privacy/report.json shows no SecAgg+ for {rounds} round(s): {secure}"]
    if not 0 < secure.get("quantization_error_bound", 0) < 1e-3:
        return [f"SecAgg+ quantisation error bound out of range: {secure}"]
    return []
