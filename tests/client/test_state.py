"""The device-state interface: Flower's node state, several users in one, and the store's truth."""

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from client.device import Device
from client.state import HISTORY_RECORD, PRIVATE_RECORD, ContextState, FileState
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


def test_file_state_persists_each_simulated_device_across_runs(tmp_path):
    """What a resumed simulation needs: a new Flower run finds the device's embedding and ε."""
    path = tmp_path / "devices" / "user-3.npz"
    assert FileState(path).private_embedding() is None
    FileState(path).at_round(1).save_fit(_result(1.0), SENT)
    FileState(path).at_round(2).save_fit(_result(2.0, steps=5), SENT)
    again = FileState(path).at_round(3)  # a new process, a new run: only the file is shared
    np.testing.assert_array_equal(again.private_embedding()["user_gmf.weight"], np.full((1, 4), 2))
    assert again.privacy_history() == _result(2.0, steps=5).history
    assert not list(path.parent.glob(".*.tmp"))  # written via a temporary, then renamed


def test_file_state_reruns_a_round_from_where_its_first_attempt_started(tmp_path):
    """A run stopped mid-round 2 after this device saved round 2: the rerun must not start from
    (and count the ε of) the first attempt."""
    path = tmp_path / "user-0.npz"
    FileState(path).at_round(1).save_fit(_result(1.0, steps=2), SENT)
    FileState(path).at_round(2).save_fit(_result(2.0, steps=4), SENT)  # then the server died
    rerun = FileState(path).at_round(2)
    np.testing.assert_array_equal(rerun.private_embedding()["user_gmf.weight"], np.full((1, 4), 1))
    assert rerun.privacy_history() == _result(1.0, steps=2).history
    rerun.save_fit(_result(3.0, steps=4), SENT)
    assert FileState(path).at_round(2).privacy_history() == _result(1.0, steps=2).history
    later = FileState(path).at_round(3)
    np.testing.assert_array_equal(later.private_embedding()["user_gmf.weight"], np.full((1, 4), 3))
    # evaluation after round 3's fit reads what round 3 saved (rounds before 4)
    FileState(path).at_round(3).save_fit(_result(4.0), SENT)
    after = FileState(path).at_round(4).private_embedding()["user_gmf.weight"]
    np.testing.assert_array_equal(after, np.full((1, 4), 4))


def test_a_simulated_device_keeps_its_state_in_the_run_directory(tmp_path):
    from flwr.app import Context

    from client.app import simulated_state
    from tests.conftest import small_config

    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    in_dir = simulated_state(small_config(out_dir=str(tmp_path)), context, 5)
    assert in_dir == FileState(tmp_path / "devices" / "user-5.npz")
    assert isinstance(simulated_state(small_config(), context, 5), ContextState)
