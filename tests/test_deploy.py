"""Real-host pieces without processes: certificates, command lines, a host's own data, seeds."""

import json
import os
import stat

import pytest
import tomllib
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.cli.supernode.register import try_load_public_key
from flwr.common.config import parse_config_args

from client.local_data import client_rows
from client.noise_seed import SECRET_FILE, round_seed
from fedtune.config import ConfigError, from_run_config
from fedtune.data.loading import load_node_data
from fedtune.data.toy import toy_rows, write_jsonl
from fedtune.deploy.certs import make_all
from fedtune.deploy.cli import main as deploy_main
from fedtune.deploy.cli import submit_config
from fedtune.deploy.commands import INSECURE_WARNING, config_arg, superlink_argv, supernode_argv
from fedtune.launch.flwr_cli import write_connection
from fedtune.outputs.run_folder import RunFolder
from server.local_clients import LocalClients
from strategies.round_log import RoundLog


def test_certificates_name_the_sans_and_node_keys_load_as_flower_reads_them(tmp_path):
    made = make_all(tmp_path, ["127.0.0.1", "server.example.org"], 2)
    ca = x509.load_pem_x509_certificate(made["ca"].read_bytes())
    server = x509.load_pem_x509_certificate(made["server_cert"].read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["server.example.org"]
    for key, pub in zip(made["node_keys"], made["node_pubs"], strict=True):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
        assert isinstance(load_ssh_private_key(key.read_bytes(), None), ec.EllipticCurvePrivateKey)
        assert try_load_public_key(pub)  # what `flwr supernode register` accepts
    assert stat.S_IMODE(os.stat(tmp_path / "ca.key").st_mode) == 0o600


def test_superlink_is_tls_with_node_auth_unless_insecure(tmp_path):
    argv = superlink_argv(tmp_path, tmp_path / "state", "0.0.0.0", 9092)
    assert "--enable-supernode-auth" in argv and "--insecure" not in argv
    assert argv[argv.index("--ssl-certfile") + 1] == str(tmp_path / "server.pem")
    assert argv[argv.index("--database") + 1].endswith("superlink.db")
    assert "--disable-runtime-dependency-installation" in argv
    plain = superlink_argv(tmp_path, tmp_path, "0.0.0.0", 9092, insecure=True)
    assert "--insecure" in plain and "--ssl-certfile" not in plain
    assert "--enable-supernode-auth" not in plain  # Flower refuses node auth without TLS


def test_supernode_needs_the_ca_or_an_explicit_insecure(tmp_path):
    cfg = {"data-path": "/data/my file's.jsonl", "ledger-dir": "/var/ledger", "max-epsilon": 4.0}
    argv = supernode_argv("h:1", tmp_path / "ca.crt", tmp_path / "k", cfg, 9100)
    assert argv[argv.index("--root-certificates") + 1] == str(tmp_path / "ca.crt")
    assert dict(parse_config_args([argv[argv.index("--node-config") + 1]])) == cfg
    assert argv[argv.index("--auth-supernode-private-key") + 1] == str(tmp_path / "k")
    with pytest.raises(ValueError, match="CA certificate"):
        supernode_argv("h:1", None, tmp_path / "k", cfg, 9100)
    with pytest.raises(ValueError, match="private key"):
        supernode_argv("h:1", tmp_path / "ca.crt", None, cfg, 9100)
    assert "--insecure" in supernode_argv("h:1", None, None, cfg, 9100, insecure=True)
    assert config_arg({"a": 1, "b": True}) == "a=1 b=true"


def test_insecure_submit_warns_and_writes_a_plain_connection(tmp_path, capsys):
    code = deploy_main(["submit", "--superlink", "127.0.0.1:1", "--insecure", "--home",
                        str(tmp_path), "--run-config", "no-such-key=1"])
    assert code == 2 and "unknown run-config key 'no-such-key'" in capsys.readouterr().err
    deploy_main(["register", "--superlink", "127.0.0.1:1", "--insecure", "--home",
                 str(tmp_path), str(tmp_path / "missing.pub")])
    assert INSECURE_WARNING in capsys.readouterr().err
    conn = tomllib.loads((tmp_path / "config.toml").read_text())["superlink"]["fedtune-deploy"]
    assert conn == {"address": "127.0.0.1:1", "insecure": True}


def test_a_tls_connection_names_the_ca(tmp_path):
    write_connection(tmp_path, "c", 9092, host="server.example.org",
                     root_certificates=tmp_path / "ca.crt")
    conn = tomllib.loads((tmp_path / "config.toml").read_text())["superlink"]["c"]
    assert conn == {"address": "server.example.org:9092",
                    "root-certificates": str(tmp_path / "ca.crt")}


def test_submit_defaults_to_the_hosts_own_data():
    assert "client-data='local'" in submit_config("num-server-rounds=3", _project())
    assert "client-data='partition'" in submit_config("client-data='partition'", _project())


def _project():
    from fedtune.deploy.cli import PROJECT_ROOT

    return PROJECT_ROOT


def test_a_supernode_with_a_wrong_data_path_stops_before_starting(tmp_path, capsys):
    code = deploy_main(["supernode", "--superlink", "127.0.0.1:1", "--ca", "ca.crt", "--key",
                        "k", "--data-path", str(tmp_path / "nope.jsonl"), "--ledger-dir",
                        str(tmp_path / "ledger")])
    err = capsys.readouterr().err
    assert code == 2 and "node config 'data-path'" in err and "no such file" in err


def test_node_data_keeps_the_servers_label_order_and_every_row(tmp_path):
    rows = [{"text": "good film", "label": "pos"}, {"text": "dull plot", "label": "neg"}] * 10
    folder = tmp_path / "host"
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "validation.jsonl", rows[:4])
    cfg = from_run_config({})
    splits = load_node_data(cfg, str(folder), ("pos", "neg"))  # the server's order, not sorted
    assert len(splits.train) == 20 and list(splits.train["text"]) == [r["text"] for r in rows]
    assert list(splits.train["label"])[:2] == [0, 1] and len(splits.eval) == 4
    single = load_node_data(cfg, str(folder / "train.jsonl"), ("neg", "pos"))
    assert len(single.train) == 18 and len(single.eval) == 2  # 10% held out, by seed
    with pytest.raises(ConfigError, match="label 'pos' is not among"):
        load_node_data(cfg, str(folder), ("neg", "other"))
    (tmp_path / "x.txt").write_text("good film\n")
    with pytest.raises(ConfigError, match="node config 'data-path'.*unsupported file type"):
        load_node_data(cfg, str(tmp_path / "x.txt"), ("neg", "pos"))


def test_client_rows_follow_client_data(tiny_model, tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", toy_rows(30, seed=5))
    local = from_run_config({"model": str(tiny_model), "client-data": "local"})
    pid, rows, _ = client_rows(local, {"data-path": str(path)}, "train", ("0", "1"))
    assert pid == -1 and len(rows) == 27
    with pytest.raises(ConfigError, match="no node config 'data-path'"):
        client_rows(local, {"partition-id": 0, "num-partitions": 2}, "train", ("0", "1"))
    with pytest.raises(ConfigError, match="node config 'data-path'.*no such file"):
        client_rows(local, {"data-path": str(tmp_path / "gone")}, "train", ("0", "1"))
    partition = from_run_config({"model": str(tiny_model)})
    with pytest.raises(ConfigError, match="client-data = 'partition'"):
        client_rows(partition, {"data-path": str(path)}, "train", ("0", "1"))


def test_a_hosts_noise_seed_is_secret_but_stable_for_a_replayed_round(tmp_path):
    sim = from_run_config({})
    assert round_seed(sim, 3, 2, "run/round-2") == 42 * 1_000_003 + 3 * 1_009 + 2
    local = from_run_config({"client-data": "local"})
    a = round_seed(local, -1, 2, "run/round-2", str(tmp_path / "a"))
    assert a == round_seed(local, -1, 2, "run/round-2", str(tmp_path / "a"))  # replay: same
    assert a != round_seed(local, -1, 3, "run/round-3", str(tmp_path / "a"))
    assert a != round_seed(local, -1, 2, "run/round-2", str(tmp_path / "b"))  # other host
    assert stat.S_IMODE(os.stat(tmp_path / "a" / SECRET_FILE).st_mode) == 0o600


def test_clients_with_their_own_data_are_numbered_by_node_and_sized_by_replies(tmp_path):
    run = RunFolder(tmp_path)
    local = LocalClients([900, 7, 55], run, ("0", "1"), "server")
    local.write()
    rlog = RoundLog(replies=[{"node": 55, "partition-id": -1, "dataset-size": 40}],
                    refused=[{"node": 900, "partition-id": -1, "dataset-size": 12,
                              "reason": "budget"}])
    rlog = local.observe(rlog)  # a numbered copy: the strategy's own log stays as it is
    assert [r["partition-id"] for r in rlog.replies + rlog.refused] == [1, 2]
    parts = json.loads(run.partitions_path.read_text())["partitions"]
    assert [(p["partition_id"], p["node_id"], p["num_examples"]) for p in parts] == [
        (0, 7, 0), (1, 55, 40), (2, 900, 12)]
    assert all(p["label_counts"] is None for p in parts)  # never asked of a real host
    assert (tmp_path / "partitions.png").stat().st_size > 0


def test_the_supernode_runs_flowers_own_with_a_short_idle_poll(monkeypatch):
    from fedtune.deploy import supernode_main

    slept = []
    monkeypatch.setattr(supernode_main.time, "sleep", slept.append)
    idle = supernode_main._ShortIdle(0.5)
    idle.sleep(3)  # Flower's fixed idle wait
    idle.sleep(0.5)  # its waits for a ClientApp's reply
    idle.sleep(0.01)
    assert slept == [0.5, 0.05, 0.01] and idle.monotonic is supernode_main.time.monotonic
    argv = supernode_argv("h:1", None, None, {}, 9100, insecure=True)
    assert argv[1:3] == ["-m", "fedtune.deploy.supernode_main"]
    import time

    from flwr.supernode import start_client_internal

    assert start_client_internal.time is time  # patched only in the SuperNode's own process


def test_the_supernode_declares_a_10_s_heartbeat_the_superlink_accepts(monkeypatch):
    from flwr.common.constant import HEARTBEAT_MIN_INTERVAL
    from flwr.supercore import heartbeat
    from flwr.supernode import fleet_http_connection

    from fedtune.deploy import supernode_main

    monkeypatch.setattr(heartbeat, "HEARTBEAT_DEFAULT_INTERVAL", 30)
    monkeypatch.setattr(fleet_http_connection, "HEARTBEAT_DEFAULT_INTERVAL", 30)
    supernode_main.shorten_heartbeat(supernode_main.DEFAULT_HEARTBEAT_S)
    # what the node declares on activation and in each beat, and what its beat thread waits on
    assert fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL == 10
    assert heartbeat.HEARTBEAT_DEFAULT_INTERVAL == 10
    assert supernode_main.DEFAULT_HEARTBEAT_S >= HEARTBEAT_MIN_INTERVAL


def test_object_pulls_retry_fast_but_wait_as_long_as_flowers(monkeypatch):
    """A ClientApp (and the SuperNode) retries an object that has not arrived after 0.05 s, not
    Flower's 1 s then 2 s; the longest wait stays Flower's max_time, not fewer tries' worth."""
    from flwr.supercore.constant import PULL_INITIAL_BACKOFF
    from flwr.supercore.inflatable import inflatable_utils

    from fedtune.deploy.object_pulls import shorten_object_pulls

    assert PULL_INITIAL_BACKOFF == 1  # Flower's, what this overrides
    for fn in (inflatable_utils.pull_objects,
               inflatable_utils.pull_and_inflate_object_from_tree):
        monkeypatch.setattr(fn, "__kwdefaults__", dict(fn.__kwdefaults__))
    shorten_object_pulls()
    for fn in (inflatable_utils.pull_objects,
               inflatable_utils.pull_and_inflate_object_from_tree):
        kw = fn.__kwdefaults__
        assert kw["initial_backoff"] == 0.05 and kw["backoff_cap"] == 0.5
        assert kw["max_tries_per_object"] * kw["backoff_cap"] >= kw["max_time"] == 7200
