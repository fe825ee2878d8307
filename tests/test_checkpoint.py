"""Checkpoints prove they are whole, resume falls back past damaged ones, and restored server
state continues exactly where the old server stopped."""

import json

import numpy as np
import pytest
from strategy_helpers import FakeGrid, adapter, reply, sent_arrays, start, train_like

from fedtune.arrays import from_record
from fedtune.atomic import write_json
from fedtune.config import ConfigError, from_run_config
from fedtune.outputs.checkpoint import write_checkpoint
from fedtune.outputs.run_folder import RunFolder
from server.resume import check_settings, load_resume_point, state_writer
from strategies.fedavg import LoraFedAvg
from strategies.hetero_rank import HeteroRankLora
from strategies.round_log import RoundLog
from strategies.server_optimizers import FedAdam, FedAvgM


def _checkpoint(run: RunFolder, server_round: int) -> None:
    arrays = adapter(2, seed=server_round)
    rounds = {r: RoundLog(sampled=3, replies=[{"partition-id": 0, "privacy-state": {
        "noise-multiplier": 1.5, "sample-rate": 0.1, "history-sigma": [1.5],
        "history-q": [0.1], "history-steps": [10 * r], "rounds-trained": r}}])
        for r in range(1, server_round + 1)}
    write_checkpoint(run.checkpoint_dir(server_round),
                     state_writer(server_round, arrays, {}, rounds), {"round": server_round})


@pytest.fixture
def run(tmp_path):
    folder = RunFolder(tmp_path / "run")
    for r in (1, 2, 3):
        _checkpoint(folder, r)
    return folder


def test_the_newest_intact_checkpoint_is_used(run):
    point = load_resume_point(run)
    assert point.round == 3 and point.skipped == []
    np.testing.assert_array_equal(point.arrays["classifier.weight"],
                                  adapter(2, seed=3)["classifier.weight"])
    assert sorted(point.rounds) == [1, 2, 3]
    assert point.client_states()["0"]["history-steps"] == [30]


def test_damaged_checkpoints_are_reported_and_skipped(run):
    data = run.checkpoint_dir(3) / "server-arrays.safetensors"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF  # one flipped bit in a tensor
    data.write_bytes(bytes(raw))
    (run.checkpoint_dir(2) / "manifest.json").unlink()  # never completed
    (run.root / "checkpoints" / ".round-004.tmp").mkdir()  # a crash mid-write
    point = load_resume_point(run)
    assert point.round == 1
    assert [s["round"] for s in point.skipped] == [3, 2]
    assert "does not match its checksum" in point.skipped[0]["reason"]
    assert "manifest.json is missing" in point.skipped[1]["reason"]


def test_no_intact_checkpoint_means_starting_again_from_round_zero(run):
    for r in (1, 2, 3):
        (run.checkpoint_dir(r) / "server-state.json").write_text("{}")
    point = load_resume_point(run)
    assert point.round == 0 and point.arrays == {} and len(point.skipped) == 3


def test_a_torn_last_metrics_line_is_dropped(tmp_path):
    run = RunFolder(tmp_path)
    run.metrics_path.write_text('{"round": 0}\n{"round": 1}\n{"round": 2, "acc')
    assert run.read_metrics() == [{"round": 0}, {"round": 1}]


def test_an_atomic_write_that_fails_leaves_the_old_file(tmp_path):
    path = tmp_path / "report.json"
    write_json(path, {"epsilon": 1.0})
    with pytest.raises(ValueError):
        write_json(path, {"epsilon": float("nan")})
    assert json.loads(path.read_text()) == {"epsilon": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_resume_refuses_changed_settings_and_a_missing_run(tmp_path):
    cfg = from_run_config({"output-dir": str(tmp_path / "r"), "lr": 0.01})
    run = RunFolder.create(cfg)
    run.write_config({**cfg.to_dict(), "num-clients": 3})
    more = from_run_config({"output-dir": str(tmp_path / "r"), "lr": 0.01, "resume": True,
                            "num-server-rounds": 9, "min-clients": 1})
    check_settings(run, more, 3)  # rounds and min-clients may change
    changed = from_run_config({"output-dir": str(tmp_path / "r"), "lr": 0.02, "resume": True})
    with pytest.raises(ConfigError, match=r"'lr' = 0.02 differs from the run being resumed"):
        check_settings(run, changed, 3)
    with pytest.raises(ConfigError, match=r"had 3 clients and this federation has 4"):
        check_settings(run, more, 4)
    nothing = from_run_config({"output-dir": str(tmp_path / "none"), "resume": True})
    with pytest.raises(ConfigError, match=r"'resume' = true: .* holds no run to resume"):
        RunFolder.create(nothing)
    with pytest.raises(ConfigError, match=r"set resume=true to continue it"):
        run.metrics_path.write_text("")
        RunFolder.create(cfg)


def _two_rounds(make, glob, grid, restore: bool):
    """Round 1 on one strategy; round 2 on it or on a fresh one given its saved state."""
    first = make()
    messages = start(first, glob, grid)
    arrays, _ = first.aggregate_train(1, [reply(n, train_like(sent_arrays(m), n), 10 + n)
                                          for n, m in messages.items()])
    second = first
    if restore:
        saved = {k: v.copy() for k, v in first.state_arrays().items()}
        second = make()
        second.load_state_arrays(saved, from_record(arrays))
    messages = start(second, from_record(arrays), grid, server_round=2)
    out, _ = second.aggregate_train(2, [reply(n, train_like(sent_arrays(m), 7 * n), 10 + n)
                                        for n, m in messages.items()])
    return from_record(out)


@pytest.mark.parametrize("make, grid, glob", [
    (lambda: LoraFedAvg(min_replies=2, server_optimizer=FedAdam(lr=0.1, beta_1=0.9)),
     FakeGrid([1, 2, 3]), adapter(4)),
    (lambda: HeteroRankLora(min_replies=2, lora_alpha=8.0, global_rank=4, seed=7,
                            server_optimizer=FedAvgM(lr=1.0, momentum=0.9)),
     FakeGrid([1, 2, 3], ranks={1: 1, 2: 2, 3: 4}), adapter(4, b_zero=True)),
], ids=["fedavg+fedadam", "hetero-rank+fedavgm"])
def test_restored_strategy_state_continues_exactly(make, grid, glob):
    straight = _two_rounds(make, glob, grid, restore=False)
    resumed = _two_rounds(make, glob, grid, restore=True)
    assert straight.keys() == resumed.keys()
    for k in straight:
        np.testing.assert_array_equal(straight[k], resumed[k], err_msg=k)
