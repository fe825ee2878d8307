"""A real deployment on 127.0.0.1: SuperLink + 3 SuperNodes as separate processes, TLS and node
authentication, each node on its own data file in its own "host" folder (deploy/cluster.py).

One federation serves every test (starting it costs ~20 s): an unregistered node is refused, the
demo run completes with every ledger on its own host, and a node killed in round 1 does not stop
a run with min-clients = 2.
"""

import json
import re
import threading
import time

import pytest

from fedtune.deploy.checks import check_ledgers, check_run_folder
from fedtune.deploy.cluster import LocalCluster
from fedtune.deploy.demo import DELTA, demo_run_config, make_material, start_federation
from fedtune.launch.flwr_cli import run_config_arg

NODES = 3


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    work = tmp_path_factory.mktemp("deploy")
    cluster = LocalCluster(work)
    try:
        model, server_data, data = make_material(work, NODES)
        start_federation(cluster, data)
        yield cluster, model, server_data, data
    finally:
        cluster.stop_all()


def _metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_node_whose_key_is_not_registered_is_refused(federation):
    cluster, _, _, data = federation
    from fedtune.deploy.certs import make_node_key

    stranger, _ = make_node_key(cluster.root / "stranger", "node-x")
    proc = cluster.start_supernode(NODES + 1, data[0], key=stranger)
    assert proc.wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in cluster.log(f"node-{NODES + 1}").read_text()
    assert "No SuperNode found with the given public key" in cluster.log("superlink").read_text()
    assert sorted(n["status"] for n in cluster.nodes()) == ["online"] * NODES


def test_the_demo_flow_trains_every_host_and_keeps_each_ledger_at_home(federation):
    cluster, model, server_data, data = federation
    run = cluster.root / "server" / "runs" / "demo"
    config = demo_run_config(model, server_data, run, rounds=2, min_clients=NODES)
    assert cluster.submit(run_config_arg(config)) == 0, cluster.log("submit").read_text()[-3000:]
    assert check_run_folder(run, rounds=2, clients=NODES) == []
    ledgers = [cluster.host(k) / "ledger" for k in range(1, NODES + 1)]
    assert check_ledgers(run, ledgers, DELTA) == []
    report = json.loads((run / "privacy" / "report.json").read_text())
    sizes = sorted(c["num_examples"] for c in report["clients"])
    assert sizes == [54, 72, 90]  # each host's own file (60/80/100 rows, 10% held out)
    assert all(c["rounds_trained"] == 2 and c["epsilon"] <= 8.0 for c in report["clients"])
    parts = json.loads((run / "partitions.json").read_text())["partitions"]
    assert sorted(p["num_examples"] for p in parts) == sizes  # learnt from the replies
    assert not list((cluster.root / "server").rglob("ledger-*.json"))  # ledgers stay on hosts


def _node_id(cluster, k: int) -> int:
    return int(re.search(r"SuperNode ID: (\d+)", cluster.log(f"node-{k}").read_text()).group(1))


def test_a_node_killed_in_round_1_does_not_stop_the_run(federation):
    cluster, model, server_data, _ = federation
    run = cluster.root / "server" / "runs" / "killed"
    config = {**demo_run_config(model, server_data, run, rounds=2, min_clients=2), "dp": "off"}
    victim = NODES
    victim_id = _node_id(cluster, victim)
    log = cluster.log(f"node-{victim}")
    seen = log.read_text().count("Receiving: train message")
    result = {}
    submit = threading.Thread(target=lambda: result.update(code=cluster.submit(
        run_config_arg(config))))
    submit.start()
    deadline = time.monotonic() + 180
    while log.read_text().count("Receiving: train message") == seen:
        assert time.monotonic() < deadline and submit.is_alive(), "round 1 never reached the node"
        time.sleep(0.2)
    cluster.stop(f"node-{victim}", kill=True)  # SIGKILL: a host that crashed mid-round
    submit.join(timeout=400)
    assert result.get("code") == 0, cluster.log("submit").read_text()[-3000:]
    lines = _metrics(run)
    assert [x["round"] for x in lines] == [0, 1, 2]
    first, second = lines[1], lines[2]
    assert first["sampled"] == NODES and first["clients"] == NODES - 1
    assert [(f["node"], f["kind"]) for f in first["failures"]] == [(victim_id, "error")]
    assert second["clients"] == NODES - 1 and second["failures"] == []
    assert (run / "final" / "adapter_model.safetensors").is_file()
