"""The item-inference attack on constructed updates whose answer is known."""

import numpy as np
import pytest

from server.audit import audit, item_scores, precision, top_n

ITEMS, DIM = 200, 6


def _device_update(rng, positives, negatives):
    """Positives' rows move towards the user's vector, negatives' away, as in real training."""
    user = rng.normal(size=DIM)
    table = np.zeros((ITEMS, DIM))
    table[positives] = 0.01 * user + rng.normal(scale=1e-3, size=(len(positives), DIM))
    table[negatives] = -0.01 * user + rng.normal(scale=1e-3, size=(len(negatives), DIM))
    return [table, rng.normal(size=3)]  # an item table and a dense layer


def _population(seed=0, users=40):
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, ITEMS + 1)  # item 0 most popular
    truth, updates = {}, []
    for user in range(users):
        positives = rng.choice(ITEMS, size=10, replace=False, p=popularity / popularity.sum())
        rest = np.setdiff1d(np.arange(ITEMS), positives)
        negatives = rng.choice(rest, size=40, replace=False)
        truth[user] = np.sort(positives)
        updates.append((user, _device_update(rng, positives, negatives)))
    return truth, updates, popularity


def test_direction_attack_recovers_a_single_devices_items():
    truth, updates, _ = _population()
    for user, update in updates:
        guess = top_n(item_scores(update, [0], "direction"), 10, np.random.default_rng(0))
        assert precision(guess, truth[user]) == 1.0


def test_ties_are_random_and_unknown_attacks_refused():
    rng = np.random.default_rng(0)
    guesses = {tuple(top_n(np.zeros(50), 3, rng)) for _ in range(10)}
    assert len(guesses) > 1
    with pytest.raises(ValueError, match="unknown attack"):
        item_scores([np.zeros((3, 2))], [0], "magic")


def test_cohort_sums_hide_the_devices_items():
    truth, updates, popularity = _population(users=40)
    rows = {(r["cohort"], r["attack"]): r for r in audit(updates, truth, [0], popularity, [10, 40])}
    assert rows[1, "direction"]["precision_mean"] == 1.0 and rows[1, "direction"]["users"] == 40
    baseline = rows[0, "popularity"]["precision_mean"]
    assert rows[10, "direction"]["precision_mean"] < 0.6  # far from what one update reveals
    assert rows[40, "direction"]["precision_mean"] <= baseline + 0.1
