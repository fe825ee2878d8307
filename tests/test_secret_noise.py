"""Issue 13 items 10, 12, 13: the DP noise is secret unless a run asks for reproducible noise,
the host's noise secret is all or nothing, an empty Poisson batch still takes a noised step, and
the report states how the noise was drawn and how client sampling is accounted."""

import dataclasses
import os
import stat

import pytest
import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

import client.trainer as trainer
from client.noise_seed import SECRET_FILE, NoiseSecretError, node_secret
from client.trainer import _noise_only_step, train_local
from fedtune.arrays import to_record
from fedtune.config import from_run_config
from fedtune.data.batching import TokenizedDataset
from fedtune.data.loading import load_splits
from fedtune.model.adapter import adapter_state
from fedtune.model.build import build_model, load_tokenizer
from fedtune.outputs.privacy_report import render
from fedtune.privacy.budget import ClientBudget, Release
from fedtune.privacy.calibration import sample_rate, steps_per_round
from fedtune.privacy.client_level import client_level_report
from fedtune.privacy.ledger import Ledger, fingerprint
from fedtune.privacy.report import build_report
from fedtune.protocol import PrivacyState


@pytest.fixture
def setup(tiny_model, toy_data):
    cfg = from_run_config({"model": str(tiny_model), "dataset": str(toy_data),
                           "max-train-samples": 96, "batch-size": 24, "delta": 1e-3,
                           "max-length": 32, "local-epochs": 0.5, "lr-schedule": "constant"})
    splits = load_splits(cfg)
    tok = load_tokenizer(cfg)
    rows = TokenizedDataset.from_texts(tok, splits.train["text"], splits.train["label"], 32)
    return cfg, rows, tok.pad_token_id


def _train(cfg, rows, pad, seed=7):
    torch.manual_seed(0)
    model = build_model(cfg, 2)
    state = PrivacyState(noise_multiplier=1.0, sample_rate=sample_rate(len(rows), 24))
    result = train_local(model, rows, pad, cfg, state, seed=seed)
    return adapter_state(model), result, state


# --- item 10: secret noise by default ------------------------------------------------------------

def test_noise_is_secret_by_default_and_seeded_only_when_asked(setup):
    """Same seed, same data: by default two runs draw different noise (from OS entropy) on the
    same Poisson batches (the sampler stays seeded); ``reproducible-noise`` repeats it exactly."""
    cfg, rows, pad = setup
    assert cfg.reproducible_noise is False
    one, r1, _ = _train(cfg, rows, pad)
    two, r2, _ = _train(cfg, rows, pad)
    assert r1.samples == r2.samples  # the sampling stream is still the seed's
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert diff > 1e-4, f"secret noise repeated itself (max diff {diff:g})"
    seeded = dataclasses.replace(cfg, reproducible_noise=True)
    a, _, _ = _train(seeded, rows, pad)
    b, _, _ = _train(seeded, rows, pad)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _replay_charges(tmp_path, reproducible: bool) -> tuple[int, bool]:
    cfg = from_run_config({"batch-size": 10, "num-server-rounds": 3, "delta": 1e-3,
                           "target-epsilon": 4.0, "reproducible-noise": reproducible})
    release = Release(to_record({"w": torch.zeros(3)}), {"server-round": 1},
                      seed=5, rank=4)
    replays = []
    for _ in range(2):  # the client crashed after the charge; the round is sent again
        ledger = Ledger.open(tmp_path, fingerprint(["a", "b"], [0, 1]), 200)
        budget = ClientBudget(cfg, PrivacyState(), 200, ledger)
        replays.append(budget.admit("run-a", "run-a/round-1", release).replay)
    ledger = Ledger.open(tmp_path, fingerprint(["a", "b"], [0, 1]), 200)
    return len(ledger.charges), replays[1]


def test_a_replay_with_secret_noise_is_charged_again(tmp_path):
    """With secret noise the replayed round releases a different update (fresh noise), so it
    is never free; with reproducible noise the identical release stays free."""
    assert _replay_charges(tmp_path / "secret", reproducible=False) == (2, False)
    assert _replay_charges(tmp_path / "seeded", reproducible=True) == (1, True)


def test_the_report_states_how_the_noise_was_drawn():
    client = {"partition_id": 0, "num_examples": 100}
    for reproducible, text in ((False, "noise: secret (OS entropy)"),
                               (True, "noise: reproducible from seed (test/benchmark setting: "
                                      "anyone with the run folder can regenerate it)")):
        cfg = from_run_config({"reproducible-noise": reproducible})
        report = build_report(cfg, [client], {}, crosscheck_now=False)
        assert report["reproducible_noise"] is reproducible
        assert f"- {text}" in render(report)
    assert "not a CSPRNG" in render(build_report(from_run_config({}), [client], {}))


# --- item 12: the host's noise secret -----------------------------------------------------------

def test_the_noise_secret_is_64_hex_characters_written_whole(tmp_path, monkeypatch):
    node_secret.cache_clear()
    folder = tmp_path / "ledger"
    folder.mkdir()
    path = folder / SECRET_FILE

    def crash(fd):
        raise OSError("power cut")

    monkeypatch.setattr(os, "fsync", crash)  # the old code: O_CREAT, then a crash before write
    with pytest.raises(OSError, match="power cut"):
        node_secret(str(folder))
    assert not path.exists() and list(folder.iterdir()) == []  # nothing half-written stays
    monkeypatch.undo()

    path.write_text("")  # what a crash of the old code left behind: an empty secret forever
    node_secret.cache_clear()
    secret = node_secret(str(folder))
    assert len(secret) == 64 and int(secret, 16) >= 0
    assert path.read_text() == secret and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in folder.iterdir()] == [SECRET_FILE]
    node_secret.cache_clear()
    assert node_secret(str(folder)) == secret  # kept: replays draw the same seed

    for bad in ("abc123", "g" * 64, secret + "0"):
        path.write_text(bad)
        node_secret.cache_clear()
        with pytest.raises(NoiseSecretError, match=r"noise-secret must hold exactly 64 hex"):
            node_secret(str(folder))
        assert path.read_text() == bad  # never overwritten: the host decides
    node_secret.cache_clear()


# --- item 13: an empty Poisson batch still adds noise -------------------------------------------

@pytest.mark.parametrize("mode", ["hooks", "ghost", "fused"])
def test_an_empty_poisson_batch_takes_a_noise_only_step(setup, monkeypatch, mode):
    """Every batch empty: each step still noises every trainable tensor and is accounted once."""
    cfg, rows, pad = setup
    cfg = dataclasses.replace(cfg, grad_sample_mode=mode)
    monkeypatch.setattr(trainer, "_batches", lambda loader, steps: iter([{}] * steps))
    torch.manual_seed(0)
    model = build_model(cfg, 2)
    before = adapter_state(model)
    state = PrivacyState(noise_multiplier=1.0, sample_rate=sample_rate(len(rows), 24))
    result = train_local(model, rows, pad, cfg, state, seed=7)
    after = adapter_state(model)
    steps = steps_per_round(len(rows), 24, cfg.local_epochs)
    assert result.samples == 0 and result.steps == steps
    assert state.history == [(1.0, sample_rate(len(rows), 24), steps)]  # counted once each
    trainable = [k for k in before if "lora_" in k or "classifier" in k]
    assert trainable and all(not torch.equal(before[k], after[k]) for k in trainable)


def test_the_noise_only_step_has_the_dp_noise_std():
    """On zero gradients the step's gradient is Gaussian noise of std sigma*C/B, as Opacus adds
    for a full batch, on every parameter; the accountant counts it once."""
    torch.manual_seed(0)
    model = torch.nn.Linear(200, 100)
    engine = PrivacyEngine(accountant="rdp")
    loader = DataLoader(TensorDataset(torch.zeros(50, 200)), batch_size=10)
    model, optimizer, _ = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        data_loader=loader, noise_multiplier=2.0, max_grad_norm=3.0, poisson_sampling=True)
    params = [p for p in model.parameters() if p.requires_grad]
    _noise_only_step(optimizer, params)
    std = 2.0 * 3.0 / optimizer.expected_batch_size
    weight, bias = (p.grad for p in params)
    assert float(weight.std()) == pytest.approx(std, rel=0.02)
    assert float(bias.abs().max()) > 0
    assert [(h[0], h[2]) for h in engine.accountant.history] == [(2.0, 1)]


def test_the_report_states_the_client_sampling_approximation():
    kw = {"noise_multiplier": 1.0, "clipping_norm": 1.0, "rounds": 3, "delta": 1e-5,
          "side": "server"}
    some = client_level_report(sampled=3, population=10, **kw)
    every = client_level_report(sampled=10, population=10, **kw)
    assert "approximation" in some["sampling"] and "m/N" in some["sampling"]
    assert some["sampling"].startswith("approximation") and every["sampling"].startswith("exact")
    cfg = from_run_config({"dp": "both"})
    report = build_report(cfg, [{"partition_id": 0, "num_examples": 100}], {},
                          client_level=some, crosscheck_now=False)
    assert f"- client sampling: {some['sampling']}" in render(report)


def test_one_seeding_rule_for_every_mechanism():
    """DP-SGD's noise and the label counts' take their seed from one rule: secret by default,
    and with reproducible noise a digest of the mechanism's tag and the seed, which keeps the
    seeded streams of earlier runs (the sha256 values below) and keeps the mechanisms apart."""
    from fedtune.privacy.noise_source import noise_seed

    assert noise_seed("dp-noise", 42, True) == 0x44F1106DCE4EA2FB
    assert noise_seed("label-counts", 42, True) == 0x2E984BCE340F890B
    assert noise_seed("dp-noise", 42, True) == noise_seed("dp-noise", 42, True)
    assert noise_seed("dp-noise", 42, False) != noise_seed("dp-noise", 42, False)
