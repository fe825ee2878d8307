"""A client's privacy count is its own: the server can neither lower it nor get a round for free.

Issue 13, items 1, 2, 4, 5 and 11, each driven in-process through the ClientApp's own steps
(``client_app._privacy`` + :class:`ClientBudget`, or the ``train`` handler itself): interleaved
runs on one ledger, a forged ``resume-privacy``, a replayed round whose inputs differ, a real host
resumed without a ledger, and a host that requires DP. The real-run twin of item 1 is in
``test_privacy_interleaved_run.py``.
"""

import json
import threading

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from client import client_app
from fedtune.arrays import from_record, to_record
from fedtune.config import from_run_config
from fedtune.data.loading import load_splits
from fedtune.model.adapter import adapter_state
from fedtune.privacy import budget as budget_module
from fedtune.privacy.accounting import epsilon, merge_history
from fedtune.privacy.ledger import Ledger, fingerprint
from fedtune.protocol import PrivacyState
from fedtune.tasks.registry import task_for
from server.resume import ResumePoint
from strategies.round_log import RoundLog


class Rows:
    """What ``_privacy`` needs of a client's rows: their number and what the ledger hashes."""

    def __init__(self, n: int, tag: str = "row"):
        self.n, self.tag = n, tag

    def __len__(self) -> int:
        return self.n

    def ledger_rows(self):
        return [f"{self.tag}-{i}" for i in range(self.n)], [i % 2 for i in range(self.n)]


def _context(overrides: dict, node: int = 7, node_config: dict | None = None) -> Context:
    return Context(run_id=1, node_id=node, node_config=dict(node_config or {}),
                   state=RecordDict(), run_config=overrides)


def _round(cfg, ctx: Context, rows: Rows, server_round: int, run_key: str, pid: int = -1,
           resume: dict | None = None):
    """One training round of the ClientApp's privacy steps; training itself is simulated by
    what it does to the accountant (the round's steps appended to the history)."""
    config = ConfigRecord({"server-round": server_round, "run-key": run_key})
    if resume is not None:
        config["resume-privacy"] = json.dumps(resume)
    privacy = client_app._privacy(cfg, ctx, config, pid, rows)
    decision = privacy.admit(run_key, f"{run_key}/round-{server_round}")
    if decision.allowed:
        state = privacy.state
        state.history = merge_history([*state.history,
                                       (state.noise_multiplier, privacy.q, decision.steps)])
        privacy.finish(decision.steps)
        reported = privacy.epsilon
    else:
        reported = decision.epsilon_before
    ctx.state["privacy"] = privacy.state.to_record()
    return decision, reported, privacy


def _ledger_epsilon(folder, rows: Rows, cfg) -> float:
    ledger = Ledger.open(folder, fingerprint(*rows.ledger_rows()), len(rows))
    return epsilon(ledger.history, cfg.delta, cfg.accountant)


# The issue's figures: n = 500, batch 32, target 8, RDP, two rounds planned.
ISSUE = {"batch-size": 32, "local-epochs": 1.0, "num-server-rounds": 2, "delta": 1e-5,
         "target-epsilon": 8.0, "accountant": "rdp"}


# --- item 1: interleaved runs on one ledger ---------------------------------------------------

def test_interleaved_runs_on_one_ledger_never_spend_past_the_target(tmp_path):
    """A round 1, B rounds 1-2, A round 2: before, A's round 2 checked only A's own history
    and the ledger reached 9.15 while each run reported 8.00; now A reads the ledger."""
    cfg = from_run_config({**ISSUE, "ledger-dir": str(tmp_path)})
    rows = Rows(500)
    contexts = {"A": _context(cfg.to_dict()), "B": _context(cfg.to_dict())}
    results = {}
    for run, r in (("A", 1), ("B", 1), ("B", 2), ("A", 2)):
        results[run, r] = _round(cfg, contexts[run], rows, r, run)
    spent = _ledger_epsilon(tmp_path, rows, cfg)
    assert all(results[k][0].allowed for k in (("A", 1), ("B", 1), ("B", 2)))
    decision, reported, _ = results["A", 2]
    assert not decision.allowed and "budget exhausted" in decision.reason
    assert spent <= 8.0
    assert reported == pytest.approx(spent, rel=1e-9)  # A reports the ledger, B's spend included


def test_two_clients_deciding_at_once_are_serialised_by_the_ledger_lock(tmp_path, monkeypatch):
    """B round 2 and A round 2 at the same moment, each fitting on its own: without a lock both
    read the ledger before either charges and both are charged."""
    cfg = from_run_config({**ISSUE, "ledger-dir": str(tmp_path)})
    rows = Rows(500)
    contexts = {"A": _context(cfg.to_dict()), "B": _context(cfg.to_dict())}
    _round(cfg, contexts["A"], rows, 1, "A")
    _round(cfg, contexts["B"], rows, 1, "B")
    meet = threading.Barrier(2, timeout=3.0)
    decide = budget_module.ClientBudget.decide

    def slow_decide(self, *args, **kwargs):
        decision = decide(self, *args, **kwargs)
        try:  # both deciders meet here, unless the lock keeps the second one out
            meet.wait()
        except threading.BrokenBarrierError:
            pass
        return decision

    monkeypatch.setattr(budget_module.ClientBudget, "decide", slow_decide)
    out = {}
    threads = [threading.Thread(target=lambda k=k: out.update({k: _round(cfg, contexts[k], rows,
                                                                          2, k)}))
               for k in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out[k][0].allowed for k in out) == [False, True]
    assert _ledger_epsilon(tmp_path, rows, cfg) <= 8.0


# --- item 2: server-sent privacy state ---------------------------------------------------------

def test_a_forged_resume_state_cannot_lower_what_a_client_with_a_ledger_counts(tmp_path):
    """The run trained its 2 planned rounds; the server 'resumes' it for a round 3 and sends a
    state with an empty history. Before: the client trained, reported the forged count and the
    ledger went past the target; now the ledger decides."""
    cfg = from_run_config({**ISSUE, "ledger-dir": str(tmp_path), "num-server-rounds": 3,
                           "planned-rounds": 2})
    rows = Rows(500)
    ctx = _context(cfg.to_dict())
    for r in (1, 2):
        _round(cfg, ctx, rows, r, "run")
    honest = PrivacyState.from_record(ctx.state["privacy"])
    forged = PrivacyState(noise_multiplier=honest.noise_multiplier,
                          sample_rate=honest.sample_rate, history=[], rounds_trained=0)
    fresh = _context(cfg.to_dict())  # a resumed run: new context, the server's word only
    decision, reported, _ = _round(cfg, fresh, rows, 3, "run",
                                   resume={"-1": dict(forged.to_record())})
    spent = _ledger_epsilon(tmp_path, rows, cfg)
    assert not decision.allowed
    assert spent <= 8.0
    assert reported == pytest.approx(spent, rel=1e-9)


def test_without_a_ledger_a_server_sent_state_may_raise_the_count_but_never_lower_it(tmp_path):
    cfg = from_run_config(ISSUE)
    rows = Rows(500)
    ctx = _context(cfg.to_dict())
    _, one_round, _ = _round(cfg, ctx, rows, 1, "run", pid=0)
    own = PrivacyState.from_record(ctx.state["privacy"])
    lower = PrivacyState(noise_multiplier=own.noise_multiplier, sample_rate=own.sample_rate)
    higher = PrivacyState(noise_multiplier=own.noise_multiplier, sample_rate=own.sample_rate,
                          history=[(own.noise_multiplier, own.sample_rate,
                                    2 * own.history[0][2])], rounds_trained=2)
    config = ConfigRecord({"server-round": 2, "run-key": "run",
                           "resume-privacy": json.dumps({"0": dict(lower.to_record())})})
    assert client_app._privacy(cfg, ctx, config, 0, rows).epsilon == pytest.approx(one_round)
    config["resume-privacy"] = json.dumps({"0": dict(higher.to_record())})
    raised = client_app._privacy(cfg, ctx, config, 0, rows)
    assert raised.epsilon == pytest.approx(epsilon(higher.history, cfg.delta, "rdp"))
    assert raised.epsilon > one_round and raised.state.rounds_trained == 2


# --- item 5: real hosts resumed without a ledger -----------------------------------------------

HOST = {"batch-size": 64, "num-server-rounds": 5, "delta": 1e-5, "target-epsilon": 8.0,
        "accountant": "rdp", "client-data": "local"}


def _server_log(node: int, rounds: dict[int, tuple]) -> ResumePoint:
    """The checkpoint's round logs as a real run writes them: LocalClients numbers the client
    by node (partition-id 0), the reply carries the privacy record as sent."""
    logs = {r: RoundLog(sampled=1, replies=[{"node": node, "partition-id": 0,
                                             "privacy-state": dict(rec)}])
            for r, rec in rounds.items()}
    return ResumePoint(round=max(rounds), rounds=logs)


def test_a_real_host_without_a_ledger_keeps_its_count_across_a_resume():
    """n = 2000, 5 rounds, the server crashes after round 3 and resumes. Before, the host
    looked itself up by its partition-id (-1) under the server's numbering (0), started from
    zero and reported 2 rounds' epsilon; now the state is keyed by the host."""
    cfg = from_run_config(HOST)
    rows = Rows(2000)
    ctx = _context(cfg.to_dict(), node=4242)
    sent = {}
    for r in (1, 2, 3):
        _round(cfg, ctx, rows, r, "run")
        sent[r] = ctx.state["privacy"]
    for r in (4, 5):
        _, uninterrupted, _ = _round(cfg, ctx, rows, r, "run")
    resumed = _context(cfg.to_dict(), node=4242)
    states = _server_log(4242, sent).client_states()
    reported = [_round(cfg, resumed, rows, r, "run", resume=states)[1] for r in (4, 5)]
    assert reported[-1] == pytest.approx(uninterrupted, rel=1e-9)
    assert PrivacyState.from_record(resumed.state["privacy"]).rounds_trained == 5


def test_a_resumed_host_with_neither_its_state_nor_a_ledger_refuses_dp_training():
    cfg = from_run_config(HOST)
    rows = Rows(2000)
    other = PrivacyState(noise_multiplier=1.0, sample_rate=0.032, history=[(1.0, 0.032, 32)],
                         rounds_trained=1)
    resumed = _context(cfg.to_dict(), node=99)
    decision, _, _ = _round(cfg, resumed, rows, 4, "run",
                            resume={"node-12345": dict(other.to_record())})
    assert not decision.allowed and "ledger" in decision.reason
    again, _, _ = _round(cfg, resumed, rows, 5, "run", resume={})  # and stays refused
    assert not again.allowed
    restarted = _context(cfg.to_dict(), node=99)  # a SuperNode restarted mid-run
    decision, _, _ = _round(cfg, restarted, rows, 3, "run")
    assert not decision.allowed and "ledger" in decision.reason


# --- item 11: a host can require DP -------------------------------------------------------------

def test_a_host_that_requires_dp_refuses_rounds_without_it_and_sends_nothing(base_config):
    overrides = {**base_config, "num-server-rounds": 1, "lora-r": 4, "dp": "off"}
    cfg = from_run_config(overrides)
    labels = list(load_splits(cfg).labels)
    model = task_for(cfg).seeded_model(cfg, len(labels))
    content = RecordDict({"arrays": to_record(adapter_state(model)),
                          "config": ConfigRecord({"labels": labels, "server-round": 1})})
    msg = Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)
    for node_config in ({"require-dp": True}, {"max-epsilon": 4.0}):
        ctx = _context(overrides, node=1,
                       node_config={"partition-id": 0, "num-partitions": 3, **node_config})
        reply = client_app.train(msg, ctx)
        assert "arrays" not in reply.content
        assert "requires" in reply.content["refusal"]["reason"]
        assert reply.content["metrics"]["num-examples"] == 0


def test_a_host_refuses_a_delta_above_its_maximum(tmp_path):
    cfg = from_run_config(ISSUE)
    ctx = _context(cfg.to_dict(), node_config={"max-delta": 1e-6})
    decision, _, _ = _round(cfg, ctx, Rows(500), 1, "run", pid=0)
    assert not decision.allowed and "max-delta" in decision.reason


# --- item 4: a replayed round is free only if it is the same round ------------------------------

def _train_message(cfg, model, labels, server_round: int, run_key: str,
                   resume: dict | None = None) -> Message:
    config = ConfigRecord({"labels": labels, "server-round": server_round, "run-key": run_key})
    if resume is not None:
        config["resume-privacy"] = json.dumps(resume)
    content = RecordDict({"arrays": to_record(adapter_state(model)), "config": config})
    return Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)


def _charges(folder) -> list[dict]:
    """The rounds' charges (the label counts of logit-adjustment are charged apart, with the
    round that draws them: tests/test_logit_adjustment.py)."""
    (path,) = list(folder.glob("ledger-*.json"))
    return [c for c in json.loads(path.read_text())["charges"] if "/release-" not in c["id"]]


def test_a_replayed_round_with_other_inputs_is_charged(base_config, tmp_path):
    """Round 1 sent again: the same model again is free (the same update comes back); another
    model, or the same round at another schedule position, is a new release and is charged.
    Reproducible noise: only then is a replay the same release (with secret noise every replay is
    charged: tests/test_secret_noise.py)."""
    ledger_dir = tmp_path / "ledger"
    # logit-adjustment off: every restarted context here would draw (and pay for) its label
    # counts again, and this test's four releases would no longer fit the budget
    overrides = {**base_config, "num-server-rounds": 4, "lora-r": 4, "accountant": "rdp",
                 "ledger-dir": str(ledger_dir), "reproducible-noise": True,
                 "logit-adjustment": 0.0}
    cfg = from_run_config(overrides)
    labels = list(load_splits(cfg).labels)
    model = task_for(cfg).seeded_model(cfg, len(labels))
    node = {"partition-id": 0, "num-partitions": 3}
    ctx = _context(overrides, node=1, node_config=node)

    def send(msg, context):
        reply = client_app.train(msg, context)
        assert "refusal" not in reply.content, reply.content["refusal"]["reason"]
        return from_record(reply.content["arrays"])

    first = send(_train_message(cfg, model, labels, 1, "run"), ctx)
    ctx_replay = _context(overrides, node=1, node_config=node)  # restarted: state lost
    same = send(_train_message(cfg, model, labels, 1, "run"), ctx_replay)
    assert all(np.array_equal(first[k], same[k]) for k in first)
    assert len(_charges(ledger_dir)) == 1  # an identical replay is free

    other = task_for(cfg).seeded_model(from_run_config({**overrides, "seed": 7}), len(labels))
    changed = send(_train_message(cfg, other, labels, 1, "run"),
                   _context(overrides, node=1, node_config=node))
    leak = max(float(np.abs(first[k] - changed[k]).max()) for k in first)
    assert leak > 0
    assert len(_charges(ledger_dir)) == 2  # a different model: a new release, charged

    send(_train_message(cfg, model, labels, 2, "run"), ctx)  # round 2, at 1 round trained
    before = len(_charges(ledger_dir))
    resumed = _context(overrides, node=1, node_config=node)  # the server's numbering differs:
    send(_train_message(cfg, model, labels, 2, "run", resume={"5": {}}), resumed)  # from zero
    assert len(_charges(ledger_dir)) == before + 1  # schedule restarted: charged
