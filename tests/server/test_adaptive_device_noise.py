"""Adaptive clipping with the noise added by the devices (Skellam inside SecAgg+).

Driven through the server's real pipeline; every device's reply is built by the device's own code
(``client.noise.noised_for_secagg``: clip, scale, round, append the centred bit x B, add its
Skellam share, encode), and the unmasked mean is the mean of what the devices sent, as Flower's
SecAgg+ hands it over (``encode_exactly``: a device's float is its integer minus T / 2 over the
scale). What must hold (docs/design.md §4): every round the devices are told this round's S, the
mu for that S and B; the server adds nothing to the count, releases the fraction from the noised
count it unmasked and moves S by the geometric rule; each round is accounted with that round's
terms, recomputed here from the paper's formulas; and the ε a target asks for is reached.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from client.noise import noised_for_secagg
from server.checkpoint import Checkpoint, read_checkpoint
from shared import skellam
from shared.adaptive_clip import next_clip_norm, update_noise_multiplier
from shared.config import ConfigError
from shared.privacy import clip_update
from shared.records import CHECKPOINT_FILE
from shared.wire import (
    CLIP_BIT,
    CLIP_BIT_UNITS,
    CLIP_NORM,
    NOISE_CLAMPED,
    NOISE_MU,
    SECAGG_BOUND,
    SECAGG_CLIPPED,
)
from tests.conftest import read_jsonl, small_config
from tests.server.rounds_driver import Clients, update_of_norm
from tests.server.test_golden_rounds import driven_strategy

ADAPTIVE_DEVICES = {
    "dp_user": True,
    "dp_user_adaptive_clip": True,
    "secagg": True,
    "dp_noise_source": "devices",
    "dp_reproducible_noise": True,
    "fraction_fit": 0.5,
    "dp_user_clip_norm": 0.5,
    "dp_user_clip_count_stddev": 1.0,
    "dp_user_clip_learning_rate": 0.3,
    "secagg_num_shares": 5,
    "secagg_reconstruction_threshold": 3,
    "strategy": "fedavg",
}


def _strategy(tmp_path, rounds=3, **changes):
    config = small_config(
        out_dir=str(tmp_path), num_server_rounds=rounds, eval_every=rounds, **changes
    )
    strategy, run_dir = driven_strategy(config)
    return config, strategy, run_dir.path


def _device_replies(strategy, ins, current, rng, norm_of):
    """Each device clips to the S it was told, noises (update, centred bit) itself; the
    workflow hands over the mean. Returns (results, the exact sum of centred bits)."""
    plan = strategy.sampler.state.mechanism.plan.secagg
    sent, centred = [], 0.0
    for k, (_, fit_ins) in enumerate(ins):
        cfg = fit_ins.config
        clip = float(cfg[CLIP_NORM])
        assert float(cfg[SECAGG_BOUND]) == plan.bound and cfg[CLIP_BIT] == 1
        update, before = clip_update(update_of_norm(current, norm_of(k, clip), rng), clip)
        bit = 0.5 if before <= clip else -0.5
        centred += bit
        x, clamped = noised_for_secagg(
            update,
            clip,
            plan.clipping_range,
            plan.quantization_range,
            float(cfg[NOISE_MU]),
            rng,
            bit,
            int(cfg[CLIP_BIT_UNITS]),
        )
        assert clamped == 0
        sent.append(x)
    mean = ndarrays_to_parameters([np.mean(p, axis=0) for p in zip(*sent, strict=True)])
    metrics = {SECAGG_CLIPPED: 0, NOISE_CLAMPED: 0}
    results = [(p, FitRes(Status(Code.OK, ""), mean, 1, dict(metrics))) for p, _ in ins]
    return results, centred, sent


def _drive(strategy, rounds, norm_of):
    clients = Clients()
    params = strategy.initialize_parameters(clients)
    rng = np.random.default_rng(0)
    told, counts = [], []
    for server_round in range(1, rounds + 1):
        ins = strategy.configure_fit(server_round, params, clients)
        told.append(dict(ins[0][1].config))
        current = parameters_to_ndarrays(params)
        replies, centred, sent = _device_replies(strategy, ins, current, rng, norm_of)
        scale = strategy.sampler.state.mechanism.plan.scale
        units = int(told[-1][CLIP_BIT_UNITS])
        noised = sum(float(x[-1][0]) for x in sent) * scale / units  # the count the server sees
        counts.append((centred, noised, len(ins)))
        for stage in ("setup", "share-keys", "collect", "unmask"):
            strategy.secagg_stage(stage, len(ins), None)
        new, _ = strategy.aggregate_fit(server_round, replies, [])
        params = new if new is not None else params
        if strategy.configure_evaluate(server_round, params, clients):
            strategy.aggregate_evaluate(server_round, [], [])
    return told, counts


def _two_in_three_under(k: int, clip: float) -> float:
    return 0.2 * clip if k % 3 else 10 * clip


def test_devices_noise_the_count_and_each_round_is_accounted_at_its_own_s(tmp_path):
    config, strategy, run_dir = _strategy(tmp_path, **ADAPTIVE_DEVICES)
    told, counts = _drive(strategy, 3, _two_in_three_under)
    dp = strategy.sampler.state.mechanism
    plan, sigma_b = dp.plan, 1.0
    assert plan.secagg.bound == config.user_clip_ceiling == 5.0  # planned for the ceiling
    ledger = [e["user_level"] for e in read_jsonl(run_dir / "privacy_ledger.jsonl")]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    clip, entries = 0.5, []
    for unit, row, sent, (centred, noised, n) in zip(ledger, rows, told, counts, strict=True):
        assert float(sent[CLIP_NORM]) == unit["clip_norm"] == row["clip_norm"] == clip
        # this round's terms from the formulas: Δ2 of the update at S, mu scaled with Δ2²,
        # B the largest even integer with sqrt(mu) / B >= sigma_b, the joint sensitivities
        l2_update = skellam.rounded_l2(clip * plan.scale, plan.dimension)
        mu_total = plan.mu_target * (l2_update / plan.l2) ** 2
        units = 2 * math.floor(math.sqrt(mu_total) / (2 * sigma_b))
        assert sent[NOISE_MU] == pytest.approx(mu_total / plan.min_survivors, rel=1e-12)
        assert sent[CLIP_BIT_UNITS] == units
        l2 = math.hypot(l2_update, units / 2)
        l1 = skellam.rounded_l1(l2_update, plan.dimension) + units / 2
        assert unit["l2_sensitivity"] == pytest.approx(l2) and unit["l1_sensitivity"] == l1
        # the count arrives noised by the devices (about sigma_b sqrt(n / min-survivors))
        assert noised != centred and abs(noised - centred) < 8 * sigma_b * math.sqrt(n / 3)
        fraction = noised / unit["expected_cohort"] + 0.5
        assert unit["clip_fraction_under"] == pytest.approx(fraction, rel=1e-9, abs=1e-9)
        clip = min(next_clip_norm(clip, fraction, 0.5, 0.3), config.user_clip_ceiling)
        assert unit["next_clip_norm"] == pytest.approx(clip, rel=1e-12)
        entries.append((mu_total / plan.min_survivors * n, 0.5, l1, l2, 1))
        assert unit["epsilon"] == pytest.approx(skellam.epsilon(entries, 1e-5), rel=1e-9)
        # the update's share of the noise is z_Delta of the joint z, as with server noise
        z_update = update_noise_multiplier(unit["noise_multiplier"], sigma_b)
        assert unit["update_noise_multiplier"] == pytest.approx(z_update, rel=1e-3)
    assert len({round(u["clip_norm"], 9) for u in ledger}) == 3  # S moved every round


def test_a_target_epsilon_is_reached_with_the_bit_inside_the_noise(tmp_path):
    # q = 1, all 12 devices survive, the noise planned for 12, S pinned at its ceiling (every
    # update far above it): the ledger must land on the target, as without the bit.
    changes = ADAPTIVE_DEVICES | {
        "fraction_fit": 1.0,
        "dp_user_target_epsilon": 4.0,
        "dp_user_clip_norm_max": 0.5,
        "dp_user_clip_count_stddev": 4.0,  # z is about 2 at this target
        "secagg_num_shares": 13,
        "secagg_reconstruction_threshold": 12,
    }
    _, strategy, run_dir = _strategy(tmp_path, **changes)
    _drive(strategy, 3, lambda k, clip: 10 * clip)
    final = read_jsonl(run_dir / "privacy_ledger.jsonl")[-1]["user_level"]
    assert final["clip_norm"] == 0.5 and final["survivors"] == 12
    assert 3.99 <= final["epsilon"] <= 4.0


def test_a_count_noise_too_small_for_the_planned_range_is_refused_with_what_to_do(tmp_path):
    # z 1 fixed: sigma_b 0.51 passes z / 2, but then z_Delta ~ 5 and B / 2 ~ 5 Δ2: the bit
    # would need more room than SecAgg+'s range keeps for a coordinate.
    changes = ADAPTIVE_DEVICES | {"dp_user_clip_count_stddev": 0.51}
    _, strategy, _ = _strategy(tmp_path, **changes)
    with pytest.raises(ConfigError, match="raise it"):
        _drive(strategy, 1, _two_in_three_under)


def test_the_checkpoint_keeps_the_moving_s_and_the_per_round_history(tmp_path):
    _, strategy, run_dir = _strategy(tmp_path, **ADAPTIVE_DEVICES)
    _drive(strategy, 2, _two_in_three_under)
    dp = strategy.sampler.state.mechanism
    saved = read_checkpoint(run_dir / CHECKPOINT_FILE).user_dp.mechanism
    assert saved == dp and saved.adaptive and saved.clip_norm != 0.5
    again = Checkpoint.from_arrays(read_checkpoint(run_dir / CHECKPOINT_FILE).to_arrays(), "here")
    assert again.user_dp.mechanism.round_terms() == dp.round_terms()
    assert again.user_dp.mechanism.epsilon() == dp.epsilon()
