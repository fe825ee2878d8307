"""``utility``: SST-2 validation accuracy of each setting, for the same training samples.

Rows (every one trains on the same planned number of samples, ``--samples``, split into the
same rounds; the federated rows run through ``flwr run``, the centralized ones through the same
trainer in one process, evaluated after each round like the server does):

1. centralized, no DP            2. centralized, DP epsilon 8 (the whole training set is the
3. federated IID, no DP             protected database)
4. federated IID, DP 8 per client
5. federated Dirichlet(0.3), DP 8, fedavg      6. the same with ffa

Each row's accuracy is on the full SST-2 validation split (872 rows) after the last round; its
per-round accuracy and epsilon go to the result JSON for the plots. Target: the Dirichlet DP rows
within 3 points of centralized non-private.

Why 2 clients by default: each client's DP noise is calibrated to its own data, so the same rows
over more clients mean more noise per step and fewer steps in a row per client (the project's
main job uses 2 clients for this reason); ``--num-clients 10`` runs the same comparison on 10.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

from fedtune.launch.flwr_cli import parse_run_config
from simulations.benchmarks.arms import run_central, run_federated
from simulations.benchmarks.cli import common_arguments, device_arguments
from simulations.benchmarks.common import finish, header, result_dir, runs_dir, save, table

TARGET_POINTS = 3.0
SST2_TRAIN_ROWS = 67_349

# (name, arm, run-config overrides)
ROWS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("central-nodp", "central", {"dp": "off"}),
    ("central-dp8", "central", {"dp": "sample"}),
    ("fed-iid-nodp", "federated", {"dp": "off", "partitioner": "iid"}),
    ("fed-iid-dp8", "federated", {"dp": "sample", "partitioner": "iid"}),
    ("fed-dir0.3-dp8-fedavg", "federated",
     {"dp": "sample", "partitioner": "dirichlet", "aggregation": "fedavg"}),
    ("fed-dir0.3-dp8-ffa", "federated",
     {"dp": "sample", "partitioner": "dirichlet", "aggregation": "ffa"}),
)

FULL = {"samples": 20_000, "rounds": 3, "num_clients": 2, "rows": 0,
        "settings": {"batch-size": 256, "max-eval-samples": 0}}
QUICK = {"samples": 512, "rounds": 2, "num_clients": 2, "rows": 2_000,
         "settings": {"batch-size": 32, "max-eval-samples": 128}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "512 samples from 2,000 rows, 2 rounds: checks the pipeline")
    device_arguments(parser)
    parser.add_argument("--samples", type=int, default=0,
                        help="training samples per row in total, about (default 20,000: "
                             "rounded to whole steps, 19,900 with the defaults)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 3)")
    parser.add_argument("--num-clients", type=int, default=0, help="clients (default 2)")
    parser.add_argument("--rows", type=int, default=-1,
                        help="training rows drawn from (0 = all 67,349 of SST-2)")
    parser.add_argument("--only", default="",
                        help="comma-separated row names to run (default: all six)")


def plan(args: argparse.Namespace) -> dict[str, Any]:
    preset = QUICK if args.quick else FULL
    rows = preset["rows"] if args.rows < 0 else args.rows
    samples = args.samples or preset["samples"]
    rounds = args.rounds or preset["rounds"]
    available = rows or SST2_TRAIN_ROWS
    settings = {**preset["settings"], **parse_run_config(args.run_config)}
    clients = args.num_clients or preset["num_clients"]
    # Each round every client trains `local-epochs` of its rows, the centralized arm the same
    # fraction of all rows: the same samples in total. Steps are whole, so pick the fraction
    # that gives each (equal-size) client a whole number of steps and the centralized arm
    # exactly `clients` times as many, as close to `samples` as that allows.
    per_epoch = math.ceil(available / int(settings["batch-size"]))
    expected_batch = available / per_epoch
    client_steps = max(1, round(samples / (rounds * clients * expected_batch)))
    return {
        "samples": samples, "rounds": rounds, "rows": rows, "num_clients": clients,
        "local_epochs": client_steps * clients / per_epoch, "settings": settings,
    }


def run(args: argparse.Namespace) -> int:
    p = plan(args)
    base = {"dataset": args.dataset, "max-train-samples": p["rows"],
            "num-server-rounds": p["rounds"], "local-epochs": p["local_epochs"],
            "target-epsilon": 8.0, "delta": 1e-5, "dirichlet-alpha": 0.3,
            "min-clients": p["num_clients"], "client-threads": 1, "device": args.device,
            **p["settings"]}
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    threads = os.cpu_count() or 1
    runs = Path(args.runs) if args.runs else runs_dir("utility")
    folder = result_dir(args.quick, args.out)
    result = header("utility", args.quick, base) | {
        "num_clients": p["num_clients"], "samples": p["samples"], "runs": str(runs),
        "target_points": TARGET_POINTS, "results": []}
    print(f"utility: {p['samples']:,} samples per row, {p['rounds']} rounds, "
          f"{p['num_clients']} clients, runs in {runs}", flush=True)
    for name, arm, extra in ROWS:
        if only and name not in only:
            continue
        overrides = {**base, **extra}
        if arm == "central":
            out = run_central(overrides, threads, runs, name, timeout_s=args.timeout)
            samples = out.get("samples_planned")
        else:
            out = run_federated(overrides, p["num_clients"], runs, name, timeout_s=args.timeout,
                                cpus_per_client=args.cpus_per_client,
                                gpus_per_client=args.gpus_per_client)
            samples = out.get("samples")
        eps = out.get("epsilon") if arm == "central" else out.get("epsilon_max")
        result["results"].append({"name": name, "arm": arm, **extra, **out,
                                  "samples": None if samples is None else round(samples),
                                  "epsilon": eps})
        save(result, folder)

    by_name = {r["name"]: r for r in result["results"]}
    reference = by_name.get("central-nodp", {}).get("accuracy")
    for r in result["results"]:
        if reference is not None and r.get("accuracy") is not None:
            r["points_below_reference"] = round(100 * (reference - r["accuracy"]), 2)
    checked = [by_name[n] for n in ("fed-dir0.3-dp8-fedavg", "fed-dir0.3-dp8-ffa")
               if n in by_name and "points_below_reference" in by_name[n]]
    result["target_met"] = (all(r["points_below_reference"] <= TARGET_POINTS for r in checked)
                            if checked and len(checked) == 2 else None)
    print("\n" + table(
        ["setting", "samples", "accuracy", "vs central no-DP", "epsilon", "wall_s", "status"],
        [[r["name"], r.get("samples"), r.get("accuracy"),
          0.0 - r["points_below_reference"] if "points_below_reference" in r else None,
          r.get("epsilon"), r["wall_s"], "ok" if r["ok"] else f"FAILED ({r['log']})"]
         for r in result["results"]]))
    verdict = {True: "met", False: "MISSED", None: "not measured"}[result["target_met"]]
    print(f"Dirichlet DP rows within {TARGET_POINTS:g} points of centralized non-private: "
          f"{verdict}")
    return finish(result, folder, ok=all(r["ok"] for r in result["results"]))
