"""``batch-size = 0`` (the default): each client's expected batch follows its size."""

import math

import pytest

from fedtune.config import from_run_config
from fedtune.privacy.calibration import (
    batch_size_for,
    planned_steps,
    sample_rate,
    steps_per_round,
)


@pytest.mark.parametrize("rows, batch", [(6_735, 256), (67_349, 256), (2_560, 256),
                                         (2_559, 128), (1_090, 64), (673, 64), (639, 32),
                                         (100, 16), (3, 16)])
def test_auto_keeps_at_least_10_steps_per_epoch_between_16_and_256(rows, batch):
    cfg = from_run_config({"batch-size": 0, "local-epochs": 1.0})
    assert batch_size_for(cfg, rows) == batch
    if rows >= 16 * 10:
        assert rows / batch >= 10


def test_a_set_batch_size_wins_and_drives_the_accounting():
    cfg = from_run_config({"batch-size": 32, "local-epochs": 1.0, "num-server-rounds": 2})
    assert batch_size_for(cfg, 673) == 32
    assert planned_steps(cfg, 673) == 2 * 22
    auto = from_run_config({"batch-size": 0, "local-epochs": 1.0, "num-server-rounds": 2})
    assert planned_steps(auto, 673) == 2 * 11
    assert sample_rate(673, batch_size_for(auto, 673)) == pytest.approx(1 / 11)


@pytest.mark.parametrize("rows, epochs, batch", [(6_735, 0.5, 241), (673, 0.5, 57),
                                                 (1_090, 0.5, 64), (6_735, 0.25, 241),
                                                 (6_735, 0.52, 256), (6_735, 2.0, 256)])
def test_auto_rounds_trains_no_more_than_the_local_epochs_asked(rows, epochs, batch):
    """Half an epoch at 256 on the main job's 6,735-row clients was 14 of 27 batches (0.52
    epochs, 3.7% more compute than asked); one more batch an epoch makes it exactly half."""
    cfg = from_run_config({"batch-size": 0, "local-epochs": epochs})
    size = batch_size_for(cfg, rows)
    assert size == batch
    drawn = steps_per_round(rows, size, epochs) / math.ceil(rows / size)  # Opacus's q = 1/k
    assert drawn <= epochs + 1e-9
    if epochs in (0.5, 0.25, 2.0):
        assert drawn == pytest.approx(epochs)


def test_a_set_batch_size_is_not_trimmed():
    cfg = from_run_config({"batch-size": 256, "local-epochs": 0.5})
    assert batch_size_for(cfg, 6_735) == 256


def test_a_few_steps_a_round_still_do_not_overdraw():
    """A tenth of an epoch of 3,840 rows at 256 is 2 of 15 batches (a third too much); no batch
    within a tenth fits, so the trim goes further (192: 2 of 20)."""
    cfg = from_run_config({"batch-size": 0, "local-epochs": 0.1})
    size = batch_size_for(cfg, 3_840)
    assert steps_per_round(3_840, size, 0.1) / math.ceil(3_840 / size) == pytest.approx(0.1)
    assert size == 192
