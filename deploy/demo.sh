#!/usr/bin/env bash
# SuperLink + 3 SuperNodes on 127.0.0.1 with TLS and node authentication, 2 rounds of a tiny
# model, each node on its own data file; checks the run folder and the ledgers, stops every
# process it started, exits 0 only on success. Options: see `python -m fedtune.deploy.demo --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m fedtune.deploy.demo "$@"
