"""``fedtune privacy audit RUN_DIR``: the empirical privacy audit of a finished run.

Sample level (``audit-canaries``): the final model's scores on the canaries, the audit client's
secret coins, the one-run lower bound, and the epsilon that client reported. Client level
(``audit-canary-clients``): the cosines of the final model delta with the canary clients'
directions, and the estimate they give. Written to ``privacy/audit.json`` and as a section of
``privacy/report.md``. A lower bound above the reported epsilon means the guarantee is broken.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np

from fedtune.atomic import write_json
from fedtune.audit.scores import canary_scores, gradient_alignment_scores
from fedtune.config import ConfigError, RunConfig, from_stored
from fedtune.model.adapter import adapter_state
from fedtune.model.build import load_classifier, load_tokenizer
from fedtune.outputs.privacy_report import write_human_report
from fedtune.outputs.run_folder import RunFolder
from fedtune.privacy.audit.canaries import AuditFolder, canary_words, make_canaries
from fedtune.privacy.audit.client_canaries import cosines, participates
from fedtune.privacy.audit.gaussian import estimate_from_cosines
from fedtune.privacy.audit.one_run import audit_scores
from fedtune.privacy.client_level import sampled_per_round
from fedtune.tasks.registry import task_for

AUDIT_FILE = "audit.json"
# Reported and audited epsilons are compared with this much slack for float noise only.
TOLERANCE = 1e-6


def audit_run(run_dir: str | Path, *, audit_dir: str | Path | None = None, model=None,
              tokenizer=None) -> dict:
    """Audit the run in ``run_dir``; ``model`` (holding the final adapter) and ``tokenizer`` save
    reloading them when the server audits its own run at the end."""
    folder = RunFolder(run_dir)
    stored = folder.read_config()
    if not stored:
        raise ConfigError(f"{folder.config_path} not found: is {run_dir} a run folder?")
    cfg = from_stored(stored)
    if not (cfg.audit_canaries or cfg.audit_canary_clients):
        raise ConfigError(f"the run in {folder.root} had no audit settings (audit-canaries, "
                          "audit-canary-clients): rerun it with them to audit it")
    if model is None:
        if not (folder.final_dir / "adapter_config.json").is_file():
            raise ConfigError(f"{folder.final_dir} holds no final adapter: the run did not "
                              "finish, so there is no final model to audit")
        model = load_classifier(str(folder.final_dir), model=cfg.model)
    report = _read_report(folder)
    # the run's round-0 adapter: seeded, so rebuilt exactly from the run's settings
    initial = adapter_state(task_for(cfg).seeded_model(cfg, len(stored.get("labels") or [])))
    result: dict = {"run": str(folder.root),
                    "audited_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if cfg.audit_canaries:
        tokenizer = tokenizer or load_tokenizer(cfg)
        where = Path(audit_dir or cfg.audit_dir or folder.root / "audit")
        result["sample_level"] = sample_level(cfg, stored, model, initial, tokenizer, where,
                                              report)
    if cfg.audit_canary_clients:
        result["client_level"] = client_level(cfg, stored, model, initial, report)
    write_json(folder.privacy_dir / AUDIT_FILE, result)
    if (folder.privacy_dir / "report.json").is_file():
        write_human_report(folder.privacy_dir)
    return result


def sample_level(cfg: RunConfig, stored: dict, model, initial: dict, tokenizer, audit_dir: Path,
                 report: dict) -> dict:
    labels = stored.get("labels") or []
    canaries = make_canaries(canary_words(tokenizer.get_vocab()), cfg.audit_canaries, cfg.seed,
                             len(labels))
    coins = AuditFolder(audit_dir).coins(canaries, cfg.audit_client, create=False)
    scores = {
        "black-box margin": canary_scores(model, tokenizer, canaries, cfg.max_length),
        "white-box gradient": gradient_alignment_scores(model, initial, tokenizer, canaries,
                                                        cfg.max_length),
    }
    out = {"method": "one-run canary audit (Steinke, Nasr, Jagielski 2023); scores: the final "
                     "model's logit margin of each canary's label (black box) and the cosine of "
                     "the final adapter delta with its descent direction (white box)",
           "audit_client": cfg.audit_client, **audit_scores(scores, coins, cfg.delta)}
    reported = _reported_epsilon(report, cfg.audit_client) if cfg.dp_enabled else math.inf
    out["reported_epsilon"] = reported if math.isfinite(reported) else None
    out["verdict"] = _verdict(out["epsilon_lower_bound"], reported, "sample-level")
    return out


def client_level(cfg: RunConfig, stored: dict, model, initial: dict, report: dict) -> dict:
    """Cosines of (final - initial adapter) with the canary clients' directions."""
    final = adapter_state(model)
    if set(final) != set(initial):
        raise ConfigError("the final adapter's tensors differ from the run's initial adapter: "
                          "audit with the run's own model and settings")
    delta = {k: final[k].double().numpy() - initial[k].double().numpy() for k in initial}
    k = cfg.audit_canary_clients
    inserted, null = cosines(delta, cfg.seed, k)
    num_clients = int(stored.get("num-clients", 0)) or 1
    sampled = sampled_per_round(cfg, num_clients)
    joined = sum(participates(cfg.seed, r, k, sampled / num_clients).astype(int)
                 for r in range(1, cfg.num_server_rounds + 1))
    dim = sum(int(np.size(v)) for v in delta.values())
    out = {"method": "one-shot estimate (Andrew et al. 2024): Gaussian fit of the canary "
                     "clients' cosines with the final model delta, against the null N(0, 1/d)",
           "canary_clients": k, "dimension": dim,
           "rounds_joined": [int(x) for x in np.atleast_1d(joined)],
           **estimate_from_cosines(inserted, dim, cfg.delta),
           "null_cosine_mean_observed": float(np.mean(null)),
           "null_cosine_std_observed": float(np.std(null, ddof=1)),
           "cosines": [float(c) for c in inserted], "null_cosines": [float(c) for c in null]}
    level = report.get("client_level") or {}
    reported = level.get("epsilon")
    out["reported_epsilon"] = reported
    out["verdict"] = _verdict(out["epsilon_estimate"],
                              math.inf if reported is None else float(reported), "client-level",
                              estimate=True)
    return out


def _read_report(folder: RunFolder) -> dict:
    path = folder.privacy_dir / "report.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _reported_epsilon(report: dict, partition_id: int) -> float:
    for c in report.get("clients", []):
        if int(c.get("partition_id", -1)) == partition_id and c.get("epsilon") is not None:
            return float(c.get("epsilon_upper_bound") or c["epsilon"])
    return math.inf


def _verdict(measured: float, reported: float, level: str, estimate: bool = False) -> str:
    what = "estimate" if estimate else "lower bound"
    if not math.isfinite(reported):
        return (f"no {level} DP guarantee was claimed; the audit's {what} is "
                f"{measured:.3g}")
    if measured > reported + TOLERANCE:
        return (f"VIOLATION: the {level} {what} {measured:.3g} exceeds the reported epsilon "
                f"{reported:.3g}: the DP guarantee does not hold for this run")
    return f"consistent: {what} {measured:.3g} <= reported epsilon {reported:.3g}"


def summary(result: dict) -> str:
    """One line per audit level, for the console."""
    lines = []
    if s := result.get("sample_level"):
        lines.append(f"privacy audit (sample level, client {s['audit_client']}): epsilon lower "
                     f"bound {s['epsilon_lower_bound']:.3f} from {s['correct']}/{s['guesses']} "
                     f"correct guesses on {s['m']} canaries; {s['verdict']}")
    if c := result.get("client_level"):
        lines.append(f"privacy audit (client level): epsilon estimate "
                     f"{c['epsilon_estimate']:.3f} from {c['canary_clients']} canary clients; "
                     f"{c['verdict']}")
    return "\n".join(lines)
