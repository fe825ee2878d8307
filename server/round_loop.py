"""The round loop of ``Strategy.start``, able to begin at any round (for ``resume``).

Flower's ``Strategy.start`` always counts rounds from 1 and evaluates round 0 first; a resumed run
must continue at round k+1 with the round numbers its clients' ledgers and seeds already use. This
is the same sequence (configure, send and receive, aggregate; then the same for evaluation; then
the server-side ``evaluate_fn``) with the first round as a parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from server.progress import send_and_receive


def run_rounds(strategy: Strategy, grid: Grid, arrays: ArrayRecord, *, first_round: int,
               last_round: int, timeout: float, train_config: ConfigRecord,
               evaluate_config: ConfigRecord,
               evaluate_fn: Callable[[int, ArrayRecord], object]) -> ArrayRecord:
    """Rounds ``first_round``..``last_round``; returns the last global arrays."""
    if first_round == 1:
        evaluate_fn(0, arrays)
    for server_round in range(first_round, last_round + 1):
        log(INFO, "[ROUND %s/%s]", server_round, last_round)
        replies = send_and_receive(
            grid, strategy.configure_train(server_round, arrays, train_config, grid),
            timeout=timeout, server_round=server_round, num_rounds=last_round, phase="train")
        new_arrays, _ = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            arrays = new_arrays
        replies = send_and_receive(
            grid, strategy.configure_evaluate(server_round, arrays, evaluate_config, grid),
            timeout=timeout, server_round=server_round, num_rounds=last_round, phase="evaluate")
        strategy.aggregate_evaluate(server_round, replies)
        evaluate_fn(server_round, arrays)
    return arrays
