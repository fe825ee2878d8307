"""A real deployment on this machine: SuperLink + N SuperNodes on 127.0.0.1, TLS and node auth.

Makes a CA, the SuperLink's certificate and one key per node; starts the SuperLink; registers the
keys; starts each SuperNode on a data file of its own in its own "host" folder; submits a 2-round
run of a tiny BERT; checks the run folder and every host's privacy ledger; stops every process it
started, by PID. Exits 0 only if all of that worked.

    python -m fedtune.deploy.demo [--nodes 3] [--rounds 2] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from fedtune.data import toy as fx
from fedtune.deploy.checks import check_ledgers, check_run_folder, check_secure_aggregation
from fedtune.deploy.cluster import LocalCluster
from fedtune.launch.flwr_cli import run_config_arg

DELTA = 1e-3


def make_material(work: Path, num_nodes: int) -> tuple[Path, Path, list[Path]]:
    """(model folder, the server's evaluation data, one data file per node of distinct sizes)."""
    model = fx.make_tiny_bert(work / "model")
    server = work / "server" / "data"
    fx.write_jsonl(server / "train.jsonl", fx.toy_rows(20, seed=100))  # fixes the label set
    fx.write_jsonl(server / "validation.jsonl", fx.toy_rows(60, seed=101))
    nodes = [fx.write_jsonl(work / "hosts" / f"node-{k}" / "data.jsonl",
                            fx.toy_rows(40 + 20 * k, seed=200 + k))
             for k in range(1, num_nodes + 1)]
    return model, server, nodes


def demo_run_config(model: Path, server_data: Path, output: Path, rounds: int,
                    min_clients: int, secagg: bool = False) -> dict:
    """The demo's run; ``secagg``: under SecAgg+, with a max weight above every host's rows (the
    server cannot know them: real hosts must set it)."""
    secure = {"secure-aggregation": "secagg+", "secagg-max-weight": 1000.0} if secagg else {}
    return {"model": str(model), "dataset": str(server_data), "client-data": "local",
            "num-server-rounds": rounds, "min-clients": min_clients, "batch-size": 16,
            "max-length": 32, "lr": 0.01, "target-epsilon": 8.0, "delta": DELTA,
            "fraction-evaluate": 0.0, "output-dir": str(output), **secure}


def start_federation(cluster: LocalCluster, data: list[Path]) -> None:
    """Certificates, SuperLink, key registration, one SuperNode per data file; all online."""
    cluster.make_certs(len(data))
    cluster.start_superlink()
    cluster.register(list(range(1, len(data) + 1)))
    for k, path in enumerate(data, start=1):
        cluster.start_supernode(k, path)
    cluster.wait_online(len(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", default="")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--isolation", choices=("warm", "subprocess"), default="warm",
                        help="how each SuperNode starts its ClientApps (see deploy supernode)")
    parser.add_argument("--secagg", action="store_true",
                        help="run under secure aggregation (secure-aggregation = secagg+)")
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fedtune-demo-")).resolve()
    started = time.monotonic()
    run = work / "server" / "runs" / "demo"
    problems: list[str] = []
    with LocalCluster(work, isolation=args.isolation) as cluster:
        try:
            model, server_data, data = make_material(work, args.nodes)
            start_federation(cluster, data)
            print(f"SuperLink on https://{cluster.address} with {args.nodes} authenticated "
                  f"SuperNodes ({time.monotonic() - started:.0f} s)", flush=True)
            config = demo_run_config(model, server_data, run, args.rounds, args.nodes,
                                     args.secagg)
            code = cluster.submit(run_config_arg(config))
            if code != 0:
                problems.append(f"the run failed (exit {code}); see {cluster.log('submit')}")
        except (RuntimeError, OSError) as exc:
            problems.append(str(exc))
    if not problems:
        problems += check_run_folder(run, args.rounds, args.nodes)
        if args.secagg:
            problems += check_secure_aggregation(run, args.rounds)
        problems += check_ledgers(run, [cluster.host(k) / "ledger"
                                        for k in range(1, args.nodes + 1)], DELTA)
    if (run / "metrics.jsonl").is_file():
        for line in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
            print(f"round {line['round']}: accuracy {line['accuracy']:.3f}, clients "
                  f"{line.get('clients', '-')}, epsilon_max {line.get('epsilon_max', '-')}")
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    ok = not problems
    print(f"demo {'passed' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s; "
          f"logs in {cluster.logs}" if not ok or args.keep else
          f"demo {'passed' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s")
    if ok and not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
