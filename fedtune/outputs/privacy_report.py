"""The privacy report for people: ``privacy/report.md`` and ``privacy/epsilon.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedtune.atomic import write_text
from fedtune.outputs.plots import epsilon_png, no_dp_text, sample_level_dp


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"
    return str(x)


def _crosscheck_note(report: dict[str, Any]) -> list[str]:
    """Which figure is the guarantee, and why the RDP check may read higher (even above target)."""
    accountant = report["accountant"]
    target = report.get("target_epsilon")
    rdp = [c for c in report["clients"]
           if isinstance((c.get("crosscheck") or {}).get("rdp_epsilon"), (int, float))]
    if not rdp:
        return []
    if accountant == "rdp":
        text = ("The guarantee is the **epsilon** column, from the configured `rdp` accountant "
                "(Opacus); the RDP check recomputes it with Google's dp-accounting and should "
                "agree. The PLD check is a tighter accounting of the same steps, so it reads "
                "lower; it is a cross-check, not the guarantee.")
    else:
        text = (f"The guarantee is the **epsilon** column, from the configured `{accountant}` "
                "accountant (Opacus); the client budgets enforce that figure. The PLD and RDP "
                "columns recompute it independently with Google's dp-accounting: PLD should "
                "agree closely, while RDP is a looser upper bound (converting Rényi DP to "
                "(epsilon, delta) has slack), so it reads higher by design.")
        over = [c for c in rdp if target and c["crosscheck"]["rdp_epsilon"] > target]
        if over:
            text += (f" Here the RDP check exceeds the target {target:g} for {len(over)} "
                     f"client(s): that is RDP's slack, not an overspend.")
    return ["", text]


def _rounds_text(rounds: list[int]) -> str:
    return ("round " if len(rounds) == 1 else "rounds ") + ", ".join(map(str, rounds))


def _epsilon_cell(c: dict[str, Any]) -> str:
    """The reported epsilon, and the upper bound when rounds it was sent are unconfirmed."""
    unconfirmed = c.get("unconfirmed_rounds") or []
    if not unconfirmed:
        return _f(c["epsilon"])
    return (f"{_f(c['epsilon'])}; ≤ {_f(c.get('epsilon_upper_bound'))} "
            f"({_rounds_text(unconfirmed)} unconfirmed)")


def _guarantee(report: dict[str, Any]) -> str:
    """The federation's guarantee line; an upper bound when some rounds were never confirmed."""
    unconfirmed = [c for c in report["clients"] if c.get("unconfirmed_rounds")]
    unconfirmed += report.get("unattributed") or []
    head = "- **federation guarantee (max over clients): epsilon "
    tail = f"** after {report['rounds']} round(s)"
    if not unconfirmed:
        return f"{head}= {_f(report['max_epsilon'])}{tail}"
    return (f"{head}≤ {_f(report['max_epsilon'])}{tail} (an upper bound: {len(unconfirmed)} "
            "client(s) were sent rounds they never confirmed, counted as spent)")


def _no_dp_lines(report: dict[str, Any]) -> list[str]:
    """Header and per-client table for a run without sample-level DP-SGD."""
    lines = ["# Privacy-budget report", "", f"- DP mode: `{report['dp']}`", "",
             f"**{no_dp_text(report)}.**", "",
             "| client | n | steps | rounds trained | refused rounds |",
             "| --- | --- | --- | --- | --- |"]
    for c in report["clients"]:
        lines.append(
            f"| {c['partition_id']} | {c['num_examples']} | {c['steps']} | "
            f"{c['rounds_trained']} | {', '.join(map(str, c.get('refused_rounds', []))) or '–'} |")
    return lines


def _sample_level_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        "# Privacy-budget report",
        "",
        f"- DP mode: `{report['dp']}`; accountant: `{report['accountant']}`",
        f"- target epsilon per client: {report['target_epsilon']:g} at delta "
        f"{report['delta']:g}; clipping norm C = {report['max_grad_norm']:g}",
        *([f"- noise: {report['noise']}"] if report.get("noise") else []),
        _guarantee(report),
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
            f"{', '.join(map(str, c.get('refused_rounds', []))) or '–'} | {_epsilon_cell(c)} | "
            f"{_f(check.get('pld_epsilon'))} | {_f(check.get('rdp_epsilon'))} |"
        )
    return lines + _crosscheck_note(report)


def _released_lines(report: dict[str, Any], client_evaluate: bool | None) -> list[str]:
    """Every value a client's replies carry, and what protects it (docs/privacy.md lists the
    same)."""
    dp = report.get("dp", "sample")
    adapter = ("a DP output (sample-level DP-SGD; aggregating it is post-processing)"
               if dp in ("sample", "both") else
               "clipped for client-level DP, noised by the server (user-level DP only)"
               if dp == "client" else "**unprotected** (no DP)")
    loss = ("not sent: a loss of private batches is no DP output" if dp != "off" else
            "sent, **unprotected** (no DP)")
    evaluation = {True: "released (`client-evaluate = true`), **without DP**",
                  False: "not released (`client-evaluate = false`)",
                  None: "released only with `client-evaluate = true`, **without DP**"}
    return [
        "", "## What each client released", "",
        "Epsilon covers the adapter updates (and the label counts they were trained with, "
        "under `logit-adjustment`). Everything else a client sends is listed here.",
        "",
        f"- the adapter update (LoRA weights, and the head for seq-cls): {adapter}",
        "- `num-examples`, `dataset-size`, `sample-rate` (q = batch size / n): public by design; "
        "they reveal the client's dataset size n",
        "- `noise-multiplier` (sigma), `epsilon`, `delta`, `steps`, `total-steps`, "
        "`rounds-trained`, `rounds-refused`, `unit-weight`, the accountant history (sigma, q, "
        "steps per round) and a refusal's reason: public by design (functions of n, the "
        "settings and the schedule)",
        "- `partition-id` (a label on real hosts) and `lora-r` (this client's rank): public by "
        "design",
        f"- `train-loss`: {loss}",
        "- the optimiser's moments (`optimizer-state = keep`): never sent; they stay on the "
        "client between its rounds",
        "- the label counts of `logit-adjustment`: never sent; under sample-level DP drawn once "
        "with Gaussian noise and charged in epsilon (the accountant history's step at q = 1)",
        "- client evaluation metrics (loss, accuracy / macro-F1 or perplexity, and the number "
        f"of held-out rows) on the client's private held-out rows: "
        f"{evaluation[client_evaluate]}",
    ]


def _audit_lines(audit: dict[str, Any]) -> list[str]:
    """The section of ``fedtune privacy audit``'s results (``audit.json``)."""
    lines = ["", "## Empirical privacy audit", "",
             "A measured check on the epsilon above: an audit's lower bound is what the trained "
             "model shows to leak at 95% confidence. It must stay at or below the reported "
             "epsilon; a low bound is no proof of privacy (the audit sees one model and its own "
             "canaries)."]
    s = audit.get("sample_level")
    if s:
        lines += [
            "", f"- sample level, client {s['audit_client']}: {s['m']} canaries, "
            f"{s['inserted']} inserted by secret coin; {s['correct']} of {s['guesses']} guesses "
            f"right (k+ = {s['k_plus']}, k- = {s['k_minus']}, score: {s.get('score')})",
            f"- **epsilon lower bound {_f(s['epsilon_lower_bound'])}** at delta {s['delta']:g} "
            f"(confidence {s['confidence']:.0%}); reported epsilon {_f(s['reported_epsilon'])}",
            f"- {s['verdict']}"]
    c = audit.get("client_level")
    if c:
        lines += [
            "", f"- client level: {c['canary_clients']} canary clients; cosine with the final "
            f"delta {c['canary_cosine_mean']:.3g} ± {c['canary_cosine_std']:.3g} (null: 0 ± "
            f"{c['null_cosine_std']:.3g}, observed {c['null_cosine_mean_observed']:.3g} ± "
            f"{c['null_cosine_std_observed']:.3g})",
            f"- **epsilon estimate {_f(c['epsilon_estimate'])}** (an estimate, not a bound); "
            f"reported user-level epsilon {_f(c['reported_epsilon'])}",
            f"- {c['verdict']}"]
    return lines


def render(report: dict[str, Any], client_evaluate: bool | None = None,
           audit: dict[str, Any] | None = None) -> str:
    sample_level = sample_level_dp(report)
    lines = _sample_level_lines(report) if sample_level else _no_dp_lines(report)
    refusals = [(c["partition_id"], r) for c in report["clients"]
                for r in c.get("refusal_reasons", [])]
    if refusals:
        lines += ["", "## Refusals", ""]
        lines += [f"- client {pid}: {reason}" for pid, reason in refusals]
    unattributed = report.get("unattributed") or []
    if unattributed and sample_level:
        lines += ["", "## Nodes never heard from", ""]
        lines += [f"- node {x['node']}: epsilon ≤ {_f(x['epsilon_upper_bound'])} "
                  f"({_rounds_text(x['unconfirmed_rounds'])} unconfirmed; the budget every "
                  "client enforces)" for x in unattributed]
    level = report.get("client_level")
    if level:
        lines += [
            "", "## Client-level DP (DP-FedAvg)", "",
            "Each client's whole dataset is protected (user-level DP), accounted over rounds with "
            "the client sampling rate; " + ("this is separate from the sample-level epsilon "
                                            "above." if sample_level else
                                            "it is this run's only DP guarantee."), "",
            f"- clipping: {level['side']} side, norm {level['clipping_norm']:g}; noise "
            f"multiplier {level['noise_multiplier']:g}",
            f"- client sampling rate {_f(level['sample_rate'], 4)}, rounds {level['rounds']}",
            *([f"- client sampling: {level['sampling']}"] if level.get("sampling") else []),
            *([f"- the clipped sum is divided by the m = {level['denominator']} clients "
               "sampled (a client that did not reply adds zero) and noised before the server "
               f"optimiser (`{level.get('server_optimizer', 'none')}`)"]
              if "denominator" in level else []),
            f"- **user-level epsilon {_f(level['epsilon'])}** at delta {level['delta']:g} "
            f"(RDP; dp-accounting RDP check {_f(level.get('crosscheck_rdp_epsilon'))})",
        ]
    secure = report.get("secure_aggregation")
    if secure:
        lines += ["", "## Secure aggregation (SecAgg+)", "",
                  "The server received only the weighted sum of the clients' quantised updates "
                  "(masked vectors), never one client's update.", ""]
        if secure.get("rounds"):
            lines += [
                f"- {secure['rounds']} round(s); shares {secure['num_shares']}, reconstruction "
                f"threshold {secure['reconstruction_threshold']}, clipping range "
                f"±{secure['clipping_range']:g} on each weighted update value, quantisation "
                f"range {secure['quantization_range']}, modulus 2^32, max weight "
                f"{secure['max_weight']:g}",
                f"- quantisation error of the mean update: at most "
                f"{secure['quantization_error_bound']:.3g} per value",
                f"- values cut by the clipping range: {secure['clipped_values']} of "
                f"{secure['masked_values']}"]
    lines += _released_lines(report, client_evaluate)
    if audit:
        lines += _audit_lines(audit)
    if sample_level:
        lines += ["", "![epsilon per round](epsilon.png)", ""]
    else:
        lines += [""]
    return "\n".join(lines)


def write_human_report(privacy_dir: str | Path, report: dict[str, Any] | None = None) -> None:
    """Write ``report.md`` and ``epsilon.png`` from ``report`` (or from ``report.json``).

    Without sample-level DP, ``epsilon.png`` is a figure that says so in words (epsilon is
    infinite) rather than an empty frame, and ``report.md`` does not show it."""
    privacy_dir = Path(privacy_dir)
    if report is None:
        report = json.loads((privacy_dir / "report.json").read_text())
    config_path = privacy_dir.parent / "config.json"  # the run folder's, when there is one
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    evaluated = bool(config.get("client-evaluate")) if "client-evaluate" in config else None
    audit_path = privacy_dir / "audit.json"  # fedtune privacy audit's, when it has run
    audit = json.loads(audit_path.read_text()) if audit_path.is_file() else None
    write_text(privacy_dir / "report.md", render(report, evaluated, audit))
    epsilon_png(privacy_dir / "epsilon.png", report)
