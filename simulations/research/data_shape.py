"""How a data set is shaped, side by side: items per user and item popularity.

The population-scale rows of the privacy-utility study run on synthetic data whose shape
(``synthetic-shape = "movielens"``) is fitted to MovieLens-100K; this prints the marginals that
fit rests on for ML-100K and for the synthetic data at ML-100K's size (and any others asked
for), so a reader can see how close it is:

    python -m simulations.research.data_shape --data-dir ../shared/data/ml-100k --out runs/shape
    python -m simulations.research.data_shape --synthetic 10000x1682 --out runs/shape  # no ML

Writes ``shape.json`` and ``shape.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from shared.data import load_dataset
from shared.data.interactions import Interactions
from shared.split import leave_one_out
from shared.training import evaluate_popularity
from shared.wire import HR10

QUANTILES = (0.0, 0.1, 0.5, 0.9, 0.99, 1.0)
TOP_SHARES = (0.01, 0.1, 0.5)  # the share of interactions on the top 1%, 10%, 50% of items


def gini(values: np.ndarray) -> float:
    """The Gini coefficient of non-negative values (0: all equal; near 1: one holds all)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    if n == 0 or x.sum() == 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1).dot(x) / (n * x.sum()))


def shape_of(data: Interactions, seed: int = 0) -> dict[str, Any]:
    """Items per user and item degrees of ``data`` (items never interacted with count as 0),
    and the popularity ranking's HR@10 on its leave-one-out split (how far popularity alone
    goes: the line a private model must clear)."""
    per_user = np.bincount(data.user, minlength=data.num_users)
    degree = np.sort(np.bincount(data.item, minlength=data.num_items))[::-1]
    total = degree.sum()
    return {
        "users": int(data.num_users),
        "items": int(data.num_items),
        "interactions": int(len(data.user)),
        "per_user_quantiles": {str(q): float(np.quantile(per_user, q)) for q in QUANTILES},
        "per_user_log_mean": float(np.log(per_user[per_user > 0]).mean()),
        "per_user_log_sd": float(np.log(per_user[per_user > 0]).std()),
        "item_degree_quantiles": {str(q): float(np.quantile(degree, q)) for q in QUANTILES},
        "top_item_share": {
            str(f): float(degree[: max(1, int(len(degree) * f))].sum() / total) for f in TOP_SHARES
        },
        "item_gini": gini(degree),
        "items_never_seen": int((degree == 0).sum()),
        "popularity_hr10": evaluate_popularity(leave_one_out(data, seed=seed))[HR10],
    }


def _table(shapes: dict[str, dict[str, Any]]) -> str:
    names = list(shapes)
    rows = [
        ("users", lambda s: f"{s['users']:,}"),
        ("items", lambda s: f"{s['items']:,}"),
        ("interactions", lambda s: f"{s['interactions']:,}"),
        *[
            (f"items per user, q{q:g}", lambda s, q=q: f"{s['per_user_quantiles'][str(q)]:.0f}")
            for q in QUANTILES
        ],
        (
            "items per user, log mean / sd",
            lambda s: f"{s['per_user_log_mean']:.2f} / {s['per_user_log_sd']:.2f}",
        ),  # fmt: skip
        *[
            (f"share on top {f:.0%} of items", lambda s, f=f: f"{s['top_item_share'][str(f)]:.3f}")
            for f in TOP_SHARES
        ],
        ("Gini of item degrees", lambda s: f"{s['item_gini']:.3f}"),
        ("items never seen", lambda s: f"{s['items_never_seen']:,}"),
        ("popularity HR@10 (99 negatives)", lambda s: f"{s['popularity_hr10']:.3f}"),
    ]
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(f(shapes[n]) for n in names) + " |" for label, f in rows]
    return "\n".join(lines) + "\n"


def _size(text: str) -> tuple[int, int]:
    try:
        users, items = (int(x) for x in text.lower().split("x"))
    except ValueError:
        message = f"expected USERSxITEMS, e.g. 10000x1682; got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    return users, items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="MovieLens-100K's directory (u.data); omit to skip")
    parser.add_argument(
        "--synthetic",
        type=_size,
        action="append",
        default=[],
        help="a synthetic movielens-shaped set of USERSxITEMS (repeatable; default 943x1682)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    shapes: dict[str, dict[str, Any]] = {}
    if args.data_dir:
        try:
            shapes["ml-100k"] = shape_of(load_dataset("ml-100k", args.data_dir), args.seed)
        except (OSError, ValueError) as err:
            print(f"data_shape: cannot read ML-100K: {err}", file=sys.stderr)
            return 2
    sizes = args.synthetic or [(943, 1682)]
    for users, items in sizes:
        for shape in ("movielens", "default"):
            if shape == "default" and (users, items) != sizes[0]:
                continue  # the default shape once, for comparison
            data = load_dataset(
                "synthetic",
                seed=args.seed,
                synthetic_users=users,
                synthetic_items=items,
                synthetic_shape=shape,
            )
            shapes[f"synthetic {shape} {users}x{items}"] = shape_of(data, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shape.json").write_text(json.dumps(shapes, indent=2) + "\n")
    table = _table(shapes)
    (args.out / "shape.md").write_text(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
