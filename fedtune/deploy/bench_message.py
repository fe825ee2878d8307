"""Seconds per ClientApp message on a real deployment: Flower's fresh process per message against
the warm (forked) ClientApps of ``deploy supernode --isolation warm``.

One SuperLink and one SuperNode on 127.0.0.1 (TLS, node auth), ``--rounds`` rounds of one train
message each (no federated evaluation), so a round's ``wall_s`` in ``metrics.jsonl`` is one
message's round trip: start-up, data, model, DP training of a few steps, reply, and the server's
evaluation and checkpoint. Round 1 also installs the FAB and calibrates the noise; the figure is
the median of the later rounds.

    python -m fedtune.deploy.bench_message [--rounds 4] \
        [--model sentence-transformers/all-MiniLM-L6-v2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from fedtune.deploy.cluster import LocalCluster
from fedtune.deploy.demo import demo_run_config, make_material, start_federation
from fedtune.launch.flwr_cli import run_config_arg


def bench(isolation: str, rounds: int, model: str, work: Path) -> list[float]:
    """Round wall times (seconds) of one SuperNode's run under ``isolation``."""
    with LocalCluster(work, isolation=isolation) as cluster:
        tiny, server_data, data = make_material(work, 1)
        start_federation(cluster, data)
        config = demo_run_config(tiny, server_data,
                                 work / "server" / "runs" / "bench", rounds, min_clients=1)
        if model:
            config["model"] = model
        code = cluster.submit(run_config_arg(config))
        if code != 0:
            raise RuntimeError(f"{isolation}: run failed; see {cluster.log('submit')}")
    lines = [json.loads(x) for x in (work / "server" / "runs" / "bench" / "metrics.jsonl")
             .read_text().splitlines()]
    return [line["wall_s"] for line in lines[1:]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--model", default="", help="base model (default: the tiny test BERT)")
    parser.add_argument("--isolation", action="append", choices=("subprocess", "warm"))
    args = parser.parse_args(argv)
    results = {}
    for isolation in args.isolation or ["subprocess", "warm"]:
        walls = bench(isolation, args.rounds, args.model,
                      Path(tempfile.mkdtemp(prefix=f"fedtune-bench-{isolation}-")))
        results[isolation] = {"round_1_s": walls[0], "per_message_s": statistics.median(walls[1:]),
                              "rounds_s": walls}
        print(f"{isolation:>10}: {results[isolation]['per_message_s']:.1f} s per message "
              f"(median of rounds 2-{args.rounds}; round 1: {walls[0]:.1f} s; all: {walls})",
              flush=True)
    print("RESULT " + json.dumps({"model": args.model or "tiny-bert", "load_avg":
                                  os.getloadavg()[0], **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
