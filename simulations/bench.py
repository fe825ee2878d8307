"""Benchmarks that run the real app (``flwr run`` through the launcher) and compare settings.

    python -m simulations.bench strategies           # fedavg vs ffa vs hetero-rank on SST-2
    python -m simulations.bench strategies --quick   # the same at a tiny sample count (~2 min)

``strategies`` runs each aggregation on SST-2 with 10 clients, a Dirichlet(0.3) label split and
sample-level DP at epsilon 8 per client, with the same compute for each: the same rows, clients,
rounds, local epochs, batch size, sequence length and seed. Only what the aggregation decides
differs: which tensors are trained and sent, and, for ``hetero-rank``, the clients' ranks
(``hetero-ranks`` 2,4,8 cycled over partitions; the others train at ``lora-r`` = 8). It prints a
table and, last, one ``RESULT {json}`` line for machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from simulations.launch import PROJECT_ROOT, parse_run_config, run_simulation

STRATEGIES = ("fedavg", "ffa", "hetero-rank")
SST2 = PROJECT_ROOT.parent / "shared" / "data" / "sst2"

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


def summarise(run: Path) -> dict[str, Any]:
    """Final accuracy, mean traffic per round and the privacy spent, from the run folder."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    rounds = [x for x in lines if x["round"] > 0]
    report = json.loads((run / "privacy" / "report.json").read_text())
    return {
        "accuracy": lines[-1]["accuracy"],
        "accuracy_round0": lines[0]["accuracy"],
        "loss": lines[-1]["loss"],
        "bytes_up_per_round": sum(x["bytes_up"] for x in rounds) / max(len(rounds), 1),
        "bytes_down_per_round": sum(x["bytes_down"] for x in rounds) / max(len(rounds), 1),
        "train_s": lines[-1]["elapsed_s"],
        "epsilon_max": report["max_epsilon"],
        "rejected": sum(len(x.get("rejected", [])) for x in rounds),
    }


def bench_strategies(args: argparse.Namespace) -> int:
    out = Path(args.out or tempfile.mkdtemp(prefix="fedtune-bench-")).resolve()
    settings = strategy_settings(args.dataset, args.quick) | parse_run_config(args.run_config)
    results = []
    for name in STRATEGIES:
        overrides = {**settings, "aggregation": name, "output-dir": str(out / name)}
        log_path = out / f"{name}.log"
        out.mkdir(parents=True, exist_ok=True)
        print(f"running {name} ... (log: {log_path})", flush=True)
        started = time.monotonic()
        code = run_simulation(overrides, args.num_clients, workdir=out / f"{name}-flwr",
                              log_path=log_path, timeout_s=args.timeout)
        row: dict[str, Any] = {"strategy": name, "ok": code == 0,
                               "wall_s": round(time.monotonic() - started, 1)}
        if code == 0:
            row.update(summarise(out / name))
        results.append(row)

    header = (f"{'strategy':<12} {'accuracy':>8} {'up/round':>12} {'down/round':>12} "
              f"{'epsilon':>8} {'train_s':>8} {'wall_s':>8}")
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        if not r["ok"]:
            print(f"{r['strategy']:<12} FAILED (see {out / (r['strategy'] + '.log')})")
            continue
        print(f"{r['strategy']:<12} {r['accuracy']:>8.4f} {r['bytes_up_per_round']:>12,.0f} "
              f"{r['bytes_down_per_round']:>12,.0f} {r['epsilon_max']:>8.3f} "
              f"{r['train_s']:>8.1f} {r['wall_s']:>8.1f}")
    result = {"benchmark": "strategies", "quick": args.quick, "num_clients": args.num_clients,
              "settings": settings, "output": str(out), "results": results}
    print("RESULT " + json.dumps(result), flush=True)
    return 0 if all(r["ok"] for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="benchmark", required=True)
    strategies = sub.add_parser("strategies", help="fedavg vs ffa vs hetero-rank on SST-2")
    strategies.add_argument("--quick", action="store_true",
                            help="300 training rows, 2 rounds: checks the pipeline in minutes")
    strategies.add_argument("--num-clients", type=int, default=10)
    strategies.add_argument("--dataset", default=str(SST2) if SST2.is_dir() else "stanfordnlp/sst2")
    strategies.add_argument("--run-config", default="",
                            help="extra overrides for every strategy, as for flwr run")
    strategies.add_argument("--out", default="", help="folder for the runs (default: a temp dir)")
    strategies.add_argument("--timeout", type=float, default=6 * 3600.0,
                            help="seconds allowed per strategy")
    args = parser.parse_args(argv)
    return bench_strategies(args)


if __name__ == "__main__":
    sys.exit(main())
