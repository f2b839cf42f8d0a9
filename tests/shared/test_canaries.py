"""Canary insertion for the membership audit (shared/canaries.py, the hook in shared/split.py)."""

from __future__ import annotations

import numpy as np
import pytest

from shared.canaries import canaries_for, draw_canaries
from shared.config import ConfigError, resolve_config
from shared.split import base_split_for, split_for

SMALL = ["synthetic-users=60", "synthetic-items=150", "eval-negatives=20"]


def _config(*overrides: str):
    return resolve_config(None, [*SMALL, *overrides], None)[0]


def _unit(unit: str, count: int = 400, seed: int = 0):
    return _config(f"audit-canaries={count}", f'audit-canary-unit="{unit}"', f"seed={seed}")


def test_coins_are_fair_and_deterministic_by_seed():
    config = _unit("user", 2000)
    base = base_split_for(config)
    first = canaries_for(config, base)
    again = canaries_for(config, base)
    np.testing.assert_array_equal(first.included, again.included)
    np.testing.assert_array_equal(first.items, again.items)
    # Bin(2000, 1/2) has std ~22: within 5 std of 1000
    assert abs(int(first.included.sum()) - 1000) < 112
    other = draw_canaries(base, 1, 2000, config.audit_canary_items, "user")
    assert (other.included != first.included).any()
    assert first.items.shape == (2000, 20)
    assert all(len(set(row)) == 20 for row in first.items)  # distinct items per canary


def test_user_canaries_included_are_extra_devices_excluded_do_not_exist():
    config = _unit("user")
    base, split = base_split_for(config), split_for(config)
    canaries = canaries_for(config, base)
    chosen = np.flatnonzero(canaries.included)
    assert split.num_users == base.num_users + len(chosen)
    assert (canaries.device[~canaries.included] == -1).all()
    for i in chosen:
        device = int(canaries.device[i])
        assert device >= base.num_users
        np.testing.assert_array_equal(split.user_train_items(device), canaries.items[i])
        assert split.test_item[device] not in canaries.items[i]
    # an excluded canary's item set is no device's training set
    sets = {tuple(split.user_train_items(u)) for u in range(split.num_users)}
    for i in np.flatnonzero(~canaries.included):
        assert tuple(canaries.items[i]) not in sets
    _real_users_unchanged(base, split, interactions_added=False)


def test_interaction_canaries_are_on_real_devices_and_only_when_included():
    config = _unit("interaction", 60)
    base, split = base_split_for(config), split_for(config)
    canaries = canaries_for(config, base)
    assert split.num_users == base.num_users
    assert len(set(canaries.device.tolist())) == 60  # one canary per device
    for i in range(canaries.count):
        user, item = int(canaries.device[i]), int(canaries.items[i, 0])
        assert item not in base.user_train_items(user)
        assert item != base.test_item[user] and item not in base.eval_negatives[user]
        trained = split.user_train_items(user)
        assert (item in trained) == bool(canaries.included[i])
        assert len(trained) == len(base.user_train_items(user)) + int(canaries.included[i])
    assert split.num_train == base.num_train + int(canaries.included.sum())
    _real_users_unchanged(base, split, interactions_added=True)


def _real_users_unchanged(base, split, *, interactions_added: bool) -> None:
    """Held-out evaluation of every real user is exactly what it is without canaries."""
    real = base.num_users
    np.testing.assert_array_equal(split.test_item[:real], base.test_item)
    np.testing.assert_array_equal(split.eval_negatives[:real], base.eval_negatives)
    for user in range(real):
        before, after = base.user_train_items(user), split.user_train_items(user)
        if interactions_added:
            np.testing.assert_array_equal(after[: len(before)], before)
        else:
            np.testing.assert_array_equal(after, before)


def test_no_canaries_is_the_plain_split():
    config = _config()
    assert split_for(config) is base_split_for(config)


def test_canary_keys_are_validated():
    with pytest.raises(ConfigError, match="audit-canary-unit must be one of"):
        _config('audit-canary-unit="device"')
    with pytest.raises(ConfigError, match="audit-canaries must be 0 or more"):
        _config("audit-canaries=-1")
    with pytest.raises(ConfigError, match="only dp-interaction"):
        _config("audit-canaries=10", "dp-interaction=true")
    with pytest.raises(ConfigError, match="only dp-user"):
        _config("audit-canaries=10", 'audit-canary-unit="interaction"', "dp-user=true")
    too_many = _unit("interaction", 61)
    with pytest.raises(ConfigError, match="audit-canaries = 60 or fewer"):
        split_for(too_many)
    too_big = _config("audit-canaries=5", "audit-canary-items=140")
    with pytest.raises(ConfigError, match="lower audit-canary-items"):
        split_for(too_big)
