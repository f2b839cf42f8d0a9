"""The client mods on hand-built Flower messages: SecAgg+ guard, clipping before masking, faults."""

import time

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters
from flwr.common import parameters_to_ndarrays as to_arrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE
from flwr.compat.common.recorddict_compat import (
    fitins_to_recorddict,
    fitres_to_recorddict,
    recorddict_to_fitres,
)

from client.mods import fault_injection_mod, secagg_mod, user_clipping_mod
from client.policy import PolicyViolation
from server.validation import InvalidReply, ReplyValidator
from shared.wire import CLIP_NORM, LOSS, SECAGG_BOUND, SECAGG_CLIPPED, SERVER_ROUND
from tests.client.test_app import task_identity  # noqa: F401  (autouse fixture)
from tests.conftest import small_config

SENT = [np.ones((4, 3), np.float32), np.zeros(5, np.float32)]


def _train_message(config: dict, stage: str | None = None) -> Message:
    content = fitins_to_recorddict(FitIns(ndarrays_to_parameters(SENT), config), keep_input=True)
    if stage is not None:
        content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord({"stage": stage})
    return Message(content=content, dst_node_id=7, message_type="train", group_id="2")


def _context(secagg_state: dict | None = None, **run_config) -> Context:
    state = RecordDict()
    if secagg_state is not None:
        state.config_records[RECORD_KEY_STATE] = ConfigRecord(secagg_state)
    values = small_config().to_mapping() | run_config
    return Context(1, 7, {"partition-id": 3}, state, values)


def _device(new):
    """A device that trained to ``new`` and replies with it and its example count."""

    def call_next(msg, ctxt):
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(new), 42, {LOSS: 0.5})
        return Message(fitres_to_recorddict(res, keep_input=True), reply_to=msg)

    return call_next


SECAGG_STATE = {"clipping_range": 0.5000005, "target_range": 2**30, "max_weight": 1.0}


def test_secagg_mod_leaves_plain_rounds_alone():
    msg = _train_message({SERVER_ROUND: 1})
    with pytest.raises(KeyError, match="secaggplus_configs"):  # why the guard exists
        secaggplus_mod(msg, _context(), _device(SENT))
    reply = secagg_mod(msg, _context(), _device(SENT))
    assert recorddict_to_fitres(reply.content, keep_input=True).num_examples == 42


def test_update_is_clipped_before_masking_sent_as_float64_delta_with_weight_one():
    new = [SENT[0] + 1.0, SENT[1] - 1.0]  # norm sqrt(17) > 0.5
    msg = _train_message({SERVER_ROUND: 2, SECAGG_BOUND: 0.5})
    reply = user_clipping_mod(msg, _context(SECAGG_STATE), _device(new))
    res = recorddict_to_fitres(reply.content, keep_input=True)
    update = to_arrays(res.parameters)
    assert all(u.dtype == np.float64 for u in update) and res.num_examples == 1
    assert np.sqrt(sum(np.sum(u**2) for u in update)) == pytest.approx(0.5)
    np.testing.assert_allclose(update[0], np.full((4, 3), 0.5 / np.sqrt(17)))
    assert res.metrics[SECAGG_CLIPPED] == 0 and res.metrics[LOSS] == 0.5


def test_under_user_dp_and_secagg_the_smaller_bound_wins():
    new = [SENT[0] + 1.0, SENT[1]]
    msg = _train_message({SERVER_ROUND: 2, SECAGG_BOUND: 0.5, CLIP_NORM: 0.2})
    reply = user_clipping_mod(msg, _context(SECAGG_STATE), _device(new))
    update = to_arrays(recorddict_to_fitres(reply.content, keep_input=True).parameters)
    assert np.sqrt(sum(np.sum(u**2) for u in update)) == pytest.approx(0.2)


def test_quantizer_clipping_is_counted():
    new = [SENT[0] + 1.0, SENT[1]]  # clipped to L2 0.5, but c is smaller than 0.5 / sqrt(12)
    msg = _train_message({SERVER_ROUND: 2, SECAGG_BOUND: 0.5})
    state = SECAGG_STATE | {"clipping_range": 0.1}
    reply = user_clipping_mod(msg, _context(state), _device(new))
    assert recorddict_to_fitres(reply.content, keep_input=True).metrics[SECAGG_CLIPPED] == 12


def test_secagg_update_outside_a_secagg_round_or_not_finite_fails_the_device():
    msg = _train_message({SERVER_ROUND: 2, SECAGG_BOUND: 0.5})
    with pytest.raises(RuntimeError, match="mods must be"):  # e.g. the wrong mod order
        user_clipping_mod(msg, _context(), _device([SENT[0] + 1.0, SENT[1]]))
    bad = [SENT[0] * np.nan, SENT[1]]
    with pytest.raises(ValueError, match="not finite"):
        user_clipping_mod(msg, _context(SECAGG_STATE), _device(bad))


def test_fault_injection_only_where_and_when_asked():
    fault = {"test-secagg-fault": "2:collect:3", "secagg-timeout": 0.01}
    collect = _train_message({SERVER_ROUND: 2}, stage="collect_masked_vectors")
    with pytest.raises(RuntimeError, match="test fault: device 3"):
        fault_injection_mod(collect, _context(**fault), _device(SENT))
    setup = _train_message({SERVER_ROUND: 2}, stage="setup")
    assert not fault_injection_mod(setup, _context(**fault), _device(SENT)).has_error()
    assert not fault_injection_mod(collect, _context(), _device(SENT)).has_error()  # off
    plain = _train_message({SERVER_ROUND: 2})  # a SecAgg+ stage's fault leaves plain fit alone
    assert not fault_injection_mod(plain, _context(**fault), _device(SENT)).has_error()
    hang = fault | {"test-secagg-fault": "2:collect:3:hang"}
    with pytest.raises(RuntimeError, match="test fault"):  # after sleeping past the timeout
        fault_injection_mod(collect, _context(**hang), _device(SENT))


def test_fault_injection_in_a_plain_fit_round_of_the_runs_round():
    """``fit`` faults match the ``server-round`` the device is sent (the run's round, which
    continues after a resume), not Flower's round number (``group_id`` "2" here)."""
    resumed = _train_message({SERVER_ROUND: 7})  # Flower's round 2 of a run resumed after 5
    crash = {"test-secagg-fault": "7:fit:3", "round-timeout": 0.01}
    with pytest.raises(RuntimeError, match=r"test fault: device 3 fails in fit \(7\)"):
        fault_injection_mod(resumed, _context(**crash), _device(SENT))
    other = {"test-secagg-fault": "2:fit:3;7:fit:4"}  # Flower's round; another device
    assert not fault_injection_mod(resumed, _context(**other), _device(SENT)).has_error()
    hang = {"test-secagg-fault": "7:fit:3:hang", "round-timeout": 0.2}
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="test fault"):
        fault_injection_mod(resumed, _context(**hang), _device(SENT))
    assert time.monotonic() - started >= 1.2  # past round-timeout, as a silent device


@pytest.mark.parametrize("mode", ["nan", "shapes"])
def test_a_garbage_reply_is_what_the_validator_rejects(mode):
    msg = _train_message({SERVER_ROUND: 2})
    new = [SENT[0] + 0.1, SENT[1] + 0.1]
    reply = fault_injection_mod(
        msg, _context(**{"test-secagg-fault": f"2:fit:3:{mode}"}), _device(new)
    )
    res = recorddict_to_fitres(reply.content, keep_input=True)
    got = to_arrays(res.parameters)
    assert res.num_examples == 42 and res.metrics[LOSS] == 0.5  # the rest of the reply is kept
    if mode == "nan":
        assert [a.shape for a in got] == [a.shape for a in SENT]
        assert all(np.isnan(a).all() for a in got)
    else:
        assert [a.shape for a in got] == [(13,), (6,)]
    validator = ReplyValidator.for_global(
        ["a", "b"], SENT, max_num_examples=10**6, max_update_norm=1e6
    )
    with pytest.raises(InvalidReply, match="NaN" if mode == "nan" else "shape"):
        validator.check(res, SENT)


def test_a_deployed_device_refuses_the_fault_hook_on_every_message():
    """The hook would let a server make devices drop out on command: only simulations honour it.

    ``-1`` is the id a device without a partition-id would have had: before the refusal, such a
    spec reached every deployed device.
    """
    fault = {"test-secagg-fault": "2:collect:-1", "secagg-timeout": 0.01}
    collect = _train_message({SERVER_ROUND: 2}, stage="collect_masked_vectors")
    plain = _train_message({SERVER_ROUND: 2})
    for msg in (collect, plain):
        deployed = Context(1, 7, {"store-path": "/x/confide.db"}, RecordDict(), fault)
        with pytest.raises(PolicyViolation, match="test-secagg-fault.*for tests only"):
            fault_injection_mod(msg, deployed, _device(SENT))
    without = Context(1, 7, {"store-path": "/x/confide.db"}, RecordDict(), {})
    assert not fault_injection_mod(collect, without, _device(SENT)).has_error()


NOISE_RUN = {
    "dp-user": True,
    "secagg": True,
    "dp-noise-source": "devices",
    "dp-interaction": True,
    "dp-user-clip-norm": 0.5,
}
NOISE_STATE = {"clipping_range": 4.0, "target_range": 2**30, "max_weight": 1.0}


def test_device_noise_is_added_in_the_quantizers_integers_before_masking():
    from flwr.common.secure_aggregation.quantization import quantize

    from shared.wire import NOISE_CLAMPED, NOISE_MU

    new = [SENT[0] + 1.0, SENT[1] - 1.0]
    msg = _train_message({SERVER_ROUND: 2, SECAGG_BOUND: 0.5, CLIP_NORM: 0.5, NOISE_MU: 1e6})
    reply = user_clipping_mod(msg, _context(NOISE_STATE, **NOISE_RUN), _device(new))
    res = recorddict_to_fitres(reply.content, keep_input=True)
    sent = to_arrays(res.parameters)
    k = quantize(sent, 4.0, 2**30)  # Flower's own quantizer, as secaggplus_mod calls it
    step = 8.0 / 2**30
    signal = 0.5 / np.sqrt(17) / step  # each coordinate of the clipped update, in steps
    for part, ints, sign in zip(sent, k, (1.0, -1.0), strict=True):
        np.testing.assert_array_equal(ints * step - 4.0, part)  # Flower gets exactly k back
        noise = ints - 2**29 - sign * signal  # up to the rounding (< 1 step)
        assert np.abs(noise).max() < 6 * 1000 + 1  # Sk(1e6) has std 1,000
        assert np.abs(noise).max() > 1  # ... and it is there
    assert res.metrics[NOISE_CLAMPED] == 0 and res.num_examples == 1


def test_a_capped_device_refuses_a_device_noise_round_that_asks_for_no_noise():
    from shared.wire import NOISE_MU

    state = RecordDict()
    state.config_records[RECORD_KEY_STATE] = ConfigRecord(NOISE_STATE)
    values = small_config().to_mapping() | NOISE_RUN
    capped = Context(1, 7, {"partition-id": 3, "device-epsilon-cap": 8.0}, state, values)
    new = [SENT[0] + 1.0, SENT[1]]
    for asks in ({}, {NOISE_MU: 0.0}):
        msg = _train_message({SERVER_ROUND: 2, SECAGG_BOUND: 0.5, CLIP_NORM: 0.5} | asks)
        with pytest.raises(PolicyViolation, match="device-epsilon-cap=8"):
            user_clipping_mod(msg, capped, _device(new))


def _declining_device(msg, ctxt):
    """A device at its budget: it sends the model back unchanged and says so."""
    res = FitRes(
        Status(Code.OK, ""), ndarrays_to_parameters(SENT), 1, {"dp_status": "budget-exhausted"}
    )
    return Message(fitres_to_recorddict(res, keep_input=True), reply_to=msg)


@pytest.mark.parametrize(("delta", "under"), [(0.01, 1), (1.0, 0)])
def test_adaptive_clipping_reports_the_bit_in_plaintext_from_the_norm_before_clipping(delta, under):
    from shared.wire import CLIP_BIT, CLIP_UNDER

    new = [SENT[0] + delta, SENT[1]]  # norm sqrt(12) x delta against S = 0.2
    msg = _train_message({SERVER_ROUND: 2, CLIP_NORM: 0.2, CLIP_BIT: 1})
    res = recorddict_to_fitres(user_clipping_mod(msg, _context(), _device(new)).content, True)
    assert res.metrics[CLIP_UNDER] == under
    update = [a - b for a, b in zip(to_arrays(res.parameters), SENT, strict=True)]
    assert np.sqrt(sum(np.sum(u**2) for u in update)) <= 0.2 * (1 + 1e-6)  # still clipped
    plain = _train_message({SERVER_ROUND: 2, CLIP_NORM: 0.2})  # no bit asked: none sent
    assert (
        CLIP_UNDER
        not in recorddict_to_fitres(
            user_clipping_mod(plain, _context(), _device(new)).content, True
        ).metrics
    )


def test_under_secagg_the_bit_is_one_more_masked_coordinate_never_a_metric():
    from shared.wire import CLIP_BIT, CLIP_UNDER

    config = {SERVER_ROUND: 2, SECAGG_BOUND: 0.5, CLIP_NORM: 0.2, CLIP_BIT: 1}
    cases = [
        (_device([SENT[0] + 0.01, SENT[1]]), 0.25),  # within S: (1 - 1/2) x B
        (_device([SENT[0] + 1.0, SENT[1]]), -0.25),  # clipped: (0 - 1/2) x B
        (_declining_device, 0.0),  # at its budget: 0, like its update
    ]
    for device, coordinate in cases:
        reply = user_clipping_mod(_train_message(config), _context(SECAGG_STATE), device)
        res = recorddict_to_fitres(reply.content, keep_input=True)
        sent = to_arrays(res.parameters)
        assert [a.shape for a in sent] == [(4, 3), (5,), (1,)]
        assert sent[2][0] == coordinate and abs(coordinate) <= SECAGG_STATE["clipping_range"]
        assert CLIP_UNDER not in res.metrics


def test_under_device_noise_the_bit_is_a_noised_integer_of_the_rounds_scale():
    from flwr.common.secure_aggregation.quantization import quantize

    from shared.wire import CLIP_BIT, CLIP_BIT_UNITS, CLIP_UNDER, NOISE_MU

    units = 2 * 10**6  # (b - 1/2) B = +-10^6 integer units; Sk(1e6) has std 1,000
    config = {SERVER_ROUND: 2, SECAGG_BOUND: 0.5, CLIP_NORM: 0.5, NOISE_MU: 1e6, CLIP_BIT: 1}
    cases = [(_device([SENT[0] + 0.01, SENT[1]]), 0.5), (_device([SENT[0] + 1.0, SENT[1]]), -0.5)]
    for device, centred in cases:
        msg = _train_message(config | {CLIP_BIT_UNITS: units})
        reply = user_clipping_mod(msg, _context(NOISE_STATE, **NOISE_RUN), device)
        res = recorddict_to_fitres(reply.content, keep_input=True)
        sent = to_arrays(res.parameters)
        assert [a.shape for a in sent] == [(4, 3), (5,), (1,)] and CLIP_UNDER not in res.metrics
        k = quantize(sent, 4.0, 2**30)[2][0]  # what Flower masks: the noised integer
        assert 1 < abs(k - 2**29 - centred * units) < 6 * 1000
    # without B (or with one the device must not accept) the device drops out
    for asks in ({}, {CLIP_BIT_UNITS: 3}):
        msg = _train_message(config | asks)
        with pytest.raises(ValueError, match="even integer"):
            user_clipping_mod(msg, _context(NOISE_STATE, **NOISE_RUN), cases[0][0])
