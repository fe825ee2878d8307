"""The launcher checks settings and paths before it starts anything: one line naming the key and
the fix, exit code 2, no process started, and (so that it answers at once) no heavy library or
network lookup on the way."""

import json
import shutil
import socket
import subprocess
import sys

import pytest
from flwr.common.config import parse_config_args

import simulations.launch as launch
from fedtune.config import ConfigError
from fedtune.launch.flwr_cli import parse_run_config, run_config_arg
from fedtune.launch.preflight import preflight
from fedtune.project import PROJECT_ROOT


@pytest.fixture
def no_processes(monkeypatch):
    """Any attempt to start a process (SuperLink, flwr run) fails the test."""
    started = []

    def refuse(*args, **kwargs):
        started.append(args)
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    return started


def _launch(capsys, run_config: str) -> tuple[int, str]:
    code = launch.main(["--num-clients", "2", "--run-config", run_config])
    return code, capsys.readouterr().err


def _ok(tiny_model, toy_data, tmp_path, **changes) -> str:
    """A run config that passes the checks, with ``changes`` (``output_dir`` for output-dir)."""
    settings = {"model": str(tiny_model), "dataset": str(toy_data),
                "output-dir": str(tmp_path / "run")}
    settings |= {k.replace("_", "-"): v for k, v in changes.items()}
    return run_config_arg(settings)


def test_a_path_error_comes_before_any_heavy_import(tmp_path):
    """A fresh interpreter, as a user's first run: the launcher's checks import no torch,
    transformers, datasets, Opacus or Ray (8 s on a cold 2-core machine when the run folder's
    module pulled in the model code)."""
    script = ("import sys, simulations.launch as launch\n"
              f"code = launch.main(['--num-clients', '2', '--run-config', "
              f"\"dataset='{tmp_path / 'missing'}'\"])\n"
              "heavy = ('torch', 'transformers', 'datasets', 'opacus', 'ray')\n"
              "print(code, [m for m in heavy if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.split("\n")[0] == "2 []", out.stdout + out.stderr
    assert "run-config key 'dataset': no such file or folder" in out.stderr


@pytest.mark.parametrize("key, bad, message", [
    ("dataset", "{tmp}/no-such-data", "'dataset': no such file or folder"),
    ("dataset", "./no-such-file.jsonl", "'dataset': no such file or folder"),
    ("model", "{tmp}/no-such-model", "'model': no such folder"),
    ("model", "{data}", "'model': {data} holds no config.json"),
    ("dataset", "{model}", "'dataset': folder {model} has no 'train' file"),
])
def test_a_missing_path_fails_at_once_without_starting_anything(
        key, bad, message, tiny_model, toy_data, tmp_path, capsys, no_processes):
    fill = {"tmp": tmp_path, "data": toy_data, "model": tiny_model}
    run_config = _ok(tiny_model, toy_data, tmp_path, **{key: bad.format(**fill)})
    code, err = _launch(capsys, run_config)
    assert code == 2 and no_processes == []
    assert err.startswith("error: run-config key " + message.format(**fill))
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_an_existing_run_is_refused_unless_resumed(tiny_model, toy_data, tmp_path, capsys,
                                                   no_processes, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"round": 0}\n')
    code, err = _launch(capsys, _ok(tiny_model, toy_data, tmp_path))
    assert code == 2 and no_processes == []
    assert "'output-dir'" in err and "already holds a run" in err and "resume=true" in err

    code, err = _launch(capsys, _ok(tiny_model, toy_data, tmp_path, resume=True,
                                       output_dir=str(tmp_path / "elsewhere")))
    assert code == 2 and "holds no run to resume" in err

    (run / "config.json").write_text(json.dumps({"num-server-rounds": 2}))
    calls = []
    monkeypatch.setattr(launch, "run_simulation", lambda overrides, *a, **k: calls.append(
        overrides) or 0)
    code, _ = _launch(capsys, _ok(tiny_model, toy_data, tmp_path, resume=True))
    assert code == 0 and calls[0]["output-dir"] == str(run.resolve())


def test_an_unwritable_output_dir_is_refused(tiny_model, toy_data, tmp_path, capsys,
                                             no_processes):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err = _launch(capsys, _ok(tiny_model, toy_data, tmp_path,
                                       output_dir=str(blocker / "run")))
    assert code == 2 and err.startswith("error: run-config key 'output-dir'")


def test_a_hub_id_is_refused_when_the_hub_is_offline_and_it_is_not_cached(
        tiny_model, toy_data, tmp_path, capsys, no_processes, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    lookups = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: lookups.append(a) or [])
    code, err = _launch(capsys, _ok(tiny_model, toy_data, tmp_path,
                                    dataset="someone/no-such-dataset"))
    assert code == 2 and "'dataset' = 'someone/no-such-dataset'" in err
    assert "HF_HUB_OFFLINE is set" in err and lookups == []  # no waiting on the network
    (tmp_path / "hf-home" / "hub" / "models--someone--model").mkdir(parents=True)
    code, err = _launch(capsys, _ok(tiny_model, toy_data, tmp_path, model="someone/model",
                                       dataset="someone/no-such-dataset"))
    assert "'model'" not in err and "'dataset'" in err  # the cached model passes


def test_other_settings_fail_the_same_way(tiny_model, toy_data, tmp_path, capsys, no_processes):
    code, err = _launch(capsys, _ok(tiny_model, toy_data, tmp_path) + " lr=abc")
    assert code == 2 and err.startswith("error: --run-config")
    code, err = _launch(capsys, _ok(tiny_model, toy_data, tmp_path, min_clients=3))
    assert code == 2 and "--num-clients 2 is below run-config key 'min-clients' = 3" in err
    # label counts whose noise alone spends the budget: refused before any process starts
    code, err = _launch(capsys, _ok(tiny_model, toy_data, tmp_path, dp="sample",
                                       target_epsilon=1.0, label_count_noise=1.0))
    assert code == 2 and err.startswith("error: run-config key 'label-count-noise' = 1")
    assert not (tmp_path / "run").exists()


def test_a_new_run_gets_an_absolute_run_folder_and_the_log_goes_there(
        tiny_model, toy_data, tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", project)
    checked = preflight({"model": str(tiny_model), "dataset": str(toy_data)}, project)
    assert checked.run_root.parent == project / "runs"
    assert checked.overrides["output-dir"] == str(checked.run_root)
    assert checked.cfg.output_dir == str(checked.run_root)
    with pytest.raises(ConfigError, match="relative to"):
        preflight({"model": "./tiny", "dataset": str(toy_data)}, project)
    shutil.copytree(tiny_model, project / "tiny")  # relative paths: from the project root
    assert preflight({"model": "./tiny", "dataset": str(toy_data)}, project)

    seen = {}

    def fake_run(overrides, num_clients, **kwargs):
        seen.update(kwargs)
        return 0

    monkeypatch.setattr(launch, "run_simulation", fake_run)
    assert launch.main(["--num-clients", "2", "--run-config",
                        _ok(tiny_model, toy_data, tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"run folder  {tmp_path / 'run'}" in out and "run.log" in out
    assert seen["log_path"] == tmp_path / "run" / "run.log"
    assert seen["extra_env"] == {"FEDTUNE_VERBOSE": "0", "FEDTUNE_PROGRESS": "1"}


def test_help_describes_every_option_with_its_default():
    parser = launch.build_parser()
    options = [a for a in parser._actions if a.dest != "help"]
    assert all(a.help for a in options)
    text = parser.format_help()
    assert text.count("(default:") == len(options)
    assert "(default: 10)" in text and "FEDTUNE_VERBOSE" in text


@pytest.mark.parametrize("text", [
    "a=1 b='x y' c=true d=0.5 e=\"q\" f=1e-5", "x-note='hello world' num-server-rounds=3",
    "dataset='../shared/data/sst2' output-dir='/tmp/a b'", "",
])
def test_run_config_parsing_matches_flower(text):
    assert parse_run_config(text) == dict(parse_config_args([text]) if text else {})


def test_the_main_job_takes_turns_unless_the_user_sets_the_schedule(
        tiny_model, toy_data, tmp_path, monkeypatch, capsys):
    from fedtune.config import from_run_config
    from fedtune.privacy.calibration import cyclic_turns

    seen = []
    monkeypatch.setattr(launch, "run_simulation",
                        lambda overrides, num_clients, **kw: seen.append(overrides) or 0)
    assert launch.main(["--num-clients", "10", "--run-config",
                        _ok(tiny_model, toy_data, tmp_path)]) == 0
    assert "schedule    client-selection=cyclic fraction-train=0.2" in capsys.readouterr().out
    cfg = from_run_config(seen[0])
    assert (cfg.client_selection, cfg.num_server_rounds, cfg.planned_rounds) == ("cyclic", 10, 2)
    assert cyclic_turns(cfg, 10) == cfg.planned_rounds  # each client: 2 turns, as planned
    assert launch.main(["--num-clients", "10", "--run-config", _ok(
        tiny_model, toy_data, tmp_path, output_dir=tmp_path / "b", num_server_rounds=3)]) == 0
    assert "client-selection" not in seen[1]  # a schedule key set: the user's schedule
    assert launch.main(["--num-clients", "10", "--run-config", _ok(
        tiny_model, toy_data, tmp_path, output_dir=tmp_path / "c", partitioner="dirichlet")]) == 0
    assert "client-selection" not in seen[2]  # label skew: every client every round


def test_the_launcher_quietens_the_accountants_before_its_checks(monkeypatch, no_processes):
    """The preflight plans each client's noise in the launcher's own process: the PRV
    accountant's masked log(0) (label counts at q = 1) must not reach a newcomer's console."""
    import warnings

    from opacus.accountants import PRVAccountant

    def plan_then_fail(overrides, root):
        accountant = PRVAccountant()
        accountant.history = [(3.0, 1.0, 1), (0.5347, 1 / 28, 28)]
        accountant.get_epsilon(delta=1e-5)
        raise ConfigError("stop here")

    monkeypatch.setattr(launch, "preflight", plan_then_fail)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert launch.main(["--num-clients", "2"]) == 2
    assert not [w for w in seen if "divide by zero" in str(w.message)]
