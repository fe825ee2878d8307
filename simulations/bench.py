"""Benchmarks of fedtune, each printing a table and, as its last line, ``RESULT {json}``.

    python -m simulations.bench throughput   # samples/s: no DP vs DP (hooks, functorch, ghost)
    python -m simulations.bench federation   # flwr simulation vs a centralized DP loop, samples/s
    python -m simulations.bench bytes        # upload per client per round: fedavg, ffa, full model
    python -m simulations.bench utility      # accuracy / macro-F1 at epsilon 8: SST-2, TREC
    python -m simulations.bench scale        # 100 and 1,000 clients: time per round, peak memory
    python -m simulations.bench strategies   # fedavg vs ffa vs hetero-rank
    python -m simulations.bench audit        # privacy audit lower bounds: DP, no DP, broken DP
    python -m simulations.bench secagg       # SecAgg+ vs plain fedavg: time and bytes per round

Every benchmark takes ``--quick`` (the same pipeline at a tiny size, about a minute or two) and
writes its result JSON to ``docs/results/`` (``docs/results/quick/`` with ``--quick``);
``python -m simulations.results`` turns those into ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = {
    "throughput": "local training samples/s, no DP vs DP-LoRA (hooks, functorch, ghost)",
    "federation": "samples/s of a 10-client flwr simulation vs a centralized DP-LoRA loop",
    "bytes": "upload per client per round: fedavg, ffa and the full model",
    "utility": "accuracy and macro-F1 at epsilon 8: SST-2 centralized / 10 / 100 clients, "
               "TREC-6 and TREC-50 on 5 clients",
    "scale": "100 and 1,000 simulated clients: wall time per round and peak memory",
    "strategies": "fedavg vs ffa vs hetero-rank on SST-2 (Dirichlet 0.3, DP epsilon 8)",
    "audit": "empirical privacy audit on SST-2: lower bounds at epsilon 8, without DP and with "
             "a broken (noise-free) DP-SGD",
    "secagg": "secure aggregation (SecAgg+) vs plain fedavg, 10 clients: time and bytes per "
              "round",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="benchmark", required=True)
    modules = {}
    for name, help_text in BENCHMARKS.items():
        modules[name] = importlib.import_module(f"simulations.benchmarks.{name.replace('-', '_')}")
        modules[name].add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    return modules[args.benchmark].run(args)


if __name__ == "__main__":
    sys.exit(main())
