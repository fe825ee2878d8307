"""ClientApp processes without the import bill: a long-running parent that has the heavy libraries
loaded forks one child per message.

A SuperNode started with ``--isolation subprocess`` (Flower's default) runs every message in a
fresh ``flwr-clientapp`` process, which spends seconds importing torch, transformers, PEFT and
Opacus before it does any work. With ``--isolation process`` the SuperNode leaves starting
ClientApps to an outside executor; this is that executor. Like ``flower-superexec`` it asks the
SuperNode's local Runtime API for tasks; for each one it forks a child that runs Flower's own
``run_clientapp`` with the task's token. Each message still gets a fresh process (the same
isolation and the same context handling as Flower's), it just starts with the libraries imported.

Only third-party libraries are preloaded. The app's own modules are imported by each child from
the run's FAB, as Flower would: a preloaded copy would shadow a newer app version (Flower's loader
reuses any module already in ``sys.modules``). The parent never runs torch code, so no thread
pool exists when it forks.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

PRELOAD = (
    "numpy", "torch", "torch.utils.data", "safetensors.torch", "transformers",
    "transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto",
    "transformers.models.bert.modeling_bert", "transformers.models.bert.tokenization_bert",
    "peft", "opacus", "opacus.accountants.prv", "opacus.accountants.rdp", "datasets",
    "dp_accounting", "flwr.app", "flwr.clientapp", "flwr.supernode.runtime.run_clientapp",
)


def preload() -> list[str]:
    """Import what every ClientApp message needs; the names that failed (optional ones)."""
    missing = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _reap(children: set[int]) -> None:
    for pid in list(children):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            children.discard(pid)


def _run_child(runtime_api_address: str, token: str, parent: int) -> None:
    """In the forked child: run one task with Flower's ClientApp runner, then leave for good."""
    code = 1
    try:
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        from fedtune.deploy.object_pulls import shorten_object_pulls

        shorten_object_pulls()  # the message's objects reach the SuperNode just after its task
        run_clientapp(runtime_api_address=runtime_api_address, token=token, insecure=True,
                      parent_pid=parent, runtime_dependency_install=False)
        code = 0
    except SystemExit as exc:  # flwr_exit ends every task this way
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os._exit(code)


def serve(runtime_api_address: str, alive: Callable[[], bool], poll_s: float = 0.05) -> None:
    """Serve the SuperNode at ``runtime_api_address`` (its ``--port``, on 127.0.0.1) while
    ``alive()``."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    retry = make_simple_http_retry_invoker()
    retry.max_tries = 10  # the SuperNode is local: if it stops answering, it is gone
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=retry,
    )
    children: set[int] = set()
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    try:
        while alive():
            _reap(children)
            res = client.AcquireTask(request)
            if res.HasField("task") and res.token:
                parent = os.getpid()
                pid = os.fork()
                if pid == 0:
                    _run_child(runtime_api_address, res.token, parent)
                children.add(pid)
                continue  # another message may be waiting
            time.sleep(poll_s)
    finally:
        client.close()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_supernode(argv: list[str], runtime_port: int) -> int:
    """Start ``flower-supernode`` (``argv``) with ``--isolation process`` and be its ClientApp
    executor until either of us is stopped; the SuperNode's exit code."""
    from fedtune.launch.processes import wait_for_port

    supernode = subprocess.Popen([*argv, "--isolation", "process"])
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        missing = preload()  # while the SuperNode connects to the SuperLink
        if missing:
            print(f"warm ClientApp: could not preload {', '.join(missing)}", file=sys.stderr)
        wait_for_port(runtime_port, supernode, timeout_s=120, name="flower-supernode")
        serve(f"127.0.0.1:{runtime_port}", alive=lambda: supernode.poll() is None)
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:  # the SuperNode stopped (refused, or its port never opened)
        print(f"error: {exc}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if supernode.poll() is None:
            supernode.terminate()
            try:
                supernode.wait(timeout=15)
            except subprocess.TimeoutExpired:
                supernode.kill()
        supernode.wait()
    return supernode.returncode
