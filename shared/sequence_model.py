"""SASRec (Kang & McAuley 2018): a self-attention next-item model, split like the NCF family.

The user is represented not by a learned row but by their own recent item sequence: the model
encodes it with causal self-attention and scores a candidate item by the dot product of the last
position's state with the item's embedding (the input table doubles as the output table, as in
the paper).

The split (docs/design.md §2) needs nothing new: every parameter is global (item embedding,
positional embedding, attention blocks, layer norms) and no ``user_`` parameter exists. The
sequences are a *buffer* (data, not a parameter) and a non-persistent one, so
:func:`shared.models.global_arrays`, ``state_dict`` and a saved model never contain them: a
device's sequence stays on the device, exactly as its private embedding would in NCF.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from shared.models import Recommender

PAD = -1  # an empty (left-padded) slot of a sequence; never an item id
_INIT_STD = 0.01


class SASRec(Recommender):
    """Causal self-attention over each user's last ``max_length`` items."""

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: int,
        *,
        max_length: int = 50,
        blocks: int = 2,
        heads: int = 1,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding-dim {dim} must be divisible by attention-heads {heads}")
        self.num_items = num_items
        self.max_length = max_length
        self.dim = dim
        # Named item_* so shared.item_vectors and the itemsum strategy see it as an item table.
        self.item_embedding = nn.Embedding(num_items, dim)
        nn.init.normal_(self.item_embedding.weight, std=_INIT_STD)
        self.position_embedding = nn.Embedding(max_length, dim)
        nn.init.normal_(self.position_embedding.weight, std=_INIT_STD)
        self.dropout = nn.Dropout(dropout)
        self.attention_norms = nn.ModuleList(nn.LayerNorm(dim, eps=1e-8) for _ in range(blocks))
        self.attentions = nn.ModuleList(
            nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
            for _ in range(blocks)
        )
        self.feed_forward_norms = nn.ModuleList(nn.LayerNorm(dim, eps=1e-8) for _ in range(blocks))
        self.feed_forwards = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
            for _ in range(blocks)
        )
        self.final_norm = nn.LayerNorm(dim, eps=1e-8)
        causal = torch.triu(torch.ones(max_length, max_length, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal_mask", causal, persistent=False)
        # Each user's own sequence (left-padded with PAD): data, never a parameter, never saved.
        self.register_buffer(
            "sequence", torch.full((num_users, max_length), PAD, dtype=torch.long), persistent=False
        )

    # -- the user's state: their sequence --------------------------------------------------
    def set_sequence(self, user: int, items: Sequence[int] | np.ndarray) -> None:
        """Store ``user``'s items (oldest first); only the last ``max_length`` are kept."""
        self.sequence[user] = torch.as_tensor(pad_left(np.asarray(items), self.max_length))

    # -- the item representation hook ------------------------------------------------------
    def item_representation(self, items: torch.Tensor) -> torch.Tensor:
        """The vector an item is, as input and as output. The one place public item features
        (genres, ...) would be added to the learned embedding, for input and output alike."""
        return self.item_embedding(items)

    # -- encoder ---------------------------------------------------------------------------
    def encode(self, sequences: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` item ids (PAD for empty) -> ``(B, L, dim)`` states; position ``t`` sees
        only items ``<= t`` (causal), so it predicts the item after ``t``."""
        length = sequences.shape[1]
        present = (sequences != PAD).unsqueeze(-1).float()
        x = self.item_representation(sequences.clamp(min=0)) * math.sqrt(self.dim)
        x = x + self.position_embedding(torch.arange(length, device=sequences.device))
        x = self.dropout(x) * present
        mask = self.causal_mask[:length, :length]
        for norm, attention, ff_norm, ff in zip(
            self.attention_norms,
            self.attentions,
            self.feed_forward_norms,
            self.feed_forwards,
            strict=True,
        ):
            query = norm(x)
            attended, _ = attention(query, x, x, attn_mask=mask, need_weights=False)
            x = query + attended
            x = ff_norm(x)
            x = (x + self.dropout(ff(x))) * present
        return self.final_norm(x)

    def position_logits(self, sequences: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Logit of ``targets[b, t]`` being the item after position ``t`` (PAD targets: 0)."""
        states = self.encode(sequences)
        return (states * self.item_representation(targets.clamp(min=0))).sum(-1)

    def _user_states(self, users: torch.Tensor) -> torch.Tensor:
        return self.encode(self.sequence[users])[:, -1]

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        unique, index = torch.unique(users, return_inverse=True)  # one encode per user
        states = self._user_states(unique)[index]
        return (states * self.item_representation(items)).sum(-1)

    @torch.no_grad()
    def score_all_items(self, user: int) -> torch.Tensor:
        """Logits of every item: the sequence is encoded once, then one matrix product."""
        state = self._user_states(torch.tensor([user]))[0]
        return self.item_representation(torch.arange(self.num_items)) @ state


def pad_left(items: np.ndarray, length: int) -> np.ndarray:
    """The last ``length`` items, left-padded with PAD to exactly ``length``."""
    out = np.full(length, PAD, dtype=np.int64)
    tail = np.asarray(items, dtype=np.int64)[-length:] if length else items[:0]
    if len(tail):
        out[length - len(tail) :] = tail
    return out
