"""The ClientApp driven by hand-built Messages and a Context, as Flower would drive it."""

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.common import Code, EvaluateIns, FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import (
    evaluateins_to_recorddict,
    fitins_to_recorddict,
    recorddict_to_evaluateres,
    recorddict_to_fitres,
)

from client.app import app
from client.state import PRIVATE_RECORD
from server.evaluation import parse_top_list
from shared.models import build_model, global_arrays, global_names, private_names
from shared.split import split_for
from shared.wire import (
    DIVERSITY10,
    DP_EPSILON,
    DP_NOISE_MULTIPLIER,
    DP_STATUS,
    EVAL_METRICS,
    FULL_HR10,
    HR10,
    LOSS,
    NDCG10,
    SERVER_ROUND,
    TOP10,
)
from tests.conftest import small_config

USER = 4


@pytest.fixture(autouse=True)
def task_identity():
    """Flower stamps messages with the identity of the process's task; act as run 1."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _context(config, state: RecordDict) -> Context:
    return Context(
        run_id=1,
        node_id=100 + USER,
        node_config={"partition-id": USER, "num-partitions": config.synthetic_users},
        state=state,
        run_config=config.to_mapping(),
    )


def _global(config):
    model = build_model(
        config.model,
        1,
        split_for(config).num_items,
        dim=config.embedding_dim,
        mlp_layers=config.layers,
        seed=config.seed,
    )
    return model, global_arrays(model)


def _fit(config, state, arrays, server_round):
    content = fitins_to_recorddict(
        FitIns(ndarrays_to_parameters(arrays), {SERVER_ROUND: server_round}), keep_input=True
    )
    message = Message(content=content, dst_node_id=100 + USER, message_type="train")
    reply = app(message, _context(config, state))
    assert not reply.has_error(), reply.error
    return recorddict_to_fitres(reply.content, keep_input=True)


def test_fit_reply_is_dense_global_only_and_private_state_persists():
    config = small_config()
    model, arrays = _global(config)
    state = RecordDict()
    res = _fit(config, state, arrays, server_round=1)
    assert res.status.code == Code.OK
    reply = parameters_to_ndarrays(res.parameters)
    # exactly the global arrays, dense, same shapes: no user rows in the reply
    assert [a.shape for a in reply] == [a.shape for a in arrays]
    assert len(reply) == len(global_names(model))
    item_table = reply[global_names(model).index("item_gmf.weight")]
    assert (np.abs(item_table - arrays[global_names(model).index("item_gmf.weight")]) > 0).any()
    assert res.num_examples == len(split_for(config).user_train_items(USER))
    assert set(res.metrics) == {LOSS}
    # the private embedding is kept in the node's state, under the user's parameter names
    private = state.array_records[PRIVATE_RECORD]
    assert sorted(private.keys()) == sorted(private_names(model))
    first = {k: v.numpy().copy() for k, v in private.items()}
    # no reply array has the private embedding's values
    for values in first.values():
        assert not any(a.shape == values.shape and np.allclose(a, values) for a in reply)

    # round 2 starts from the stored embedding and trains it further
    _fit(config, state, reply, server_round=2)
    second = {k: v.numpy() for k, v in state.array_records[PRIVATE_RECORD].items()}
    for key in first:
        assert not np.array_equal(first[key], second[key])


@pytest.mark.parametrize(
    "overrides",
    [{"dp-interaction": True, "dp-noise-multiplier": 1.3}, {"dp-user": True}, {"secagg": True}],
    ids=["interaction-dp", "user-dp", "secagg"],
)
def test_private_fit_reply_sends_no_example_count_and_no_loss(overrides):
    """Under DP or SecAgg+ the plaintext part of a reply carries nothing computed from the data:
    the example count would break interaction-level DP (one interaction changes it)."""
    config = small_config(**overrides)
    res = _fit(config, RecordDict(), _global(config)[1], server_round=1)
    assert res.status.code == Code.OK
    assert res.num_examples == 1
    assert LOSS not in res.metrics
    if config.dp_interaction:
        assert set(res.metrics) == {DP_STATUS, DP_EPSILON, DP_NOISE_MULTIPLIER}
        assert res.metrics[DP_NOISE_MULTIPLIER] == 1.3
        assert res.metrics[DP_EPSILON] == round(res.metrics[DP_EPSILON], 1) > 0


def test_evaluate_uses_stored_private_embedding():
    config = small_config()
    _, arrays = _global(config)
    state = RecordDict()
    trained = parameters_to_ndarrays(_fit(config, state, arrays, server_round=1).parameters)
    content = evaluateins_to_recorddict(
        EvaluateIns(ndarrays_to_parameters(trained), {SERVER_ROUND: 1}), keep_input=True
    )
    message = Message(content=content, dst_node_id=100 + USER, message_type="evaluate")
    res = recorddict_to_evaluateres(app(message, _context(config, state)).content)
    assert res.num_examples == 1
    assert set(res.metrics) == set(EVAL_METRICS) | {DIVERSITY10, TOP10}
    assert all(v in (0.0, 1.0) for v in (res.metrics[HR10], res.metrics[FULL_HR10]))
    # A simulated device shares its list: 10 distinct items it did not train on.
    top = parse_top_list(res.metrics[TOP10], num_items=split_for(config).num_items).tolist()
    train_items = split_for(config).user_train_items(USER).tolist()
    assert len(set(top)) == 10 and not set(top) & set(train_items)
    assert 0.0 < res.metrics[DIVERSITY10] <= 2.0
    assert 0.0 <= res.metrics[NDCG10] <= res.metrics[HR10]
    assert res.loss > 0


def test_partition_beyond_dataset_is_an_error():
    config = small_config()
    _, arrays = _global(config)
    content = fitins_to_recorddict(FitIns(ndarrays_to_parameters(arrays), {SERVER_ROUND: 1}), True)
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 999},
        state=RecordDict(),
        run_config=config.to_mapping(),
    )
    with pytest.raises(ValueError, match="num-supernodes=30"):
        app(Message(content=content, dst_node_id=1, message_type="train"), context)
