"""A shard's reply: an honest sum is used as it is; a sum no honest shard could send is rejected
whole, with a reason, and its users count as failures; evaluations expand to one row a user."""

import numpy as np
import pytest
from flwr.common import Code, EvaluateRes, FitRes, Status, ndarrays_to_parameters

from server.evaluation import summarize_evaluation
from server.optimizers import ModelState
from server.round import Reply, RoundState
from server.shard_replies import ShardValidation, expand_shard_evaluations
from server.steps import PlaintextSum
from server.validation import ReplyValidator
from shared.wire import (
    LOSS,
    SHARD_DECLINED,
    SHARD_EVAL,
    SHARD_TOP10,
    SHARD_TRAINED,
    SHARD_WEIGHT,
)

SHAPES = [(4, 3), (3,)]
OK = Status(Code.OK, "")


def _setup(clip=0.5):
    arrays = [np.zeros(s, dtype=np.float32) for s in SHAPES]
    validator = ReplyValidator.for_global(
        ["item.weight", "bias"], arrays, max_num_examples=100, max_update_norm=10.0
    )
    return ShardValidation(validator, clip), ModelState(arrays)


def _updates(n, norm, rng):
    out = []
    for _ in range(n):
        parts = [rng.normal(size=s) for s in SHAPES]
        scale = norm / np.sqrt(sum(float(np.sum(p**2)) for p in parts))
        out.append([p * scale for p in parts])
    return out


def _reply(node, updates, declined=(), weight=None, **metrics):
    total = [sum(u[i] for u in updates) if updates else np.zeros(s) for i, s in enumerate(SHAPES)]
    values = {
        SHARD_TRAINED: len(updates),
        SHARD_WEIGHT: float(len(updates)) if weight is None else weight,
        SHARD_DECLINED: np.asarray(declined, dtype=np.int64).tobytes(),
        LOSS: 0.5,
    } | metrics
    res = FitRes(OK, ndarrays_to_parameters(total), 10 * len(updates), values)
    return Reply(node_id=node, res=res)


def _round(asked):
    rnd = RoundState(number=1, run_started=0.0)
    rnd.asked = asked
    rnd.note(fit_sampled=sum(len(u) for u in asked.values()))
    return rnd


def test_honest_shards_are_summed_as_their_users_would_be():
    step, model = _setup()
    rng = np.random.default_rng(0)
    a, b = _updates(3, 0.5, rng), _updates(1, 0.2, rng)
    rnd = _round({7: (0, 1, 2, 3), 8: (8,)})
    valid = step.on_replies(rnd, [_reply(7, a, declined=[3]), _reply(8, b)])
    assert [r.users for r in valid] == [3, 1] and valid[0].declined == (3,)
    assert rnd.record.fit_replies == 5 and rnd.record.fit_failures == 0
    total = PlaintextSum(model, uniform=True).combine(rnd, valid)
    assert total.trained == 4 and total.weight == 4.0
    for i in range(len(SHAPES)):
        np.testing.assert_allclose(total.total[i], sum(u[i] for u in a + b))


@pytest.mark.parametrize(
    "bad, why",
    [
        (lambda u: _reply(7, u + _updates(1, 0.5, np.random.default_rng(1))), "asked for 3"),
        (lambda u: _reply(7, u[:2], declined=[9]), "not asked"),
        (lambda u: _reply(7, [[p * 3 for p in x] for x in u]), "not clipped"),
        (lambda u: _reply(7, u, weight=float("nan")), "shard-weight"),
        (lambda u: _reply(7, u, **{SHARD_TRAINED: "3"}), "integer"),
        (lambda u: _reply(7, u, **{LOSS: float("inf")}), "loss"),
        (lambda u: _reply(7, [[np.full(s, np.nan) for s in SHAPES]] + u[1:]), "NaN"),
    ],
)
def test_a_sum_no_honest_shard_could_send_is_rejected_whole(bad, why, caplog):
    step, _ = _setup()
    updates = _updates(3, 0.5, np.random.default_rng(0))
    rnd = _round({7: (0, 1, 2), 8: (8,)})
    valid = step.on_replies(
        rnd, [bad(updates), _reply(8, _updates(1, 0.5, np.random.default_rng(2)))]
    )
    assert [r.node_id for r in valid] == [8]
    assert why in str(rnd.failures[-1])
    assert rnd.record.fit_rejected == 3 and rnd.record.fit_failures == 3


def _evaluation(rows, tops=None):
    metrics = {SHARD_EVAL: np.asarray(rows, dtype=np.float64).tobytes()}
    if tops is not None:
        metrics[SHARD_TOP10] = np.asarray(tops, dtype=np.int64).tobytes()
    return EvaluateRes(OK, float(np.mean([r[0] for r in rows])), len(rows), metrics)


def test_a_shard_evaluation_counts_each_user_once():
    proxy = type("P", (), {"node_id": 5})()
    rows = [[0.4, 1.0, 0.5, 0.0, 0.0, 0.3], [0.6, 0.0, 0.0, 0.0, 0.0, float("nan")]]
    tops = [list(range(10)), list(range(10, 20))]
    results, failures = expand_shard_evaluations([(proxy, _evaluation(rows, tops))], [])
    assert len(results) == 2 and failures == []
    loss, metrics, fields = summarize_evaluation(1, results, failures)
    assert loss == pytest.approx(0.5) and metrics["hr10"] == 0.5 and fields["eval_clients"] == 2
    assert metrics["diversity10"] == pytest.approx(0.3)  # the user without one is left out
    broken = EvaluateRes(OK, 0.0, 1, {SHARD_EVAL: b"\x00" * 12})
    results, failures = expand_shard_evaluations([(proxy, broken)], [])
    assert results == [] and "rows of 6 figures" in str(failures[0])


def test_under_device_noise_a_sum_may_carry_its_users_noise_and_its_clamp_count():
    arrays = [np.zeros(s, dtype=np.float32) for s in SHAPES]
    validator = ReplyValidator.for_global(
        ["item.weight", "bias"], arrays, max_num_examples=100, max_update_norm=10.0
    )
    step = ShardValidation(validator, 0.5, noise_norm=lambda users: 0.3 * users)
    rng = np.random.default_rng(0)
    noised = [u + 0.1 for u in _updates(1, 0.5, rng)[0]]  # norm ~ 0.5 + 0.4 > S
    rnd = _round({7: (0, 1), 8: (8,)})
    replies = [_reply(7, [noised], declined=[1], noise_clamped=0), _reply(8, [noised])]
    assert [r.node_id for r in step.on_replies(rnd, replies)] == [7, 8]
    assert rnd.record.noise_clamped == 0
    without = ShardValidation(validator, 0.5)  # no noise allowance: the same sum is refused
    assert without.on_replies(_round({8: (8,)}), [_reply(8, [noised])]) == []
    rnd = _round({8: (8,)})
    assert step.on_replies(rnd, [_reply(8, [noised], noise_clamped=-1)]) == []
    assert "noise_clamped must be a count" in str(rnd.failures[0])
