"""The strategy on what SecAgg+ hands it: one unmasked mean, repeated once per masked device."""

import json

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from server.provenance import model_digest
from server.steps import RoundRecorder, UserLevelNoise
from server.user_dp import UserLevelDP
from shared.privacy import clip_update
from shared.wire import BUDGET_EXHAUSTED, SECAGG_CLIPPED
from tests.conftest import small_config
from tests.server.test_strategy import FakeProxy, make_strategy


def _strategy(tmp_path, **changes):
    strategy, arrays, names = make_strategy(tmp_path, secagg=True, **changes)
    strategy.round.note(fit_sampled=4)
    return strategy, arrays, names


def _user_dp(strategy, population=30):
    """The run's user-level state as the Poisson sampler leaves it at the first round."""
    state = strategy.pipeline.find(UserLevelNoise).state
    state.mechanism = UserLevelDP.from_config(strategy.config, population=population)
    state.population = population
    return state.mechanism


def _run_dir(strategy):
    return strategy.pipeline.find(RoundRecorder).run_dir


def _updates(arrays, count, norm, seed=0):
    rng = np.random.default_rng(seed)
    raw = [[rng.normal(size=a.shape) for a in arrays] for _ in range(count)]
    return [clip_update(u, norm)[0] for u in raw]


def _secagg_results(updates, metrics=None, weight=1):
    """What SecAggPlusWorkflow passes: every result holds the same mean, plus its own metrics."""
    mean = ndarrays_to_parameters([np.mean(parts, axis=0) for parts in zip(*updates, strict=True)])
    return [
        (
            FakeProxy(i),
            FitRes(
                Status(Code.OK, ""),
                mean,
                weight,
                {"loss": 0.5, SECAGG_CLIPPED: 0} | (metrics[i] if metrics else {}),
            ),
        )
        for i in range(len(updates))
    ]


def test_fedavg_of_the_masked_updates(tmp_path):
    strategy, arrays, _ = _strategy(tmp_path, strategy="fedavg")
    updates = _updates(arrays, 4, 0.3)
    parameters, _ = strategy.aggregate_fit(1, _secagg_results(updates), [])
    want = [
        a + np.mean(parts, axis=0)
        for a, parts in zip(arrays, zip(*updates, strict=True), strict=True)
    ]
    for got, expected in zip(parameters_to_ndarrays(parameters), want, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-6)
    assert strategy.round.record.secagg_clipped_fraction == 0.0
    assert strategy.round.record.secagg_survivors == 4 and strategy.round.record.train_loss == 0.5


def test_item_sum_and_budget_exhausted_devices_as_without_secagg(tmp_path):
    strategy, arrays, names = _strategy(tmp_path, strategy="itemsum")
    updates = _updates(arrays, 3, 0.3)
    zero = [np.zeros_like(a, dtype=np.float64) for a in arrays]  # a device at its DP cap
    metrics = [{}, {}, {}, {"dp_status": BUDGET_EXHAUSTED}]
    parameters, _ = strategy.aggregate_fit(1, _secagg_results([*updates, zero], metrics), [])
    for got, name, a, parts in zip(
        parameters_to_ndarrays(parameters), names, arrays, zip(*updates, strict=True), strict=True
    ):
        mean = np.mean(parts, axis=0)  # over the 3 devices that trained
        np.testing.assert_allclose(
            got, a + (3 * mean if name.startswith("item_") else mean), atol=1e-6
        )
    assert strategy.round.record.budget_exhausted == 1


def test_user_dp_noise_is_added_to_the_unmasked_sum(tmp_path):
    strategy, arrays, _ = _strategy(  # seeded noise: compared with a replay of the same noise
        tmp_path, strategy="fedavg", dp_user=True, dp_user_clip_norm=0.3, dp_reproducible_noise=True
    )
    user_dp = _user_dp(strategy)
    strategy.begin_round(5).note(fit_sampled=4)
    updates = _updates(arrays, 4, 0.3)
    parameters, _ = strategy.aggregate_fit(5, _secagg_results(updates), [])
    # the same noise and fixed denominator q N as the plaintext DP-FedAvg path
    want = user_dp.aggregate(updates, [a.shape for a in arrays], 30, 5)
    for got, a, delta in zip(parameters_to_ndarrays(parameters), arrays, want, strict=True):
        np.testing.assert_allclose(got, a + delta, atol=1e-6)


@pytest.mark.parametrize(
    ("results", "reason"),
    [
        (lambda u: _secagg_results(u, weight=7), "weights"),
        (lambda u: _secagg_results([[x * 1000 for x in v] for v in u]), "did not clip"),
        (lambda u: _secagg_results(u, [{SECAGG_CLIPPED: "x"}] * len(u)), SECAGG_CLIPPED),
    ],
)
def test_unusable_aggregate_skips_the_round(tmp_path, results, reason):
    strategy, arrays, _ = _strategy(tmp_path)
    parameters, _ = strategy.aggregate_fit(1, results(_updates(arrays, 3, 1.0)), [])
    assert parameters is None and reason in strategy.round.record.skipped


def test_halted_round_is_recorded_and_the_ledger_accounts_it(tmp_path):
    strategy, arrays, _ = _strategy(tmp_path, dp_user=True)
    _user_dp(strategy).sample(list(range(30)), 1)  # the round was sampled: accounted
    strategy.secagg_stage("setup", 4, None)
    strategy.secagg_stage("share-keys", 1, "secure aggregation halted at the share-keys stage")
    strategy.configure_evaluate(1, ndarrays_to_parameters(arrays), _NoClients())
    record = json.loads((_run_dir(strategy).path / "metrics.jsonl").read_text())
    assert record["skipped"].startswith("secure aggregation halted at the share-keys stage")
    assert record["secagg_active"] == {"setup": 4, "share-keys": 1} and record["fit_failures"] == 3
    assert record["model_sha256"] == model_digest(arrays)
    ledger = json.loads((_run_dir(strategy).path / "privacy_ledger.jsonl").read_text())
    assert ledger["user_level"]["status"].startswith("skipped: secure aggregation halted")
    assert ledger["user_level"]["rounds_accounted"] == 1 and ledger["user_level"]["epsilon"] > 0
    assert ledger["secure_aggregation"]["status"].startswith("skipped")


class _NoClients:
    def num_available(self):
        return 0


@pytest.mark.parametrize(("arrived", "halts"), [(5, True), (6, False)])
def test_a_sum_of_fewer_devices_than_the_noise_was_planned_for_is_never_unmasked(
    monkeypatch, arrived, halts
):
    """With device noise planned for 6 survivors (above Flower's threshold of 4), a round whose
    masked updates came from 5 halts after the collect stage, before the unmask stage runs."""
    from types import SimpleNamespace

    from flwr.server.workflow import SecAggPlusWorkflow

    from server.secagg import GuardedSecAggPlusWorkflow

    plan = small_config(secagg=True).secagg_plan()
    stages = []
    workflow = GuardedSecAggPlusWorkflow(plan, lambda *a: stages.append(a), min_survivors=6)
    state = SimpleNamespace(sampled_node_ids=set(range(8)), active_node_ids=set(range(arrived)))
    monkeypatch.setattr(SecAggPlusWorkflow, "collect_masked_vectors_stage", lambda *a: True)
    assert workflow.collect_masked_vectors_stage(None, None, state) is (not halts)
    ((stage, active, halt),) = stages
    assert (stage, active) == ("collect", arrived)
    if halts:
        assert "fewer than dp-noise-min-survivors 6" in halt and "nothing was unmasked" in halt
    else:
        assert halt is None
