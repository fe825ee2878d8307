"""``fedtune``: privacy planning and reports from the command line.

    fedtune privacy plan --num-examples 6700 --batch-size 64 --local-epochs 1 --rounds 3 \\
        --target-epsilon 8 --delta 1e-5 [--accountant prv|rdp] [--json]
    fedtune privacy report runs/<name>
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from fedtune.config import ConfigError


def _plan(args: argparse.Namespace) -> int:
    from fedtune.privacy.planner import plan

    result = plan(num_examples=args.num_examples, batch_size=args.batch_size,
                  local_epochs=args.local_epochs, rounds=args.rounds,
                  target_epsilon=args.target_epsilon, delta=args.delta,
                  accountant=args.accountant)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"noise multiplier  {result['noise_multiplier']:.4f}")
    print(f"sample rate q     {result['sample_rate']:.5f}  ({result['steps_per_round']} steps "
          f"per round, {result['steps']} in total)")
    print(f"accountant        {result['accountant']}, delta {result['delta']:g}")
    print("round  epsilon")
    for i, eps in enumerate(result["epsilon_per_round"], start=1):
        print(f"{i:>5}  {eps:.4f}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from fedtune.outputs.privacy_report import write_human_report

    privacy_dir = Path(args.run_dir) / "privacy"
    if not (privacy_dir / "report.json").is_file():
        raise ConfigError(f"{privacy_dir / 'report.json'} not found: is {args.run_dir} a run "
                          "folder?")
    write_human_report(privacy_dir)
    print(f"wrote {privacy_dir / 'report.md'} and {privacy_dir / 'epsilon.png'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedtune")
    top = parser.add_subparsers(dest="area", required=True)
    privacy = top.add_parser("privacy", help="plan DP-SGD budgets and rebuild privacy reports")
    sub = privacy.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="noise multiplier and epsilon per round for one client")
    p.add_argument("--num-examples", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--local-epochs", type=float, default=1.0)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--target-epsilon", type=float, required=True)
    p.add_argument("--delta", type=float, required=True)
    p.add_argument("--accountant", choices=["prv", "rdp"], default="prv")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=_plan)
    r = sub.add_parser("report", help="rebuild privacy/report.md and plots from report.json")
    r.add_argument("run_dir")
    r.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
