"""``federation``: how fast a simulated federation trains, against a centralized DP-LoRA loop.

One invocation runs both arms on the same machine, one after the other:

- centralized: one fresh process (``simulations.benchmarks.central``) trains DP-LoRA with the
  project's trainer on all the rows, ``local-epochs`` per round for ``num-server-rounds`` rounds,
  evaluating after each round as the server does; torch uses every core.
- federated: ``flwr run`` (through the launcher) with 10 clients, an IID split of the same rows,
  the same rounds and local epochs, so the same number of samples; one client per core in
  parallel (``client-resources-num-cpus=1``, ``client-threads=1``), which is how the simulation
  uses this machine best.

Both use the same model, batch size, micro-batches, sequence length, DP mode (sample-level,
epsilon 8, ``hooks``), evaluation rows and seed, and all of the machine's cores. Each arm's
samples/s is its planned training samples (steps x expected Poisson batch, summed over clients)
over its whole wall time: for the federation from before its SuperLink starts until it is stopped
(start-up of ``flwr run``, Ray and every process counts), for the centralized arm from process
start to exit. Target: federation / centralized >= 0.85.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from fedtune.launch.flwr_cli import parse_run_config
from simulations.benchmarks.arms import run_central, run_federated
from simulations.benchmarks.cli import common_arguments, device_arguments
from simulations.benchmarks.common import finish, header, result_dir, runs_dir, save, table

TARGET = 0.85

# batch 256 (the project's default); 3,840 rows per client = 15 batches, 0.2 epoch per round =
# 3 steps per client per round; the centralized arm takes 30 steps per round: the same samples
# (38,400). The federation's fixed cost (start-up, Ray workers' imports and first calibration,
# shutdown) was about 55 s on the shared 2-core machine: this many samples amortise it.
FULL = {"num-clients": 10, "max-train-samples": 38_400, "num-server-rounds": 5,
        "local-epochs": 0.2, "batch-size": 256, "max-eval-samples": 256}
QUICK = {"num-clients": 10, "max-train-samples": 640, "num-server-rounds": 2,
         "local-epochs": 1.0, "batch-size": 32, "max-eval-samples": 64}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "640 rows, batch 32, 2 rounds: checks the pipeline")
    device_arguments(parser)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of the centralized arm (default: every core)")


def settings_for(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    preset = dict(QUICK if args.quick else FULL)
    num_clients = preset.pop("num-clients")
    overrides = {"dataset": args.dataset, "partitioner": "iid", "dp": "sample",
                 "target-epsilon": 8.0, "delta": 1e-5, "grad-sample-mode": "hooks",
                 "client-threads": 1, "min-clients": num_clients, "fraction-train": 1.0,
                 "device": args.device, **preset, **parse_run_config(args.run_config)}
    return overrides, num_clients


def run(args: argparse.Namespace) -> int:
    overrides, num_clients = settings_for(args)
    threads = args.threads or os.cpu_count() or 1
    runs = Path(args.runs) if args.runs else runs_dir("federation")
    folder = result_dir(args.quick, args.out)
    result = header("federation", args.quick, overrides) | {
        "num_clients": num_clients, "central_threads": threads,
        "parallel_clients": max(1, (os.cpu_count() or 1) // args.cpus_per_client),
        "runs": str(runs), "target": TARGET}
    print(f"federation: {num_clients} clients x {overrides['num-server-rounds']} rounds vs "
          f"centralized ({threads} threads), runs in {runs}", flush=True)
    central = run_central(overrides, threads, runs, "central", timeout_s=args.timeout)
    result["central"] = central
    save(result, folder)
    federated = run_federated(overrides, num_clients, runs, "federated", timeout_s=args.timeout,
                              cpus_per_client=args.cpus_per_client,
                              gpus_per_client=args.gpus_per_client)
    result["federated"] = federated
    ok = central["ok"] and federated["ok"]
    if ok:
        c_rate = central["samples_planned"] / central["wall_s"]
        f_rate = federated["samples"] / federated["wall_s"]
        startup = federated["wall_s"] - federated["train_s"]
        result.update({
            "central_samples_per_s": round(c_rate, 2),
            "federated_samples_per_s": round(f_rate, 2),
            "ratio": round(f_rate / c_rate, 3),
            "target_met": f_rate / c_rate >= TARGET,
            # the federation's rate once its rounds run (from the server's first evaluation)
            "federated_rounds_samples_per_s": round(federated["samples"] / federated["train_s"], 2),
            "central_train_only_samples_per_s": round(central["samples"] / central["train_s"], 2),
            "federated_fixed_s": round(startup, 1),
            "same_samples": abs(central["samples_planned"] - federated["samples"])
            <= 0.01 * central["samples_planned"],
        })
    save(result, folder)
    rows = []
    for name, arm, samples in (("centralized", central, central.get("samples_planned")),
                               ("federated", federated, federated.get("samples"))):
        rows.append([name, samples, arm["wall_s"],
                     samples / arm["wall_s"] if arm["ok"] else None, arm.get("accuracy"),
                     arm.get("epsilon") if name == "centralized" else arm.get("epsilon_max"),
                     "ok" if arm["ok"] else f"FAILED ({arm['log']})"])
    print("\n" + table(["arm", "samples", "wall_s", "samples/s", "accuracy", "epsilon", "status"],
                       rows))
    if ok:
        print(f"federation / centralized samples/s: {result['ratio']:.3f} (target >= {TARGET}: "
              f"{'met' if result['target_met'] else 'MISSED'}); fixed cost outside the rounds "
              f"{result['federated_fixed_s']:.1f} s of {federated['wall_s']:.1f} s")
    return finish(result, folder, ok=ok)
