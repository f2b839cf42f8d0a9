"""SASRec: the shared/private split, causality, the training windows and the device round."""

import numpy as np
import pytest
import torch

from client.training_round import LOCAL_USER, device_model, evaluate, train
from shared.config import ConfigError
from shared.item_vectors import item_tables
from shared.models import build_model, global_arrays, global_names, load_global, private_state
from shared.sequence_model import PAD, SASRec, pad_left
from shared.sequence_training import (
    pooled_examples,
    sample_negatives,
    train_sequence_epoch,
    training_windows,
)
from shared.split import UserData
from shared.wire import HR10
from simulations.centralized import run_centralized
from tests.conftest import small_config

OPTIONS = {"max_length": 5, "blocks": 2, "heads": 2, "dropout": 0.0}


def _model(num_users: int = 3, seed: int = 0) -> SASRec:
    model = build_model("sasrec", num_users, 20, dim=8, seed=seed, sequence=OPTIONS)
    assert isinstance(model, SASRec)
    return model


def test_split_round_trip_has_no_user_parameter_and_never_the_sequence():
    a, b = _model(seed=1), _model(seed=2)
    a.set_sequence(0, [3, 4, 5])
    assert private_state(a) == {}
    assert not any(n.startswith("user_") or "sequence" in n for n in global_names(a))
    assert "sequence" not in a.state_dict()  # a non-persistent buffer: never saved either
    assert item_tables(a, 20) == ["item_embedding.weight"]
    load_global(b, global_arrays(a))
    for x, y in zip(global_arrays(a), global_arrays(b), strict=True):
        np.testing.assert_array_equal(x, y)
    b.set_sequence(0, [3, 4, 5])
    a.eval(), b.eval()
    torch.testing.assert_close(a.score_all_items(0), b.score_all_items(0))
    # the global layout does not depend on the number of users (server vs device)
    assert [x.shape for x in global_arrays(_model(num_users=1))] == [
        x.shape for x in global_arrays(a)
    ]


def test_attention_is_causal_and_scores_match_forward():
    model = _model().eval()
    seq = torch.tensor([[1, 2, 3, 4, 5]])
    changed = torch.tensor([[1, 2, 3, 9, 5]])
    states, changed_states = model.encode(seq), model.encode(changed)
    torch.testing.assert_close(states[:, :3], changed_states[:, :3])  # the past ignores the future
    assert not torch.allclose(states[:, 3:], changed_states[:, 3:])
    model.set_sequence(1, [7, 8, 9, 10, 11, 12])  # longer than max_length: the last 5 are kept
    assert model.sequence[1].tolist() == [8, 9, 10, 11, 12]
    items = torch.arange(20)
    torch.testing.assert_close(
        model.score_all_items(1), model(torch.full_like(items, 1), items), rtol=1e-5, atol=1e-6
    )


def test_training_windows_cover_every_next_item_step_once():
    items = np.arange(10, 22)  # 12 items: 11 next-item steps
    inputs, targets = training_windows(items, 5)
    assert inputs.shape == targets.shape == (3, 5)
    assert inputs[0].tolist() == [16, 17, 18, 19, 20] and targets[0].tolist() == [
        17,
        18,
        19,
        20,
        21,
    ]
    assert inputs[2].tolist() == [PAD, PAD, PAD, PAD, 10] and targets[2].tolist()[-1] == 11
    assert sorted(targets[targets != PAD].tolist()) == list(range(11, 22))
    assert training_windows(np.array([4]), 5)[0].shape == (0, 5)
    assert pad_left(np.array([1, 2]), 4).tolist() == [PAD, PAD, 1, 2]


def test_negatives_avoid_the_users_items_and_keep_padding():
    targets = np.array([[PAD, 1, 2, 3]])
    negatives = sample_negatives(targets, np.array([1, 2, 3]), 6, np.random.default_rng(0))
    assert negatives[0, 0] == PAD
    assert set(negatives[0, 1:].tolist()) <= {0, 4, 5}
    with pytest.raises(ValueError, match="every item"):
        sample_negatives(targets, np.arange(6), 6, np.random.default_rng(0))


def _device_data() -> UserData:
    rng = np.random.default_rng(3)
    return UserData(200, rng.permutation(200)[:30], 150, np.arange(100, 110))


def test_federated_round_sends_the_global_arrays_only_and_learns():
    config = small_config(model="sasrec", sequence_length=10, local_epochs=3)
    data = _device_data()
    initial = global_arrays(config.build_model(200))
    result = train(config, data, user_id=4, server_round=1, global_params=initial, private=None)
    assert result.private == {}  # no user row: the user's state is its sequence, kept here
    assert [a.shape for a in result.global_arrays] == [a.shape for a in initial]
    sequence_shape = (1, config.sequence_length)
    assert all(a.shape != sequence_shape or a.dtype != np.int64 for a in result.global_arrays)
    assert any(not np.array_equal(a, b) for a, b in zip(result.global_arrays, initial, strict=True))
    assert np.isfinite(result.loss) and result.num_examples == 30
    evaluation = evaluate(config, data, 4, result.global_arrays, None)
    assert np.isfinite(evaluation.loss) and 0 <= evaluation.metrics[HR10] <= 1
    assert len(set(evaluation.top.tolist()) & set(data.train_items.tolist())) == 0
    model = device_model(config, 200, 4, result.global_arrays, None, data.train_items)
    assert model.sequence[LOCAL_USER].tolist() == data.train_items[-10:].tolist()


def test_device_model_refuses_a_sequence_model_without_the_sequence():
    config = small_config(model="sasrec")
    with pytest.raises(ValueError, match="time order"):
        device_model(config, 200, 0, global_arrays(config.build_model(200)), None)


def test_config_refuses_interaction_dp_and_bad_heads_for_sasrec():
    with pytest.raises(ConfigError, match="dp-interaction is not available for sasrec"):
        small_config(model="sasrec", dp_interaction=True)
    with pytest.raises(ConfigError, match="attention-heads"):
        small_config(model="sasrec", embedding_dim=8, attention_heads=3)
    with pytest.raises(ConfigError, match="attention-dropout"):
        small_config(model="sasrec", attention_dropout=1.0)
    small_config(model="neumf", attention_heads=3)  # sasrec's keys do not bind other models


def test_learns_a_sequential_pattern_that_no_user_row_could():
    """Every user walks the same cycle from a different start: the next item is a function of the
    last one only, which a sequence model learns and a static user/item score cannot."""
    num_items, users, length = 30, 30, 6
    options = OPTIONS | {"max_length": length, "blocks": 1}
    model = build_model("sasrec", users, num_items, dim=16, seed=0, sequence=options)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    sequences = [(start + np.arange(9)) % num_items for start in range(users)]
    rngs = [np.random.default_rng(u) for u in range(users)]
    for _ in range(20):
        inputs, positives, negatives = pooled_examples(sequences, num_items, length, rngs)
        train_sequence_epoch(model, optimizer, inputs, positives, negatives, 32, rng)
    model.eval()
    hits = 0
    for user, seq in enumerate(sequences):
        model.set_sequence(user, seq)
        scores = model.score_all_items(user)
        scores[seq] = -torch.inf  # ranked among unseen items, as the protocol does
        hits += int(scores.argmax()) == (seq[-1] + 1) % num_items
    assert hits >= 27  # chance: about 1.4 of 30


def test_centralized_sasrec_run_learns_and_saves_no_sequence(tmp_path):
    config = small_config(
        model="sasrec",
        synthetic_users=40,
        synthetic_items=200,
        sequence_length=10,
        centralized_epochs=2,
        eval_every=2,
        out_dir=str(tmp_path / "run"),
    )
    run_dir = run_centralized(config, echo=lambda _: None)
    records = run_dir.records()
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert 0 <= records[-1]["full_hr10"] <= records[-1]["hr10"] <= 1
    saved = np.load(run_dir.path / "global_model.npz")
    assert sorted(saved.files) == sorted(global_names(config.build_model(200)))
    assert not any("sequence" in name or name.startswith("user_") for name in saved.files)
