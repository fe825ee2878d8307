"""``python -m fedtune.deploy``: run fedtune on real hosts, one subcommand per step.

    python -m fedtune.deploy certs     --out certs --san server.example.org --san 10.0.0.5 --nodes 3
    python -m fedtune.deploy superlink --certs certs --state state --host 0.0.0.0 --port 9092
    python -m fedtune.deploy register  --superlink server.example.org:9092 --ca certs/ca.crt \\
                               certs/nodes/node-1.pub certs/nodes/node-2.pub ...
    python -m fedtune.deploy supernode --superlink server.example.org:9092 --ca ca.crt \\
                               --key node-1.key \\
                               --data-path /data/mine.jsonl --ledger-dir /var/lib/fedtune/ledger
    python -m fedtune.deploy submit    --superlink server.example.org:9092 --ca certs/ca.crt \\
                               --run-config "dataset='/srv/eval' num-server-rounds=3"

``superlink`` and ``supernode`` replace themselves with the Flower process (stop it with Ctrl-C
or SIGTERM). ``--insecure`` drops TLS everywhere, and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from fedtune.deploy.commands import (
    flower_env,
    register_argv,
    run_argv,
    split_address,
    superlink_argv,
    supernode_argv,
    warn_insecure,
)
from fedtune.project import PROJECT_ROOT

CONNECTION = "fedtune-deploy"
DEFAULT_HOME = Path("~/.fedtune/flwr-home")


def _connection(args) -> dict[str, str]:
    """Write the CLI's connection to the SuperLink into ``--home``; the environment to use it."""
    from fedtune.launch.flwr_cli import write_connection

    warn_insecure(args.insecure)
    host, port = split_address(args.superlink)
    home = Path(args.home).expanduser()
    if not args.insecure and not args.ca:
        raise SystemExit("error: give --ca (the CA certificate, ca.crt) or --insecure")
    write_connection(home, CONNECTION, port, host=host,
                     root_certificates=None if args.insecure else Path(args.ca))
    return flower_env(home)


def cmd_certs(args) -> int:
    from fedtune.deploy.certs import make_all

    made = make_all(Path(args.out), args.san, args.nodes)
    print(f"CA certificate (copy to every host): {made['ca']}")
    print(f"SuperLink certificate for {', '.join(args.san)}: {made['server_cert']} + key")
    for key, pub in zip(made["node_keys"], made["node_pubs"], strict=True):
        print(f"node key: {key} (copy to that host only), public key to register: {pub}")
    return 0


def cmd_superlink(args) -> int:
    warn_insecure(args.insecure)
    state = Path(args.state).expanduser()
    state.mkdir(parents=True, exist_ok=True)
    argv = superlink_argv(Path(args.certs), state, args.host, args.port, args.insecure)
    print(" ".join(argv), flush=True)
    os.execvpe(argv[0], argv, flower_env(state / "flwr-home"))
    return 1  # not reached


def cmd_register(args) -> int:
    env = _connection(args)
    for pub in args.public_keys:
        out = subprocess.run(register_argv(Path(pub), CONNECTION), env=env, text=True,
                             capture_output=True, check=False)
        if out.returncode != 0:
            print(out.stdout, out.stderr, file=sys.stderr)
            return out.returncode
        print(f"{pub}: node {json.loads(out.stdout[out.stdout.index('{'):])['node-id']}")
    return 0


def cmd_supernode(args) -> int:
    from fedtune.config import ConfigError
    from fedtune.data.loading import check_node_data
    from fedtune.launch.flwr_cli import parse_run_config

    warn_insecure(args.insecure)
    try:  # a wrong path fails here, on the host, not in round 1
        data = check_node_data(args.data_path).resolve()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ledger = Path(args.ledger_dir).expanduser().resolve()
    ledger.mkdir(parents=True, exist_ok=True)
    node_config = {**parse_run_config(args.node_config), "data-path": str(data),
                   "ledger-dir": str(ledger)}
    try:
        argv = supernode_argv(args.superlink, args.ca and Path(args.ca),
                              args.key and Path(args.key), node_config, args.port, args.insecure)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    home = Path(args.home).expanduser() if args.home else ledger.parent / "flwr-home"
    print(" ".join(argv), f"(ClientApps: {args.isolation})", flush=True)
    if args.isolation == "subprocess":  # Flower's own: a fresh interpreter per message
        os.execvpe(argv[0], argv, flower_env(home))
    from fedtune.deploy.warm_clientapp import run_supernode

    os.environ.update(flower_env(home))  # the forked ClientApps install the FAB under it
    return run_supernode(argv, args.port)


def submit(env: dict[str, str], app: Path, run_config: str, log=None,
           timeout_s: float | None = None) -> tuple[int, int | None]:
    """``flwr run --stream``, echoed to ``log`` (stdout by default); (exit code, run id).

    ``flwr run --stream`` exits 0 even when the ServerApp failed, so the code is 0 only when the
    SuperLink reports the run ``finished:completed``."""
    out = log or sys.stdout
    proc = subprocess.Popen(run_argv(app, CONNECTION, run_config), env=env, cwd=str(app),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_id = None
    try:
        for line in proc.stdout:
            out.write(line)
            out.flush()
            if run_id is None and (m := re.search(r"started run (\d+)", line)):
                run_id = int(m.group(1))
        proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0 or run_id is None:
        return proc.returncode or 1, run_id
    return (0 if run_status(env, run_id) == "finished:completed" else 1), run_id


def run_status(env: dict[str, str], run_id: int) -> str:
    out = subprocess.run(["flwr", "ls", CONNECTION, "--run-id", str(run_id), "--format", "json"],
                         env=env, capture_output=True, text=True, check=False)
    try:
        run = json.loads(out.stdout)["runs"][0]
    except (ValueError, KeyError, IndexError):
        return f"unknown ({out.stdout.strip()} {out.stderr.strip()})"
    if run.get("status") != "finished:completed":
        print(f"run {run_id}: {run.get('status')}: {run.get('status-details')}", file=sys.stderr)
    return str(run.get("status"))


def submit_config(text: str, app: Path) -> str:
    """The run config to submit: the user's overrides, ``client-data='local'`` unless they chose,
    checked here in a second rather than on the server after the upload."""
    from fedtune.config import from_run_config
    from fedtune.launch.flwr_cli import parse_run_config, run_config_arg
    from fedtune.project import project_defaults

    overrides = {"client-data": "local", **parse_run_config(text)}
    from_run_config(project_defaults(app) | overrides)
    return run_config_arg(overrides)


def cmd_submit(args) -> int:
    from fedtune.config import ConfigError

    app = Path(args.app).resolve()
    try:
        run_config = submit_config(args.run_config, app)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    code, run_id = submit(_connection(args), app, run_config)
    print(f"run {run_id}: {'completed' if code == 0 else f'FAILED (exit {code})'}")
    return code


def _add_link(p: argparse.ArgumentParser) -> None:
    p.add_argument("--superlink", required=True, help="SuperLink address HOST:PORT")
    p.add_argument("--ca", help="CA certificate (ca.crt) that signed the SuperLink's")
    p.add_argument("--insecure", action="store_true", help="plain HTTP (prints a warning)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m fedtune.deploy",
                                  description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("certs", help="CA, SuperLink certificate, node key pairs")
    p.add_argument("--out", required=True)
    p.add_argument("--san", action="append", required=True,
                   help="an address clients dial (IP or DNS name); repeat for several")
    p.add_argument("--nodes", type=int, default=2)
    p.set_defaults(func=cmd_certs)
    p = sub.add_parser("superlink", help="start the SuperLink (TLS, node auth, state db)")
    p.add_argument("--certs", required=True, help="folder from `certs`")
    p.add_argument("--state", required=True, help="folder for the state database")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--insecure", action="store_true", help="plain HTTP (prints a warning)")
    p.set_defaults(func=cmd_superlink)
    p = sub.add_parser("register", help="register SuperNode public keys with the SuperLink")
    _add_link(p)
    p.add_argument("--home", default=str(DEFAULT_HOME), help="FLWR_HOME for the connection")
    p.add_argument("public_keys", nargs="+")
    p.set_defaults(func=cmd_register)
    p = sub.add_parser("supernode", help="start a SuperNode on this host's own data")
    _add_link(p)
    p.add_argument("--key", help="this node's private key (node-K.key); not with --insecure")
    p.add_argument("--data-path", required=True, help="this host's data: file or folder")
    p.add_argument("--ledger-dir", required=True, help="this host's privacy-ledger folder")
    p.add_argument("--port", type=int, default=9094, help="local port for its ClientApps")
    p.add_argument("--node-config", default="", help="more node config, e.g. 'max-epsilon=4'")
    p.add_argument("--home", default="", help="FLWR_HOME (default: next to the ledger folder)")
    p.add_argument("--isolation", choices=("warm", "subprocess"), default="warm",
                   help="warm: each message's ClientApp is forked from a process with the "
                        "libraries loaded (fast); subprocess: Flower's fresh process per message")
    p.set_defaults(func=cmd_supernode)
    p = sub.add_parser("submit", help="submit a run (flwr run) and wait for it")
    _add_link(p)
    p.add_argument("--home", default=str(DEFAULT_HOME), help="FLWR_HOME for the connection")
    p.add_argument("--app", default=str(PROJECT_ROOT), help="the fedtune app folder")
    p.add_argument("--run-config", default="", help="overrides, as for flwr run")
    p.set_defaults(func=cmd_submit)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)
