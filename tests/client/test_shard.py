"""A shard node's replies: the sum of what its users' own devices would send, and nothing else."""

from pathlib import Path

import numpy as np
import pytest

from client import training_round
from client.app import DeviceClient
from client.policy import DevicePolicy
from client.shard import ShardClient
from client.state import FileState
from shared.models import global_arrays
from shared.privacy import clip_update
from shared.split import split_for
from shared.wire import (
    CLIP_NORM,
    LOSS,
    PARTITION_ID,
    SERVER_ROUND,
    SHARD_DECLINED,
    SHARD_EVAL,
    SHARD_TOP10,
    SHARD_TRAINED,
    SHARD_USERS,
    SHARD_WEIGHT,
)
from tests.conftest import small_config


def _users(ids):
    return np.asarray(ids, dtype=np.int64).tobytes()


@pytest.mark.parametrize("dp_user", [False, True])
def test_a_shard_replies_with_the_sum_of_its_users_updates(tmp_path, dp_user):
    changes = {"dp_user": True, "dp_user_clip_norm": 0.05} if dp_user else {}
    config = small_config(out_dir=str(tmp_path), cohort_size=8, local_epochs=1, **changes)
    split = split_for(config)
    params = global_arrays(config.build_model(split.num_items))
    shard = ShardClient(config, split, partition=1, policy=DevicePolicy())
    assert shard.get_properties({}) == {PARTITION_ID: 1}
    instructions = {SERVER_ROUND: 1, SHARD_USERS: _users([9, 12, 15])}
    if dp_user:
        instructions[CLIP_NORM] = 0.05
    total, examples, metrics = shard.fit(params, instructions)

    expected = [np.zeros_like(p, dtype=np.float64) for p in params]
    weight = 0.0
    for user in (9, 12, 15):
        alone = DeviceClient(
            config, split.user_data(user), user, FileState(tmp_path / f"alone-{user}.npz")
        )
        new, n, _ = alone.fit(params, {SERVER_ROUND: 1})
        update = [a.astype(np.float64) - p for a, p in zip(new, params, strict=True)]
        if dp_user:  # what the device's clipping mod does to its update
            update = clip_update(update, 0.05)[0]
        w = 1.0 if dp_user else n
        for acc, part in zip(expected, update, strict=True):
            acc += w * part
        weight += w
    for got, want in zip(total, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    assert metrics[SHARD_TRAINED] == 3 and metrics[SHARD_WEIGHT] == pytest.approx(weight)
    assert metrics[SHARD_DECLINED] == b""
    assert (LOSS in metrics) is (not dp_user)  # a loss only where a device would send one
    # each user's state is its own file, as a simulated device's is
    for user in (9, 12, 15):
        assert (Path(config.out_dir) / "devices" / f"user-{user}.npz").exists()


def test_a_shard_refuses_users_it_does_not_play(tmp_path):
    config = small_config(out_dir=str(tmp_path), cohort_size=8)
    shard = ShardClient(config, split_for(config), partition=0, policy=DevicePolicy())
    params = global_arrays(config.build_model(split_for(config).num_items))
    with pytest.raises(ValueError, match=r"named users \[8\] for shard 0, which plays users 0..7"):
        shard.fit(params, {SERVER_ROUND: 1, SHARD_USERS: _users([3, 8])})
    with pytest.raises(ValueError, match="int64 bytes"):
        shard.fit(params, {SERVER_ROUND: 1, SHARD_USERS: "3,8"})


def test_a_shard_evaluates_each_drawn_user_as_its_device_would(tmp_path):
    config = small_config(out_dir=str(tmp_path), cohort_size=8, personalize_epochs=0)
    split = split_for(config)
    params = global_arrays(config.build_model(split.num_items))
    shard = ShardClient(config, split, partition=0, policy=DevicePolicy())
    loss, count, metrics = shard.evaluate(params, {SERVER_ROUND: 1, SHARD_USERS: _users([2, 5])})
    rows = np.frombuffer(metrics[SHARD_EVAL]).reshape(2, -1)
    tops = np.frombuffer(metrics[SHARD_TOP10], dtype=np.int64).reshape(2, 10)
    for row, top, user in zip(rows, tops, (2, 5), strict=True):
        alone = training_round.evaluate(config, split.user_data(user), user, params, None)
        assert row[0] == pytest.approx(alone.loss)
        assert row[1] == alone.metrics["hr10"] and row[3] == alone.metrics["full_hr10"]
        np.testing.assert_array_equal(top, alone.top)
    assert count == 2 and loss == pytest.approx(rows[:, 0].mean())


def test_under_adaptive_clipping_a_shard_counts_its_users_within_s(tmp_path):
    from shared.wire import CLIP_BIT, CLIP_UNDER

    config = small_config(out_dir=str(tmp_path), cohort_size=8, local_epochs=1, dp_user=True)
    split = split_for(config)
    params = global_arrays(config.build_model(split.num_items))
    norms = []
    for user in (9, 12, 15):  # each user's update norm, as its own device would see it
        alone = DeviceClient(
            config, split.user_data(user), user, FileState(tmp_path / f"alone-{user}.npz")
        )
        new, _, _ = alone.fit(params, {SERVER_ROUND: 1})
        update = [a.astype(np.float64) - p for a, p in zip(new, params, strict=True)]
        norms.append(clip_update(update, 1e9)[1])
    low, mid, _ = sorted(norms)
    clip = (low + mid) / 2  # exactly one user within S
    shard = ShardClient(config, split, partition=1, policy=DevicePolicy())
    instructions = {SERVER_ROUND: 1, SHARD_USERS: _users([9, 12, 15]), CLIP_NORM: clip}
    _, _, metrics = shard.fit(params, instructions | {CLIP_BIT: 1})
    assert metrics[CLIP_UNDER] == 1
    assert CLIP_UNDER not in shard.fit(params, instructions)[2]  # asked for no bits: none


def test_under_device_noise_each_user_of_a_shard_adds_its_own_share_in_secaggs_integers(tmp_path):
    from client.noise import noised_for_secagg
    from shared.secagg import plan_device_noise
    from shared.streams import Stream, generator
    from shared.wire import NOISE_CLAMPED, NOISE_MU, NOISE_RANGES

    noise = {"dp_noise_source": "devices", "dp_reproducible_noise": True, "dp_user_clip_norm": 0.05}
    config = small_config(
        out_dir=str(tmp_path), cohort_size=8, local_epochs=1, dp_user=True, **noise
    )
    split = split_for(config)
    params = global_arrays(config.build_model(split.num_items))
    d = sum(p.size for p in params)
    plan = plan_device_noise(config.noise_quantizer_plan(), d, 1.0, 3, rounds=3)
    c, t = plan.secagg.clipping_range, plan.secagg.quantization_range
    ranges = np.asarray([c, t], dtype=np.float64).tobytes()
    instructions = {SERVER_ROUND: 1, SHARD_USERS: _users([9, 12, 15]), CLIP_NORM: 0.05}
    shard = ShardClient(config, split, partition=1, policy=DevicePolicy())
    noised = instructions | {NOISE_MU: plan.mu_device, NOISE_RANGES: ranges}
    total, _, metrics = shard.fit(params, noised)
    assert metrics[NOISE_CLAMPED] == 0 and metrics[SHARD_TRAINED] == 3
    # the sum of what each user's device hands SecAgg+: its clipped update, rounded and noised
    # in the integers from the device's own noise stream
    expected = [np.zeros_like(p, dtype=np.float64) for p in params]
    clipped = [np.zeros_like(p, dtype=np.float64) for p in params]
    for user in (9, 12, 15):
        alone = DeviceClient(
            config, split.user_data(user), user, FileState(tmp_path / f"alone-{user}.npz")
        )
        new, _, _ = alone.fit(params, {SERVER_ROUND: 1})
        update = clip_update(
            [a.astype(np.float64) - p for a, p in zip(new, params, strict=True)], 0.05
        )[0]
        rng = generator(config.seed, Stream.DEVICE_NOISE, user + 1, 1)
        sent, _ = noised_for_secagg(update, 0.05, c, t, plan.mu_device, rng)
        for acc, part, clip_acc, u in zip(expected, sent, clipped, update, strict=True):
            acc += part
            clip_acc += u
    for got, want in zip(total, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5 + 3 * 2 * c / t, rtol=0)  # float32 training
    # and the noise is there, of the planned size: std sqrt(3 mu_device) / scale per coordinate
    diff = np.concatenate([(g - u).ravel() for g, u in zip(total, clipped, strict=True)])
    assert diff.std() == pytest.approx(plan.float_stddev(3), rel=0.1)
    # a device-noise round that names no ranges cannot be placed, and "no noise" is refused
    with pytest.raises(ValueError, match="must name SecAgg"):
        shard.fit(params, instructions | {NOISE_MU: plan.mu_device})
    with pytest.raises(Exception, match="noise variance"):
        shard.fit(params, instructions | {NOISE_RANGES: ranges})
