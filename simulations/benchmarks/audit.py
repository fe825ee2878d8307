"""``audit``: the empirical privacy audit on SST-2 with the main job's model (all-MiniLM-L6-v2).

Three runs through ``flwr run``, identical but for DP: 2 clients, client 0 holding 1,000 audit
canaries (each inserted by a secret coin), one round of 15 local epochs, lr 0.003; each run audits
itself at its end (``privacy/audit.json``).

- ``dp8``: sample-level DP at epsilon 8: the bound must stay at or below the reported epsilon.
- ``off``: no DP: the bound must reach 2 (the audit can tell a leaking run).
- ``broken``: DP-SGD with the noise skipped on the audit client (the ``no-noise`` test fault),
  which still reports epsilon 1: the audit must flag it (bound above the reported epsilon).

Each run is sized to take at most about 10 minutes on the 2-core development machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedtune.launch.flwr_cli import parse_run_config
from simulations.benchmarks.arms import read_audit, run_federated
from simulations.benchmarks.cli import common_arguments
from simulations.benchmarks.common import finish, header, result_dir, runs_dir, save, table

OFF_TARGET = 2.0  # the lower bound a run without DP must reach

FULL = {"max-train-samples": 600, "audit-canaries": 1000, "local-epochs": 15.0,
        "max-eval-samples": 200}
QUICK = {"max-train-samples": 100, "audit-canaries": 100, "local-epochs": 2.0,
         "max-eval-samples": 50}
ARMS = {
    "dp8": {"dp": "sample", "target-epsilon": 8.0},
    "off": {"dp": "off"},
    "broken": {"dp": "sample", "target-epsilon": 1.0, "fault-injection": "0:*:no-noise"},
}


def audit_settings(dataset: str, quick: bool) -> dict[str, Any]:
    return {"dataset": dataset, "num-server-rounds": 1, "lr": 0.003, "delta": 1e-5,
            "audit-client": 0, "min-clients": 2, "seed": 42, **(QUICK if quick else FULL)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "100 rows, 100 canaries, 2 epochs: checks the pipeline")


def judge(rows: dict[str, dict[str, Any]]) -> dict[str, bool | None]:
    """Each run's target: dp8 at or below its reported epsilon, off at least 2, broken flagged."""
    def bound(name: str) -> float | None:
        return (rows.get(name) or {}).get("epsilon_lower_bound")

    def reported(name: str) -> float | None:
        return (rows.get(name) or {}).get("reported_epsilon")

    out: dict[str, bool | None] = {"dp8": None, "off": None, "broken": None}
    if bound("dp8") is not None and reported("dp8") is not None:
        out["dp8"] = bound("dp8") <= reported("dp8")
    if bound("off") is not None:
        out["off"] = bound("off") >= OFF_TARGET
    if bound("broken") is not None and reported("broken") is not None:
        out["broken"] = bound("broken") > reported("broken")
    return out


def run(args: argparse.Namespace) -> int:
    runs = Path(args.runs) if args.runs else runs_dir("audit")
    settings = audit_settings(args.dataset, args.quick) | parse_run_config(args.run_config)
    folder = result_dir(args.quick, args.out)
    result = header("audit", args.quick, settings) | {"runs": str(runs), "results": {},
                                                      "off_target": OFF_TARGET}
    for name, arm in ARMS.items():
        row = run_federated({**settings, **arm}, 2, runs, name, timeout_s=args.timeout)
        if row["ok"]:
            row.update(read_audit(Path(row["run"])))
        result["results"][name] = row
        result["targets_met"] = judge(result["results"])
        save(result, folder)
    rows = [[name, r.get("epsilon_lower_bound"), r.get("reported_epsilon"),
             f"{r.get('correct')}/{r.get('guesses')}", r.get("score"), r.get("accuracy"),
             r.get("wall_s"), result["targets_met"].get(name)]
            for name, r in result["results"].items()]
    print(table(["run", "epsilon lower bound", "reported epsilon", "correct/guesses", "score",
                 "accuracy", "wall s", "target met"], rows))
    ok = all(r["ok"] for r in result["results"].values())
    return finish(result, folder, ok)
