"""The run configuration: one typed, frozen object parsed once from Flower's run config.

Defaults live in one place only, ``[tool.flwr.app.config]`` in pyproject.toml (found by
:func:`shared.defaults.default_values`, in a checkout or an installed wheel). Flower merges them
with ``flwr run --run-config`` overrides; ``confide`` merges them with ``--config FILE.toml`` and
``--set key=value`` (:func:`resolve_config`). Both end in :meth:`RunConfig.from_mapping`, which
rejects unknown keys, wrong types and out-of-range values with a message that says what to write
instead.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from shared.data import AUTO, CSV_HEADERS, DATASETS
from shared.data.delimited import check_delimiter
from shared.data.generator import SHAPE_NAMES
from shared.defaults import default_values
from shared.faults import parse_fault
from shared.models import MODELS, Recommender, build_model
from shared.privacy import ACCOUNTANTS
from shared.secagg import SecAggConfigError, SecAggPlan, plan_secagg

STRATEGIES = ("fedavg", "fedadam", "itemsum")
NOISE_SOURCES = ("server", "devices")
# Adaptive clipping's default ceiling on S: this many times the initial clip norm.
ADAPTIVE_CLIP_HEADROOM = 10.0
INTERACTION_MODES = ("local-epochs", "pooled")
_LAYERS = re.compile(r"[0-9]{1,9}(,[0-9]{1,9})*")  # mlp-layers: widths, ASCII digits only
CANARY_UNITS = ("user", "interaction")
OPTIMIZERS = ("adam", "sgd")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class RunConfig:
    # data
    seed: int
    dataset: str
    data_dir: str
    csv_delimiter: str  # dataset "csv" only; "auto" detects it
    csv_header: str  # dataset "csv" only: auto | yes | no
    min_rating: float  # keep interactions rated at least this (0: all); needs a rating column
    min_user_interactions: int  # k-core before the split: users with fewer are dropped
    min_item_interactions: int  # ... and items with fewer, applied in turn until stable
    synthetic_users: int
    synthetic_items: int
    synthetic_shape: str  # "default" | "movielens" (shared/data/generator.py: SHAPES)
    num_items: int
    eval_negatives: int
    train_negatives: int
    # model
    model: str
    embedding_dim: int
    mlp_layers: str
    item_features: str  # "" | "movielens" | a CSV path: public catalogue features (Wide & Deep)
    sequence_length: int  # sasrec: the last N items of a user's sequence it attends over
    attention_blocks: int  # sasrec: self-attention blocks
    attention_heads: int  # sasrec: heads per block (must divide embedding-dim)
    attention_dropout: float  # sasrec: dropout on embeddings, attention and feed-forward
    # federation
    num_server_rounds: int
    clients_per_round: int
    fraction_fit: float
    min_fit_clients: int
    eval_every: int
    eval_clients: int
    strategy: str
    server_learning_rate: float
    server_momentum: float
    server_adam_tau: float
    max_num_examples: int
    max_update_norm: float
    round_timeout: float  # seconds the server waits for a round's replies (fit, evaluate)
    # local training
    local_epochs: int
    batch_size: int
    learning_rate: float
    learning_rate_decay: float
    learning_rate_floor: float
    optimizer: str
    personalize_epochs: int
    personalize_learning_rate: float
    # centralized baseline
    centralized_epochs: int
    centralized_batch_size: int
    centralized_learning_rate: float
    # interaction-level DP: Opacus DP-SGD on each device
    dp_interaction: bool
    dp_noise_multiplier: float
    dp_max_grad_norm: float
    dp_target_epsilon: float
    dp_planned_participations: int
    dp_delta: float
    dp_epsilon_cap: float
    dp_accountant: str
    dp_interaction_mode: str  # "local-epochs" | "pooled" (client/pooled.py)
    dp_pooled_sample_rate: float  # pooled: Poisson rate of each interaction per round
    dp_reproducible_noise: bool  # RESEARCH ONLY: DP randomness from the run seed (not secret)
    # user-level DP: DP-FedAvg (clip each update on the device, noise on the server)
    dp_user: bool
    dp_user_noise_multiplier: float
    dp_user_clip_norm: float
    dp_user_target_epsilon: float
    dp_user_delta: float
    dp_user_epsilon_cap: float
    # adaptive clipping (Andrew et al. 2021): S follows a quantile of the devices' update norms
    dp_user_adaptive_clip: bool
    dp_user_clip_quantile: float  # gamma: the fraction of devices meant to be under S
    dp_user_clip_learning_rate: float  # eta of the geometric update S <- S exp(-eta (b - gamma))
    dp_user_clip_count_stddev: float  # sigma_b on the count of devices under S (0: cohort / 20)
    dp_user_clip_norm_max: float  # S stays below this (0: 10 x dp-user-clip-norm): SecAgg+'s B
    # who adds the user-level noise: the server, or the devices inside SecAgg+ (Skellam)
    dp_noise_source: str
    dp_noise_min_survivors: int  # 0: secagg-reconstruction-threshold (the fewest SecAgg+ allows)
    # secure aggregation (SecAgg+)
    secagg: bool
    secagg_num_shares: int
    secagg_reconstruction_threshold: int
    secagg_timeout: float
    secagg_update_bound: float
    secagg_max_cohort: int
    test_secagg_fault: str  # TEST ONLY: fault injection (see shared.faults.parse_fault)
    # membership audit: canaries in the training data (shared/canaries.py; research runs only)
    audit_canaries: int
    audit_canary_items: int
    audit_canary_unit: str
    # poisoning audit: malicious simulated devices promoting one item (shared/poisoning.py)
    audit_poison_fraction: float
    audit_poison_boost: float
    item_row_clip: float  # server defence: each device's item-row change <= this x the median
    # output
    out_dir: str
    # checkpoint and resume: a run directory (or its checkpoint file) to continue; "" starts anew
    resume_from: str
    # cohort engine (simulation only): users one Flower node trains at once (client/cohort.py)
    cohort_size: int

    def local_learning_rate(self, server_round: int) -> float:
        """The devices' learning rate in a round: decays geometrically from round 1 to the floor."""
        decayed = self.learning_rate * self.learning_rate_decay ** (server_round - 1)
        return max(decayed, min(self.learning_rate_floor, self.learning_rate))

    def secagg_plan(self) -> SecAggPlan | None:
        """The derived SecAgg+ parameters (None when SecAgg+ is off); raises if unsafe."""
        if not self.secagg:
            return None
        return self._derived_secagg()

    def _derived_secagg(self) -> SecAggPlan:
        return plan_secagg(
            self.user_clip_ceiling if self.dp_user else self.secagg_update_bound,
            self.secagg_max_cohort,
            self.secagg_num_shares,
            self.secagg_reconstruction_threshold,
            self.secagg_timeout,
        )

    def noise_quantizer_plan(self) -> SecAggPlan | None:
        """Under device noise, the SecAgg+ parameters the devices' integers live in: SecAgg+'s
        own, or on shards (``cohort-size > 1``, no SecAgg+ across shards) the same derivation,
        so each simulated user's noised integers are exactly those its device would mask."""
        return self._derived_secagg() if self.device_noise else None

    def build_model(
        self, num_items: int, *, seed: int | None = None, num_users: int = 1
    ) -> Recommender:
        """This run's model, with one user row unless ``num_users`` (a pooled shard, the
        centralized baseline): seeded by the run (the initial global model the server keeps the
        global part of) unless a device passes its own seed."""
        return build_model(
            self.model,
            num_users,
            num_items,
            dim=self.embedding_dim,
            mlp_layers=self.layers,
            seed=self.seed if seed is None else seed,
            item_features=self.item_feature_matrix(num_items),
            sequence=self.sequence_options,
        )

    def item_feature_matrix(self, num_items: int) -> np.ndarray | None:
        """The run's public item features (``item-features``), checked against the catalogue."""
        if not self.item_features:
            return None
        from shared.split import item_features_for

        features = item_features_for(self)
        if features.shape[0] != num_items:
            raise ConfigError(
                f"item-features has rows for {features.shape[0]} items but the model has "
                f"{num_items}: point num-items and item-features at the same catalogue"
            )
        return features

    @property
    def sequence_options(self) -> dict[str, float]:
        """SASRec's architecture keys, as :class:`shared.sequence_model.SASRec` takes them."""
        return {
            "max_length": self.sequence_length,
            "blocks": self.attention_blocks,
            "heads": self.attention_heads,
            "dropout": self.attention_dropout,
        }

    @property
    def uniform_weights(self) -> bool:
        """Whether the server weighs every device the same: under user-level DP a device's weight
        must not depend on its data, and item-sum is uniform by definition."""
        return self.dp_user or self.strategy == "itemsum"

    @property
    def private_replies(self) -> bool:
        """Whether devices must keep their replies to the update alone (weight 1, no loss).

        A device's example count and training loss are functions of its data sent in plaintext:
        under interaction-level DP they would break the guarantee (one interaction changes the
        count), and under user-level DP or SecAgg+ no aggregation rule needs them.
        """
        return self.dp_interaction or self.dp_user or self.secagg

    @property
    def pooled(self) -> bool:
        """Whether interaction-level DP runs pooled: one clipped gradient sum per device and
        round, noised once on the cohort's sum (client/pooled.py, docs/design.md §4)."""
        return self.dp_interaction and self.dp_interaction_mode == "pooled"

    @property
    def user_clip_ceiling(self) -> float:
        """The largest clip norm S a device can be told: S itself, or under adaptive clipping
        ``dp-user-clip-norm-max`` (SecAgg+'s quantizer is derived for it, so nothing clips)."""
        if not self.dp_user_adaptive_clip:
            return self.dp_user_clip_norm
        return self.dp_user_clip_norm_max or ADAPTIVE_CLIP_HEADROOM * self.dp_user_clip_norm

    @property
    def device_noise(self) -> bool:
        """Whether the devices add the user-level noise inside SecAgg+ (docs/design.md §4)."""
        return self.dp_user and self.dp_noise_source == "devices"

    @property
    def noise_min_survivors(self) -> int:
        """The fewest devices whose noise the sum must hold: SecAgg+ never finishes with fewer
        than its reconstruction threshold, which is the default."""
        return self.dp_noise_min_survivors or self.secagg_reconstruction_threshold

    def check_federated_run(self) -> None:
        """Refuse at setup what ``cohort-size > 1`` (nodes that simulate shards of users on the
        cohort engine, client/shard.py) cannot do yet, each with what to do instead."""
        if self.cohort_size <= 1:
            return
        refused = [
            (self.num_items > 0, "a deployment keeps one device per node: unset num-items"),
            (
                self.secagg,
                "SecAgg+ across shards is not built (each shard's sum would need its own bound "
                "and quantizer): set secagg = false, or cohort-size = 1",
            ),
            (
                self.audit_poison_fraction > 0 or self.item_row_clip > 0,
                "the poisoning audit and item-row-clip need each device's own update: set "
                "cohort-size = 1",
            ),
            (
                self.device_noise and self.dp_user_adaptive_clip,
                "adaptive clipping with device noise on shards is not built (the bit would be one "
                "more noised coordinate of every shard's sum): set cohort-size = 1 with secagg = "
                'true, or dp-noise-source = "server"',
            ),
        ]
        for hit, why in refused:
            if hit:
                raise ConfigError(f"cohort-size {self.cohort_size}: {why}")

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.mlp_layers.split(","))

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name.replace("_", "-") for f in fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Parse kebab-case keys (as in pyproject.toml) into a validated config."""
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(set(values) - set(known), key=str)  # a mapping's keys may be any type
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {', '.join(known)}")
        missing = sorted(set(known) - set(values))
        if missing:
            raise ConfigError(
                f"missing config key(s) {missing}: start from shared.defaults.default_values() "
                "(the [tool.flwr.app.config] table of pyproject.toml) or set them explicitly"
            )
        kwargs = {f.name: _coerce(key, values[key], f.type) for key, f in known.items()}
        config = cls(**kwargs)
        config.validate()
        return config

    @classmethod
    def from_saved(cls, values: Mapping[str, Any]) -> RunConfig:
        """A config an earlier run (or an older Confide) saved: config.json, a device's store.

        Saved configs outlive the code that wrote them, so keys added since take their defaults,
        and entries that are not config keys (``kind``, keys since removed) are dropped; every
        value the run recorded wins.
        """
        defaults = default_values()
        return cls.from_mapping(defaults | {k: v for k, v in values.items() if k in defaults})

    def to_mapping(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        _one_of("dataset", self.dataset, DATASETS)
        _one_of("synthetic-shape", self.synthetic_shape, SHAPE_NAMES)
        _one_of("model", self.model, MODELS)
        _one_of("strategy", self.strategy, STRATEGIES)
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        if self.dataset != "synthetic" and not self.data_dir:
            raise ConfigError(f"dataset {self.dataset!r} needs data-dir: the path to its files")
        self._validate_csv()
        self._validate_filters()
        if self.item_features == "movielens" and self.dataset not in MOVIELENS_DATASETS:
            raise ConfigError(
                f"item-features = 'movielens' reads the catalogue of a MovieLens dataset, but "
                f"dataset is {self.dataset!r}: set item-features to a CSV path of item features, "
                "or to '' for none"
            )
        try:
            if not _LAYERS.fullmatch(self.mlp_layers):  # int() also takes "1_0", " 8", "٢"
                raise ValueError(self.mlp_layers)
            layers = self.layers
        except ValueError:
            raise ConfigError(
                "mlp-layers must be comma-separated widths like '64,32,16', "
                f"got {self.mlp_layers!r}"
            ) from None
        if not layers or layers[0] % 2 or min(layers) < 1:
            raise ConfigError(
                f"mlp-layers must be positive and start even, got {self.mlp_layers!r}"
            )
        self._require(_AT_LEAST_ONE, lambda v: v >= 1, "at least 1")
        self._require(_NON_NEGATIVE, lambda v: v >= 0, "0 or more")
        self._require(_POSITIVE, lambda v: v > 0, "positive")
        self._require(("fraction_fit", "learning_rate_decay"), lambda v: 0 < v <= 1, "in (0, 1]")
        self._require(("dp_delta", "dp_user_delta"), lambda v: 0 < v < 1, "in (0, 1)")
        self._require(("server_momentum",), lambda v: 0 <= v < 1, "in [0, 1)")
        if self.server_momentum and self.strategy == "fedadam":
            raise ConfigError(
                "server-momentum applies to fedavg and itemsum; fedadam keeps its own first "
                "moment (beta 0.9): set server-momentum = 0.0 or use strategy fedavg"
            )
        self._validate_sequence_model()
        self._validate_privacy()
        self._validate_secagg()
        self._validate_noise_source()
        self._validate_adaptive_clip()
        self._validate_audit()

    def _require(self, keys: tuple[str, ...], ok, requirement: str) -> None:
        for key in keys:
            value = getattr(self, key)
            if not ok(value):
                raise ConfigError(f"{key.replace('_', '-')} must be {requirement}, got {value!r}")

    def _validate_csv(self) -> None:
        _one_of("csv-header", self.csv_header, CSV_HEADERS)
        if not self.csv_delimiter:
            raise ConfigError(
                'csv-delimiter is empty: set "auto" to detect it, or the separator, e.g. ";", '
                '"tab", "whitespace"'
            )
        try:
            check_delimiter(self.csv_delimiter)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.dataset != "csv" and (self.csv_delimiter, self.csv_header) != (AUTO, AUTO):
            raise ConfigError(
                f"csv-delimiter and csv-header apply to dataset 'csv' only; {self.dataset!r} "
                f'has a fixed format: set both to "auto" or use dataset = "csv"'
            )

    def _validate_filters(self) -> None:
        if self.min_user_interactions < 2:
            raise ConfigError(
                f"min-user-interactions must be at least 2, got {self.min_user_interactions}: "
                "leave-one-out holds one interaction out and needs one to train on"
            )
        if self.min_item_interactions < 1:
            raise ConfigError(
                f"min-item-interactions must be at least 1, got {self.min_item_interactions} "
                "(1 keeps every item)"
            )
        if not self.min_rating >= 0:  # also refuses NaN
            raise ConfigError(
                f"min-rating must be 0 (keep all) or more, got {self.min_rating!r}: interactions "
                "rated below it are dropped before the split"
            )

    def _validate_sequence_model(self) -> None:
        if not 0 <= self.attention_dropout < 1:
            raise ConfigError(f"attention-dropout must be in [0, 1), got {self.attention_dropout}")
        if self.model == "sasrec" and self.embedding_dim % self.attention_heads:
            raise ConfigError(
                f"embedding-dim {self.embedding_dim} is not divisible by attention-heads "
                f"{self.attention_heads}: sasrec splits the embedding across heads"
            )
        if self.model == "sasrec" and self.dp_interaction:
            raise ConfigError(
                "dp-interaction is not available for sasrec: one interaction is a target and the "
                "context of later ones, so per-position DP-SGD would not bound it; use dp-user"
            )
        if self.model == "sasrec" and self.item_features:
            raise ConfigError(
                "item-features is not built for sasrec yet (its item representation hook is "
                "there, the feature parts are not): set item-features = '' for sasrec"
            )
        if self.model == "sasrec" and self.cohort_size > 1:
            raise ConfigError(
                "cohort-size > 1 runs the NCF family only (client/cohort.py trains user rows): "
                "set cohort-size = 1 for sasrec"
            )

    def _validate_privacy(self) -> None:
        _one_of("dp-accountant", self.dp_accountant, ACCOUNTANTS)
        if self.dp_interaction and self.dp_noise_multiplier == 0 and self.dp_target_epsilon == 0:
            raise ConfigError(
                "dp-interaction is on but neither dp-noise-multiplier nor dp-target-epsilon is "
                "set: with no noise there is no privacy; set one of them"
            )
        self._validate_pooled()
        if self.dp_user and self.dp_user_noise_multiplier == 0 and self.dp_user_target_epsilon == 0:
            raise ConfigError(
                "dp-user is on but neither dp-user-noise-multiplier nor dp-user-target-epsilon is "
                "set: with no noise there is no privacy; set one of them"
            )

    def _validate_pooled(self) -> None:
        _one_of("dp-interaction-mode", self.dp_interaction_mode, INTERACTION_MODES)
        if not 0 < self.dp_pooled_sample_rate <= 1:
            raise ConfigError(
                "dp-pooled-sample-rate is each interaction's chance to be in a round's gradient "
                f"sum: use a value in (0, 1], e.g. 0.1; got {self.dp_pooled_sample_rate!r}"
            )
        if self.dp_interaction_mode != "pooled":
            return
        refused = [
            (
                not self.dp_interaction,
                "it is a way to run interaction-level DP: set dp-interaction = true",
            ),
            (
                self.dp_user,
                "pooled gradients under user-level DP too (a user-level clip of each device's "
                'gradient sum) is not built: use dp-interaction-mode = "local-epochs" with dp-user',
            ),
            (
                self.strategy == "itemsum",
                "the server steps on the mean of the devices' gradient sums, and item-sum would "
                'add item rows unscaled: use strategy = "fedadam" (or "fedavg")',
            ),
        ]
        for hit, why in refused:
            if hit:
                raise ConfigError(f'dp-interaction-mode = "pooled": {why}')

    def _validate_adaptive_clip(self) -> None:
        if not 0 < self.dp_user_clip_quantile < 1:
            raise ConfigError(
                "dp-user-clip-quantile is the fraction of devices whose update should be within "
                f"the clip norm: use a value in (0, 1), e.g. 0.5; got "
                f"{self.dp_user_clip_quantile!r}"
            )
        if not self.dp_user_adaptive_clip:
            return
        if not self.dp_user:
            raise ConfigError(
                "dp-user-adaptive-clip: it adapts the user-level clip norm: set dp-user = true"
            )
        if self.user_clip_ceiling < self.dp_user_clip_norm:
            raise ConfigError(
                f"dp-user-clip-norm-max {self.dp_user_clip_norm_max} is below the initial "
                f"dp-user-clip-norm {self.dp_user_clip_norm}: set it higher, or 0 for "
                f"{ADAPTIVE_CLIP_HEADROOM:g} x dp-user-clip-norm"
            )
        stddev, z = self.dp_user_clip_count_stddev, self.dp_user_noise_multiplier
        if stddev and not self.dp_user_target_epsilon and stddev <= z / 2:
            raise ConfigError(
                f"dp-user-clip-count-stddev {stddev} is too small for dp-user-noise-multiplier "
                f"{z}: the count alone would spend the whole budget; set it above {z / 2:g} "
                "(the paper: the expected cohort / 20), or 0 for that default"
            )

    def _validate_noise_source(self) -> None:
        _one_of("dp-noise-source", self.dp_noise_source, NOISE_SOURCES)
        if self.dp_noise_min_survivors < 0:
            raise ConfigError(
                f"dp-noise-min-survivors must be 0 (the SecAgg+ reconstruction threshold) or "
                f"positive, got {self.dp_noise_min_survivors}"
            )
        if self.dp_noise_source != "devices":
            return
        if not (self.dp_user and (self.secagg or self.cohort_size > 1)):
            raise ConfigError(
                'dp-noise-source = "devices" needs secagg = true and dp-user = true (the devices '
                'add the user-level noise inside SecAgg+): set both, or dp-noise-source = "server"'
                " (in a simulation on shards, cohort-size > 1, each simulated user adds its share "
                "and secagg stays false)"
            )
        if not self.secagg:  # shards: the quantizer SecAgg+ would use, derived all the same
            try:
                self.noise_quantizer_plan()
            except SecAggConfigError as err:
                raise ConfigError(str(err)) from None
        if self.dp_accountant != "rdp":
            raise ConfigError(
                f'dp-noise-source = "devices" is accounted by the Skellam RDP accountant, not '
                f'{self.dp_accountant!r}: set dp-accountant = "rdp"'
            )
        # More survivors than Flower's threshold is allowed: the server's SecAgg+ workflow halts
        # before unmasking a sum of fewer (server/secagg.py). More than a round's cohort is not.
        cohort = self.clients_per_round
        if cohort and self.noise_min_survivors > cohort:
            raise ConfigError(
                f"dp-noise-min-survivors {self.dp_noise_min_survivors} is more than the "
                f"{cohort} devices a round expects (clients-per-round): nearly every round would "
                f"halt; use dp-noise-min-survivors <= {cohort}, and leave room for dropouts"
            )
        if self.noise_min_survivors > self.secagg_max_cohort:
            raise ConfigError(
                f"dp-noise-min-survivors {self.dp_noise_min_survivors} is more than "
                f"secagg-max-cohort {self.secagg_max_cohort}: no round could reach it"
            )

    def _validate_audit(self) -> None:
        _one_of("audit-canary-unit", self.audit_canary_unit, CANARY_UNITS)
        self._validate_poisoning()
        if not self.audit_canaries:
            return
        # The audit tests the guarantee of its unit: a run must have that unit's DP, or none.
        if self.audit_canary_unit == "user" and self.dp_interaction and not self.dp_user:
            raise ConfigError(
                "audit-canary-unit user audits user-level DP, but this run has only dp-interaction "
                'on: set audit-canary-unit = "interaction" or turn dp-user on'
            )
        if self.audit_canary_unit == "interaction" and self.dp_user and not self.dp_interaction:
            raise ConfigError(
                "audit-canary-unit interaction audits interaction-level DP, but this run has only "
                'dp-user on: set audit-canary-unit = "user" or turn dp-interaction on'
            )

    def _validate_poisoning(self) -> None:
        if not 0 <= self.audit_poison_fraction < 1:
            raise ConfigError(
                "audit-poison-fraction is the share of devices that attack: use a value in "
                f"[0, 1), e.g. 0.01; got {self.audit_poison_fraction!r}"
            )
        plaintext_only = {
            "audit-poison-fraction": self.audit_poison_fraction,
            "item-row-clip": self.item_row_clip,
        }
        for key, value in plaintext_only.items():
            if value and self.secagg:
                raise ConfigError(
                    f"{key} needs plaintext aggregation, but secagg = true: under SecAgg+ the "
                    "server sees no single update to bound, and an attacker skips the devices' "
                    f"own clipping. Set secagg = false or {key} = 0"
                )
        if self.audit_poison_fraction and self.model == "sasrec":
            raise ConfigError(
                "audit-poison-fraction: the promotion attack moves a target item's rows in the "
                "item tables of the NCF family and MF; use model neumf, gmf, mlp or mf"
            )

    def _validate_secagg(self) -> None:
        try:
            parse_fault(self.test_secagg_fault)
        except ValueError as err:
            raise ConfigError(f"test-secagg-fault: {err}") from None
        if not self.secagg:
            return
        try:
            plan = self.secagg_plan()
        except SecAggConfigError as err:
            raise ConfigError(str(err)) from None
        fixed = self.clients_per_round and not self.dp_user  # a fixed cohort size is known now
        if fixed and self.clients_per_round > plan.max_cohort:
            raise ConfigError(
                f"clients-per-round {self.clients_per_round} exceeds secagg-max-cohort "
                f"{plan.max_cohort}: the masked sum could wrap around; set secagg-max-cohort = "
                f"{self.clients_per_round} (the modulus is derived from it) or fewer clients"
            )
        if self.min_fit_clients > plan.max_cohort:
            raise ConfigError(
                f"min-fit-clients {self.min_fit_clients} exceeds secagg-max-cohort "
                f"{plan.max_cohort}: set secagg-max-cohort = {self.min_fit_clients} or lower it"
            )
        threshold = plan.reconstruction_threshold
        if fixed and max(self.clients_per_round, self.min_fit_clients) < threshold:
            raise ConfigError(
                f"clients-per-round {self.clients_per_round} is below "
                f"secagg-reconstruction-threshold {plan.reconstruction_threshold}: no round "
                f"could complete; use clients-per-round >= {plan.reconstruction_threshold}"
            )


MOVIELENS_DATASETS = ("ml-100k", "ml-1m", "movielens-csv")  # their catalogues: item features
_AT_LEAST_ONE = (
    *("synthetic_users", "synthetic_items", "eval_negatives", "embedding_dim"),
    *("num_server_rounds", "min_fit_clients", "eval_every", "max_num_examples"),
    *("local_epochs", "batch_size", "centralized_epochs", "centralized_batch_size"),
    *("dp_planned_participations", "audit_canary_items"),
    "cohort_size",
    *("sequence_length", "attention_blocks", "attention_heads"),
    *("secagg_num_shares", "secagg_reconstruction_threshold", "secagg_max_cohort"),
)
_NON_NEGATIVE = (
    "seed",  # NumPy refuses negative seeds, and only when the data is drawn
    *("num_items", "train_negatives", "clients_per_round", "eval_clients", "personalize_epochs"),
    *("learning_rate_floor", "audit_canaries", "audit_poison_boost", "item_row_clip"),
    *("dp_noise_multiplier", "dp_target_epsilon", "dp_epsilon_cap"),
    *("dp_user_noise_multiplier", "dp_user_target_epsilon", "dp_user_epsilon_cap"),
    *("dp_user_clip_count_stddev", "dp_user_clip_norm_max"),
)
_POSITIVE = (
    *("learning_rate", "centralized_learning_rate", "server_learning_rate"),
    *("personalize_learning_rate", "max_update_norm", "server_adam_tau"),
    *("dp_max_grad_norm", "dp_user_clip_norm", "secagg_timeout", "secagg_update_bound"),
    *("round_timeout", "dp_user_clip_learning_rate"),
)


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def _coerce(key: str, value: Any, annotation: str) -> Any:
    expected = {"int": int, "float": float, "str": str, "bool": bool}[annotation]
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {type(value).__name__} {value!r}")
        return value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > _FLOAT_MAX:  # float() would raise OverflowError
            raise ConfigError(f"{key} must be a finite number, got {_shown(value)}")
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(
            f"{key} must be a {annotation} (TOML: {_example(annotation)}), "
            f"got {type(value).__name__} {_shown(value)}"
        )
    if expected is float and not math.isfinite(value):
        # inf and nan pass range checks written as comparisons (inf > 0), and no key means
        # "unlimited" by infinity: every wait, rate and budget here is a finite number
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if expected is int and not _INT64[0] <= value <= _INT64[1]:
        # Flower's run config carries 64-bit integers only (a SuperLink would refuse the run)
        raise ConfigError(f"{key} must fit in 64 bits (at most {_INT64[1]}), got {_shown(value)}")
    return value


_FLOAT_MAX = 1.7976931348623157e308
_INT64 = (-(2**63), 2**63 - 1)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _example(annotation: str) -> str:
    return {"int": "3", "float": "0.5", "str": '"text"', "bool": "true"}[annotation]


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` where value is a TOML value; bare words are taken as strings."""
    if "=" not in text:
        raise ConfigError(f"expected key=value, got {text!r}")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        parsed = tomllib.loads(f"v = {raw}")
        # a line break in the value would let it define more keys: they are not this key's value
        value = parsed["v"] if len(parsed) == 1 else raw
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def load_toml(path: Path) -> dict[str, Any]:
    """A config file: a flat TOML table of keys (the same keys as pyproject's app config)."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:  # TOML is UTF-8 by definition
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    except OSError as err:  # a directory, no permission: the path is the thing to fix
        raise ConfigError(f"config file {path} cannot be read: {err.strerror or err}") from None
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise ConfigError(
            f"config file {path}: expected flat key = value lines, found tables {nested}"
        )
    return data


def _absolute(key: str, path: str) -> str:
    """A path key made absolute here (the simulation's processes run elsewhere)."""
    if "\0" in path:
        raise ConfigError(f"{key} contains a NUL character, which no path can hold: {path!r}")
    try:
        return str(Path(path).expanduser().resolve())
    except RuntimeError as err:  # "~name/..." for a user that does not exist, no $HOME
        raise ConfigError(f"{key} {path!r}: {err} (write the path out in full)") from None


def resolve_config(
    config_file: str | Path | None, overrides: list[str], out: str | None
) -> tuple[RunConfig, dict[str, Any]]:
    """Defaults <- config file <- ``--set`` overrides <- ``--out``, validated once.

    Returns the config and the values that differ from the defaults (what ``flwr run`` must be
    told). Relative paths (data-dir, out-dir, resume-from) are made absolute against the current
    directory, since the simulation's processes do not run here.
    """
    defaults = default_values()
    values = dict(defaults)
    if config_file:
        values.update(load_toml(Path(config_file)))
    for text in overrides:
        key, value = parse_override(text)
        values[key] = value
    if out:
        values["out-dir"] = out
    for key in ("data-dir", "out-dir", "resume-from"):
        if isinstance(values.get(key), str) and values[key]:
            values[key] = _absolute(key, values[key])
    config = RunConfig.from_mapping(values)
    changed = {k: v for k, v in config.to_mapping().items() if defaults.get(k) != v}
    return config, changed
