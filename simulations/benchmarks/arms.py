"""Running one arm of a benchmark, centralized or federated, and reading back what it did.

The federated arm is the real thing: ``flwr run`` through the launcher, timed from before the
SuperLink starts until it has been stopped again, so the framework's fixed start-up counts. What it
did is read from its run folder (``metrics.jsonl``, ``privacy/report.json``, ``partitions.json``),
the contract every run keeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fedtune.launch.simulation import run_simulation
from fedtune.project import PROJECT_ROOT


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def summarise(run: Path) -> dict[str, Any]:
    """Accuracy per round, traffic per client per round, epsilon and samples, from a run folder."""
    lines = read_jsonl(run / "metrics.jsonl")
    rounds = [x for x in lines if x["round"] > 0]
    report = json.loads((run / "privacy" / "report.json").read_text())
    clients = report.get("clients", [])
    replies = sum(x["clients"] for x in rounds) or 1
    return {
        "accuracy": lines[-1]["accuracy"],
        "macro_f1": lines[-1].get("macro_f1"),
        "accuracy_round0": lines[0]["accuracy"],
        "loss": lines[-1]["loss"],
        "rounds": len(rounds),
        "bytes_up_per_round": sum(x["bytes_up"] for x in rounds) / max(len(rounds), 1),
        "bytes_down_per_round": sum(x["bytes_down"] for x in rounds) / max(len(rounds), 1),
        "bytes_up_per_client_round": sum(x["bytes_up"] for x in rounds) / replies,
        "train_s": lines[-1]["elapsed_s"],
        "round_wall_s": [x["wall_s"] for x in rounds],
        "epsilon_max": report.get("max_epsilon"),
        "rejected": sum(len(x.get("rejected", [])) for x in rounds),
        # expected rows trained: every client's steps x its expected (Poisson) batch
        "samples": sum(c["steps"] * (c["sample_rate"] or 0) * c["num_examples"]
                       for c in clients),
        "series": [{"round": x["round"], "accuracy": x["accuracy"], "loss": x["loss"],
                    "epsilon": x.get("epsilon_max", 0.0 if x["round"] == 0 else None),
                    "elapsed_s": x["elapsed_s"]} for x in lines],
    }


def read_audit(run: Path) -> dict[str, Any]:
    """The sample-level audit a run wrote at its end (``privacy/audit.json``), flattened."""
    path = run / "privacy" / "audit.json"
    if not path.is_file():
        return {"audit": "missing"}
    s = json.loads(path.read_text()).get("sample_level") or {}
    return {k: s.get(k) for k in ("epsilon_lower_bound", "reported_epsilon", "correct", "guesses",
                                  "score", "m", "inserted", "verdict", "tries")}


def run_federated(overrides: dict[str, Any], num_clients: int, folder: Path, name: str, *,
                  timeout_s: float, cpus_per_client: int = 1, gpus_per_client: float = 0.0
                  ) -> dict[str, Any]:
    """One ``flwr run`` simulation to completion; its wall time and its run folder's summary."""
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"{name}.log"
    print(f"  {name}: flwr run, {num_clients} clients (log: {log_path})", flush=True)
    started = time.perf_counter()
    code = run_simulation({**overrides, "output-dir": str(folder / name)}, num_clients,
                          workdir=folder / f"{name}-flwr", log_path=log_path,
                          timeout_s=timeout_s, cpus_per_client=cpus_per_client,
                          gpus_per_client=gpus_per_client)
    row: dict[str, Any] = {"ok": code == 0, "wall_s": round(time.perf_counter() - started, 2),
                           "run": str(folder / name), "log": str(log_path)}
    if code == 0:
        row.update(summarise(folder / name))
    return row


def run_central(overrides: dict[str, Any], threads: int, folder: Path, name: str, *,
                timeout_s: float) -> dict[str, Any]:
    """The centralized arm in a fresh process (imports count, as in the federation)."""
    folder.mkdir(parents=True, exist_ok=True)
    job, out, log_path = (folder / f"{name}.job.json", folder / f"{name}.json",
                          folder / f"{name}.log")
    job.write_text(json.dumps({"overrides": overrides, "threads": threads}))
    out.unlink(missing_ok=True)
    print(f"  {name}: centralized, {threads} thread(s) (log: {log_path})", flush=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        try:
            done = subprocess.run([sys.executable, "-m", "simulations.benchmarks.central",
                                   str(job), str(out)], cwd=str(PROJECT_ROOT), env=env,
                                  stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s,
                                  check=False)
            code = done.returncode
        except subprocess.TimeoutExpired:
            code = 124
    row: dict[str, Any] = {"ok": code == 0 and out.is_file(),
                           "wall_s": round(time.perf_counter() - started, 2),
                           "log": str(log_path)}
    if row["ok"]:
        row.update(json.loads(out.read_text()))
    return row
