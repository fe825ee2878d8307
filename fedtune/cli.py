"""``fedtune``: the settings, privacy planning and reports from the command line.

    fedtune settings [--markdown] [--update docs/settings.md]
    fedtune privacy plan --num-examples 6700 --batch-size 64 --local-epochs 1 --rounds 3 \\
        --target-epsilon 8 --delta 1e-5 [--accountant prv|rdp] [--json] \\
        [--num-clients 10] [--trainable-params D | --model M --lora-r 8 ...] [--recommend]
    fedtune privacy report runs/<name>
    fedtune privacy audit runs/<name> [--audit-dir FOLDER] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path

from fedtune.config import DEFAULT_MODEL, ConfigError, describe
from fedtune.console import quiet_warnings, verbose_from_env

SETTINGS_START = "<!-- settings:start"
SETTINGS_END = "<!-- settings:end -->"
SETTINGS_COMMAND = "python -m fedtune.cli settings --markdown --update docs/settings.md"


def _plan(args: argparse.Namespace) -> int:
    from fedtune.privacy.planner import plan

    trainable = _trainable_params(args)
    if args.recommend:
        return _recommend(args, trainable)
    result = plan(num_examples=args.num_examples, batch_size=args.batch_size,
                  local_epochs=args.local_epochs, rounds=args.rounds,
                  target_epsilon=args.target_epsilon, delta=args.delta,
                  accountant=args.accountant, num_clients=args.num_clients,
                  trainable_params=trainable, label_count_noise=_count_noise(args))
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
    _print_snr(result)
    return 0


def _count_noise(args: argparse.Namespace) -> float:
    from fedtune.privacy.label_counts import auto_count_noise

    if args.label_count_noise == "auto":
        return auto_count_noise(args.target_epsilon)
    if args.label_count_noise == "off":
        return 0.0
    try:
        return float(args.label_count_noise)
    except ValueError:
        raise ConfigError(f"--label-count-noise {args.label_count_noise!r}: a number, 'auto' "
                          "or 'off'") from None


def _print_snr(result: dict) -> None:
    from fedtune.privacy.signal_to_noise import ADVICE, NOISE_DOMINATED_BELOW

    print(f"signal/noise      step {result['step_snr']:.3g}, run {result['run_snr']:.3g}  "
          f"({result['num_clients']} client(s), {result['trainable_params']:,} trainable "
          f"parameters; an optimistic bound, below {NOISE_DOMINATED_BELOW:g} the noise wins)")
    if result["noise_dominated"]:
        print(f"WARNING: this run is likely noise-dominated (run signal/noise "
              f"{result['run_snr']:.3g} < {NOISE_DOMINATED_BELOW:g}); {ADVICE}")


def _recommend(args: argparse.Namespace, trainable: int) -> int:
    from fedtune.privacy.planner import recommend

    result = recommend(num_examples=args.num_examples, num_clients=args.num_clients,
                       samples_per_client=args.local_epochs * args.rounds * args.num_examples,
                       rounds=args.rounds, target_epsilon=args.target_epsilon, delta=args.delta,
                       trainable_params=trainable, accountant=args.accountant)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"same compute: {result['samples_per_client']:g} examples per client over "
          f"{args.rounds} round(s), {args.num_clients} client(s), {trainable:,} trainable "
          "parameters,")
    print(f"epsilon {args.target_epsilon:g}, delta {args.delta:g}; batch sizes leaving under "
          f"{result['min_steps_per_round']} steps per round are left out")
    print("batch  local-epochs  steps  noise   step s/n  run s/n")
    for c in result["candidates"]:
        beyond = "  (beyond the measured range)" if c["beyond_measured"] else ""
        print(f"{c['batch_size']:>5}  {c['local_epochs']:>12g}  {c['steps']:>5}  "
              f"{c['noise_multiplier']:.4f}  {c['step_snr']:>8.3g}  {c['run_snr']:>7.3g}{beyond}")
    if any(c["beyond_measured"] for c in result["candidates"]):
        from fedtune.privacy.calibration import AUTO_BATCH_MAX, AUTO_STEPS_PER_EPOCH

        print(f"s/n always favours the largest batch; measured, batches above "
              f"{result['measured_max_batch']} here (above {AUTO_BATCH_MAX}, or under "
              f"{AUTO_STEPS_PER_EPOCH} steps per epoch) did worse, so the choice stays within "
              "that range")
    best = result["best"]
    print(f"recommended: --run-config \"batch-size={best['batch_size']} "
          f"local-epochs={best['local_epochs']:g}\"  (run signal/noise {best['run_snr']:.3g})")
    if best["noise_dominated"]:
        from fedtune.privacy.signal_to_noise import ADVICE

        print(f"WARNING: even the best batch size is likely noise-dominated; {ADVICE}")
    return 0


def _trainable_params(args: argparse.Namespace) -> int:
    """``--trainable-params``, else counted from the model's config.json (no weights loaded)."""
    if args.trainable_params is not None:
        return args.trainable_params
    from fedtune.model.paths import resolve_model_path
    from fedtune.privacy.signal_to_noise import lora_trainable_params, read_model_config

    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    return lora_trainable_params(read_model_config(resolve_model_path(args.model)), args.lora_r,
                                 targets, args.num_labels)


def _report(args: argparse.Namespace) -> int:
    from fedtune.outputs.privacy_report import write_human_report

    privacy_dir = Path(args.run_dir) / "privacy"
    if not (privacy_dir / "report.json").is_file():
        raise ConfigError(f"{privacy_dir / 'report.json'} not found: is {args.run_dir} a run "
                          "folder?")
    write_human_report(privacy_dir)
    print(f"wrote {privacy_dir / 'report.md'} and {privacy_dir / 'epsilon.png'}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from fedtune.audit.run_audit import audit_run, summary

    result = audit_run(args.run_dir, audit_dir=args.audit_dir)
    if args.json:
        print(json.dumps(result))
        return 0
    print(summary(result))
    print(f"wrote {Path(args.run_dir) / 'privacy' / 'audit.json'}")
    return 0


# --- the settings table, generated from RunConfig's fields -----------------------------------

def _shown(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):  # as TOML writes it: 1.0, 0.01, 1e-5
        return re.sub(r"e([+-])0*(\d)", lambda m: f"e{m[1].replace('+', '')}{m[2]}", repr(value))
    if isinstance(value, int):
        return str(value)
    return f'"{value}"' if value == "" else str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def settings_markdown() -> str:
    """The settings table (Markdown), one section per group of settings, as in docs/settings.md."""
    lines: list[str] = []
    header = ["| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    for row in describe():
        if row["section"]:
            lines += ([""] if lines else []) + [f"### {row['section']}", "", *header]
        allowed = row["allowed"]
        if " | " in allowed:
            allowed = " | ".join(f"`{a}`" for a in allowed.split(" | "))
        lines.append(f"| `{row['key']}` | `{_shown(row['default'])}` | {_cell(allowed)} | "
                     f"{_cell(row['help'])} |")
    return "\n".join(lines) + "\n"


def settings_text(width: int = 100) -> str:
    """The same for a terminal: key = default [allowed], then the meaning, links unwrapped."""
    out: list[str] = []
    for row in describe():
        if row["section"]:
            out += ["", row["section"].upper()]
        allowed = f"   [{row['allowed']}]" if row["allowed"] else ""
        out.append(f"  {row['key']} = {_shown(row['default'])}{allowed}")
        meaning = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", row["help"]).replace("`", "")
        out += textwrap.wrap(meaning, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(out[1:]) + "\n"


def replace_generated(text: str, table: str) -> str:
    """``text`` with the part between the settings markers replaced by ``table``."""
    start, end = text.find(SETTINGS_START), text.find(SETTINGS_END)
    if start < 0 or end < start:
        raise ConfigError(f"no '{SETTINGS_START} ...' / '{SETTINGS_END}' markers to replace")
    opening = text.index("\n", start) + 1
    return text[:opening] + "\n" + table + "\n" + text[end:]


def _settings(args: argparse.Namespace) -> int:
    if args.update:
        path = Path(args.update)
        path.write_text(replace_generated(path.read_text(), settings_markdown()))
        print(f"updated {path}")
        return 0
    print(settings_markdown() if args.markdown else settings_text(), end="")
    return 0


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help; '(required)' instead of 'default: None'."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required:
            return text + " (required)" if action.option_strings else text
        if action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _para(text: str) -> str:
    return "\n".join(textwrap.fill(part, 88) for part in text.split("\n"))


EXAMPLES = """examples:
  fedtune settings                      every run-config key, its default, range and meaning
  fedtune privacy plan --num-examples 3200 --batch-size 64 --rounds 2 \\
      --target-epsilon 8 --delta 1e-5   noise and epsilon per round for one client
  fedtune privacy report runs/<name>    rebuild privacy/report.md and epsilon.png

Runs start with `python -m simulations.launch` (simulation) or `python -m fedtune.deploy`
(real hosts); both take --run-config "key=value ...". Docs: README.md and docs/."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedtune", formatter_class=_Help, epilog=EXAMPLES,
        description=_para(
            "fedtune: federated, differentially private LoRA fine-tuning (Flower, PEFT, "
            "Opacus).\nList the run settings, plan a client's privacy budget, rebuild a run's "
            "privacy report."))
    top = parser.add_subparsers(dest="area", required=True, metavar="{settings,privacy}")

    s = top.add_parser(
        "settings", formatter_class=_Help, help="every run-config key: default, range, meaning",
        description=_para(
            "Every key of [tool.flwr.app.config] (override with --run-config 'key=value'), from "
            "RunConfig's fields: default, allowed values, meaning."))
    s.add_argument("--markdown", action="store_true",
                   help="print the Markdown table of docs/settings.md instead of plain text")
    s.add_argument("--update", metavar="FILE", default=None,
                   help="rewrite the table between the settings markers in FILE (e.g. "
                        "docs/settings.md) instead of printing it")
    s.set_defaults(func=_settings)

    privacy = top.add_parser(
        "privacy", formatter_class=_Help, help="plan DP-SGD budgets and rebuild privacy reports",
        description=_para(
            "Plan one client's DP-SGD noise before a run, or rebuild a run's human-readable "
            "privacy report."))
    sub = privacy.add_subparsers(dest="command", required=True, metavar="{plan,report}")
    p = sub.add_parser(
        "plan", formatter_class=_Help,
        help="noise multiplier and epsilon per round for one client",
        description=_para(
            "The noise multiplier a client with this much data needs so that its epsilon after "
            "the last round is at most the target (calibrated once for every planned step, as a "
            "run does), and its cumulative epsilon after each round."))
    p.add_argument("--num-examples", type=int, required=True,
                   help="the client's training examples n")
    p.add_argument("--batch-size", type=int, required=True,
                   help="expected Poisson batch size (run-config batch-size; 0 = auto, from "
                        "--num-examples as a run derives it)")
    p.add_argument("--local-epochs", type=float, default=1.0,
                   help="local passes over the data per round (run-config local-epochs)")
    p.add_argument("--rounds", type=int, required=True,
                   help="rounds the client trains in (run-config num-server-rounds)")
    p.add_argument("--target-epsilon", type=float, required=True,
                   help="the client's total epsilon budget over all rounds")
    p.add_argument("--delta", type=float, required=True,
                   help="DP delta; must be below 1/num-examples")
    p.add_argument("--accountant", choices=["prv", "rdp"], default="prv",
                   help="Opacus privacy accountant")
    p.add_argument("--label-count-noise", default="auto",
                   help="the run's label-count-noise: its noisy label counts (logit-adjustment "
                        "> 0, the default) are composed in; 'auto' as a run's 0 does, 'off' for "
                        "a run with logit-adjustment = 0 or without labels")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    snr = p.add_argument_group(
        "signal-to-noise", _para(
            "Will the run learn? The predicted ratio of the largest signal the run can carry to "
            "its accumulated DP noise, an optimistic bound (docs/privacy.md)."))
    snr.add_argument("--num-clients", type=int, default=1,
                     help="clients training in each round; their independent noise averages out")
    snr.add_argument("--trainable-params", type=int, default=None,
                     help="trainable parameters d (LoRA + head; the server logs the real count); "
                          "default: counted from --model, --lora-r, --lora-targets, --num-labels")
    snr.add_argument("--model", default=DEFAULT_MODEL,
                     help="base model (a BERT) whose config.json gives d (run-config model)")
    snr.add_argument("--lora-r", type=int, default=8, help="LoRA rank (run-config lora-r)")
    snr.add_argument("--lora-targets", default="query,value",
                     help="modules with LoRA (run-config lora-targets)")
    snr.add_argument("--num-labels", type=int, default=2, help="classes of the task head")
    snr.add_argument("--recommend", action="store_true",
                     help="compare batch sizes for the same compute (local-epochs x rounds x "
                          "examples) and print the run-config that learns best")
    p.set_defaults(func=_plan)
    r = sub.add_parser(
        "report", formatter_class=_Help,
        help="rebuild privacy/report.md and plots from report.json",
        description=_para("Rewrite <run_dir>/privacy/report.md and epsilon.png from report.json."))
    r.add_argument("run_dir", help="the run folder (output-dir), e.g. runs/20261129-120000")
    r.set_defaults(func=_report)
    a = sub.add_parser(
        "audit", formatter_class=_Help,
        help="empirical privacy audit of a finished run (audit-canaries, audit-canary-clients)",
        description=_para(
            "Score the run's final model on its audit canaries and write privacy/audit.json "
            "and a section of privacy/report.md: a one-run epsilon lower bound (sample level) "
            "and a canary-client estimate (client level). A bound above the reported epsilon "
            "means the DP guarantee is broken; a low bound proves nothing."))
    a.add_argument("run_dir", help="the run folder (output-dir)")
    a.add_argument("--audit-dir", default=None,
                   help="the audit client's folder with the canaries' coins (default: the "
                        "run-config audit-dir, else <run_dir>/audit)")
    a.add_argument("--json", action="store_true", help="print audit.json's content")
    a.set_defaults(func=_audit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_warnings(verbose_from_env())  # the accountants' known noise, as in the launcher
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
