"""Why an item is recommended: the device's own past items most like it (pure logic, no I/O).

The evidence is item similarity read off the global model's item tables
(:func:`shared.item_vectors.item_vectors`: the cosine of two items' vectors). It was chosen over
the model's own scores (e.g. how much a candidate's score drops when one past item is left out)
because that needs the private embedding re-fitted once per past item, seconds per explanation on
a phone, and the score also moves with the fit's randomness; similarity of public item tables is
deterministic, costs one matrix-vector product, and every reason it gives is one of the user's
own items. Nothing here reads the network or the store: the caller passes the model's vectors and
the device's own items, and the result stays on the device.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from shared.item_vectors import cosine_to

SIMILAR_ITEM = "item-similarity"  # cosine of the global model's item vectors


@dataclass(frozen=True)
class Explanation:
    """One of the device's own items that supports the explained item."""

    item: int  # a past item of this device (never one it did not interact with)
    score: float  # cosine similarity to the explained item, in [-1, 1]; higher: more support
    evidence: str  # the kind of evidence: SIMILAR_ITEM


def explain(vectors: np.ndarray, item: int, own_items: Iterable[int], k: int) -> list[Explanation]:
    """The ``k`` of ``own_items`` most similar to ``item``, best first (ties: smaller item id).

    ``item`` itself is left out of its own explanation (it is trivially most like itself);
    ``own_items`` may repeat (one item recorded twice counts once).
    """
    own = np.array(sorted({int(i) for i in own_items} - {int(item)}), dtype=np.int64)
    if len(own) == 0:
        return []
    scores = cosine_to(vectors, item, own)
    order = np.lexsort((own, -scores))  # best first, ties by item id
    return [Explanation(int(own[i]), float(scores[i]), SIMILAR_ITEM) for i in order[:k]]
