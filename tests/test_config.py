import pytest
import tomllib

from fedtune.config import ConfigError, RunConfig, from_run_config
from fedtune.data.loading import load_splits


def pyproject_defaults() -> dict:
    from conftest import ROOT

    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["flwr"]["app"]["config"]


def test_pyproject_defaults_are_valid_and_match_the_dataclass():
    cfg = from_run_config(pyproject_defaults())
    assert cfg == RunConfig(), "pyproject.toml and RunConfig defaults drifted apart"
    assert set(cfg.to_dict()) == set(pyproject_defaults())


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("target-epsilon", -1.0, "'target-epsilon'"),
        ("target-epsilon", 0.0, "must be > 0"),
        ("delta", 1.0, "'delta'"),
        ("delta", 1.5, "must be in (0, 1)"),
        ("partitioner", "shards", "iid | dirichlet | pathological"),
        ("lora-r", 0, "'lora-r'"),
        ("dp", "maybe", "off | sample"),
        ("fraction-train", 0.0, "(0, 1]"),
        ("batch-size", "many", "expected int"),
        ("num-server-rounds", 2.5, "expected int"),
        ("accountant", "gdp", "prv | rdp"),
        ("lora-targets", "", "at least one module"),
    ],
)
def test_invalid_values_name_the_key_and_the_allowed_range(key, value, fragment):
    with pytest.raises(ConfigError) as err:
        from_run_config({key: value})
    assert key in str(err.value)
    assert fragment in str(err.value)


def test_unknown_key_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown run-config key 'target-epsion'.*target-epsilon"):
        from_run_config({"target-epsion": 3.0})


def test_experiment_keys_are_kept_aside():
    cfg = from_run_config({"x-note": "ablation"})
    assert cfg.extra == {"x-note": "ablation"}


def test_types_are_coerced_from_cli_strings():
    cfg = from_run_config({"lora-targets": "query, key ,value", "lr": 1, "local-epochs": 2})
    assert cfg.lora_targets == ("query", "key", "value")
    assert isinstance(cfg.lr, float) and isinstance(cfg.local_epochs, float)


def test_missing_dataset_path_fails_before_any_model_loads(tmp_path):
    cfg = from_run_config({"dataset": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="'dataset': no such file or folder"):
        load_splits(cfg)


def test_folder_without_train_file_is_named(tmp_path):
    (tmp_path / "validation.jsonl").write_text('{"text": "a", "label": 0}\n')
    with pytest.raises(ConfigError, match="has no 'train' file"):
        load_splits(from_run_config({"dataset": str(tmp_path)}))
