"""Adaptive clipping through the server's real pipeline, driven by scripted device replies.

What must hold (Andrew et al. 2021, docs/design.md §4): every round the devices are told this
round's S; the cohort's clip bits are summed (in plaintext from each reply's count, under
SecAgg+ inside the masked sum, never one by one), noised once with N(0, sigma_b^2), and S moves
by exactly the geometric rule from that released fraction; the accountant adds z while the
update noise uses z_Delta; a reply without a valid count is rejected.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from shared.adaptive_clip import next_clip_norm, update_noise_multiplier
from shared.config import ConfigError
from shared.privacy import clip_update, epsilon
from shared.streams import Stream, generator
from shared.wire import CLIP_BIT, CLIP_NORM, CLIP_UNDER, SECAGG_BOUND
from tests.conftest import read_jsonl, small_config
from tests.server.rounds_driver import Clients, update_of_norm
from tests.server.test_golden_rounds import driven_strategy

ADAPTIVE = {
    "dp_user": True,
    "dp_user_adaptive_clip": True,
    "dp_reproducible_noise": True,  # so that the test can replay the count's noise
    "fraction_fit": 0.5,
    "dp_user_clip_norm": 0.5,
    "dp_user_clip_count_stddev": 1.0,
    "dp_user_clip_learning_rate": 0.3,
    "strategy": "fedavg",
}


def _strategy(tmp_path, **changes):
    config = small_config(out_dir=str(tmp_path), num_server_rounds=3, eval_every=3, **changes)
    strategy, run_dir = driven_strategy(config)
    return config, strategy, run_dir.path


def _norms(k: int, clip: float) -> float:
    """Device k's update norm: two of every three within S, one far above."""
    return 0.2 * clip if k % 3 else 10 * clip


def _plaintext_replies(ins, current, rng, *, count=True):
    replies = []
    for k, (proxy, fit_ins) in enumerate(ins):
        clip = float(fit_ins.config[CLIP_NORM])
        update, norm = clip_update(
            update_of_norm(current, _norms(k, clip), rng), clip
        )  # as a device
        new = [(a + u).astype(a.dtype) for a, u in zip(current, update, strict=True)]
        metrics = {CLIP_UNDER: int(norm <= clip)} if count else {}
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(new), 1, metrics)
        replies.append((proxy, res))
    return replies


def _secagg_replies(ins, current, rng):
    """Every result carries the unmasked mean, as Flower's SecAgg+ hands it to the strategy:
    the clipped updates and, last, each device's centred bit x B."""
    vectors, centred = [], 0.0
    for k, (_, fit_ins) in enumerate(ins):
        clip, bound = float(fit_ins.config[CLIP_NORM]), float(fit_ins.config[SECAGG_BOUND])
        update, norm = clip_update(update_of_norm(current, _norms(k, clip), rng), clip)
        bit = 0.5 if norm <= clip else -0.5
        centred += bit
        vectors.append([*update, np.array([bit * bound])])
    mean = ndarrays_to_parameters([np.mean(p, axis=0) for p in zip(*vectors, strict=True)])
    results = [(p, FitRes(Status(Code.OK, ""), mean, 1, {"secagg_clipped": 0})) for p, _ in ins]
    return results, centred


def _drive(strategy, rounds, secagg=False, count=True):
    clients = Clients()
    params = strategy.initialize_parameters(clients)
    rng = np.random.default_rng(0)
    told, centred_sums = [], []
    for server_round in range(1, rounds + 1):
        ins = strategy.configure_fit(server_round, params, clients)
        told.append({float(i.config[CLIP_NORM]) for _, i in ins})
        assert all(i.config[CLIP_BIT] == 1 for _, i in ins)
        current = parameters_to_ndarrays(params)
        if secagg:
            replies, centred = _secagg_replies(ins, current, rng)
            for stage in ("setup", "share-keys", "collect", "unmask"):
                strategy.secagg_stage(stage, len(ins), None)
        else:
            replies = _plaintext_replies(ins, current, rng, count=count)
            centred = sum(0.5 if k % 3 else -0.5 for k in range(len(ins)))
        centred_sums.append(centred)
        new, _ = strategy.aggregate_fit(server_round, replies, [])
        params = new if new is not None else params
        if strategy.configure_evaluate(server_round, params, clients):  # else: round finished
            strategy.aggregate_evaluate(server_round, [], [])
    return told, centred_sums


@pytest.mark.parametrize("secagg", [False, True], ids=["plaintext", "secagg"])
def test_the_clip_follows_the_noised_count_by_the_geometric_rule(tmp_path, secagg):
    changes = ADAPTIVE | ({"secagg": True} if secagg else {})
    config, strategy, run_dir = _strategy(tmp_path, **changes)
    told, centred_sums = _drive(strategy, 3, secagg=secagg)
    ledger = [e["user_level"] for e in read_jsonl(run_dir / "privacy_ledger.jsonl")]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    clip = 0.5
    for r, (unit, row, sent, centred) in enumerate(
        zip(ledger, rows, told, centred_sums, strict=True), start=1
    ):
        assert sent == {clip} and unit["clip_norm"] == row["clip_norm"] == clip
        cohort = unit["expected_cohort"]
        # the count's noise: one N(0, sigma_b^2) draw on the exact sum of centred bits
        noise = generator(config.seed, Stream.CLIP_COUNT_NOISE, r).normal(0.0, 1.0)
        fraction = (centred + noise) / cohort + 0.5
        assert unit["clip_fraction_under"] == pytest.approx(fraction, rel=1e-9)
        clip = min(next_clip_norm(clip, fraction, 0.5, 0.3), config.user_clip_ceiling)
        assert unit["next_clip_norm"] == pytest.approx(clip, rel=1e-12)
        z = unit["noise_multiplier"]
        assert unit["update_noise_multiplier"] == pytest.approx(update_noise_multiplier(z, 1.0))
        assert unit["noise_stddev"] == pytest.approx(
            unit["update_noise_multiplier"] * unit["clip_norm"] / cohort
        )
        # the accountant adds z per round: the pair (update, count) is one Gaussian of z
        assert unit["epsilon"] == pytest.approx(epsilon([(z, 0.5, r)], config.dp_user_delta))
    assert len({round(c, 9) for c in (u["clip_norm"] for u in ledger)}) == 3  # S moved each round


def test_a_reply_without_its_clip_count_is_rejected(tmp_path):
    _, strategy, run_dir = _strategy(tmp_path, **ADAPTIVE)
    _drive(strategy, 1, count=False)
    row = read_jsonl(run_dir / "metrics.jsonl")[0]
    assert row["fit_rejected"] == row["fit_sampled"] > 0
    assert "skipped" in row


def test_a_cohort_too_small_for_the_default_count_noise_is_refused_with_what_to_do(tmp_path):
    # 12 nodes at q = 0.5: expected cohort 6, default sigma_b = 6 / 20 = 0.3 <= z / 2 = 0.5
    changes = ADAPTIVE | {"dp_user_clip_count_stddev": 0.0}
    _, strategy, _ = _strategy(tmp_path, **changes)
    with pytest.raises(ConfigError, match="dp-user-clip-count-stddev"):
        _drive(strategy, 1)


def test_the_report_says_how_s_moved_and_that_the_same_epsilon_covers_the_count(tmp_path):
    from server.report import build_report

    _, strategy, run_dir = _strategy(tmp_path, **ADAPTIVE)
    _drive(strategy, 3)
    ledger = [e["user_level"] for e in read_jsonl(run_dir / "privacy_ledger.jsonl")]
    user = build_report(run_dir)["user_level"]
    assert user["clip_adaptive"] and user["clip_norm_first"] == 0.5
    assert user["clip_norm_next"] == ledger[-1]["next_clip_norm"]
    assert user["update_noise_multiplier"] == ledger[-1]["update_noise_multiplier"]
    caveats = " ".join(build_report(run_dir)["caveats"])
    assert "The clip norm S adapted every round" in caveats and "ceiling 5" in caveats
