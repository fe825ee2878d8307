"""What a server can and cannot do with the audit settings: switching the audit on never opens a
fresh privacy ledger for the same records, a real host writes its coins only where its own
node config says, and a real host refuses the test fault that drops the DP noise."""

from __future__ import annotations

import json

import pytest
from federation_helpers import federate
from flwr.app import ConfigRecord, Context, RecordDict

from client.audit_canaries import audit_folder
from fedtune.config import ConfigError, from_run_config
from fedtune.protocol import RUN_KEY


def test_the_audit_keeps_the_clients_ledger(base_config, tmp_path):
    ledgers = tmp_path / "ledgers"
    common = {**base_config, "ledger-dir": str(ledgers), "num-server-rounds": 1,
              "local-epochs": 1.0, "accountant": "rdp", "target-epsilon": 8.0}
    federate(common, clients=2, rounds=1, run_key="first")
    before = {p.name: json.loads(p.read_text()) for p in ledgers.glob("ledger-*.json")}
    federate({**common, "audit-canaries": 20, "audit-dir": str(tmp_path / "audit")},
             clients=2, rounds=1, run_key="audited")
    after = {p.name: json.loads(p.read_text()) for p in ledgers.glob("ledger-*.json")}
    assert set(after) == set(before) and len(after) == 2  # no fresh ledger for client 0
    for name in after:  # the first run spent the budget: the second is refused, not free
        assert after[name]["history"] == before[name]["history"]
        assert len(after[name]["refusals"]) == len(before[name]["refusals"]) + 1


def test_a_real_host_writes_coins_only_where_its_node_config_says(tmp_path):
    cfg = from_run_config({"client-data": "local", "audit-canaries": 20,
                           "audit-dir": "/etc/server-chosen"})
    config = ConfigRecord({RUN_KEY: "/srv/run"})

    def context(node_config):
        return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(),
                       run_config={})

    with pytest.raises(ConfigError, match="node-config \"audit-dir="):
        audit_folder(cfg, context({"data-path": "x"}), config)
    assert audit_folder(cfg, context({"audit-dir": str(tmp_path)}), config) == tmp_path
    sim = from_run_config({"audit-canaries": 20})
    assert audit_folder(sim, context({}), config) == tmp_path.__class__("/srv/run/audit")


def test_a_real_host_refuses_to_train_without_its_noise():
    with pytest.raises(ConfigError, match="'fault-injection'.*refuses it"):
        from_run_config({"client-data": "local", "fault-injection": "0:*:no-noise"})
    from_run_config({"client-data": "local", "fault-injection": "0:1:raise"})  # harmless faults
    from_run_config({"fault-injection": "0:*:no-noise"})  # a simulation: one operator
