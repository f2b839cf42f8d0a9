"""The device SDK, and the deployed ClientApp reading from and writing to the device store."""

import json
import logging
import math
import os
import secrets
import time

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.common import EvaluateIns, FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import (
    evaluateins_to_recorddict,
    fitins_to_recorddict,
    recorddict_to_evaluateres,
    recorddict_to_fitres,
)

from client.app import app
from client.device import RUN_CONFIG, UNPROTECTED, Device, ModelNotReady
from client.policy import DevicePolicy, PolicyViolation
from client.state import HISTORY_RECORD, PRIVATE_RECORD
from client.store_adapter import StoreRun, read_key_file, store_key
from shared.models import build_model, global_arrays
from shared.privacy import PrivacyHistory
from shared.wire import DIVERSITY10, DP_STATUS, EVAL_METRICS, LOSS, SERVER_ROUND, TRAINED
from tests.client.test_app import task_identity  # noqa: F401  (fixture: act as a task)
from tests.conftest import small_config

NUM_ITEMS = 200


def _config(**changes):
    return small_config(num_items=NUM_ITEMS, **changes)


def _global(config):
    model = build_model(
        config.model,
        1,
        NUM_ITEMS,
        dim=config.embedding_dim,
        mlp_layers=config.layers,
        seed=config.seed,
    )
    return global_arrays(model)


@pytest.fixture
def device(tmp_path):
    with Device.open(tmp_path / "store" / "device.db", secrets.token_bytes(32)) as device:
        yield device


def test_record_validates_its_arguments(device):
    device._num_items = NUM_ITEMS
    for bad, message in [
        ("5", "integer catalogue index"),
        (True, "integer catalogue index"),
        (-1, "outside the catalogue"),
        (NUM_ITEMS, r"outside the catalogue: use an index in 0\.\.199"),
    ]:
        with pytest.raises(ValueError, match=message):
            device.record(bad)
    with pytest.raises(ValueError, match="rating must be a finite"):
        device.record(3, rating=math.nan)
    with pytest.raises(ValueError, match="timestamp must be finite"):
        device.record(3, timestamp=math.inf)
    assert device.interactions() == []  # nothing half-written
    assert device.record(3) == 1 and device.interactions()[0].timestamp > 1.6e9  # now


def test_recommend_needs_a_model_then_ranks_unseen_items_with_cold_start(device):
    for t, item in enumerate([4, 9, 11]):
        device.record(item, timestamp=t)
    with pytest.raises(ModelNotReady, match="no global model on this device yet"):
        device.recommend(5)
    config = _config()
    device.save_global(config, _global(config))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        device.recommend(0)

    top = device.recommend(10)
    assert device.last_fit  # no embedding yet: fitted locally, no server
    assert len(top) == 10 and not {4, 9, 11} & {r.item for r in top}
    scores = [r.score for r in top]
    assert scores == sorted(scores, reverse=True)
    assert device.recommend(10) == top and not device.last_fit  # cached: nothing changed
    everything = device.recommend(NUM_ITEMS)
    assert len(everything) == NUM_ITEMS - 3  # all unseen items, none seen

    device.record(top[0].item, timestamp=10)  # a new interaction: re-fit, and it is excluded
    again = device.recommend(10)
    assert device.last_fit and top[0].item not in {r.item for r in again}


def test_training_data_is_leave_one_out_over_the_device(device, caplog):
    for item, t in [(7, 5.0), (3, 1.0), (7, 9.0), (12, 8.0), (5, 9.0)]:
        device.record(item, timestamp=t)
    data = device.training_data(NUM_ITEMS, eval_negatives=20)
    assert data.test_item in {5, 7}  # the latest (t=9): a tie, drawn as shared/split.py does
    other = ({5, 7} - {data.test_item}).pop()
    assert list(data.train_items) == [3, 12, other]  # each item once, by time
    assert device.training_data(NUM_ITEMS, 20).test_item == data.test_item  # fixed per device
    assert len(set(data.eval_negatives)) == 20
    assert not {3, 5, 7, 12} & set(data.eval_negatives.tolist())
    np.testing.assert_array_equal(
        device.training_data(NUM_ITEMS, 20).eval_negatives, data.eval_negatives
    )  # fixed per device
    # Items outside the catalogue (recorded before it was known) are left out, with a warning.
    with caplog.at_level(logging.WARNING, logger="client.device"):
        small = device.training_data(10, 5)
    assert small.test_item == data.test_item and list(small.train_items) == [3, other]
    assert "outside the catalogue of 10 items" in caplog.text and "record ids 4" in caplog.text


def test_tied_latest_items_are_a_uniform_draw_and_a_unique_latest_is_always_held_out(tmp_path):
    # The largest id always winning the tie (the old rule) would give {7} here; a draw per device
    # (as leave_one_out draws per user) gives each tied item to some of 30 devices.
    held, unique = set(), set()
    for n in range(30):
        with Device.open(tmp_path / f"d{n}.db", secrets.token_bytes(32)) as device:
            for item, t in [(3, 1.0), (5, 9.0), (7, 9.0), (2, 9.0)]:
                device.record(item, timestamp=t)
            held.add(device.training_data(NUM_ITEMS, 5).test_item)
            device.record(4, timestamp=10.0)
            unique.add(device.training_data(NUM_ITEMS, 5).test_item)
    assert held == {2, 5, 7} and unique == {4}


def test_key_sources_are_checked(tmp_path):
    store = tmp_path / "data" / "device.db"
    store.parent.mkdir()
    key = secrets.token_bytes(32)
    good = tmp_path / "keys" / "k"
    good.parent.mkdir()
    good.write_text(key.hex())
    os.chmod(good, 0o600)
    assert read_key_file(good, store) == key
    os.chmod(good, 0o644)
    with pytest.raises(ValueError, match="readable by others: chmod 600"):
        read_key_file(good, store)
    beside = store.parent / "k"
    beside.write_text(key.hex())
    os.chmod(beside, 0o600)
    with pytest.raises(ValueError, match="in the store's directory"):
        read_key_file(beside, store)
    os.chmod(good, 0o600)
    with pytest.raises(ValueError, match="exactly one of store-key-file"):
        store_key({"store-path": str(store)})
    os.environ["CONFIDE_TEST_KEY"] = "zz"
    with pytest.raises(ValueError, match="64 hex digits"):
        store_key({"store-path": str(store), "store-key-env": "CONFIDE_TEST_KEY"})
    os.environ["CONFIDE_TEST_KEY"] = key.hex()
    assert store_key({"store-path": str(store), "store-key-env": "CONFIDE_TEST_KEY"}) == key
    del os.environ["CONFIDE_TEST_KEY"]


def _deployed(tmp_path, items):
    store, key_file = tmp_path / "data" / "device.db", tmp_path / "keys" / "device.key"
    key_file.parent.mkdir(parents=True)
    key = secrets.token_bytes(32)
    key_file.write_text(key.hex())
    os.chmod(key_file, 0o600)
    with Device.open(store, key) as device:
        for t, item in enumerate(items):
            device.record(item, timestamp=t)
    return store, key, {"store-path": str(store), "store-key-file": str(key_file)}


def _send(config, node_config, state, message_type, content, run_id=1):
    context = Context(
        run_id=run_id,
        node_id=7,
        node_config=node_config,
        state=state,
        run_config=config.to_mapping(),
    )
    reply = app(Message(content=content, dst_node_id=7, message_type=message_type), context)
    assert not reply.has_error(), reply.error
    return reply.content


def test_deployed_client_app_trains_from_the_store_and_keeps_state_there(tmp_path):
    config = _config(dp_interaction=True, dp_noise_multiplier=1.0, batch_size=8)
    store, key, node_config = _deployed(tmp_path, [3, 8, 15, 16, 23, 42, 4, 99])
    arrays = _global(config)

    fit = fitins_to_recorddict(FitIns(ndarrays_to_parameters(arrays), {SERVER_ROUND: 1}), True)
    res = recorddict_to_fitres(_send(config, node_config, RecordDict(), "train", fit), True)
    assert res.num_examples == 1  # under DP the device's count (7 trained on) stays private
    with Device.open(store, key) as device:
        first = device.privacy_budget()
        assert first.epsilon > 0 and first.steps == 1 and first.delta == config.dp_delta
        assert device.private_embedding() is not None
        assert all(np.array_equal(a, b) for a, b in zip(device.global_model(), arrays, strict=True))

    # A fresh process with an empty state (a later round, or a later run): the store restores
    # the embedding and the accountant, so ε keeps growing instead of starting over.
    state = RecordDict()
    fit = fitins_to_recorddict(FitIns(res.parameters, {SERVER_ROUND: 2}), True)
    trained = recorddict_to_fitres(_send(config, node_config, state, "train", fit, run_id=2), True)
    assert {PRIVATE_RECORD, HISTORY_RECORD} <= set(state.array_records)
    with Device.open(store, key) as device:
        assert device.privacy_budget().steps == 2
        assert device.privacy_budget().epsilon > first.epsilon

    final = parameters_to_ndarrays(trained.parameters)
    ins = evaluateins_to_recorddict(
        EvaluateIns(ndarrays_to_parameters(final), {SERVER_ROUND: 2}), True
    )
    res = recorddict_to_evaluateres(_send(config, node_config, state, "evaluate", ins))
    # Its own list's diversity, but not the list: its node config did not opt in to share it.
    assert set(res.metrics) == set(EVAL_METRICS) | {DIVERSITY10}
    with Device.open(store, key) as device:  # the last model sent is what the device ranks with
        assert all(np.array_equal(a, b) for a, b in zip(device.global_model(), final, strict=True))
        assert len(device.recommend(5)) == 5

    with Device.open(store, key) as device:
        device.forget(device.device_id)
        device.record(5, timestamp=1.0)
        device.record(6, timestamp=2.0)
    state_run = StoreRun.open(config, node_config, run_id=3)
    forgotten = state_run.state
    assert forgotten.private_embedding() is None and forgotten.privacy_history().steps == 0


def test_deployed_training_without_dp_makes_epsilon_infinite(tmp_path):
    config = _config()
    store, key, node_config = _deployed(tmp_path, [3, 8, 15])
    fit = fitins_to_recorddict(
        FitIns(ndarrays_to_parameters(_global(config)), {SERVER_ROUND: 1}), True
    )
    _send(config, node_config, RecordDict(), "train", fit)
    with Device.open(store, key) as device:
        assert device.privacy_budget().epsilon == math.inf


def test_deployed_needs_the_catalogue_size_and_the_store(tmp_path):
    _, _, node_config = _deployed(tmp_path, [1, 2])
    with pytest.raises(ValueError, match="num-items is 0"):
        StoreRun.open(small_config(), node_config, run_id=1)
    with pytest.raises(ValueError, match="does not exist"):
        StoreRun.open(_config(), {**node_config, "store-path": str(tmp_path / "nope.db")}, 1)
    _, _, one = _deployed(tmp_path / "b", [1])
    with pytest.raises(ValueError, match="needs at least 2"):
        StoreRun.open(_config(), one, run_id=1)


def test_node_config_without_store_or_partition_is_explained():
    content = fitins_to_recorddict(
        FitIns(ndarrays_to_parameters(_global(_config())), {SERVER_ROUND: 1}), True
    )
    with pytest.raises(ValueError, match="neither store-path .* nor partition-id"):
        _send(_config(), {}, RecordDict(), "train", content)


def test_device_policy_refuses_a_run_without_dp_and_keeps_the_store_as_it_was(tmp_path):
    """The server's run config cannot talk a capped device into non-private training."""
    store, key, node_config = _deployed(tmp_path, [3, 8, 15])
    capped = {**node_config, "device-epsilon-cap": 8.0}
    config = _config()  # dp-interaction = false
    fit = fitins_to_recorddict(
        FitIns(ndarrays_to_parameters(_global(config)), {SERVER_ROUND: 1}), True
    )
    context = Context(
        run_id=1, node_id=7, node_config=capped, state=RecordDict(), run_config=config.to_mapping()
    )
    message = Message(content=fit, dst_node_id=7, message_type="train")
    with pytest.raises(PolicyViolation, match="device-epsilon-cap"):  # Flower replies an error
        app(message, context)
    with Device.open(store, key) as device:
        assert device.privacy_budget().epsilon == 0.0  # no unprotected round was counted
        assert device.private_embedding() is None and device.global_model() is None
    # Under DP the same device trains.
    dp = _config(dp_interaction=True, dp_noise_multiplier=1.0, batch_size=8)
    fit = fitins_to_recorddict(FitIns(ndarrays_to_parameters(_global(dp)), {SERVER_ROUND: 1}), True)
    res = recorddict_to_fitres(_send(dp, capped, RecordDict(), "train", fit), True)
    assert res.metrics[DP_STATUS] == TRAINED


def test_deployed_device_refuses_the_test_fault_hook_and_keeps_the_store_as_it_was(tmp_path):
    """A server must not be able to make a deployed device drop out on command (client.mods)."""
    store, key, node_config = _deployed(tmp_path, [3, 8, 15])
    files = sorted(store.parent.iterdir())
    before = store.read_bytes()
    config = _config(test_secagg_fault="1:collect:0")
    params = ndarrays_to_parameters(_global(config))
    messages = {
        "train": fitins_to_recorddict(FitIns(params, {SERVER_ROUND: 1}), True),
        "evaluate": evaluateins_to_recorddict(EvaluateIns(params, {SERVER_ROUND: 1}), True),
    }
    for message_type, content in messages.items():
        state = RecordDict()
        context = Context(
            run_id=1,
            node_id=7,
            node_config=node_config,
            state=state,
            run_config=config.to_mapping(),
        )
        message = Message(content=content, dst_node_id=7, message_type=message_type)
        with pytest.raises(PolicyViolation, match="test-secagg-fault"):  # Flower replies an error
            app(message, context)
        assert not state.array_records  # nothing restored, nothing trained
    assert sorted(store.parent.iterdir()) == files and store.read_bytes() == before
    # The same run without the hook trains.
    res = recorddict_to_fitres(
        _send(_config(), node_config, RecordDict(), "train", messages["train"]), True
    )
    assert set(res.metrics) == {LOSS}


def test_a_store_written_by_an_older_version_still_opens(device):
    """Its saved run config lacks keys added since: they take their defaults."""
    config = _config(csv_delimiter=";", dataset="csv", data_dir="/x.csv")
    device.save_global(config, _global(config))
    older = {k: v for k, v in config.to_mapping().items() if k != "csv-header"}
    device.store.put(RUN_CONFIG, json.dumps(older).encode())
    restored = device.run_config()
    assert restored.csv_header == "auto" and restored.csv_delimiter == ";"
    assert device.status()["num_items"] == NUM_ITEMS


def test_timestamps_are_seconds_within_a_day_of_the_clock(device):
    now = time.time()
    for bad, message in [
        (now * 1000, "looks like milliseconds .*Date.now\\(\\) / 1000"),
        (now + 2 * 86_400, "more than a day in the future"),
        (-1.0, "before 1970"),
        (math.nan, "timestamp must be finite"),
    ]:
        with pytest.raises(ValueError, match=message):
            device.record(3, timestamp=bad)
    assert device.interactions() == []
    device.record(3, timestamp=0.0)
    device.record(4, timestamp=now + 3600)  # a clock a little behind the app's: accepted
    assert [i.timestamp for i in device.interactions()] == [0.0, now + 3600]


def test_before_the_catalogue_is_known_any_index_is_kept_and_training_leaves_it_out(device):
    device.record(2**63 - 1, timestamp=1.0)  # no run yet: nothing to check it against
    device.record(5, timestamp=2.0)
    device.record(6, timestamp=3.0)
    config = _config()
    device.save_global(config, _global(config))  # the first model: the catalogue is known now
    status = device.status()
    assert status["num_items"] == NUM_ITEMS and status["outside_catalogue"] == 1
    data = device.training_data(NUM_ITEMS, 5)  # trains on what fits instead of failing
    assert list(data.train_items) == [5] and data.test_item == 6
    with pytest.raises(ValueError, match="outside the catalogue"):
        device.record(2**63 - 1)
    device.delete_interaction(1)
    assert device.status()["outside_catalogue"] == 0


def test_privacy_budget_reports_the_cap_that_binds(device):
    history = PrivacyHistory().add(1.0, 0.5, 10)
    device.save_training(None, history)
    run = _config(dp_interaction=True, dp_epsilon_cap=20.0, dp_delta=1e-5)
    device.save_global(run, _global(run))
    eps_run, eps_own = history.epsilon(1e-5), history.epsilon(1e-7)
    budget = device.privacy_budget()
    assert (budget.cap, budget.delta, budget.cap_source) == (20.0, 1e-5, "run")
    assert budget.epsilon == pytest.approx(eps_run)

    device.save_policy(DevicePolicy(epsilon_cap=8.0, delta=1e-7))  # the node config's own
    budget = device.privacy_budget()
    assert (budget.cap, budget.delta, budget.cap_source) == (8.0, 1e-7, "device")
    assert budget.epsilon == pytest.approx(eps_own) and eps_own > eps_run
    assert budget.remaining == pytest.approx(max(0.0, 8.0 - eps_own))
    status = device.status()
    assert status["epsilon_cap"] == 8.0 and status["cap_source"] == "device"

    device.save_policy(DevicePolicy(epsilon_cap=100.0, delta=1e-7))  # more left than the run's
    assert device.privacy_budget().cap_source == "run"
    device.save_policy(DevicePolicy())  # the node config dropped its cap
    assert device.privacy_budget().cap_source == "run"
    device.store.put(UNPROTECTED, (1).to_bytes(8, "little"))
    assert device.privacy_budget().epsilon == math.inf


def test_forget_needs_the_device_id(device):
    device.record(3, timestamp=1.0)
    for wrong in (True, "no", "", device.device_id[:-1]):
        with pytest.raises(ValueError, match="send this device's id"):
            device.forget(wrong)
    assert len(device.interactions()) == 1
    device.forget(device.device_id)
    assert device.interactions() == []


def test_the_deployed_client_app_records_the_devices_own_policy(tmp_path):
    store, key, node_config = _deployed(tmp_path, [3, 8, 15])
    own = {**node_config, "device-epsilon-cap": 6.0, "device-delta": 1e-6}
    StoreRun.open(_config(), own, run_id=1)
    with Device.open(store, key) as device:
        budget = device.privacy_budget()
        assert (budget.cap, budget.delta, budget.cap_source) == (6.0, 1e-6, "device")
    StoreRun.open(_config(), node_config, run_id=2)  # the cap was removed from the node config
    with Device.open(store, key) as device:
        assert device.privacy_budget().cap is None
