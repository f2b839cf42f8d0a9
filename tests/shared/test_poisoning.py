"""The poisoning audit's attack, its defence, and the switches that keep both out of deployments."""

from types import SimpleNamespace

import numpy as np
import pytest

from client.policy import DevicePolicy, PolicyViolation
from server.round import Reply, RoundState
from server.steps import ItemRowClip
from shared.config import ConfigError
from shared.models import global_arrays, global_names
from shared.poisoning import NORM_MARGIN, dilution, poison_plan, promotion_update
from shared.split import split_for
from tests.conftest import small_config


def test_the_plan_is_drawn_from_the_seed_and_targets_a_cold_item():
    config = small_config(audit_poison_fraction=0.1)
    split = split_for(config)
    plan = poison_plan(config, split)
    assert plan == poison_plan(config, split)  # server and devices agree without a message
    assert len(plan.attackers) == 3  # 10% of 30 users
    counts = np.bincount(split.train_items, minlength=split.num_items)
    held = np.sort(counts[counts > 0])
    assert 0 < counts[plan.target] <= held[len(held) // 2]  # trained, in the cold half
    assert plan.target not in plan.popular and len(plan.popular) == 20
    assert counts[list(plan.popular)].min() >= np.sort(counts)[-20]  # the 20 most held
    other = poison_plan(small_config(audit_poison_fraction=0.1, seed=7), split)
    assert other.attackers != plan.attackers
    assert poison_plan(small_config(), split) is None  # fraction 0: no attack


@pytest.mark.parametrize("model", ["neumf", "mf"])
def test_the_update_moves_only_the_targets_item_rows_to_an_average_popular_item(model):
    config = small_config(audit_poison_fraction=0.1, model=model)
    split = split_for(config)
    plan = poison_plan(config, split)
    net = config.build_model(split.num_items)
    names, arrays = global_names(net), global_arrays(net)
    poisoned = promotion_update(names, arrays, plan, split.num_items, 1.0, None)
    tables = 0
    for name, before, after in zip(names, arrays, poisoned, strict=True):
        changed = np.flatnonzero(np.any(np.atleast_2d(after != before), axis=-1))
        if not name.startswith("item_"):
            assert np.array_equal(before, after), name
            continue
        tables += 1
        assert set(changed.tolist()) <= {plan.target}, name  # (an all-zero bias stays put)
        rows = before[list(plan.popular)].astype(np.float64)
        mean = rows.mean(axis=0)
        if before.shape[1] > 1:  # an embedding: the mean direction at the mean length
            mean *= np.linalg.norm(rows, axis=1).mean() / np.linalg.norm(mean)
        np.testing.assert_allclose(after[plan.target], mean, rtol=1e-5, atol=1e-6)
    assert tables == (2 if model == "neumf" else 2)  # NeuMF: gmf + mlp tables; MF: vectors + bias


def test_the_attacker_stays_under_the_servers_norm_bound():
    config = small_config(audit_poison_fraction=0.1)
    split = split_for(config)
    net = config.build_model(split.num_items)
    names, arrays = global_names(net), global_arrays(net)
    plan = poison_plan(config, split)
    poisoned = promotion_update(names, arrays, plan, split.num_items, 100.0, 0.5)
    changes = [(p - a).astype(np.float64) for p, a in zip(poisoned, arrays, strict=True)]
    norm = np.sqrt(sum(np.sum(c * c) for c in changes))
    assert norm == pytest.approx(NORM_MARGIN * 0.5, rel=1e-4)
    assert dilution(small_config(strategy="itemsum")) == 1.0
    assert dilution(small_config(strategy="fedavg", clients_per_round=40)) == 40.0


def _reply(update):
    return Reply(node_id=1, res=SimpleNamespace(metrics={}), update=update)


def test_item_row_clip_bounds_each_row_by_the_rounds_median_row_change():
    # Two devices, an item table of 4 rows (width 2) and a dense array the defence leaves alone.
    honest = [np.array([[3.0, 4.0], [0.0, 0.0], [0.6, 0.8], [0.0, 0.0]]), np.ones(3)]
    attacker = [np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [30.0, 40.0]]), np.ones(3)]
    # Changed rows' norms: 5, 1 (honest), 50 (attacker): median 5, bound 2 x 5 = 10.
    step = ItemRowClip(2.0, ["item_embedding.weight", "mlp.weight"], [honest[0], honest[1]])
    rnd = RoundState(number=1, run_started=0.0)
    replies = step.on_replies(rnd, [_reply(honest), _reply(attacker)])
    np.testing.assert_allclose(replies[1].update[0][3], [6.0, 8.0])  # 50 -> 10
    np.testing.assert_allclose(replies[0].update[0], honest[0])  # under the bound: unchanged
    assert rnd.record.item_rows_clipped == 1
    assert np.array_equal(replies[1].update[1], np.ones(3))


def test_the_switches_are_refused_where_they_cannot_hold():
    with pytest.raises(ConfigError, match="needs plaintext aggregation"):
        small_config(audit_poison_fraction=0.01, secagg=True)
    with pytest.raises(ConfigError, match="needs plaintext aggregation"):
        small_config(item_row_clip=3.0, secagg=True)
    with pytest.raises(ConfigError, match="in \\[0, 1\\)"):
        small_config(audit_poison_fraction=1.0)
    with pytest.raises(ConfigError, match="use model neumf"):
        small_config(audit_poison_fraction=0.01, model="sasrec")
    config = small_config(audit_poison_fraction=0.01)
    DevicePolicy().check_research_only(config)  # a simulated device may
    with pytest.raises(PolicyViolation, match="deployed device declines"):
        DevicePolicy(deployed=True).check_research_only(config)
