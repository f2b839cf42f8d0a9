import numpy as np
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from server.aggregation import ItemSumFedAvg


def _reply(arrays, examples):
    return None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), examples, {})


def test_item_tables_take_the_sum_dense_layers_the_uniform_mean():
    start = [np.zeros((4, 2), np.float32), np.zeros(3, np.float32)]
    agg = ItemSumFedAvg(
        initial_parameters=ndarrays_to_parameters(start), names=["item_gmf.weight", "output.weight"]
    )
    a = [np.array([[1, 0], [0, 0], [0, 0], [0, 0]], np.float32), np.full(3, 1.0, np.float32)]
    b = [np.array([[1, 0], [0, 2], [0, 0], [0, 0]], np.float32), np.full(3, 3.0, np.float32)]
    # example counts are ignored: uniform weights
    params, _ = agg.aggregate_fit(1, [_reply(a, 100), _reply(b, 1)], [])
    items, dense = parameters_to_ndarrays(params)
    np.testing.assert_allclose(items, [[2, 0], [0, 2], [0, 0], [0, 0]])  # sum of row updates
    np.testing.assert_allclose(dense, [2.0, 2.0, 2.0])  # mean
    # the next round starts from the aggregate
    params, _ = agg.aggregate_fit(2, [_reply([items + 1, dense], 1)], [])
    np.testing.assert_allclose(parameters_to_ndarrays(params)[0], items + 1)


def test_fixed_cohort_size_scales_a_pre_averaged_update():
    start = [np.zeros((2, 1), np.float32)]
    agg = ItemSumFedAvg(
        initial_parameters=ndarrays_to_parameters(start), names=["item_bias.weight"]
    )
    agg.cohort_size = 30.0  # DP-FedAvg: one noised average over an expected cohort of 30
    params, _ = agg.aggregate_fit(1, [_reply([np.full((2, 1), 0.1, np.float32)], 1)], [])
    np.testing.assert_allclose(parameters_to_ndarrays(params)[0], 3.0, rtol=1e-6)


def test_server_momentum_and_rate_step_like_fedavgm():
    start = [np.zeros((2, 1), np.float32), np.zeros(1, np.float32)]
    agg = ItemSumFedAvg(
        initial_parameters=ndarrays_to_parameters(start),
        names=["item_bias.weight", "output.bias"],
        server_learning_rate=0.5,
        server_momentum=0.9,
    )
    agg.cohort_size = 10.0
    update = [np.full((2, 1), 0.1, np.float32), np.full(1, 0.2, np.float32)]
    items, dense = start
    for expected_velocity in (1.0, 1.9, 2.71):  # v = 0.9 v + 1 (the item step: 10 x 0.1)
        reply = [items + update[0], dense + update[1]]
        params, _ = agg.aggregate_fit(1, [_reply(reply, 1)], [])
        new_items, new_dense = parameters_to_ndarrays(params)
        np.testing.assert_allclose(new_items - items, 0.5 * expected_velocity, rtol=1e-5)
        np.testing.assert_allclose(new_dense - dense, 0.5 * 0.2 * expected_velocity, rtol=1e-5)
        items, dense = new_items, new_dense
