"""Arguments every benchmark takes, so that they all read the same way."""

from __future__ import annotations

import argparse

from simulations.benchmarks.common import default_dataset


def common_arguments(parser: argparse.ArgumentParser, quick_help: str) -> None:
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--dataset", default=default_dataset(),
                        help="SST-2 folder or hub id (default: the local copy)")
    parser.add_argument("--run-config", default="",
                        help="extra run-config overrides for every arm, as for flwr run")
    parser.add_argument("--out", default="",
                        help="folder for the result JSON (default docs/results, "
                             "docs/results/quick with --quick)")
    parser.add_argument("--runs", default="",
                        help="folder for run folders and logs (default runs/bench/NAME-TIME)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per arm")


def device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the model trains (run-config key 'device')")
    parser.add_argument("--gpus-per-client", type=float, default=0.0,
                        help="GPU share of each simulated client (needed for clients to see a GPU)")
    parser.add_argument("--cpus-per-client", type=int, default=1,
                        help="CPU cores of each simulated client")
