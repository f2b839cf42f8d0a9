"""Diagnostic: how good is a run's global model once every user re-fits a fresh private embedding?

A run's HR@10 mixes two things: the global (item) model and how well each user's private
embedding matches it. This probe holds the second fixed: every user starts from a fresh embedding
and fits it on their own training data for ``--epochs`` epochs (global parameters frozen, as a
device does before recommending), then ranks their held-out item. Applied to a centralized and a
federated model of the same harness, it says whether a gap lies in the item model or in the users.

    python -m simulations.research.refit_probe RUN_DIR --epochs 20 --lr 0.03
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from client import training_round
from shared.config import RunConfig
from shared.saved_run import load_run
from shared.split import split_for
from shared.wire import EVAL_METRICS


def refit_metrics(config: RunConfig, arrays: list[np.ndarray]) -> dict[str, float]:
    """Mean HR/NDCG@10 (sampled, full) over all users, each with a freshly fitted embedding."""
    split = split_for(config)
    rows = [
        training_round.evaluate(config, split.user_data(user), user, arrays, None).metrics
        for user in range(split.num_users)
    ]
    return {key: float(np.mean([row[key] for row in rows])) for key in EVAL_METRICS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run (config.json and global_model.npz)")
    parser.add_argument("--epochs", type=int, default=20, help="re-fit epochs per user")
    parser.add_argument("--lr", type=float, default=0.03, help="re-fit learning rate (Adam)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    run = Path(args.run_dir)
    try:
        saved, arrays = load_run(run)
    except (OSError, ValueError) as err:
        print(f"refit_probe: {run} is not a finished run: {err}", file=sys.stderr)
        return 2
    config = replace(saved, personalize_epochs=args.epochs, personalize_learning_rate=args.lr)
    result = {"run": str(run), "epochs": args.epochs, "lr": args.lr}
    result |= {k: round(v, 4) for k, v in refit_metrics(config, arrays).items()}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
