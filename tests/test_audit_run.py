"""The one-run canary audit end to end, in one process: the audit loses its power if a run
without DP stops scoring clearly above a strong-DP run, and its coins must never leave the audit
folder.

Two clients on the toy task (a 128-wide tiny random BERT with made-up rare words for the
canaries); client 0 holds the canaries. The same run at dp = off, at epsilon 1, and at epsilon 1
with the test fault that skips the noise (a broken DP-SGD that still reports epsilon 1). Measured:
lower bounds 1.6 (off), 0 (epsilon 1) and 2.2 (broken), about 25 s in all.
"""

from __future__ import annotations

import json
import stat

import pytest
import torch
from federation_helpers import federate

from fedtune.audit.scores import canary_scores, gradient_alignment_scores
from fedtune.config import from_run_config
from fedtune.data.toy import make_tiny_sentence_transformer, toy_rows, write_jsonl
from fedtune.model.adapter import adapter_state
from fedtune.privacy.audit.canaries import AuditFolder, canary_words, make_canaries
from fedtune.privacy.audit.one_run import audit_scores
from fedtune.protocol import NUM_EXAMPLES
from fedtune.tasks.registry import task_for

M = 100
ARMS = {"off": {"dp": "off"}, "eps1": {"target-epsilon": 1.0},
        "broken": {"target-epsilon": 1.0, "fault-injection": "0:*:no-noise"}}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    work = tmp_path_factory.mktemp("audit")
    torch.manual_seed(0)
    model = make_tiny_sentence_transformer(work / "model", sentiment_feature=4.0, rare=1000,
                                           width=128)
    write_jsonl(work / "data" / "train.jsonl", toy_rows(100, seed=1))
    write_jsonl(work / "data" / "validation.jsonl", toy_rows(50, seed=2))
    out = {}
    for name, arm in ARMS.items():
        overrides = {"model": str(model), "dataset": str(work / "data"), "max-length": 24,
                     "num-server-rounds": 1, "local-epochs": 50.0, "lr": 0.008, "delta": 1e-5,
                     "min-clients": 2, "accountant": "rdp", "reproducible-noise": True,
                     "audit-canaries": M, "audit-client": 0,
                     "audit-dir": str(work / name / "audit"), **arm}
        run = federate(overrides, clients=2, rounds=1, run_key=str(work / name))
        cfg = from_run_config(overrides)
        canaries = make_canaries(canary_words(run.tokenizer.get_vocab()), M, cfg.seed, 2)
        folder = AuditFolder(work / name / "audit")
        coins = folder.coins(canaries, 0, create=False)
        initial = adapter_state(task_for(cfg).seeded_model(cfg, 2))
        scores = {"margin": canary_scores(run.model, run.tokenizer, canaries, 24),
                  "gradient": gradient_alignment_scores(run.model, initial, run.tokenizer,
                                                        canaries, 24)}
        out[name] = (run, folder, coins, audit_scores(scores, coins, cfg.delta), canaries)
    return out


def test_no_dp_scores_clearly_above_strong_dp(audited):
    off = audited["off"][3]["epsilon_lower_bound"]
    eps1 = audited["eps1"][3]["epsilon_lower_bound"]
    assert audited["eps1"][0].epsilon <= 1.0 + 1e-6
    assert eps1 <= 0.5  # never above the epsilon the run really has (1), here far below
    assert off >= 1.2 and off > eps1 + 1.0, (off, eps1)


def test_a_run_that_skips_the_noise_is_caught(audited):
    broken, eps1 = audited["broken"], audited["eps1"]
    assert broken[0].epsilon == pytest.approx(eps1[0].epsilon)  # it reports the same epsilon
    assert broken[3]["epsilon_lower_bound"] > 1.0 >= eps1[3]["epsilon_lower_bound"]


def test_coins_stay_in_the_audit_folder(audited):
    run, folder, coins, _, canaries = audited["eps1"]
    assert stat.S_IMODE(folder.coins_path.stat().st_mode) == 0o600
    assert json.loads(folder.coins_path.read_text())["coins"] == [bool(c) for c in coins]
    # what the audit client released: its row count includes the inserted canaries (they are
    # records of its database, accounted like any other), and nothing says which they are
    reply = next(r for r in run.replies if r.metadata.src_node_id == 1)
    assert int(reply.content["metrics"][NUM_EXAMPLES]) == 50 + int(coins.sum())
    other = next(r for r in run.replies if r.metadata.src_node_id == 2)
    assert set(reply.content.keys()) == set(other.content.keys())
    assert set(reply.content["metrics"].keys()) == set(other.content["metrics"].keys())
    for msg in [*run.sent, *run.replies]:
        for record in (*msg.content.metric_records.values(),
                       *msg.content.config_records.values()):
            text = json.dumps({k: str(v) for k, v in record.items()})
            assert "coin" not in text.lower()
            assert not any(t in text for t in canaries.texts[:20])
