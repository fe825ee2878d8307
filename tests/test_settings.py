"""One source for the settings: RunConfig's fields carry the help and checks that the docs,
``fedtune settings``, pyproject.toml and the error messages all come from."""

import argparse
import dataclasses

import pytest
import tomllib
from conftest import ROOT

from fedtune.cli import build_parser, replace_generated, settings_markdown, settings_text
from fedtune.config import (
    _FIELDS,
    ALIASES,
    ConfigError,
    RunConfig,
    _coerce,
    _default,
    from_run_config,
    suggest,
)

SETTINGS_PAGE = ROOT / "docs" / "settings.md"


def _pyproject_config() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["flwr"]["app"]["config"]


def test_every_setting_has_help_and_its_default_passes_its_own_checks():
    for key, f in _FIELDS.items():
        assert len(f.metadata.get("help", "")) > 10, f"{key}: no help text"
        if "choices" in f.metadata:
            assert _default(f) in f.metadata["choices"], key
        if "check" in f.metadata:
            assert f.metadata["message"] and f.metadata["allowed"], key
    from_run_config({})  # every default is valid


def test_pyproject_declares_every_field_with_the_same_default_and_nothing_else():
    declared = _pyproject_config()
    assert sorted(declared) == sorted(_FIELDS), "pyproject.toml keys != RunConfig fields"
    for key, value in declared.items():
        default = _default(_FIELDS[key])
        assert _coerce(key, value, default) == default, f"{key}: pyproject {value!r} != {default!r}"


def test_the_settings_page_is_generated_from_runconfig():
    page = SETTINGS_PAGE.read_text()
    assert page == replace_generated(page, settings_markdown()), (
        "docs/settings.md is out of date with RunConfig: run "
        "python -m fedtune.cli settings --markdown --update docs/settings.md")
    for key in _FIELDS:
        assert f"| `{key}` |" in page


def test_the_table_shows_ranges_choices_and_defaults():
    table = settings_markdown()
    assert "| `fraction-train` | `1.0` | (0, 1] |" in table
    assert "| `delta` | `1e-5` | (0, 1) |" in table
    assert "| `dp` | `sample` | `off` \\| `sample` \\| `client` \\| `both` |" in table
    assert "| `lora-targets` | `query,value` |" in table
    assert table.count("| key | default | allowed | meaning |") == 6  # one per section
    text = settings_text()
    assert "num-server-rounds = 2   [>= 1]" in text and "](" not in text


def test_a_range_in_metadata_is_the_check():
    f = _FIELDS["lora-dropout"]
    assert (f.metadata["min"], f.metadata["max"], f.metadata["max_open"]) == (0, 1, True)
    with pytest.raises(ConfigError, match=r"'lora-dropout' = 1.0 is invalid: must be in \[0, 1\)"):
        from_run_config({"lora-dropout": 1.0})
    with pytest.raises(ConfigError, match=r"'lr' = inf is invalid: must be > 0"):
        from_run_config({"lr": float("inf")})


@pytest.mark.parametrize(("typed", "meant"), [
    ("learning-rate", ["lr"]), ("learning_rate", ["lr"]), ("target_epsilon", ["target-epsilon"]),
    ("epochs", ["local-epochs"]), ("num_train_epochs", ["local-epochs"]),
    ("rounds", ["num-server-rounds"]), ("num-rounds", ["num-server-rounds"]),
    ("rank", ["lora-r"]), ("target_modules", ["lora-targets"]), ("epsilon", ["target-epsilon"]),
    ("target-delta", ["delta"]), ("fraction-fit", ["fraction-train"]),
    ("min-available-clients", ["min-clients"]), ("Learning-Rate", ["lr"]),
    ("target-epsion", ["target-epsilon"]), ("micro-batchsize", ["micro-batch-size"]),
    ("noise-multiplier", ["target-epsilon", "client-noise-multiplier"]),
])
def test_unknown_keys_suggest_what_was_meant(typed, meant):
    assert suggest(typed) == meant


def test_the_unknown_key_message():
    with pytest.raises(ConfigError) as err:
        from_run_config({"learning-rate": 0.01})
    assert str(err.value) == "unknown run-config key 'learning-rate'; did you mean 'lr'?"
    with pytest.raises(ConfigError, match="did you mean 'lora-alpha' or 'dirichlet-alpha'"):
        from_run_config({"alpha": 1})
    with pytest.raises(ConfigError, match="federation settings: --federation-config "
                                          "'num-supernodes=N"):
        from_run_config({"num-clients": 10})
    with pytest.raises(ConfigError, match="`fedtune settings` lists every key"):
        from_run_config({"zzz": 1})


def test_every_alias_points_at_real_keys():
    for alias, keys in ALIASES.items():
        assert alias not in _FIELDS and alias == alias.lower().replace("_", "-"), alias
        assert keys and all(k in _FIELDS for k in keys), alias


def test_experiment_keys_are_recorded_in_config_json():
    cfg = from_run_config({"x-note": "ablation", "lr": 0.02})
    assert cfg.extra == {"x-note": "ablation"}
    record = cfg.to_dict()
    assert record["x-note"] == "ablation" and record["lr"] == 0.02
    again = from_run_config(record)
    assert again == cfg and again.extra == cfg.extra


def _actions(parser):
    for action in parser._actions:
        yield parser, action
        for sub in getattr(action, "choices", None) or {}:
            if isinstance(action.choices, dict):
                yield from _actions(action.choices[sub])


def test_every_cli_option_has_help_and_shows_its_default(capsys):
    for parser, action in _actions(build_parser()):
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        assert action.help, f"{parser.prog} {action.dest}: no help"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["privacy", "plan", "--help"])
    out = capsys.readouterr().out
    assert "(default: 1.0)" in out and "(default: prv)" in out and "(required)" in out


def test_runconfig_is_still_a_plain_frozen_dataclass():
    cfg = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]
    assert cfg.lora_targets == ("query", "value") and cfg.extra == {}
