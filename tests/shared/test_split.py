import numpy as np
import pytest

from shared.data import from_arrays, synthetic
from shared.split import leave_one_out, sample_excluding, training_examples
from shared.streams import train_negatives_rng


@pytest.fixture(scope="module")
def data():
    return synthetic(num_users=60, num_items=300, seed=3)


def test_held_out_item_is_latest_and_never_in_training(data):
    split = leave_one_out(data, seed=1)
    for user in range(data.num_users):
        mask = data.user == user
        items, stamps = data.item[mask], data.timestamp[mask]
        latest = items[stamps == stamps.max()].max()  # ties: largest item id counts as latest
        assert split.test_item[user] == latest
        train = split.user_train_items(user)
        assert split.test_item[user] not in train
        assert sorted(train.tolist() + [latest]) == sorted(items.tolist())
    assert split.num_train == len(data) - data.num_users


def test_timestamp_ties_broken_at_random_among_the_tied_by_seed():
    # user 1: items 30 and 20 share the latest time 7 (10 is earlier); user 2: 10 and 20 tie at 1
    inter = from_arrays([1, 1, 1, 2, 2, 3, 3], [10, 30, 20, 10, 20, 10, 30], [5, 7, 7, 1, 1, 1, 2])
    held = {
        seed: inter.raw_item_ids[leave_one_out(inter, num_eval_negatives=0, seed=seed).test_item]
        for seed in range(40)
    }
    assert {int(h[0]) for h in held.values()} == {20, 30}  # never the earlier item 10
    assert {int(h[1]) for h in held.values()} == {10, 20}
    assert {int(h[2]) for h in held.values()} == {30}  # a unique latest: no draw
    again = leave_one_out(inter, num_eval_negatives=0, seed=3)
    np.testing.assert_array_equal(inter.raw_item_ids[again.test_item], held[3])
    assert again.random_holdouts == 2


def test_without_timestamps_the_holdout_is_a_seeded_uniform_draw():
    items = [10, 20, 30, 40]
    inter = from_arrays(np.repeat(np.arange(2000), 4), np.tile(items, 2000))  # no timestamps
    assert not inter.has_timestamps
    split = leave_one_out(inter, num_eval_negatives=0, seed=5)
    held = inter.raw_item_ids[split.test_item]
    assert split.random_holdouts == 2000
    # uniform over a user's items: 500 expected each, sd ~19; deterministic given the seed
    counts = {item: int(np.count_nonzero(held == item)) for item in items}
    assert all(430 < n < 570 for n in counts.values()), counts
    # golden: the first users' held-out items at seed 5, and again at seed 5
    assert held[:8].tolist() == GOLDEN_HELD_SEED_5
    again = leave_one_out(inter, num_eval_negatives=0, seed=5)
    np.testing.assert_array_equal(again.test_item, split.test_item)
    other = leave_one_out(inter, num_eval_negatives=0, seed=6)
    assert not np.array_equal(other.test_item, split.test_item)
    for user in range(0, 2000, 97):  # the rest of each user's items is the training set
        train = inter.raw_item_ids[split.user_train_items(user)].tolist()
        assert sorted(train + [held[user]]) == items


def test_one_users_holdout_does_not_depend_on_other_users():
    # a device must reproduce its own split from its own data: same user id, same draw
    alone = from_arrays([0, 0, 0], [1, 2, 3])
    crowd = from_arrays([0, 0, 0, 1, 1], [1, 2, 3, 1, 4])
    for seed in range(10):
        a = leave_one_out(alone, num_eval_negatives=0, seed=seed).test_item[0]
        b = leave_one_out(crowd, num_eval_negatives=0, seed=seed).test_item[0]
        assert alone.raw_item_ids[a] == crowd.raw_item_ids[b]


def test_synthetic_splits_take_no_draws(data):
    # strictly increasing timestamps: every user's latest is unique, so nothing changed
    assert leave_one_out(data, seed=1).random_holdouts == 0


GOLDEN_HELD_SEED_5 = [40, 20, 10, 20, 10, 40, 40, 20]


def test_eval_negatives_never_interacted_distinct_and_seeded(data):
    a = leave_one_out(data, seed=7)
    b = leave_one_out(data, seed=7)
    c = leave_one_out(data, seed=8)
    np.testing.assert_array_equal(a.eval_negatives, b.eval_negatives)
    assert not np.array_equal(a.eval_negatives, c.eval_negatives)
    assert a.eval_negatives.shape == (data.num_users, 99)
    for user in range(data.num_users):
        seen = set(data.item[data.user == user].tolist())
        negatives = a.eval_negatives[user].tolist()
        assert len(set(negatives)) == 99
        assert not seen & set(negatives)


def test_users_with_one_interaction_rejected():
    inter = from_arrays([1, 1, 2], [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="fewer than 2 interactions.*min-user-interactions"):
        leave_one_out(inter, num_eval_negatives=0)


def test_sample_excluding_dense_and_sparse_paths():
    rng = np.random.default_rng(0)
    for excluded in (np.arange(5), np.arange(90)):
        got = sample_excluding(rng, 100, excluded, 10)
        assert len(set(got.tolist())) == 10 and not set(got.tolist()) & set(excluded.tolist())
    with pytest.raises(ValueError, match="only 10 of 100"):
        sample_excluding(rng, 100, np.arange(90), 11)


def test_training_negatives_resampled_each_round_and_exclude_positives():
    positives = np.array([1, 5, 9])
    items, labels = training_examples(positives, 50, 4, train_negatives_rng(0, 3, 1))
    assert labels.tolist() == [1.0] * 3 + [0.0] * 12
    assert items[:3].tolist() == positives.tolist()
    assert not set(items[3:].tolist()) & set(positives.tolist())
    again, _ = training_examples(positives, 50, 4, train_negatives_rng(0, 3, 1))
    other, _ = training_examples(positives, 50, 4, train_negatives_rng(0, 3, 2))
    np.testing.assert_array_equal(items, again)
    assert not np.array_equal(items, other)


def test_catalog_size_from_num_items_or_dataset():
    from shared.config import ConfigError
    from shared.split import catalog_size, split_for
    from tests.conftest import small_config

    assert catalog_size(small_config()) == split_for(small_config()).num_items == 200
    assert catalog_size(small_config(num_items=1234)) == 1234  # no dataset needed
    assert split_for(small_config(num_items=200)).num_items == 200
    with pytest.raises(ConfigError, match="num-items is 1234 but the dataset has 200 items"):
        split_for(small_config(num_items=1234))


def test_holdout_stream_has_its_own_draws():
    # NumPy drops trailing zeros of a seed tuple: user 0 must not draw the epoch-14 shuffle's
    # numbers (seed, 14), nor any other stream's
    from shared.streams import Stream, centralized_shuffle_rng, generator, holdout_rng

    assert Stream.HOLDOUT == 14 and len({int(s) for s in Stream}) == len(Stream)
    draws = holdout_rng(0, 0).integers(0, 2**62, 4).tolist()
    assert draws != centralized_shuffle_rng(0, int(Stream.HOLDOUT)).integers(0, 2**62, 4).tolist()
    for stream in Stream:
        assert draws != generator(0, stream, 0).integers(0, 2**62, 4).tolist()
