"""The centralized baseline: the same model, split, negatives and metrics, on pooled data.

It is the reference every federated number is compared with; the popularity ranking and a
random ranking, on the same split and protocol, are the references it must itself clear (both
are in the log and in the run directory's ``data.json``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np

from shared.baselines import POPULARITY, RANDOM, popularity_beyond_accuracy, record_data_summary
from shared.beyond_accuracy import (
    BEYOND_ACCURACY,
    COVERAGE10,
    DIVERSITY10,
    EXPOSURE_GINI10,
    NOVELTY10,
)
from shared.config import RunConfig
from shared.item_vectors import item_vectors
from shared.models import global_arrays, global_names
from shared.records import BEYOND_ACCURACY_FILE
from shared.rundir import RunDirectory
from shared.sequence_model import SASRec
from shared.sequence_training import pooled_examples, train_sequence_epoch
from shared.split import split_for, training_examples
from shared.streams import centralized_shuffle_rng, train_negatives_rng
from shared.training import (
    beyond_accuracy_of,
    evaluate_users_with_lists,
    make_optimizer,
    train_epoch,
)
from shared.wire import FULL_HR10, FULL_NDCG10, HR10, NDCG10


def run_centralized(config: RunConfig, echo: Callable[[str], object] = print) -> RunDirectory:
    split = split_for(config)
    model = config.build_model(split.num_items, num_users=split.num_users)
    optimizer = make_optimizer(
        config.optimizer, model.parameters(), config.centralized_learning_rate
    )
    run_dir = RunDirectory.create(config, kind="centralized")
    echo(
        f"[confide] centralized {config.model} on {config.dataset}: {split.num_users} users, "
        f"{split.num_items} items, {split.num_train} training interactions -> {run_dir.path}"
    )
    summary = record_data_summary(config, run_dir.path, echo)
    users_data = [split.user_data(u) for u in range(split.num_users)]
    started = time.monotonic()
    if isinstance(model, SASRec):
        for user, data in enumerate(users_data):
            model.set_sequence(user, data.train_items)
    for epoch in range(1, config.centralized_epochs + 1):
        epoch_started = time.monotonic()
        if isinstance(model, SASRec):
            loss = _sequence_epoch(config, model, optimizer, users_data, epoch)
        else:
            loss = _pointwise_epoch(config, model, optimizer, users_data, epoch)
        record: dict[str, float | int] = {"epoch": epoch, "train_loss": loss}
        if epoch % config.eval_every == 0 or epoch == config.centralized_epochs:
            metrics, lists = evaluate_users_with_lists(model, range(split.num_users), users_data)
            vectors = item_vectors(model, split.num_items)
            record.update(metrics | beyond_accuracy_of(lists, split, vectors))
        record["epoch_seconds"] = round(time.monotonic() - epoch_started, 3)
        record["elapsed_seconds"] = round(time.monotonic() - started, 3)
        run_dir.log(record)
        echo(progress(record, config.centralized_epochs))
    run_dir.save_model(global_names(model), global_arrays(model))
    _beyond_accuracy(model, split, run_dir, echo)
    run_dir.plot()
    last = next(r for r in reversed(run_dir.records()) if HR10 in r)
    echo(
        f"[confide] HR@10: model {last[HR10]:.4f}, popularity "
        f"{summary.baselines[POPULARITY][HR10]:.4f}, random {summary.baselines[RANDOM][HR10]:.4f}"
    )
    return run_dir


def _beyond_accuracy(model, split, run_dir: RunDirectory, echo: Callable[[str], object]) -> None:
    """The last evaluation's coverage, novelty, diversity and exposure Gini of the top-10 lists
    (shared/beyond_accuracy.py) beside the popularity ranking's, both with the final model's
    item vectors for diversity, into ``beyond_accuracy.json`` and the log."""
    last = next(r for r in reversed(run_dir.records()) if HR10 in r)
    figures = {
        "model": {"epoch": last["epoch"]} | {k: last[k] for k in BEYOND_ACCURACY},
        POPULARITY: popularity_beyond_accuracy(split, item_vectors(model, split.num_items)),
        "diversity_vectors": "the final model's item tables (shared/item_vectors.py), for both",
    }
    (run_dir.path / BEYOND_ACCURACY_FILE).write_text(json.dumps(figures, indent=2) + "\n")
    for name in ("model", POPULARITY):
        row = figures[name]
        echo(
            f"[confide] {name}: coverage@10 {row[COVERAGE10]:.3f} novelty@10 "
            f"{row[NOVELTY10]:.2f} bits diversity@10 {row[DIVERSITY10]:.3f} "
            f"exposure Gini@10 {row[EXPOSURE_GINI10]:.3f}"
        )


def progress(record: dict, total: int) -> str:
    line = f"[confide] epoch {record['epoch']}/{total} | loss {record['train_loss']:.4f}"
    if HR10 in record:
        line += (
            f" | HR@10 {record[HR10]:.4f} NDCG@10 {record[NDCG10]:.4f}"
            f" (full {record[FULL_HR10]:.4f}/{record[FULL_NDCG10]:.4f})"
        )
    return line + f" | {record['epoch_seconds']:.1f}s"


def _pointwise_epoch(config: RunConfig, model, optimizer, users_data, epoch: int) -> float:
    """NCF: (user, item, label) rows, the positives plus ``train-negatives`` fresh negatives."""
    split_items = users_data[0].num_items
    users, items, labels = [], [], []
    for user, data in enumerate(users_data):
        # Same per-user negative stream as the user's device would draw in round `epoch`.
        user_items, user_labels = training_examples(
            data.train_items,
            split_items,
            config.train_negatives,
            train_negatives_rng(config.seed, user, server_round=epoch),
        )
        users.append(np.full(len(user_items), user))
        items.append(user_items)
        labels.append(user_labels)
    return train_epoch(
        model,
        optimizer,
        np.concatenate(users),
        np.concatenate(items),
        np.concatenate(labels),
        config.centralized_batch_size,
        centralized_shuffle_rng(config.seed, epoch),
    )


def _sequence_epoch(config: RunConfig, model: SASRec, optimizer, users_data, epoch: int) -> float:
    """SASRec: every user's next-item windows, negatives from the user's own stream for `epoch`."""
    inputs, positives, negatives = pooled_examples(
        [d.train_items for d in users_data],
        users_data[0].num_items,
        model.max_length,
        [train_negatives_rng(config.seed, u, server_round=epoch) for u in range(len(users_data))],
    )
    return train_sequence_epoch(
        model,
        optimizer,
        inputs,
        positives,
        negatives,
        config.centralized_batch_size,
        centralized_shuffle_rng(config.seed, epoch),
    )
