"""Every round a client was sent counts in the privacy report, confirmed or not.

A client may have spent a round's privacy although its reply arrived too late, the round stopped
for lack of replies before it was logged, or Flower's DP wrapper dropped the round for one error
reply. The report's ``max_epsilon`` must stay an upper bound: here each client trains at the
noise it would calibrate for target epsilon 8 over the planned rounds, so after the last round its
true epsilon is just under 8; a report that misses that round reads lower.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from strategy_helpers import adapter, failed, meta

import server.server_app as server_app
from fedtune.arrays import from_record, to_record
from fedtune.config import from_run_config
from fedtune.outputs.privacy_report import render
from fedtune.outputs.run_folder import RunFolder
from fedtune.privacy.accounting import epsilon
from fedtune.privacy.calibration import calibrate, sample_rate, steps_per_round
from fedtune.privacy.report import build_report
from fedtune.protocol import PrivacyState
from server.prepare import PreparedRun
from server.round_end import RoundEnd
from strategies.base import TooFewRepliesError
from strategies.registry import build_strategy, innermost

N = 1000  # examples per client
ROUNDS = 5
SETTINGS = {"num-server-rounds": ROUNDS, "batch-size": 64, "local-epochs": 1.0,
            "target-epsilon": 8.0, "delta": 1e-5, "fraction-evaluate": 0.0,
            "accountant": "rdp"}  # fast to calibrate; the server code is the same for prv


def spend(cfg, rounds: int) -> tuple[PrivacyState, float]:
    """A client's privacy state and epsilon after ``rounds`` rounds of its planned training."""
    sigma, q = calibrate(cfg, N), sample_rate(N, cfg.batch_size)
    steps = steps_per_round(N, cfg.batch_size, cfg.local_epochs)
    history = [(sigma, q, steps * rounds)] if rounds else []
    state = PrivacyState(noise_multiplier=sigma, sample_rate=q, history=history,
                         rounds_trained=rounds)
    return state, epsilon(history, cfg.delta, cfg.accountant)


def privacy_reply(cfg, node: int, pid: int, sent: dict, rounds_trained: int) -> Message:
    """A training reply after round ``rounds_trained`` of the client, as the ClientApp sends it."""
    state, eps = spend(cfg, rounds_trained)
    rng = np.random.default_rng(node * 100 + rounds_trained)
    arrays = {k: (v + rng.normal(0, 0.01, v.shape)).astype(np.float32) for k, v in sent.items()}
    metrics = MetricRecord({
        "num-examples": N, "unit-weight": 1, "train-loss": 0.5, "epsilon": eps,
        "delta": cfg.delta, "noise-multiplier": state.noise_multiplier,
        "sample-rate": state.sample_rate, "steps": state.history[0][2] // rounds_trained,
        "total-steps": state.total_steps, "rounds-trained": rounds_trained,
        "rounds-refused": 0, "partition-id": pid, "dataset-size": N, "lora-r": 4})
    content = RecordDict({"arrays": to_record(arrays), "metrics": metrics,
                          "privacy": state.to_record()})
    return Message(content=content, metadata=meta(node))


class TrainGrid:
    """Nodes that train: ``answer(round, node, sent)`` gives each reply (None: no reply);
    ``joins`` says from which round a node is connected (default: from the start)."""

    def __init__(self, nodes: list[int], answer, joins: dict[int, int] | None = None):
        self.nodes, self.answer, self.joins, self.round = nodes, answer, joins or {}, 1

    def get_node_ids(self):
        return [n for n in self.nodes if self.joins.get(n, 1) <= self.round]

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for msg in messages:
            node = int(msg.metadata.dst_node_id)
            sent = from_record(msg.content["arrays"])
            r = self.answer(int(msg.content["config"]["server-round"]), node, sent)
            if r is not None:
                out.append(r)
        return out


def partitions(n: int) -> list[dict]:
    return [{"partition_id": p, "num_examples": N} for p in range(n)]


def drive(strategy, grid, rounds: int) -> None:
    x = adapter(4, seed=1)
    for server_round in range(1, rounds + 1):
        grid.round = server_round
        messages = strategy.configure_train(server_round, to_record(x), ConfigRecord(), grid)
        arrays, _ = strategy.aggregate_train(server_round, grid.send_and_receive(messages))
        x = from_record(arrays) if arrays is not None else x


def test_a_reply_that_never_arrives_in_the_last_round_still_counts():
    """Node 11 (partition 0) trains every round but its last reply misses the timeout; node 12
    joined in round 3 and replies. Before: max_epsilon = node 11's epsilon after 4 rounds;
    after: >= its epsilon after 5."""
    cfg = from_run_config({**SETTINGS, "dp": "sample", "min-clients": 1})
    nodes = {11: 0, 12: 1}
    joined = {12: 3}

    def answer(server_round, node, sent):
        if node == 11 and server_round == ROUNDS:
            return None  # too late
        return privacy_reply(cfg, node, nodes[node], sent, server_round - joined.get(node, 1) + 1)

    strategy = build_strategy(cfg, 2)
    drive(strategy, TrainGrid(list(nodes), answer, joined), ROUNDS)
    report = build_report(cfg, partitions(2), strategy.rounds, crosscheck_now=False)
    _, truth = spend(cfg, ROUNDS)
    _, before = spend(cfg, ROUNDS - 1)
    assert report["max_epsilon"] >= truth
    row = report["clients"][0]
    assert row["epsilon"] == pytest.approx(before)  # what it reported
    assert row["unconfirmed_rounds"] == [ROUNDS]
    assert row["epsilon_upper_bound"] == pytest.approx(truth, rel=1e-9)
    assert report["max_epsilon_reported"] == pytest.approx(before)
    assert report["clients"][1]["unconfirmed_rounds"] == []
    assert f"≤ {row['epsilon_upper_bound']:.3f} (round {ROUNDS} unconfirmed)" in render(report)


def test_an_error_reply_under_client_level_dp_keeps_the_rounds_spend():
    """dp = both: one node raises in the last round. Flower's wrapper skipped the whole round,
    so the two clients that did train were never logged. Before: max_epsilon after 4 rounds;
    after: after 5 (the replies), and the failed node bounded by 5."""
    cfg = from_run_config({**SETTINGS, "dp": "both", "min-clients": 2})
    nodes = {11: 0, 12: 1, 13: 2}

    def answer(server_round, node, sent):
        if node == 13 and server_round == ROUNDS:
            return failed(13, "CUDA out of memory")
        return privacy_reply(cfg, node, nodes[node], sent, server_round)

    strategy = build_strategy(cfg, 3)
    drive(strategy, TrainGrid(list(nodes), answer), ROUNDS)
    report = build_report(cfg, partitions(3), innermost(strategy).rounds, crosscheck_now=False)
    _, truth = spend(cfg, ROUNDS)
    assert report["max_epsilon"] >= truth
    _, before = spend(cfg, ROUNDS - 1)
    rows = report["clients"]
    assert [c["epsilon"] for c in rows] == pytest.approx([truth, truth, before])
    assert [c["unconfirmed_rounds"] for c in rows] == [[], [], [ROUNDS]]
    assert rows[2]["epsilon_upper_bound"] == pytest.approx(truth, rel=1e-9)
    assert innermost(strategy).rounds[ROUNDS].released


class QuietRoundEnd(RoundEnd):
    """The round end without a model: no evaluation, no checkpoint."""

    def evaluate(self, arrays):
        return {"accuracy": 0.5}

    def checkpoint(self, server_round, arrays):
        pass


def test_a_round_that_stops_the_run_is_in_the_report(tmp_path, monkeypatch):
    """Three clients, min-clients 3; in the last round two nodes fail after training (their
    ledgers were charged) and the round raises TooFewRepliesError. The round end never runs for
    it. Before: report.json as after round 4; after: every client at >= its 5-round epsilon."""
    cfg = from_run_config({**SETTINGS, "dp": "sample", "min-clients": 3,
                           "output-dir": str(tmp_path / "run")})
    nodes = {11: 0, 12: 1, 13: 2}

    def answer(server_round, node, sent):
        if node != 11 and server_round == ROUNDS:
            return failed(node, "lost the connection")
        return privacy_reply(cfg, node, nodes[node], sent, server_round)

    folder = RunFolder.create(cfg)
    strategy = build_strategy(cfg, 3)
    round_end = QuietRoundEnd(cfg, folder, None, innermost(strategy), partitions(3), 3)
    run = PreparedRun(cfg, None, None, folder, None, None, strategy, to_record(adapter(4)), 1,
                      ConfigRecord(), ConfigRecord(), round_end)
    monkeypatch.setattr(server_app, "prepare_run", lambda grid, cfg: run)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config=cfg.to_dict())
    with pytest.raises(TooFewRepliesError):
        server_app.main(TrainGrid(list(nodes), answer), context)
    report = json.loads(folder.privacy_report_path.read_text())
    _, truth = spend(cfg, ROUNDS)
    assert report["rounds"] == ROUNDS
    assert report["max_epsilon"] >= truth
    rows = report["clients"]
    assert rows[0]["epsilon"] == pytest.approx(truth)  # its valid reply is logged
    assert [c["unconfirmed_rounds"] for c in rows] == [[], [ROUNDS], [ROUNDS]]
    assert all(c["epsilon_upper_bound"] >= truth * (1 - 1e-9) for c in rows)
    assert json.loads(folder.failure_path.read_text())["round"] == ROUNDS
