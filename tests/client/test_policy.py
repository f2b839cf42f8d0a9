"""The device's own ε cap: parsed from its node config, and no run config can raise it."""

import numpy as np
import pytest

from client import training_round
from client.dp import plan_round
from client.policy import DevicePolicy, PolicyViolation
from shared.models import build_model, global_arrays
from shared.privacy import PrivacyHistory
from shared.split import split_for
from shared.wire import BUDGET_EXHAUSTED, TRAINED
from tests.conftest import small_config


def test_policy_from_node_config():
    assert DevicePolicy.from_node_config({"store-path": "/x"}) == DevicePolicy(0.0, 1e-5)
    got = DevicePolicy.from_node_config({"device-epsilon-cap": 4, "device-delta": 1e-6})
    assert got == DevicePolicy(4.0, 1e-6)


def test_a_deployed_device_keeps_its_top_list_unless_its_owner_opts_in():
    assert DevicePolicy.from_node_config({"partition-id": 3}).share_top_list
    deployed = DevicePolicy.from_node_config({"store-path": "/x"}, deployed=True)
    assert not deployed.share_top_list
    opted = DevicePolicy.from_node_config({"share-top-list": True}, deployed=True)
    assert opted.share_top_list
    with pytest.raises(ValueError, match="share-top-list must be true or false"):
        DevicePolicy.from_node_config({"share-top-list": "yes"}, deployed=True)


@pytest.mark.parametrize(
    ("node_config", "message"),
    [
        ({"device-epsilon-cap": "eight"}, "must be a number"),
        ({"device-epsilon-cap": True}, "must be a number"),
        ({"device-epsilon-cap": -1.0}, "0 \\(none\\) or positive"),
        ({"device-epsilon-cap": 8.0, "device-delta": 1.0}, "must be in \\(0, 1\\)"),
        ({"device-delta": 1e-6}, "without device-epsilon-cap"),
    ],
)
def test_bad_policy_is_refused_with_reason(node_config, message):
    with pytest.raises(ValueError, match=message):
        DevicePolicy.from_node_config(node_config)


def _setup(**changes):
    config = small_config(
        dp_interaction=True, dp_noise_multiplier=1.0, local_epochs=2, batch_size=8, **changes
    )
    split = split_for(config)
    data = split.user_data(3)
    model = build_model(config.model, 1, split.num_items, dim=8, mlp_layers=(16, 8), seed=0)
    return config, data, global_arrays(model)


def test_device_cap_binds_although_the_run_sets_none():
    config, data, params = _setup(dp_epsilon_cap=0.0)  # the server promises no limit at all
    plan = plan_round(config, len(data.train_items))
    delta = 1e-6  # the device's own δ, stricter than the run's 1e-5
    one = plan.history_after(PrivacyHistory()).epsilon(delta)
    two = plan.history_after(plan.history_after(PrivacyHistory())).epsilon(delta)
    policy = DevicePolicy(epsilon_cap=(one + two) / 2, delta=delta)
    first = training_round.train(config, data, 3, 1, params, None, PrivacyHistory(), policy)
    assert first.status == TRAINED
    second = training_round.train(
        config, data, 3, 2, first.global_arrays, first.private, first.history, policy
    )
    assert second.status == BUDGET_EXHAUSTED and second.history == first.history
    for sent, received in zip(second.global_arrays, first.global_arrays, strict=True):
        np.testing.assert_array_equal(sent, received)
    # At the run's looser δ the same history is under the cap: the device's δ is what counts.
    assert plan.history_after(first.history).epsilon(config.dp_delta) < policy.epsilon_cap < two


def test_device_cap_refuses_training_without_dp():
    config, data, params = _setup()
    plain = small_config()
    with pytest.raises(PolicyViolation, match="dp-interaction = false.*device-epsilon-cap"):
        training_round.train(plain, data, 3, 1, params, None, PrivacyHistory(), DevicePolicy(8.0))
    assert (
        training_round.train(plain, data, 3, 1, params, None).status == TRAINED
    )  # no policy: allowed


def test_deployed_device_refuses_noise_seeded_by_the_run():
    config, data, params = _setup(dp_reproducible_noise=True)
    deployed = DevicePolicy.from_node_config({"store-path": "/x"}, deployed=True)
    with pytest.raises(PolicyViolation, match="dp-reproducible-noise"):
        training_round.train(config, data, 3, 1, params, None, PrivacyHistory(), deployed)
    simulated = DevicePolicy.from_node_config({"partition-id": 3})
    assert (
        training_round.train(config, data, 3, 1, params, None, PrivacyHistory(), simulated).epsilon
        > 0
    )


def test_deployed_device_refuses_the_test_fault_hook():
    deployed = DevicePolicy.from_node_config({"store-path": "/x"}, deployed=True)
    with pytest.raises(PolicyViolation, match="test-secagg-fault = '1:collect:0'.*SecAgg"):
        deployed.check_test_faults("1:collect:0")
    deployed.check_test_faults("")  # not set: nothing to refuse
    DevicePolicy.from_node_config({"partition-id": 3}).check_test_faults("1:collect:0")


DEVICE_NOISE = {
    "dp_interaction": True,
    "dp_user": True,
    "secagg": True,
    "dp_noise_source": "devices",
}


@pytest.mark.parametrize("mu", [None, 0, 0.0, -1.0, float("nan"), float("inf"), "1e12", True])
def test_a_device_with_a_cap_refuses_a_round_that_asks_for_no_noise(mu):
    policy = DevicePolicy.from_node_config({"device-epsilon-cap": 8.0})
    config = small_config(**DEVICE_NOISE)
    policy.check_run(config)  # the run itself is acceptable: DP-SGD and device noise
    with pytest.raises(PolicyViolation, match="device-epsilon-cap=8.*declines the round"):
        policy.check_device_noise(config, mu)
    policy.check_device_noise(config, 2.0e12)  # a real share of noise is accepted
    with pytest.raises(PolicyViolation, match="no user-level ε holds"):
        DevicePolicy().check_device_noise(config, mu)  # without a cap too


def test_noise_asked_outside_a_device_noise_run_and_seeded_noise_are_refused():
    with pytest.raises(PolicyViolation, match="inconsistent"):
        DevicePolicy().check_device_noise(small_config(dp_user=True), 1.0)
    DevicePolicy().check_device_noise(small_config(dp_user=True), None)
    seeded = small_config(**DEVICE_NOISE, dp_reproducible_noise=True)
    with pytest.raises(PolicyViolation, match="seeded from the run's seed"):
        DevicePolicy(deployed=True).check_run(seeded)
    DevicePolicy().check_run(seeded)  # a simulated device may (research runs)
