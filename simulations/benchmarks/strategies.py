"""``strategies``: fedavg vs ffa vs hetero-rank, through ``flwr run``, with the same compute.

Each aggregation runs on SST-2 with 10 clients, a Dirichlet(0.3) label split and sample-level DP
at epsilon 8 per client, with the same rows, clients, rounds, local epochs, batch size, sequence
length and seed. Only what the aggregation decides differs: which tensors are trained and sent,
and, for ``hetero-rank``, the clients' ranks (``hetero-ranks`` 2,4,8 cycled over partitions; the
others train at ``lora-r`` = 8).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedtune.launch.flwr_cli import parse_run_config
from simulations.benchmarks.arms import run_federated
from simulations.benchmarks.cli import common_arguments
from simulations.benchmarks.common import finish, header, result_dir, runs_dir, save, table

STRATEGIES = ("fedavg", "ffa", "hetero-rank")

FULL = {"num-server-rounds": 5, "max-train-samples": 5000, "max-eval-samples": 0,
        "max-length": 64, "batch-size": 32}
QUICK = {"num-server-rounds": 2, "max-train-samples": 300, "max-eval-samples": 100,
         "max-length": 32, "batch-size": 16}


def strategy_settings(dataset: str, quick: bool) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "partitioner": "dirichlet", "dirichlet-alpha": 0.3,
        "dp": "sample", "target-epsilon": 8.0, "delta": 1e-5,
        "local-epochs": 1.0, "lora-r": 8, "hetero-ranks": "2,4,8", "seed": 42,
        **(QUICK if quick else FULL),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "300 training rows, 2 rounds: checks the pipeline in minutes")
    parser.add_argument("--num-clients", type=int, default=10)


def run(args: argparse.Namespace) -> int:
    runs = Path(args.runs) if args.runs else runs_dir("strategies")
    settings = strategy_settings(args.dataset, args.quick) | parse_run_config(args.run_config)
    folder = result_dir(args.quick, args.out)
    result = header("strategies", args.quick, settings) | {"num_clients": args.num_clients,
                                                          "runs": str(runs), "results": []}
    for name in STRATEGIES:
        row = {"strategy": name, **run_federated({**settings, "aggregation": name},
                                                 args.num_clients, runs, name,
                                                 timeout_s=args.timeout)}
        result["results"].append(row)
        save(result, folder)

    rows = [[r["strategy"], r.get("accuracy"), r.get("bytes_up_per_round"),
             r.get("bytes_down_per_round"), r.get("epsilon_max"), r.get("train_s"), r["wall_s"]]
            if r["ok"] else [r["strategy"] + " FAILED (" + r["log"] + ")", *[None] * 5, r["wall_s"]]
            for r in result["results"]]
    print("\n" + table(["strategy", "accuracy", "up/round", "down/round", "epsilon", "train_s",
                        "wall_s"], rows))
    return finish(result, folder, ok=all(r["ok"] for r in result["results"]))
