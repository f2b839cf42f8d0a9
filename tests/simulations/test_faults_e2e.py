"""End to end on Flower's simulation engine (Ray): devices that fail in a plain fit round.

One 4-round run of 6 devices, FedAvg, every device sampled, ``min-fit-clients`` 2, made to fail
by the test-only fault hook (``test-secagg-fault``, :func:`client.mods.fault_injection_mod`):

1. no faults (Ray's actors start: on busy cores that alone can take most of a short timeout);
2. device 0 crashes, device 1 hangs past ``round-timeout``, device 2 replies a NaN update and
   device 3 arrays of the wrong shapes: the round completes with devices 4 and 5, and the model
   is exactly their weighted FedAvg (garbage never reaches the sum);
3. devices 0, 1 and 4 crash, 2 and 3 reply garbage: one valid reply, below ``min-fit-clients``:
   the round is skipped and the model stays byte for byte the same;
4. no faults: all 6 devices, the one that hung included, train again.

The hung round waits the whole ``round-timeout`` (30 s): most of the test's time.

The reference FedAvg is recomputed in-process by the same device code
(client.training_round.train, seeded per device and round), following every device's private
embedding: a device that replied garbage still trained and kept its new embedding.
"""

import numpy as np
import pytest
import torch

from client import training_round
from shared.config import RunConfig
from shared.defaults import default_values
from shared.models import global_arrays, global_names
from shared.split import catalog_size, split_for
from tests.conftest import read_jsonl, run_confide

FAULTS = "2:fit:0;2:fit:1:hang;2:fit:2:nan;2:fit:3:shapes;3:fit:0,1,4;3:fit:2:nan;3:fit:3:shapes"
SETTINGS = {
    "synthetic-users": 6,
    "synthetic-items": 120,
    "embedding-dim": 8,
    "mlp-layers": '"16,8"',
    "num-server-rounds": 4,
    "eval-every": 10,  # evaluate only after the last round
    "local-epochs": 1,
    "min-fit-clients": 2,
    "round-timeout": 30.0,  # the hung device sleeps 31 s; the round goes on after 30
}


def _config() -> RunConfig:
    return RunConfig.from_mapping(default_values() | SETTINGS | {"mlp-layers": "16,8"})


def _train(config, split, server_round, model, users, private):
    """Each user trains from ``model``; their (update, weight), keeping private embeddings."""
    out = {}
    for user in users:
        result = training_round.train(
            config, split.user_data(user), user, server_round, model, private.get(user)
        )
        private[user] = result.private
        new = result.global_arrays
        update = [n.astype(np.float64) - o for n, o in zip(new, model, strict=True)]
        out[user] = (update, result.num_examples)
    return out


def _fedavg(model, replies):
    total = sum(weight for _, weight in replies)
    mean = [
        sum(update[i] * weight for update, weight in replies) / total for i in range(len(model))
    ]
    return [(o + m).astype(o.dtype) for o, m in zip(model, mean, strict=True)]


def _norm(a, b):
    return np.sqrt(sum(np.sum((x.astype(np.float64) - y) ** 2) for x, y in zip(a, b, strict=True)))


@pytest.mark.slow  # about 80 s: the hung device's round waits the whole round-timeout
def test_crashed_hung_and_garbage_devices_mid_round(tmp_path):
    out = tmp_path / "run"
    settings = SETTINGS | {"test-secagg-fault": f'"{FAULTS}"'}
    code, log = run_confide("simulate", "--out", str(out), settings=settings, timeout=400)
    assert code == 0, log[-4000:]
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in records] == [1, 2, 3, 4]
    warm, faults, too_few, again = records
    assert (warm["fit_replies"], warm["fit_failures"]) == (6, 0)

    # 2: two valid replies of six; the crash, the silence and both kinds of garbage are failures
    assert "skipped" not in faults and faults["fit_sampled"] == 6
    assert (faults["fit_replies"], faults["fit_rejected"], faults["fit_failures"]) == (2, 2, 4)
    assert faults["round_seconds"] >= 30  # it waited for the hung device
    assert "contains NaN or Inf" in log and "shape (" in log  # why each garbage reply was refused
    # 3: one valid reply: skipped, the model byte for byte the one after round 2
    assert "1 valid trained reply, min-fit-clients is 2" in too_few["skipped"]
    assert too_few["model_sha256"] == faults["model_sha256"]
    # 4: everyone, the device that hung in round 2 too
    assert (again["fit_replies"], again["fit_failures"]) == (6, 0) and "skipped" not in again

    config = _config()
    model = config.build_model(catalog_size(config))
    initial = global_arrays(model)
    torch.set_num_threads(1)  # as on the devices: identical float reductions
    split, private = split_for(config), {}
    after_1 = _fedavg(initial, list(_train(config, split, 1, initial, range(6), private).values()))
    round_2 = _train(config, split, 2, after_1, [2, 3, 4, 5], private)  # 2, 3 trained, then lied
    after_2 = _fedavg(after_1, [round_2[4], round_2[5]])
    _train(config, split, 3, after_2, [2, 3, 5], private)  # trained, but the round was skipped
    round_4 = list(_train(config, split, 4, after_2, range(6), private).values())
    after_4 = _fedavg(after_2, round_4)
    with np.load(out / "global_model.npz") as saved:
        final = [saved[name] for name in global_names(model)]
    assert _norm(final, after_4) / _norm(after_4, after_1) < 1e-4

    # the comparison can fail: without round 2's aggregate, or with only one of its two valid
    # replies, the final model is far from this one
    for wrong_2 in (after_1, _fedavg(after_1, [round_2[5]])):
        assert _norm(final, _fedavg(wrong_2, round_4)) / _norm(after_4, after_1) > 1e-2
