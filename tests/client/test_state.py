"""The device-state interface: Flower's node state, several users in one, and the store's truth."""

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from client.device import Device
from client.state import HISTORY_RECORD, PRIVATE_RECORD, ContextState
from client.store_adapter import StoreRun
from client.training_round import TrainResult
from shared.privacy import PrivacyHistory
from tests.client.test_device import _config, _deployed

SENT = [np.zeros(3, np.float32)]


def _result(value: float, steps: int = 2) -> TrainResult:
    return TrainResult(
        global_arrays=SENT,
        private={"user_gmf.weight": np.full((1, 4), value, np.float32)},
        loss=0.1,
        num_examples=3,
        history=PrivacyHistory().add(1.0, 0.5, steps),
    )


def test_context_state_starts_empty_and_keeps_what_a_fit_left():
    state = ContextState(RecordDict())
    assert state.private_embedding() is None and state.privacy_history() == PrivacyHistory()
    state.save_fit(_result(2.0), SENT)
    state.save_model(SENT)  # the node receives the model every round: nothing to keep
    assert set(state.records.array_records) == {PRIVATE_RECORD, HISTORY_RECORD}
    np.testing.assert_array_equal(state.private_embedding()["user_gmf.weight"], np.full((1, 4), 2))
    assert state.privacy_history() == _result(2.0).history


def test_users_sharing_one_node_state_keep_their_own():
    """What a cohort engine (one node, many users) needs: one state per user, no crosstalk."""
    records = RecordDict()
    alice = ContextState(records, "alice/private", "alice/history")
    bob = ContextState(records, "bob/private", "bob/history")
    alice.save_fit(_result(1.0, steps=2), SENT)
    assert bob.private_embedding() is None and bob.privacy_history().steps == 0
    bob.save_fit(_result(5.0, steps=7), SENT)
    assert alice.private_embedding()["user_gmf.weight"][0, 0] == 1.0
    assert (alice.privacy_history().steps, bob.privacy_history().steps) == (2, 7)


def test_load_replaces_and_drops_what_the_source_lacks():
    state = ContextState(RecordDict())
    state.save_fit(_result(2.0), SENT)
    state.load(None, PrivacyHistory())
    assert not state.records.array_records
    state.load({"user_gmf.weight": np.ones((1, 4))}, PrivacyHistory().add(1.0, 0.5, 3))
    assert state.privacy_history().steps == 3 and state.private_embedding() is not None


def test_the_store_is_the_source_of_truth_and_the_node_state_follows_it(tmp_path):
    config = _config(dp_interaction=True, dp_noise_multiplier=1.0)
    store, key, node_config = _deployed(tmp_path, [3, 8, 15])
    node = RecordDict()  # stale records in Flower's node state, which the store does not have
    node.array_records[PRIVATE_RECORD] = ArrayRecord(array_dict={"x": Array(np.ones(2))})
    run = StoreRun.open(config, node_config, run_id=1, node_state=node)
    assert not node.array_records and run.state.private_embedding() is None

    run.state.save_fit(_result(3.0), SENT)  # written to the store and to the node state
    assert set(node.array_records) == {PRIVATE_RECORD, HISTORY_RECORD}
    with Device.open(store, key) as device:
        assert device.privacy_history() == _result(3.0).history
        assert all(np.array_equal(a, b) for a, b in zip(device.global_model(), SENT, strict=True))

    again = StoreRun.open(config, node_config, run_id=2)  # a fresh process, a fresh node state
    assert again.state.private_embedding()["user_gmf.weight"][0, 0] == 3.0
    assert again.state.privacy_history() == _result(3.0).history
