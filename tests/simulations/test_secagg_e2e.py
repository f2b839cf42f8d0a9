"""End to end with real SecAgg+ (Flower's workflow and mod, on Ray) at the ML-100K model size.

One 3-round run, with devices made to fail by the test-only ``test-secagg-fault`` key:

1. four of eight devices fail at share-keys: more dropouts than the threshold allows, so the round
   halts; it must be recorded as skipped and leave the model byte for byte unchanged;
2. two devices fail before training (collect) and one after sending its masked update (unmask):
   the aggregate must be the plain FedAvg of the five-plus-one devices whose updates were masked;
3. no faults: the aggregate must be the plain FedAvg of all eight.

The plain FedAvg is recomputed here in-process by the same device code
(client.training_round.train, seeded per device and round) and the same clip, so the comparison
is with exactly the clipped updates SecAgg+ summed.
"""

import numpy as np
import torch

from client import training_round
from server.provenance import model_digest
from shared.config import RunConfig
from shared.defaults import default_values
from shared.models import global_arrays, global_names
from shared.privacy import clip_update
from shared.split import catalog_size, split_for
from tests.conftest import read_jsonl, run_confide

SETTINGS = {
    "synthetic-users": 8,
    "synthetic-items": 1682,  # ML-100K's catalogue; embedding-dim and layers are the defaults
    "num-server-rounds": 3,
    "eval-every": 10,
    "secagg": "true",
    "secagg-num-shares": 7,
    "secagg-reconstruction-threshold": 4,
    "secagg-timeout": 300.0,
    "secagg-update-bound": 0.25,  # about half of these devices' updates are larger: clipped
    "test-secagg-fault": '"1:share-keys:0,1,2,3;2:collect:4,5;2:unmask:6"',
}


def _config() -> RunConfig:
    values = default_values()
    values.update({k: v for k, v in SETTINGS.items() if k != "test-secagg-fault"})
    values["secagg"] = True
    return RunConfig.from_mapping(values)


def _fedavg(config, split, server_round, model, devices, private, bound):
    """Plain FedAvg of the devices' clipped updates (the reference for SecAgg+)."""
    updates = []
    for user in devices:
        result = training_round.train(
            config, split.user_data(user), user, server_round, model, private.get(user)
        )
        private[user] = result.private
        new = result.global_arrays
        update = [n.astype(np.float64) - o for n, o in zip(new, model, strict=True)]
        updates.append(clip_update(update, bound)[0])
    mean = [np.mean(parts, axis=0) for parts in zip(*updates, strict=True)]
    return [(o + m).astype(o.dtype) for o, m in zip(model, mean, strict=True)]


def _norm(a, b):
    return np.sqrt(sum(np.sum((x.astype(np.float64) - y) ** 2) for x, y in zip(a, b, strict=True)))


def _relative(got, want, origin):
    """||got - want|| / ||want - origin||: relative L2 error of the models' total update."""
    return _norm(got, want) / _norm(want, origin)


def test_secagg_equals_fedavg_of_survivors_and_halts_loudly(tmp_path):
    out = tmp_path / "run"
    code, log = run_confide("simulate", "--out", str(out), settings=SETTINGS, timeout=600)
    assert code == 0, log[-4000:]
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in records] == [1, 2, 3]

    config = _config()
    model = config.build_model(catalog_size(config))
    initial = global_arrays(model)
    assert sum(a.size for a in initial) > 80_000  # the real NCF size at 1682 items

    # round 1: halted at share-keys, reported, the model byte for byte the initial one
    halted = records[0]
    assert "share-keys" in halted["skipped"] and "unchanged" in halted["skipped"]
    assert "fit_replies" not in halted and halted["fit_sampled"] == 8
    assert halted["secagg_active"] == {"setup": 8, "share-keys": 4} and halted["fit_failures"] == 4
    assert halted["model_sha256"] == model_digest(initial)
    assert "SKIPPED (secure aggregation halted at the share-keys stage" in log

    # rounds 2 and 3: the SecAgg+ aggregate is plain FedAvg of the devices whose update was masked
    assert records[1]["secagg_survivors"] == 6 and records[1]["secagg_dropped"] == 2
    stages = {"setup": 8, "share-keys": 8, "collect": 6, "unmask": 5}
    assert records[1]["secagg_active"] == stages and records[1]["fit_failures"] == 3
    assert records[2]["secagg_survivors"] == 8
    assert all(r["secagg_clipped_fraction"] == 0.0 for r in records[1:])
    torch.set_num_threads(1)  # as on the devices: identical float reductions
    split, private, bound = split_for(config), {}, config.secagg_update_bound
    after_2 = _fedavg(config, split, 2, initial, [0, 1, 2, 3, 6, 7], private, bound)
    assert records[1]["model_sha256"] != halted["model_sha256"]
    after_3 = _fedavg(config, split, 3, after_2, list(range(8)), private, bound)
    with np.load(out / "global_model.npz") as saved:
        final = [saved[name] for name in global_names(model)]
    assert _relative(final, after_3, initial) < 1e-4

    # the comparison can fail: counting the two devices that dropped before training is far off
    wrong = _fedavg(config, split, 2, initial, list(range(8)), {}, bound)
    wrong = _fedavg(config, split, 3, wrong, list(range(8)), {}, bound)
    assert _relative(final, wrong, initial) > 1e-2
