"""Run fedtune as a Flower simulation with one command, and leave nothing running afterwards.

A thin front for :func:`fedtune.launch.simulation.run_simulation`: check the settings first, then
start a private SuperLink, submit the run with ``flwr run --stream`` and stop everything by PID.

    python -m simulations.launch --num-clients 10 --run-config "dataset='../shared/data/sst2'"
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from fedtune.config import ConfigError, from_run_config
from fedtune.launch.flwr_cli import parse_run_config
from fedtune.launch.simulation import run_simulation
from fedtune.project import PROJECT_ROOT, project_defaults


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--run-config", default="", help="overrides, as for flwr run")
    parser.add_argument("--cpus-per-client", type=int, default=1)
    parser.add_argument("--gpus-per-client", type=float, default=0.0,
                        help="GPU share per simulated client (e.g. 0.5: two clients per GPU)")
    args = parser.parse_args(argv)
    overrides = parse_run_config(args.run_config)
    try:  # fail in a second, not after the SuperLink and Ray have started
        from_run_config(project_defaults(PROJECT_ROOT) | overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    code = run_simulation(overrides, args.num_clients, cpus_per_client=args.cpus_per_client,
                          gpus_per_client=args.gpus_per_client,
                          workdir=tempfile.mkdtemp(prefix="fedtune-sim-"))
    if code != 0:
        print(f"flwr run exited with code {code}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
