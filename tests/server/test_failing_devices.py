"""Devices that fail mid-round: a crashed, a hung and a garbage-replying device are failures; the
round completes with the others when at least min-fit-clients valid replies came back, else it is
skipped with the model unchanged; every wait on the grid has a finite timeout."""

import numpy as np
from flwr.common import (
    Code,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)

from server.deadline import TimedGrid
from shared.records import METRICS_FILE
from shared.rundir import RunDirectory
from tests.conftest import read_jsonl
from tests.server.rounds_driver import Clients
from tests.server.test_checkpoint import _config, _strategy

OK = Status(Code.OK, "")


def _round(tmp_path, valid: int):
    """Round 1 with a crashed, a hung, a garbage and a NaN device, and ``valid`` good ones."""
    config = _config(tmp_path / "run", min_fit_clients=2)
    strategy = _strategy(config, RunDirectory.create(config, "federated"))
    clients = Clients(4 + valid)
    params = strategy.initialize_parameters(clients)
    current = parameters_to_ndarrays(params)
    ins = strategy.configure_fit(1, params, clients)
    assert len(ins) == 4 + valid
    crashed, hung, garbage, nan, *good = (proxy for proxy, _ in ins)
    updates = [[np.full_like(a, 0.01 * (k + 1)) for a in current] for k in range(valid)]

    def reply(update):
        new = [a + u for a, u in zip(current, update, strict=True)]
        return FitRes(OK, ndarrays_to_parameters(new), 5, {})

    results = [
        (garbage, FitRes(OK, Parameters(tensors=[b"\x00garbage"], tensor_type="numpy"), 5, {})),
        (nan, FitRes(OK, ndarrays_to_parameters([a * np.nan for a in current]), 5, {})),
        *((proxy, reply(up)) for proxy, up in zip(good, updates, strict=True)),
    ]
    failures = [Exception("device crashed: ClientApp raised")]  # as Flower reports an error
    new, _ = strategy.aggregate_fit(1, results, failures)  # `hung` never answered
    strategy.configure_evaluate(1, new or params, clients)  # round 1 of 4: no evaluation
    record = read_jsonl(tmp_path / "run" / METRICS_FILE)[0]
    return current, new, updates, record


def test_the_round_completes_with_the_devices_that_did_not_fail(tmp_path):
    current, new, updates, record = _round(tmp_path, valid=2)
    assert new is not None
    mean = [np.mean([u[i] for u in updates], axis=0) for i in range(len(current))]
    for got, was, step in zip(parameters_to_ndarrays(new), current, mean, strict=True):
        np.testing.assert_allclose(got, was + step, rtol=1e-6)
    assert (record["fit_sampled"], record["fit_replies"], record["fit_rejected"]) == (6, 2, 2)
    assert record["fit_failures"] == 4  # crashed + hung + garbage + NaN
    assert "skipped" not in record


def test_too_few_valid_replies_skip_the_round_with_the_model_unchanged(tmp_path):
    current, new, _, record = _round(tmp_path, valid=1)
    assert new is None  # Flower keeps the parameters it had
    assert "1 valid trained reply, min-fit-clients is 2" in record["skipped"]
    assert record["fit_failures"] == 4 and record["fit_replies"] == 1
    from server.provenance import model_digest

    assert record["model_sha256"] == model_digest(current)


class FakeGrid:
    run = "the grid's run"

    def __init__(self) -> None:
        self.timeouts = []

    def send_and_receive(self, messages, *, timeout=None):
        self.timeouts.append(timeout)
        return []


def test_every_wait_on_the_grid_has_a_finite_timeout():
    grid = FakeGrid()
    timed = TimedGrid(grid, 30.0)
    timed.send_and_receive([])  # Flower's DefaultWorkflow names no timeout: round-timeout
    timed.send_and_receive([], timeout=5.0)  # SecAgg+'s stages name theirs
    assert grid.timeouts == [30.0, 5.0]
    assert timed.run == "the grid's run"  # the rest is the grid's own
