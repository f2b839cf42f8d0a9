"""Pooled interaction-level DP on the server: N(0, (σC)²) once on the cohort's sum, divided by the
devices that trained; the noise is secret unless asked; the ledger names the mode and the source."""

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from server.app import build_round
from server.round import RoundState, RoundSum
from server.steps import PooledNoise
from server.strategy import ConfideStrategy
from shared.models import global_arrays, global_names
from shared.pooled import plan_pooled
from shared.rundir import RunDirectory
from shared.split import catalog_size
from shared.streams import Stream, generator
from shared.wire import DP_EPSILON, DP_NOISE_MULTIPLIER, DP_STATUS, TRAINED
from tests.conftest import read_jsonl, small_config
from tests.server.rounds_driver import Clients

POOLED = {
    "dp_interaction": True,
    "dp_interaction_mode": "pooled",
    "strategy": "fedavg",
    "dp_noise_multiplier": 1.3,
    "dp_max_grad_norm": 0.4,
    "dp_pooled_sample_rate": 0.25,
}


@pytest.mark.parametrize("devices", [3, 10, 100])
def test_the_noise_on_the_released_mean_has_the_planned_distribution(devices):
    """Over 200,000 coordinates (independent draws), the released mean minus the mean of the
    sums has mean 0 and std σC / devices, within 5 standard errors."""
    step = PooledNoise(small_config(**POOLED))
    total = [np.linspace(-3, 3, 200_000).reshape(400, 500)]
    out = step.release(RoundState(7, 0.0), RoundSum(total=total, weight=devices, trained=devices))
    noise = out.update[0] * devices - total[0]
    n, std = noise.size, 1.3 * 0.4
    assert abs(noise.mean()) < 5 * std / np.sqrt(n)
    # the sample variance's standard error is about std² √(2 / n)
    assert abs(noise.var() - std**2) < 5 * std**2 * np.sqrt(2 / n)
    assert out.cohort == devices


def test_the_noise_is_secret_unless_a_research_run_asks_for_repeatability():
    zeros = RoundSum(total=[np.zeros(1000)], weight=1.0, trained=1)
    secret = small_config(**POOLED)
    a, b = (PooledNoise(secret).release(RoundState(1, 0.0), zeros).update[0] for _ in range(2))
    assert not np.allclose(a, b)  # OS entropy: nothing the seed (in config.json) replays
    seeded = small_config(**POOLED, dp_reproducible_noise=True)
    got = PooledNoise(seeded).release(RoundState(1, 0.0), zeros).update[0]
    expected = generator(seeded.seed, Stream.POOLED_NOISE, 1).normal(0.0, 1.3 * 0.4, 1000)
    np.testing.assert_array_equal(got, expected)


def _fit_res(arrays, epsilon):
    metrics = {DP_STATUS: TRAINED, DP_EPSILON: epsilon, DP_NOISE_MULTIPLIER: 1.3}
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), 1, metrics)


def test_a_round_steps_on_the_noised_mean_of_minus_the_gradient_sums(tmp_path):
    """Through Flower's hooks: six devices send (model - their gradient sum); FedAvg at server
    learning rate 0.5 moves the model by 0.5 x (minus the sums' total + the noise) / 6."""
    config = small_config(
        **POOLED, dp_reproducible_noise=True, server_learning_rate=0.5, out_dir=str(tmp_path)
    )
    run_dir = RunDirectory.create(config, "federated")
    model = config.build_model(catalog_size(config))
    names, arrays = global_names(model), global_arrays(model)
    sampler, pipeline, state = build_round(config, names, arrays, run_dir)
    assert isinstance(pipeline.releaser, PooledNoise)
    strategy = ConfideStrategy(config, sampler, pipeline, state)
    clients = Clients(6)
    params = strategy.initialize_parameters(clients)
    ins = strategy.configure_fit(1, params, clients)
    assert len(ins) == 6
    current = parameters_to_ndarrays(params)
    rng = np.random.default_rng(5)
    sums = [[rng.normal(0, 0.2, a.shape).astype(np.float32) for a in current] for _ in ins]
    results = [
        (proxy, _fit_res([c - g for c, g in zip(current, s, strict=True)], 2.5 + i))
        for i, ((proxy, _), s) in enumerate(zip(ins, sums, strict=True))
    ]
    new, _ = strategy.aggregate_fit(1, results, [])
    noise = generator(config.seed, Stream.POOLED_NOISE, 1)
    for got, c, *parts in zip(parameters_to_ndarrays(new), current, *sums, strict=True):
        total = -np.sum([np.asarray(p, np.float64) for p in parts], axis=0)
        expected = c + 0.5 * (total + noise.normal(0.0, 1.3 * 0.4, c.shape)) / 6
        np.testing.assert_allclose(got, expected, atol=1e-5)
    strategy.configure_evaluate(1, new, clients)  # not an evaluation round: the round is written
    (row,) = read_jsonl(run_dir.path / "privacy_ledger.jsonl")
    unit = row["interaction_level"]
    plan = plan_pooled(config)
    assert unit["mode"] == "pooled" and unit["noise_source"] == "server"
    assert unit["noise_multiplier"] == plan.noise_multiplier == 1.3
    assert unit["noise_stddev"] == pytest.approx(1.3 * 0.4)
    assert unit["sample_rate_rule"] == "dp-pooled-sample-rate 0.25 for every device"
    assert unit["steps_rule"] == "1 per round the device trains"
    assert (unit["epsilon_min"], unit["epsilon_max"]) == (2.5, 7.5)
