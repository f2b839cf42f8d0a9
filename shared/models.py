"""NCF-family recommenders (GMF, MLP, NeuMF; He et al. 2017) and the MF dot-product baseline.

Every model splits into two parameter groups (docs/design.md §2):

- **private**: the user's own embedding rows (every parameter whose name starts with ``user_``).
  They never leave the device.
- **global**: everything else (item embeddings, towers, output layer). The only thing shared.

The split is a property of the model: :func:`global_names` / :func:`private_names` decide it once,
and :func:`global_arrays`, :func:`load_global`, :func:`private_state`, :func:`load_private` are
exact round trips over it. A federated client builds its model with ``num_users=1``; the global
part does not depend on the number of users, so server, clients and the centralized baseline all
share the same global layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

MODELS = ("gmf", "mlp", "neumf", "mf", "sasrec")  # sasrec: shared/sequence_model.py
PRIVATE_PREFIX = "user_"
_INIT_STD = 0.01  # as in the NCF reference implementation


def _embedding(num: int, dim: int) -> nn.Embedding:
    table = nn.Embedding(num, dim)
    nn.init.normal_(table.weight, std=_INIT_STD)
    return table


def _tower(input_dim: int, layers: Sequence[int]) -> nn.Sequential:
    modules: list[nn.Module] = []
    for width in layers:
        modules += [nn.Linear(input_dim, width), nn.ReLU()]
        input_dim = width
    return nn.Sequential(*modules)


class Recommender(nn.Module):
    """Scores (user, item) pairs; higher logit means more likely to interact.

    With public item features (``features``: one row per item, Wide & Deep style, Cheng et al.
    2016) every item table the model reads gets a deep part, a linear projection of the item's
    features added to its embedding, and the logit gets a wide part, a linear term on the
    features. The feature matrix is a non-persistent buffer: public catalogue data that every side
    loads itself, never trained, never in :func:`global_arrays` or a checkpoint. The projections
    are global parameters (``features_*``); without features the layout is exactly as before.
    """

    num_items: int
    item_features: torch.Tensor | None

    def _use_features(self, features: np.ndarray | None, tables: dict[str, int]) -> None:
        """Register the feature buffer and one projection per item table (``tables``: widths)."""
        if features is None:
            self.item_features = None
            return
        if features.ndim != 2 or features.shape[0] != self.num_items:
            raise ValueError(
                f"item features must have one row per item ({self.num_items}), "
                f"got shape {tuple(features.shape)}"
            )
        self.register_buffer(
            "item_features", torch.as_tensor(features, dtype=torch.float32), persistent=False
        )
        width = features.shape[1]
        self.features_deep = nn.ModuleDict(
            {name: nn.Linear(width, dim, bias=False) for name, dim in tables.items()}
        )
        for layer in self.features_deep.values():
            nn.init.normal_(layer.weight, std=_INIT_STD)
        self.features_wide = nn.Linear(width, 1, bias=False)
        nn.init.zeros_(self.features_wide.weight)

    def _item(self, table: str, items: torch.Tensor) -> torch.Tensor:
        """Item ``table``'s rows for ``items``, plus the projection of their features if any."""
        rows = getattr(self, table)(items)
        if self.item_features is None:
            return rows
        return rows + self.features_deep[table](self.item_features[items])

    def _wide(self, logits: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        if self.item_features is None:
            return logits
        return logits + self.features_wide(self.item_features[items]).squeeze(-1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def score_all_items(self, user: int) -> torch.Tensor:
        """Logits of every item for one user (full ranking)."""
        items = torch.arange(self.num_items)
        return self(torch.full_like(items, user), items)


class MF(Recommender):
    """Dot product with item and user biases (Rendle et al. 2020's strong baseline)."""

    def __init__(
        self, num_users: int, num_items: int, dim: int, features: np.ndarray | None = None
    ) -> None:
        super().__init__()
        self.num_items = num_items
        self.user_embedding = _embedding(num_users, dim)
        self.user_bias = nn.Embedding(num_users, 1)
        nn.init.zeros_(self.user_bias.weight)
        self.item_embedding = _embedding(num_items, dim)
        self.item_bias = nn.Embedding(num_items, 1)
        nn.init.zeros_(self.item_bias.weight)
        self._use_features(features, {"item_embedding": dim})

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        dot = (self.user_embedding(users) * self._item("item_embedding", items)).sum(-1)
        logits = dot + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)
        return self._wide(logits, items)


class GMF(Recommender):
    def __init__(
        self, num_users: int, num_items: int, dim: int, features: np.ndarray | None = None
    ) -> None:
        super().__init__()
        self.num_items = num_items
        self.user_gmf = _embedding(num_users, dim)
        self.item_gmf = _embedding(num_items, dim)
        self.output = nn.Linear(dim, 1)
        self._use_features(features, {"item_gmf": dim})

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        logits = self.output(self.user_gmf(users) * self._item("item_gmf", items)).squeeze(-1)
        return self._wide(logits, items)


class MLP(Recommender):
    def __init__(
        self,
        num_users: int,
        num_items: int,
        layers: Sequence[int],
        features: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.num_items = num_items
        half = layers[0] // 2  # user and item embeddings are concatenated into layer 0
        self.user_mlp = _embedding(num_users, half)
        self.item_mlp = _embedding(num_items, half)
        self.tower = _tower(2 * half, layers[1:])
        self.output = nn.Linear(layers[-1], 1)
        self._use_features(features, {"item_mlp": half})

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.user_mlp(users), self._item("item_mlp", items)], dim=-1)
        return self._wide(self.output(self.tower(x)).squeeze(-1), items)


class NeuMF(Recommender):
    """GMF and MLP branches fused by one output layer."""

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: int,
        layers: Sequence[int],
        features: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.num_items = num_items
        half = layers[0] // 2
        self.user_gmf = _embedding(num_users, dim)
        self.item_gmf = _embedding(num_items, dim)
        self.user_mlp = _embedding(num_users, half)
        self.item_mlp = _embedding(num_items, half)
        self.tower = _tower(2 * half, layers[1:])
        self.output = nn.Linear(dim + layers[-1], 1)
        self._use_features(features, {"item_gmf": dim, "item_mlp": half})

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        gmf = self.user_gmf(users) * self._item("item_gmf", items)
        mlp = self.tower(torch.cat([self.user_mlp(users), self._item("item_mlp", items)], dim=-1))
        return self._wide(self.output(torch.cat([gmf, mlp], dim=-1)).squeeze(-1), items)


def build_model(
    name: str,
    num_users: int,
    num_items: int,
    *,
    dim: int = 16,
    mlp_layers: Sequence[int] = (64, 32, 16),
    seed: int | None = None,
    item_features: np.ndarray | None = None,
    sequence: Mapping[str, float] | None = None,
) -> Recommender:
    """Build a model; with ``seed`` the initial weights are reproducible.

    ``item_features`` (public, one row per item) adds the Wide & Deep feature parts; the
    embeddings are drawn first, so they are the same with and without features.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    if len(mlp_layers) < 1 or mlp_layers[0] % 2:
        raise ValueError(f"mlp-layers must start with an even width, got {list(mlp_layers)}")
    if seed is not None:
        torch.manual_seed(seed)
    if (
        name == "sasrec"
    ):  # sequence: max_length, blocks, heads, dropout (RunConfig.sequence_options)
        from shared.sequence_model import SASRec  # imports this module: import it late

        return SASRec(num_users, num_items, dim, **(sequence or {}))
    if name == "mf":
        return MF(num_users, num_items, dim, item_features)
    if name == "gmf":
        return GMF(num_users, num_items, dim, item_features)
    if name == "mlp":
        return MLP(num_users, num_items, mlp_layers, item_features)
    return NeuMF(num_users, num_items, dim, mlp_layers, item_features)


def private_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.startswith(PRIVATE_PREFIX)]


def global_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if not n.startswith(PRIVATE_PREFIX)]


def global_arrays(model: nn.Module) -> list[np.ndarray]:
    """The shared parameters, in :func:`global_names` order, as float32 copies."""
    params = dict(model.named_parameters())
    return [params[n].detach().cpu().numpy().copy() for n in global_names(model)]


def load_global(model: nn.Module, arrays: Sequence[np.ndarray]) -> None:
    """Overwrite the shared parameters in place; shapes must match exactly."""
    names = global_names(model)
    if len(arrays) != len(names):
        raise ValueError(f"expected {len(names)} global arrays ({names}), got {len(arrays)}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, array in zip(names, arrays, strict=True):
            target = params[name]
            if tuple(array.shape) != tuple(target.shape):
                raise ValueError(
                    f"global array {name!r} has shape {tuple(array.shape)}, "
                    f"the model expects {tuple(target.shape)}"
                )
            target.copy_(torch.as_tensor(np.asarray(array), dtype=target.dtype))


def private_state(model: nn.Module) -> dict[str, np.ndarray]:
    params = dict(model.named_parameters())
    return {n: params[n].detach().cpu().numpy().copy() for n in private_names(model)}


def load_private(model: nn.Module, state: Mapping[str, np.ndarray]) -> None:
    names = private_names(model)
    if sorted(state) != sorted(names):
        raise ValueError(f"private state has {sorted(state)}, the model expects {sorted(names)}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            params[name].copy_(torch.as_tensor(state[name], dtype=params[name].dtype))
