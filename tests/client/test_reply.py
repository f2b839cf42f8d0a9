"""What a reply may reveal, as a table: each row fails if one rule of client.reply is wrong."""

import numpy as np
import pytest

from client.reply import shape_evaluate_reply, shape_fit_reply, shape_masked_reply
from client.training_round import Evaluation, TrainResult
from server.evaluation import parse_top_list
from shared.wire import (
    BUDGET_EXHAUSTED,
    DIVERSITY10,
    DP_EPSILON,
    DP_NOISE_MULTIPLIER,
    DP_STATUS,
    EVAL_METRICS,
    LOSS,
    SECAGG_CLIPPED,
    TOP10,
    TRAINED,
)
from tests.conftest import small_config

EXAMPLES = 17  # the device's training-set size: private under DP or SecAgg+


def _result(status=TRAINED, epsilon=0.0, sigma=0.0) -> TrainResult:
    return TrainResult(
        global_arrays=[],
        private={},
        loss=0.25,
        num_examples=EXAMPLES,
        status=status,
        epsilon=epsilon,
        noise_multiplier=sigma,
    )


INTERACTION_DP = {"dp_interaction": True, "dp_noise_multiplier": 1.0}
CASES = [
    # (run config, result, weight, metrics)
    pytest.param({}, _result(), EXAMPLES, {LOSS: 0.25}, id="plain: count and loss"),
    pytest.param({}, _result(BUDGET_EXHAUSTED), EXAMPLES, {}, id="declined: no loss"),
    pytest.param({"dp_user": True}, _result(), 1, {}, id="user-dp: nothing"),
    pytest.param({"secagg": True}, _result(), 1, {}, id="secagg: nothing"),
    pytest.param(
        INTERACTION_DP,
        _result(epsilon=2.345, sigma=1.26),
        1,
        {DP_STATUS: TRAINED, DP_EPSILON: 2.3, DP_NOISE_MULTIPLIER: 1.3},
        id="interaction-dp: status, rounded eps and sigma",
    ),
    pytest.param(
        INTERACTION_DP,
        _result(BUDGET_EXHAUSTED, epsilon=7.96),
        1,
        {DP_STATUS: BUDGET_EXHAUSTED, DP_EPSILON: 8.0, DP_NOISE_MULTIPLIER: 0.0},
        id="interaction-dp declined: its status and eps so far",
    ),
    pytest.param(
        INTERACTION_DP | {"secagg": True},
        _result(epsilon=0.04, sigma=0.96),
        1,
        {DP_STATUS: TRAINED, DP_EPSILON: 0.0, DP_NOISE_MULTIPLIER: 1.0},
        id="interaction-dp and secagg: rounded both ways",
    ),
]


@pytest.mark.parametrize(("overrides", "result", "weight", "metrics"), CASES)
def test_fit_reply_reveals_only_what_the_run_allows(overrides, result, weight, metrics):
    assert shape_fit_reply(small_config(**overrides), result) == (weight, metrics)


def test_masked_reply_weighs_one_and_adds_the_quantizer_clip_count():
    sent = {LOSS: 0.5}
    assert shape_masked_reply(sent, 0) == (1, {LOSS: 0.5, SECAGG_CLIPPED: 0})
    assert shape_masked_reply({}, 12) == (1, {SECAGG_CLIPPED: 12})
    assert sent == {LOSS: 0.5}  # the device's own metrics are not changed in place


def test_evaluate_reply_sends_the_ranking_metrics_only_each_device_weighing_one():
    measured = {name: 0.5 for name in EVAL_METRICS} | {"train_items": 17.0}
    evaluation = Evaluation(loss=0.7, metrics=measured, top=np.arange(10))
    assert shape_evaluate_reply(evaluation, share_top_list=False) == (
        0.7,
        1,
        {name: 0.5 for name in EVAL_METRICS},
    )


def test_evaluate_reply_adds_the_list_only_when_the_device_shares_it():
    measured = {name: 0.5 for name in EVAL_METRICS} | {DIVERSITY10: 1.25}
    top = np.array([7, 3, 1682, 0, 5, 9, 11, 13, 2, 4])
    evaluation = Evaluation(loss=0.7, metrics=measured, top=top)
    _, _, kept = shape_evaluate_reply(evaluation, share_top_list=False)
    assert TOP10 not in kept and kept[DIVERSITY10] == 1.25
    _, _, shared = shape_evaluate_reply(evaluation, share_top_list=True)
    assert shared[TOP10] == "7,3,1682,0,5,9,11,13,2,4"
    assert parse_top_list(shared[TOP10], num_items=1683).tolist() == top.tolist()
