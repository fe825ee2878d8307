"""``scale``: 100 and 1,000 simulated clients, 10 sampled per round: time per round, peak memory.

Every client holds the same number of rows (``--rows-per-client``), so a round's work is the same
whatever the population: 10 clients train, the server evaluates. What may grow with the number
of clients is the framework's and the server's bookkeeping, which is what this measures. Each
population runs through ``flwr run`` (the launcher) with ``fraction-train`` = 10/N and DP on.

Memory is the peak, over the run, of the summed resident memory (RSS) of the whole process tree
that the run starts (SuperLink, SuperExec, the simulation process with the ServerApp, Ray and its
client workers), sampled every half second with psutil; the summed proportional set size (PSS,
shared pages split between processes) is recorded beside it. Time per round is ``wall_s`` of
each training round in ``metrics.jsonl``. Target: memory flat in the number of clients (the
largest population's peak within 10% of the smallest's).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from typing import Any

from fedtune.launch.flwr_cli import parse_run_config
from simulations.benchmarks.arms import run_federated
from simulations.benchmarks.cli import common_arguments, device_arguments
from simulations.benchmarks.common import finish, header, result_dir, runs_dir, save, table

FLAT_TOLERANCE = 0.10
PER_ROUND = 10

FULL = {"populations": (100, 1000), "rounds": 3, "rows_per_client": 16,
        "settings": {"batch-size": 16, "max-eval-samples": 256, "local-epochs": 1.0}}
QUICK = {"populations": (20, 100), "rounds": 2, "rows_per_client": 8,
         "settings": {"batch-size": 8, "max-eval-samples": 64, "local-epochs": 1.0}}


class TreeMemory:
    """Samples the summed memory of this process's descendants in a background thread."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.peak_rss = self.peak_pss = 0
        self.peak_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        import psutil

        me = psutil.Process(os.getpid())
        while not self._stop.is_set():
            rss = pss = 0
            try:
                procs = me.children(recursive=True)
            except psutil.Error:
                procs = []
            for proc in procs:
                try:
                    info = proc.memory_full_info()
                    rss += info.rss
                    pss += getattr(info, "pss", info.rss)
                except psutil.Error:
                    continue  # ended between listing and reading
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, len(procs))
            self.samples += 1
            self._stop.wait(self.interval_s)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "20 and 100 clients, 2 rounds: checks the pipeline")
    device_arguments(parser)
    parser.add_argument("--populations", default="",
                        help="comma-separated client counts (default 100,1000)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 3)")
    parser.add_argument("--rows-per-client", type=int, default=0, help="default 16")


def run(args: argparse.Namespace) -> int:
    preset = QUICK if args.quick else FULL
    populations = (tuple(int(x) for x in args.populations.split(",")) if args.populations
                   else preset["populations"])
    rounds = args.rounds or preset["rounds"]
    per_client = args.rows_per_client or preset["rows_per_client"]
    base = {"dataset": args.dataset, "num-server-rounds": rounds, "dp": "sample",
            "target-epsilon": 8.0, "delta": 1e-5, "partitioner": "iid", "client-threads": 1,
            "min-clients": PER_ROUND, "device": args.device, **preset["settings"],
            **parse_run_config(args.run_config)}
    runs = Path(args.runs) if args.runs else runs_dir("scale")
    folder = result_dir(args.quick, args.out)
    result = header("scale", args.quick, base) | {
        "populations": list(populations), "per_round": PER_ROUND, "rows_per_client": per_client,
        "runs": str(runs), "flat_tolerance": FLAT_TOLERANCE, "results": []}
    print(f"scale: {populations} clients, {PER_ROUND} per round, {rounds} rounds, "
          f"{per_client} rows each; runs in {runs}", flush=True)
    for n in populations:
        overrides = {**base, "max-train-samples": n * per_client,
                     "fraction-train": PER_ROUND / n}
        started = time.perf_counter()
        with TreeMemory() as memory:
            out = run_federated(overrides, n, runs, f"clients-{n}", timeout_s=args.timeout,
                                cpus_per_client=args.cpus_per_client,
                                gpus_per_client=args.gpus_per_client)
        row: dict[str, Any] = {
            "clients": n, **out, "peak_rss_mb": round(memory.peak_rss / 2**20, 1),
            "peak_pss_mb": round(memory.peak_pss / 2**20, 1),
            "peak_processes": memory.peak_processes, "memory_samples": memory.samples,
            "total_s": round(time.perf_counter() - started, 2)}
        if out["ok"]:
            walls = out["round_wall_s"]
            row["round_s_mean"] = round(sum(walls) / len(walls), 3)
        result["results"].append(row)
        save(result, folder)

    ok_rows = [r for r in result["results"] if r["ok"]]
    if len(ok_rows) >= 2:
        growth = ok_rows[-1]["peak_rss_mb"] / ok_rows[0]["peak_rss_mb"]
        result["rss_growth"] = round(growth, 3)
        result["pss_growth"] = round(ok_rows[-1]["peak_pss_mb"] / ok_rows[0]["peak_pss_mb"], 3)
        result["round_time_growth"] = round(ok_rows[-1]["round_s_mean"]
                                            / ok_rows[0]["round_s_mean"], 3)
        result["target_met"] = growth <= 1 + FLAT_TOLERANCE
    else:
        result["target_met"] = None
    print("\n" + table(
        ["clients", "s/round", "peak RSS MB", "peak PSS MB", "processes", "wall_s", "status"],
        [[str(r["clients"]), r.get("round_s_mean"), r["peak_rss_mb"], r["peak_pss_mb"],
          r["peak_processes"], r["wall_s"], "ok" if r["ok"] else f"FAILED ({r['log']})"]
         for r in result["results"]]))
    if result["target_met"] is not None:
        print(f"peak RSS {populations[-1]} / {populations[0]} clients: {result['rss_growth']:.3f}"
              f" (flat within {FLAT_TOLERANCE:.0%}: "
              f"{'met' if result['target_met'] else 'MISSED'})")
    return finish(result, folder, ok=len(ok_rows) == len(result["results"]))
