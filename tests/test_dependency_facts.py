"""The facts about Flower and Opacus that docs/design.md §7 says the code relies on, as tests.

Each fails if an upgrade changes the fact, so the design document cannot silently go stale. Facts
checked elsewhere are listed in docs/design.md with the test that checks them.
"""

import random

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager
from flwr.server.strategy import FedAvg
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from shared import wire


class _Proxy:
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.cid = str(node_id)


def _reply(arrays, num_examples=1):
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), num_examples, {})


def test_flower_fedavg_lets_nan_and_huge_updates_through():
    """Why server.validation checks every reply before aggregation."""
    replies = [
        (_Proxy(1), _reply([np.array([1.0, np.nan], np.float32)])),
        (_Proxy(2), _reply([np.array([1e30, 2.0], np.float32)])),
    ]
    parameters, _ = FedAvg().aggregate_fit(1, replies, [])
    (mean,) = parameters_to_ndarrays(parameters)
    assert np.isnan(mean[1]) and mean[0] == pytest.approx(5e29)


def test_flower_fedavg_crashes_on_zero_weights_and_wrong_shapes():
    strategy = FedAvg()
    with pytest.raises(ZeroDivisionError):
        strategy.aggregate_fit(1, [(_Proxy(1), _reply([np.ones(2, np.float32)], 0))], [])
    wrong = [
        (_Proxy(1), _reply([np.ones(2, np.float32)])),
        (_Proxy(2), _reply([np.ones(3, np.float32)])),
    ]
    with pytest.raises(ValueError, match="broadcast"):
        strategy.aggregate_fit(1, wrong, [])


def test_flower_samples_a_fixed_count_without_replacement():
    """Not Poisson sampling: why user-level DP samples the cohort itself."""
    manager = SimpleClientManager()
    for node_id in range(10):
        manager.register(_Proxy(node_id))
    random.seed(0)
    sizes = {len({c.node_id for c in manager.sample(num_clients=4)}) for _ in range(50)}
    assert sizes == {4}


def test_wire_clip_norm_is_flowers_key():
    """shared/ imports no Flower, so the key is spelled out there and checked here."""
    assert wire.CLIP_NORM == KEY_CLIPPING_NORM
