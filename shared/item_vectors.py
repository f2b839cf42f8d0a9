"""Each item as one vector read off a model's shared item tables (public: the global model).

Explanations (which of my items is most like this one) and intra-list diversity need a notion
of item similarity that does not depend on any user. A model's item embedding tables are that
notion, and they are part of the global model, so using them reveals nothing about anyone.

Every model family names its item tables ``item_*`` (docs/design.md §2). A model may have more
than one (NeuMF: the GMF and the MLP tables, on different scales); each table's rows are scaled
to unit length and the tables are concatenated with weight ``1/sqrt(tables)``, so the cosine of
two item vectors is the mean of the per-table cosines. Bias columns (width 1) carry no direction
and are left out.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

ITEM_PREFIX = "item_"


def item_tables(model: nn.Module, num_items: int) -> list[str]:
    """Names of the model's item embedding tables (``item_*``, ``num_items`` rows, width > 1)."""
    return [
        name
        for name, param in model.named_parameters()
        if name.startswith(ITEM_PREFIX)
        and param.ndim == 2
        and param.shape[0] == num_items
        and param.shape[1] > 1
    ]


@torch.no_grad()
def item_vectors(model: nn.Module, num_items: int) -> np.ndarray:
    """``(num_items, d)`` float64 rows whose dot products are cosine similarities of items."""
    names = item_tables(model, num_items)
    if not names:
        raise ValueError(
            f"the model has no item embedding table named {ITEM_PREFIX}* with {num_items} rows: "
            "item similarity needs one"
        )
    params = dict(model.named_parameters())
    blocks = []
    for name in names:
        table = params[name].detach().cpu().double().numpy()
        norms = np.linalg.norm(table, axis=1, keepdims=True)
        blocks.append(table / np.where(norms > 0, norms, 1.0))
    return np.concatenate(blocks, axis=1) / np.sqrt(len(blocks))


def cosine_to(vectors: np.ndarray, item: int, others: np.ndarray) -> np.ndarray:
    """Cosine similarity of ``item`` to each of ``others`` (rows of :func:`item_vectors`)."""
    return vectors[np.asarray(others, dtype=np.int64)] @ vectors[item]
