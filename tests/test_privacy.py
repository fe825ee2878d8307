import pytest
import torch

from client.trainer import train_local
from fedtune.config import ConfigError, from_run_config
from fedtune.data.batching import TokenizedDataset
from fedtune.data.loading import load_splits
from fedtune.model.adapter import adapter_state
from fedtune.model.build import build_model, load_tokenizer
from fedtune.privacy.accounting import epsilon
from fedtune.privacy.calibration import calibrate, check_delta, planned_steps, sample_rate
from fedtune.protocol import PrivacyState


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize(("n", "batch", "rounds", "target"),
                         [(2000, 64, 3, 8.0), (500, 32, 5, 2.0), (6700, 64, 4, 1.0)])
def test_calibrated_noise_spends_the_target_within_5_percent(accountant, n, batch, rounds,
                                                             target):
    cfg = from_run_config({"accountant": accountant, "batch-size": batch, "delta": 1e-5,
                           "num-server-rounds": rounds, "target-epsilon": target})
    sigma = calibrate(cfg, n)
    steps = planned_steps(cfg, n)
    eps = epsilon([(sigma, sample_rate(n, batch), steps)], 1e-5, accountant)
    assert eps <= target
    assert eps >= 0.95 * target


def test_delta_must_be_below_one_over_n():
    with pytest.raises(ConfigError, match=r"'delta' = 0.01 must be below 1/n"):
        check_delta(0.01, 150, "client 3")


@pytest.fixture
def local_setup(tiny_model, toy_data):
    cfg = from_run_config({"model": str(tiny_model), "dataset": str(toy_data),
                           "max-train-samples": 200, "batch-size": 16, "num-server-rounds": 3,
                           "delta": 1e-3, "lr": 0.05, "max-length": 32, "local-epochs": 1.0})
    splits = load_splits(cfg)
    tok = load_tokenizer(cfg)
    rows = TokenizedDataset.from_texts(tok, splits.train["text"], splits.train["label"], 32)
    return cfg, rows, tok.pad_token_id


def test_epsilon_accumulates_across_rounds_and_never_resets(local_setup):
    cfg, rows, pad = local_setup
    n = len(rows)
    state = PrivacyState(noise_multiplier=calibrate(cfg, n), sample_rate=sample_rate(n, 16))
    eps = []
    for server_round in (1, 2, 3):
        model = build_model(cfg, 2)  # fresh model and PrivacyEngine every round, as in Flower
        train_local(model, rows, pad, cfg, state, seed=server_round)
        state = PrivacyState.from_record(state.to_record())  # through context.state
        eps.append(epsilon(state.history, cfg.delta, cfg.accountant))
    assert eps[0] < eps[1] < eps[2]
    assert state.total_steps == planned_steps(cfg, n)
    assert eps[2] <= cfg.target_epsilon and eps[2] >= 0.95 * cfg.target_epsilon
    one_shot = epsilon([(state.noise_multiplier, state.sample_rate, state.total_steps)],
                       cfg.delta, cfg.accountant)
    assert eps[2] == pytest.approx(one_shot, rel=1e-6)


def test_lora_weights_change_after_a_dp_step(local_setup):
    """Opacus issue 820: with some PEFT versions LoRA weights silently never update under DP."""
    cfg, rows, pad = local_setup
    model = build_model(cfg, 2)
    before = adapter_state(model)
    state = PrivacyState(noise_multiplier=1.0, sample_rate=sample_rate(len(rows), 16))
    train_local(model, rows, pad, cfg, state, seed=0)
    after = adapter_state(model)
    for kind in ("lora_A", "lora_B", "classifier"):
        keys = [k for k in before if kind in k]
        assert keys and all(not torch.equal(before[k], after[k]) for k in keys), kind
    assert state.total_steps > 0


def test_dp_off_trains_the_same_model_without_spending(local_setup):
    cfg, rows, pad = local_setup
    cfg = from_run_config({**cfg.to_dict(), "dp": "off"})
    model = build_model(cfg, 2)
    before = adapter_state(model)
    state = PrivacyState()
    result = train_local(model, rows, pad, cfg, state, seed=0)
    after = adapter_state(model)
    assert result.steps == 13 and state.history == []
    assert all(not torch.equal(before[k], after[k]) for k in before if "lora_B" in k)


@pytest.mark.parametrize("dp", ["sample", "off"])
def test_length_chunks_give_the_same_step_as_one_batch(local_setup, dp):
    """Micro-batching is an implementation detail: same clipping, same sum, same update."""
    cfg, rows, pad = local_setup
    results = []
    for micro in (0, 4):
        c = from_run_config({**cfg.to_dict(), "dp": dp, "micro-batch-size": micro,
                             "local-epochs": 0.08, "batch-size": 32})
        torch.manual_seed(0)
        model = build_model(c, 2)
        for m in model.modules():  # dropout would draw different masks per chunk
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        state = PrivacyState(noise_multiplier=0.0, sample_rate=sample_rate(len(rows), 32))
        train_local(model, rows, pad, c, state, seed=5)
        results.append(adapter_state(model))
    for key in results[0]:
        assert torch.allclose(results[0][key], results[1][key], atol=1e-5), key


def test_linear_schedule_decays_over_the_whole_run_not_per_round():
    from client.trainer import _lr_schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = from_run_config({"lr-schedule": "linear"})
    second_round = _lr_schedule(opt, cfg, done=2, total=4)  # round 2 of 2, 2 steps each
    seen = []
    for _ in range(2):
        second_round()
        seen.append(opt.param_groups[0]["lr"])
    assert seen == [0.5, 0.25]
    opt.param_groups[0]["lr"] = 1.0
    _lr_schedule(opt, from_run_config({"lr-schedule": "constant"}), done=3, total=4)()
    assert opt.param_groups[0]["lr"] == 1.0


@pytest.mark.parametrize("n, batch", [(56_418, 256), (33_675, 256), (600, 16), (10_931, 256)])
def test_planned_rate_is_the_rate_opacus_accounts(n, batch):
    """Opacus accounts 1/len(its Poisson loader), which float rounding can make 1/(k-1) instead
    of 1/k (n = 56,418, B = 256): the plan must use the accounted rate, or the last planned
    round overshoots the budget."""
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    model = torch.nn.Linear(1, 1)
    loader = DataLoader(TensorDataset(torch.zeros(n, 1)), batch_size=batch)
    engine = PrivacyEngine(accountant="rdp")
    _, optimizer, private = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=loader,
        noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=True)
    optimizer.zero_grad()
    model(torch.zeros(2, 1)).sum().backward()
    optimizer.step()
    ((_, accounted, _),) = engine.accountant.history
    assert sample_rate(n, batch) == accounted
