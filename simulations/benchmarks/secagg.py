"""``secagg``: what secure aggregation costs: time per round and bytes per client per round,
SecAgg+ against plain fedavg, 10 clients, through ``flwr run``.

Both arms: SST-2, the main job's model, sample-level DP at epsilon 8, the same rows, rounds, local
epochs and seed; only ``secure-aggregation`` differs. Bytes count every message each way (for
SecAgg+ all four stages: keys, encrypted shares, masked vectors, unmasking shares); time per round
is the mean wall time of the rounds after the first (which also pays for the workers' start).
Targets: SecAgg+ round time and upload each at most 2x plain fedavg's.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import mean
from typing import Any

from fedtune.launch.flwr_cli import parse_run_config
from simulations.benchmarks.arms import run_federated
from simulations.benchmarks.cli import common_arguments
from simulations.benchmarks.common import finish, header, result_dir, runs_dir, save, table

TARGET = 2.0
FULL = {"max-train-samples": 2560, "num-server-rounds": 3, "local-epochs": 0.5,
        "max-eval-samples": 200}
QUICK = {"max-train-samples": 400, "num-server-rounds": 2, "local-epochs": 0.5,
         "max-eval-samples": 50}


def secagg_settings(dataset: str, quick: bool) -> dict[str, Any]:
    return {"dataset": dataset, "dp": "sample", "target-epsilon": 8.0, "delta": 1e-4,
            "min-clients": 10, "seed": 42, **(QUICK if quick else FULL)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "400 rows, 2 rounds: checks the pipeline")
    parser.add_argument("--num-clients", type=int, default=10)


def round_time(row: dict[str, Any]) -> float | None:
    walls = row.get("round_wall_s") or []
    later = walls[1:] or walls
    return mean(later) if later else None


def run(args: argparse.Namespace) -> int:
    runs = Path(args.runs) if args.runs else runs_dir("secagg")
    settings = secagg_settings(args.dataset, args.quick) | parse_run_config(args.run_config)
    settings["min-clients"] = args.num_clients
    folder = result_dir(args.quick, args.out)
    result = header("secagg", args.quick, settings) | {"num_clients": args.num_clients,
                                                      "runs": str(runs), "target": TARGET,
                                                      "results": {}}
    for name, mode in (("plain", "off"), ("secagg", "secagg+")):
        row = run_federated({**settings, "secure-aggregation": mode}, args.num_clients, runs,
                            name, timeout_s=args.timeout)
        row["round_s"] = round_time(row)
        result["results"][name] = row
        save(result, folder)
    plain, secure = result["results"]["plain"], result["results"]["secagg"]
    if plain.get("ok") and secure.get("ok"):
        result["time_ratio"] = secure["round_s"] / plain["round_s"]
        result["upload_ratio"] = (secure["bytes_up_per_client_round"]
                                  / plain["bytes_up_per_client_round"])
        result["target_met"] = result["time_ratio"] <= TARGET and result["upload_ratio"] <= TARGET
    rows = [[name, r.get("round_s"), r.get("bytes_up_per_client_round"),
             r.get("bytes_down_per_round"), r.get("accuracy"), r.get("wall_s")]
            for name, r in result["results"].items()]
    print(table(["arm", "s per round", "bytes up per client per round",
                 "bytes down per round", "accuracy", "wall s"], rows))
    print(f"time ratio {result.get('time_ratio')}, upload ratio {result.get('upload_ratio')}, "
          f"target (each <= {TARGET}x): {result.get('target_met')}")
    return finish(result, folder, plain.get("ok", False) and secure.get("ok", False))
