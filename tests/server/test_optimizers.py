"""The server optimizer: item-sum's rule, and FedAvgM / FedAdam against Flower's own (golden)."""

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAdam, FedAvgM

from server.optimizers import ModelState
from server.round import Aggregate, Reply, RoundState
from server.steps import MeanOfTrained, PlaintextSum, ServerOptimizer
from tests.conftest import small_config


def _res(arrays, examples):
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), examples, {})


def _optimizer(rule, start, names, **changes):
    config = small_config(strategy=rule, **changes)
    model = ModelState([a.copy() for a in start])
    return model, ServerOptimizer(rule, model, names, config)


def _round(model, optimizer, server_round, replies, *, uniform):
    """One plaintext round through the pipeline's SUM, RELEASE and OPTIMIZE steps."""
    rnd = RoundState(server_round, 0.0)
    parsed = []
    for node, (arrays, examples) in enumerate(replies):
        update = [a - c for a, c in zip(arrays, model.arrays, strict=True)]
        parsed.append(Reply(node_id=node, res=_res(arrays, examples), update=update))
    total = PlaintextSum(model, uniform=uniform).combine(rnd, parsed)
    optimizer.apply(rnd, MeanOfTrained().release(rnd, total))
    return model.arrays


def test_item_tables_take_the_sum_dense_layers_the_uniform_mean():
    start = [np.zeros((4, 2), np.float32), np.zeros(3, np.float32)]
    model, opt = _optimizer("itemsum", start, ["item_gmf.weight", "output.weight"])
    a = [np.array([[1, 0], [0, 0], [0, 0], [0, 0]], np.float32), np.full(3, 1.0, np.float32)]
    b = [np.array([[1, 0], [0, 2], [0, 0], [0, 0]], np.float32), np.full(3, 3.0, np.float32)]
    # example counts are ignored: uniform weights
    items, dense = _round(model, opt, 1, [(a, 100), (b, 1)], uniform=True)
    np.testing.assert_allclose(items, [[2, 0], [0, 2], [0, 0], [0, 0]])  # sum of row updates
    np.testing.assert_allclose(dense, [2.0, 2.0, 2.0])  # mean
    # the next round starts from the aggregate
    new = _round(model, opt, 2, [([items + 1, dense], 1)], uniform=True)
    np.testing.assert_allclose(new[0], items + 1)


def test_fixed_cohort_size_scales_a_pre_averaged_update():
    model, opt = _optimizer("itemsum", [np.zeros((2, 1), np.float32)], ["item_bias.weight"])
    # DP-FedAvg: one noised average over an expected cohort of 30
    opt.apply(RoundState(1, 0.0), Aggregate([np.full((2, 1), 0.1)], cohort=30.0))
    np.testing.assert_allclose(model.arrays[0], 3.0, rtol=1e-6)


def test_server_momentum_and_rate_step_like_fedavgm():
    start = [np.zeros((2, 1), np.float32), np.zeros(1, np.float32)]
    model, opt = _optimizer(
        "itemsum",
        start,
        ["item_bias.weight", "output.bias"],
        server_learning_rate=0.5,
        server_momentum=0.9,
    )
    update = [np.full((2, 1), 0.1, np.float32), np.full(1, 0.2, np.float32)]
    items, dense = start
    for expected_velocity in (1.0, 1.9, 2.71):  # v = 0.9 v + 1 (the item step: 10 x 0.1)
        opt.apply(RoundState(1, 0.0), Aggregate([u.astype(np.float64) for u in update], 10.0))
        new_items, new_dense = model.arrays
        np.testing.assert_allclose(new_items - items, 0.5 * expected_velocity, rtol=1e-5)
        np.testing.assert_allclose(new_dense - dense, 0.5 * 0.2 * expected_velocity, rtol=1e-5)
        items, dense = new_items, new_dense


def _random_rounds(start, rounds=4, devices=3, seed=0):
    rng = np.random.default_rng(seed)
    return [
        [
            ([rng.normal(scale=0.1, size=a.shape).astype(np.float32) for a in start], int(n))
            for n in rng.integers(1, 50, size=devices)
        ]
        for _ in range(rounds)
    ]


def _flower(strategy, start, rounds):
    """Flower's strategy fed each round's full models (its replies are new params, not updates)."""
    current, out = [a.copy() for a in start], []
    for server_round, deltas in enumerate(rounds, start=1):
        results = [
            (None, _res([c + d for c, d in zip(current, delta, strict=True)], n))
            for delta, n in deltas
        ]
        params, _ = strategy.aggregate_fit(server_round, results, [])
        current = parameters_to_ndarrays(params)
        out.append(current)
    return out


def _ours(rule, start, rounds, **changes):
    model, opt = _optimizer(rule, start, ["output.weight", "output.bias"], **changes)
    out = []
    for server_round, deltas in enumerate(rounds, start=1):
        current = model.arrays
        replies = [([c + d for c, d in zip(current, delta, strict=True)], n) for delta, n in deltas]
        out.append([a.copy() for a in _round(model, opt, server_round, replies, uniform=False)])
    return out


START = [np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), np.zeros(4, np.float32)]


@pytest.mark.parametrize(("rate", "momentum"), [(1.0, 0.0), (0.5, 0.0), (1.0, 0.9), (0.7, 0.9)])
def test_fedavgm_matches_flower(rate, momentum):
    rounds = _random_rounds(START)
    flower = FedAvgM(
        initial_parameters=ndarrays_to_parameters(START),
        server_learning_rate=rate,
        server_momentum=momentum,
        fit_metrics_aggregation_fn=lambda _: {},
    )
    changes = {"server_learning_rate": rate, "server_momentum": momentum}
    ours = _ours("fedavg", START, rounds, **changes)
    for want, got in zip(_flower(flower, START, rounds), ours, strict=True):
        for w, g in zip(want, got, strict=True):
            assert g.dtype == w.dtype
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_fedadam_matches_flower():
    rounds = _random_rounds(START, rounds=5)
    config = small_config(strategy="fedadam", server_learning_rate=0.05)
    flower = FedAdam(
        initial_parameters=ndarrays_to_parameters(START),
        eta=config.server_learning_rate,
        eta_l=config.learning_rate,
        beta_1=0.9,
        beta_2=0.99,
        tau=config.server_adam_tau,
        fit_metrics_aggregation_fn=lambda _: {},
    )
    ours = _ours("fedadam", START, rounds, server_learning_rate=0.05)
    for want, got in zip(_flower(flower, START, rounds), ours, strict=True):
        for w, g in zip(want, got, strict=True):
            assert g.dtype == w.dtype  # float64 from the first step on, as Flower's
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
