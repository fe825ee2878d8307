import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from causal_fixtures import (  # noqa: E402
    make_instruction_dataset,
    make_tiny_gpt2,
    make_tiny_llama,
)

from fedtune.data.toy import make_tiny_bert, make_toy_dataset  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("toy-data"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def instruction_data(tmp_path_factory) -> Path:
    return make_instruction_dataset(tmp_path_factory.mktemp("instruction-data"))


@pytest.fixture
def base_config(tiny_model, toy_data, tmp_path) -> dict:
    """Run-config overrides for a seconds-long run on the tiny model and the toy data."""
    return {
        "model": str(tiny_model),
        "dataset": str(toy_data),
        "max-train-samples": 0,
        "max-length": 32,
        "num-server-rounds": 2,
        "batch-size": 16,
        "lr": 0.01,
        "target-epsilon": 8.0,
        "delta": 1e-3,
        "min-clients": 2,
        "output-dir": str(tmp_path / "run"),
    }


@pytest.fixture(autouse=True)
def flower_task_identity():
    """Flower fills in a new message's source from the process's task identity, which only its
    runtimes set; tests that build messages the way a ServerApp does need one too."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
