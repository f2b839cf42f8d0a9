"""Device noise on the server: it adds nothing, accounts the survivors' noise, resumes exactly.

The strategy is driven through Flower's hooks with scripted SecAgg+ results (every result carries
the same unmasked mean, as SecAgg+'s workflow hands them over), so the accounting can be checked
against the Skellam accountant computed independently from the rounds' survivors.
"""

import math

import numpy as np
import pytest
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)

from server.app import build_round
from server.checkpoint import Checkpoint, read_checkpoint
from server.secagg import GuardedSecAggPlusWorkflow
from server.steps import SecAggSum
from server.strategy import ConfideStrategy
from server.user_dp import DeviceNoiseDP, UserLevelDP
from shared import skellam
from shared.models import global_arrays, global_names
from shared.records import CHECKPOINT_FILE
from shared.rundir import RunDirectory
from shared.split import catalog_size
from shared.wire import CLIP_NORM, NOISE_CLAMPED, NOISE_MU, SECAGG_CLIPPED
from tests.conftest import read_jsonl, small_config
from tests.server.rounds_driver import Clients

DEVICES = {
    "dp_user": True,
    "secagg": True,
    "dp_noise_source": "devices",
    "dp_reproducible_noise": True,
    "dp_user_clip_norm": 0.5,
    "fraction_fit": 0.5,
    "secagg_num_shares": 5,
    "secagg_reconstruction_threshold": 3,
}


def _strategy(config):
    run_dir = RunDirectory.create(config, "federated")
    model = config.build_model(catalog_size(config))
    names, arrays = global_names(model), global_arrays(model)
    sampler, pipeline, state = build_round(config, names, arrays, run_dir)
    return ConfideStrategy(config, sampler, pipeline, state), run_dir


EVAL = {"hr10": 0.5, "ndcg10": 0.25, "full_hr10": 0.4, "full_ndcg10": 0.1}


def _evaluate(strategy, r, params, clients):
    evaluate = strategy.configure_evaluate(r, params, clients)
    if evaluate:
        ok = Status(Code.OK, "")
        results = [(p, EvaluateRes(ok, 0.5, 1, dict(EVAL))) for p, _ in evaluate]
        strategy.aggregate_evaluate(r, results, [])


def _drive(strategy, rounds, survivors=None, halt_round=None):
    """Rounds 1..rounds; ``survivors(r, sampled)`` results arrive (default: all)."""
    clients = Clients()
    params = strategy.initialize_parameters(clients)
    sent = []
    for r in range(1, rounds + 1):
        ins = strategy.configure_fit(r, params, clients)
        sent.append(ins[0][1].config if ins else None)
        if not ins:
            _evaluate(strategy, r, params, clients)
            continue
        if r == halt_round:
            strategy.secagg_stage("setup", len(ins), None)
            strategy.secagg_stage("collect", 1, "secure aggregation halted at the collect stage")
            _evaluate(strategy, r, params, clients)
            continue
        arrive = len(ins) if survivors is None else survivors(r, len(ins))
        for stage in ("setup", "share-keys", "collect", "unmask"):
            strategy.secagg_stage(stage, arrive, None)
        rng = np.random.default_rng(r)
        mean = [rng.normal(scale=1e-3, size=a.shape) for a in parameters_to_ndarrays(params)]
        metrics = {SECAGG_CLIPPED: 0, NOISE_CLAMPED: 0}
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(mean), 1, metrics)
        new, _ = strategy.aggregate_fit(r, [(p, res) for p, _ in ins[:arrive]], [])
        params = new if new is not None else params
        _evaluate(strategy, r, params, clients)
    return sent


def test_the_server_adds_nothing_and_accounts_the_survivors_noise(tmp_path):
    config = small_config(out_dir=str(tmp_path / "run"), num_server_rounds=3, **DEVICES)
    strategy, run_dir = _strategy(config)
    sent = _drive(strategy, 3, survivors=lambda r, n: n - 1 if r == 2 else n)
    dp = strategy.sampler.state.mechanism
    assert isinstance(dp, DeviceNoiseDP)
    plan = dp.plan
    # the devices are told S and their share of the noise, nothing else
    assert sent[0][CLIP_NORM] == 0.5 and sent[0][NOISE_MU] == plan.mu_device
    assert plan.min_survivors == 3 and math.frexp(plan.secagg.clipping_range)[0] == 0.5
    ledger = [e["user_level"] for e in read_jsonl(run_dir.path / "privacy_ledger.jsonl")]
    rows = read_jsonl(run_dir.path / "metrics.jsonl")
    entries = []
    for row, unit in zip(rows, ledger, strict=True):
        s = row["secagg_survivors"]
        assert unit["noise_source"] == "devices" and unit["survivors"] == s
        assert unit["mu_present"] == plan.mu_device * s and unit["noise_clamped"] == 0
        entries.append((plan.mu_device * s, 0.5, plan.l1, plan.l2, 1))
        assert unit["epsilon"] == pytest.approx(skellam.epsilon(entries, 1e-5), rel=1e-12)
        assert unit["clamp_probability"] < 1e-15 and unit["clamp_delta"] < 1e-10
    assert rows[1]["secagg_survivors"] == rows[1]["fit_sampled"] - 1
    # The released update is the unmasked mean times the survivors over q N: nothing added.
    assert ledger[0]["expected_cohort"] == 6.0


def test_fewer_survivors_show_a_larger_epsilon_and_a_halted_round_stays_conservative(tmp_path):
    def run(name, **kw):
        config = small_config(out_dir=str(tmp_path / name), num_server_rounds=2, **DEVICES)
        strategy, run_dir = _strategy(config)
        _drive(strategy, 2, **kw)
        return read_jsonl(run_dir.path / "privacy_ledger.jsonl")

    everyone = run("all")
    fewer = run("fewer", survivors=lambda r, n: 3)  # the fewest SecAgg+ allows here
    halted = run("halted", halt_round=1)
    assert fewer[0]["user_level"]["epsilon"] > everyone[0]["user_level"]["epsilon"]
    assert fewer[0]["user_level"]["mu_present"] == fewer[0]["user_level"]["mu_device"] * 3
    # a halted round released nothing; it stays accounted at the fewest survivors (3)
    assert halted[0]["user_level"]["status"].startswith("skipped")
    assert halted[0]["user_level"]["epsilon"] == pytest.approx(fewer[0]["user_level"]["epsilon"])


def test_device_and_server_noise_calibrated_to_one_target_both_reach_it(tmp_path):
    # Every one of the 12 devices sampled (q = 1) and surviving, and the noise planned for all
    # 12 (num-shares 13, threshold 12): the ledger's ε must land on the target for both.
    common = {
        "dp_user": True,
        "secagg": True,
        "dp_reproducible_noise": True,
        "fraction_fit": 1.0,
        "dp_user_target_epsilon": 4.0,
        "secagg_num_shares": 13,
        "secagg_reconstruction_threshold": 12,
        "num_server_rounds": 3,
    }
    final = {}
    for source in ("server", "devices"):
        config = small_config(out_dir=str(tmp_path / source), dp_noise_source=source, **common)
        strategy, run_dir = _strategy(config)
        _drive(strategy, 3)
        ledger = read_jsonl(run_dir.path / "privacy_ledger.jsonl")
        final[source] = ledger[-1]["user_level"]
        assert final[source]["rounds_accounted"] == 3
    # Opacus' search stops within 0.01 of the target; ours (bisection on mu) within 1e-6
    assert 3.99 <= final["server"]["epsilon"] <= 4.0
    assert final["devices"]["epsilon"] == pytest.approx(4.0, rel=1e-6)
    assert final["devices"]["survivors"] == final["devices"]["min_survivors"] == 12
    # q = 1 (no subsampling): Skellam at this scale is the Gaussian to 1e-3, so the two noise
    # levels agree (Opacus' search overshoots by its tolerance).
    assert final["devices"]["noise_multiplier"] == pytest.approx(
        final["server"]["noise_multiplier"], rel=0.01
    )


def test_the_checkpoint_keeps_the_device_noise_mechanism(tmp_path):
    config = small_config(out_dir=str(tmp_path / "run"), num_server_rounds=3, **DEVICES)
    strategy, _ = _strategy(config)
    _drive(strategy, 2)
    saved = read_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)
    assert saved.user_dp.mechanism == strategy.sampler.state.mechanism
    assert saved.user_dp.mechanism.history.steps == 2
    again = Checkpoint.from_arrays(saved.to_arrays(), "here")
    assert again.user_dp.mechanism.epsilon() == strategy.sampler.state.mechanism.epsilon()
    assert not isinstance(again.user_dp.mechanism, UserLevelDP)


def test_the_workflow_reads_the_noise_plans_clipping_range_once_it_exists(tmp_path):
    config = small_config(out_dir=str(tmp_path / "run"), **DEVICES)
    strategy, _ = _strategy(config)
    secagg = strategy.pipeline.find(SecAggSum)
    workflow = GuardedSecAggPlusWorkflow(lambda: secagg.plan, strategy.secagg_stage)
    assert workflow.clipping_range == config.secagg_plan().clipping_range  # before round 1
    _drive(strategy, 1)
    assert workflow.clipping_range == strategy.sampler.state.mechanism.plan.secagg.clipping_range
    assert workflow.clipping_range != config.secagg_plan().clipping_range


def test_on_shards_the_survivors_are_the_users_in_the_sum_and_too_few_halt_the_round():
    import numpy as np

    from server.round import RoundState, RoundSum, SkipRound
    from server.steps import DeviceNoise
    from server.user_dp import UserDPState
    from shared.wire import NOISE_RANGES

    config = small_config(
        dp_user=True, dp_noise_source="devices", cohort_size=8, dp_noise_min_survivors=4
    )
    state = UserDPState(population=30, dimension=50, secagg=config.noise_quantizer_plan())
    state.mechanism = state.create(config)
    dp = state.mechanism
    step = DeviceNoise(config, state)
    sent = step.instructions(RoundState(number=1, run_started=0.0))
    c, t = np.frombuffer(sent[NOISE_RANGES], dtype=np.float64)
    assert (c, t) == (dp.plan.secagg.clipping_range, dp.plan.secagg.quantization_range)
    zeros = [np.zeros(50)]
    for number, users in ((1, 3), (2, 6)):
        rnd = RoundState(number=number, run_started=0.0)
        dp.sample(list(range(30)), number)  # accounted at the fewest survivors (4)
        if users < 4:  # fewer shares than planned: halted before use, the entry stays at 4
            with pytest.raises(SkipRound, match="fewer than dp-noise-min-survivors 4"):
                step.release(rnd, RoundSum(total=zeros, weight=users, trained=users))
            assert dp.history.entries[-1][0] == dp.plan.mu_device * 4
        else:
            step.release(rnd, RoundSum(total=zeros, weight=users, trained=users))
            assert dp.history.entries[-1][0] == dp.plan.mu_device * users
            assert step.ledger_units(rnd)["user_level"].survivors == users
