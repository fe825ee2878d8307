"""The privacy report for people: ``privacy/report.md`` and ``privacy/epsilon.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedtune.atomic import write_text
from fedtune.outputs.plots import epsilon_png


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"
    return str(x)


def render(report: dict[str, Any]) -> str:
    lines = [
        "# Privacy-budget report",
        "",
        f"- DP mode: `{report['dp']}`; accountant: `{report['accountant']}`",
        f"- target epsilon per client: {report['target_epsilon']:g} at delta "
        f"{report['delta']:g}; clipping norm C = {report['max_grad_norm']:g}",
        f"- **federation guarantee (max over clients): epsilon = "
        f"{_f(report['max_epsilon'])}** after {report['rounds']} round(s)",
        "",
        "Sample-level (record-level) DP: each client's local dataset is the protected database; "
        "epsilon composes over every DP-SGD step of every round the client trained in.",
        "",
        "| client | n | sigma | q | steps | rounds trained | refused rounds | epsilon "
        "| PLD check | RDP check |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in report["clients"]:
        check = c.get("crosscheck") or {}
        lines.append(
            f"| {c['partition_id']} | {c['num_examples']} | {_f(c['noise_multiplier'])} | "
            f"{_f(c['sample_rate'], 4)} | {c['steps']} | {c['rounds_trained']} | "
            f"{', '.join(map(str, c.get('refused_rounds', []))) or '–'} | {_f(c['epsilon'])} | "
            f"{_f(check.get('pld_epsilon'))} | {_f(check.get('rdp_epsilon'))} |"
        )
    refusals = [(c["partition_id"], r) for c in report["clients"]
                for r in c.get("refusal_reasons", [])]
    if refusals:
        lines += ["", "## Refusals", ""]
        lines += [f"- client {pid}: {reason}" for pid, reason in refusals]
    level = report.get("client_level")
    if level:
        lines += [
            "", "## Client-level DP (DP-FedAvg)", "",
            "Each client's whole dataset is protected (user-level DP), accounted over rounds with "
            "the client sampling rate; this is separate from the sample-level epsilon above.", "",
            f"- clipping: {level['side']} side, norm {level['clipping_norm']:g}; noise "
            f"multiplier {level['noise_multiplier']:g}",
            f"- client sampling rate {_f(level['sample_rate'], 4)}, rounds {level['rounds']}",
            f"- **user-level epsilon {_f(level['epsilon'])}** at delta {level['delta']:g} "
            f"(RDP; dp-accounting RDP check {_f(level.get('crosscheck_rdp_epsilon'))})",
        ]
    lines += ["", "![epsilon per round](epsilon.png)", ""]
    return "\n".join(lines)


def write_human_report(privacy_dir: str | Path, report: dict[str, Any] | None = None) -> None:
    """Write ``report.md`` and ``epsilon.png`` from ``report`` (or from ``report.json``)."""
    privacy_dir = Path(privacy_dir)
    if report is None:
        report = json.loads((privacy_dir / "report.json").read_text())
    write_text(privacy_dir / "report.md", render(report))
    epsilon_png(privacy_dir / "epsilon.png", report)
