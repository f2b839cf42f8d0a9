"""What a run directory holds, defined once: its file names and typed rows for its JSONL files.

The server writes these records; the privacy report, the progress line, ``confide simulate``'s
summary and the sweeps read them back through :func:`read_rounds` and :func:`read_ledger`, so a
field renamed here is renamed for every reader at once. The JSON is the format runs have always
written (same keys, a key absent exactly when it was absent before), so old run directories load:
a row from an older run may lack any field (it reads as ``None``), and keys this version does not
know are kept in ``extra`` and written back unchanged. A malformed row is refused with its file
and line, because a privacy claim built on a half-read ledger would be worse than none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from shared.beyond_accuracy import BEYOND_ACCURACY
from shared.wire import EVAL_METRICS

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
LEDGER_FILE = "privacy_ledger.jsonl"
MODEL_FILE = "global_model.npz"
PLOT_FILE = "metrics.png"
CHECKPOINT_FILE = "checkpoint.npz"  # the server's state after the last complete round
BEYOND_ACCURACY_FILE = "beyond_accuracy.json"  # the final lists' coverage, novelty, diversity, Gini
DEVICES_DIR = "devices"  # simulated devices' own state (simulations only)


class RunFileError(ValueError):
    """A run file that cannot be read as records; the message names the file and line."""


# -- field checks ------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check(where: str, name: str, kind: str, value: Any) -> None:
    """Only numbers and flags are checked: every reader computes with them."""
    if value is None:
        return
    if kind == "bool" and not isinstance(value, bool):
        raise RunFileError(f"{where}: '{name}' must be true or false")
    if kind in ("int", "float") and not _is_number(value):
        raise RunFileError(f"{where}: '{name}' must be a number, got {value!r}")


def _kind(annotation: str) -> str:
    for kind in ("bool", "int", "float", "str", "dict"):
        if annotation.startswith(kind):
            return kind
    return "any"


R = TypeVar("R")


def _parse(cls: type[R], obj: Mapping[str, Any], where: str, prefix: str = "") -> R:
    """``cls`` from a JSON object: known fields checked, unknown keys kept in ``extra``."""
    values: dict[str, Any] = {}
    known = set()
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name == "extra":
            continue
        known.add(f.name)
        if f.name in obj:
            _check(where, prefix + f.name, _kind(str(f.type)), obj[f.name])
            values[f.name] = obj[f.name]
    extra = {k: v for k, v in obj.items() if k not in known}
    return cls(**values, extra=extra)


def _present(record: Any) -> dict[str, Any]:
    """The fields that are set (a ``None`` field is absent from the JSON), then ``extra``."""
    out = {f.name: getattr(record, f.name) for f in fields(record) if f.name != "extra"}
    return {k: v for k, v in out.items() if v is not None} | dict(record.extra)


# -- metrics.jsonl -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RoundRecord:
    """One federated round as ``metrics.jsonl`` records it; ``None`` means "not recorded".

    Field order is the order the server writes them in (so today's rows round-trip byte for byte).
    """

    round: int
    stopped: str | None = None  # the run stopped before this round could train (a cap reached)
    fit_sampled: int | None = None
    skipped: str | None = None  # why the global model was left unchanged this round
    secagg_active: dict[str, int] | None = None  # SecAgg+ stage -> devices that answered it
    fit_replies: int | None = None
    fit_rejected: int | None = None
    fit_failures: int | None = None
    budget_exhausted: int | None = None
    item_rows_clipped: int | None = None  # the item-row-clip defence: device rows it shortened
    secagg_survivors: int | None = None
    secagg_dropped: int | None = None
    secagg_clipped_fraction: float | None = None
    noise_clamped: int | None = None  # device noise: coordinates clamped into SecAgg+'s range
    clip_norm: float | None = None  # adaptive clipping: the S devices clipped to this round
    clip_fraction_under: float | None = None  # ... and the noised fraction of them under it
    train_loss: float | None = None
    fit_seconds: float | None = None
    model_sha256: str | None = None  # the global model after the round (proof a skip kept it)
    eval_clients: int | None = None
    eval_failures: int | None = None
    hr10: float | None = None
    ndcg10: float | None = None
    full_hr10: float | None = None
    full_ndcg10: float | None = None
    # Beyond accuracy of the evaluated devices' top-10 lists (server/evaluation.py)
    coverage10: float | None = None
    novelty10: float | None = None
    diversity10: float | None = None
    exposure_gini10: float | None = None
    target_exposure10: float | None = None  # poisoning audit: lists that show the target item
    eval_loss: float | None = None
    round_seconds: float | None = None
    elapsed_seconds: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def evaluated(self) -> bool:
        return self.hr10 is not None

    def metric(self, name: str) -> float | None:
        """An evaluation metric by its wire name (:data:`shared.wire.EVAL_METRICS`, or one of
        :data:`shared.beyond_accuracy.BEYOND_ACCURACY`)."""
        if name not in EVAL_METRICS + BEYOND_ACCURACY:
            known = EVAL_METRICS + BEYOND_ACCURACY
            raise KeyError(f"{name!r} is not an evaluation metric: one of {known}")
        return getattr(self, name)

    def to_json(self) -> dict[str, Any]:
        return _present(self)

    @classmethod
    def from_json(cls, obj: Any, where: str = "<record>") -> RoundRecord:
        return _parse(cls, _row(obj, where), where)


# -- privacy_ledger.jsonl ----------------------------------------------------------------------
class _Unit:
    """A ledger unit: off, it is written as ``{"enabled": false}`` alone; on, with every field
    except the ``OPTIONAL`` ones that are unset (fields added later: older rows round-trip)."""

    enabled: bool | None
    extra: Mapping[str, Any]
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        if not self.enabled:
            return {"enabled": bool(self.enabled)} | dict(self.extra)
        out = {
            f.name: getattr(self, f.name)
            for f in fields(self)  # type: ignore[arg-type]
            if f.name != "extra" and not (f.name in self.OPTIONAL and getattr(self, f.name) is None)
        }
        return out | dict(self.extra)


@dataclass(frozen=True)
class InteractionLevel(_Unit):
    """DP-SGD on the devices: how it was configured and what the devices that trained reported."""

    enabled: bool | None = False
    accountant: str | None = None
    noise_multiplier: float | None = None  # None: each device calibrates σ to target_epsilon
    target_epsilon: float | None = None
    max_grad_norm: float | None = None
    delta: float | None = None
    epsilon_cap: float | None = None
    sampling: str | None = None
    sample_rate_rule: str | None = None  # q and steps depend on private data sizes: rules only
    steps_rule: str | None = None
    local_epochs: int | None = None
    devices_reporting: int | None = None
    epsilon_min: float | None = None
    epsilon_median: float | None = None
    epsilon_max: float | None = None
    noise_multiplier_min: float | None = None
    noise_multiplier_median: float | None = None
    noise_multiplier_max: float | None = None
    devices_at_cap: int | None = None  # distinct devices that declined so far (cumulative)
    budget_exhausted: int | None = None  # devices that declined this round
    noise_source: str | None = None  # "device-local" (each device noises its own steps) | "server"
    mode: str | None = None  # "local-epochs" | "pooled" (absent in older ledgers: local-epochs)
    noise_stddev: float | None = None  # pooled: σC, on every coordinate of the cohort's sum
    extra: Mapping[str, Any] = field(default_factory=dict)
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"noise_source", "mode", "noise_stddev"})


@dataclass(frozen=True)
class UserLevel(_Unit):
    """DP-FedAvg on the server: mechanism parameters and the run's ε after this round."""

    enabled: bool | None = False
    accountant: str | None = None
    noise_multiplier: float | None = None
    clip_norm: float | None = None
    sample_rate: float | None = None
    population: int | None = None
    expected_cohort: float | None = None
    sampled: int | None = None
    replied: int | None = None
    noise_stddev: float | None = None
    sampling: str | None = None
    delta: float | None = None
    epsilon_cap: float | None = None
    epsilon: float | None = None
    rounds_accounted: int | None = None
    status: str | None = None  # "aggregated", "stopped" or "skipped: <why>"
    # Who added the noise: "server" (absent in older ledgers: the server) or "devices".
    noise_source: str | None = None
    # dp-noise-source = "devices" only (integer units of SecAgg+'s quantizer; docs/design.md §4):
    mu_device: float | None = None  # Skellam variance per coordinate each device adds
    min_survivors: int | None = None  # the noise suffices with this many devices in the sum
    survivors: int | None = None  # devices whose noise is in this round's sum
    mu_present: float | None = None  # mu_device * survivors: what ε is computed from
    scale: float | None = None  # integer units per float unit
    l2_sensitivity: float | None = None  # Δ2 after conditional rounding
    l1_sensitivity: float | None = None  # Δ1
    noise_clamped: int | None = None  # coordinates clamped this round (the failure event)
    clamp_probability: float | None = None  # P(any clamp so far) <= this (union bound)
    clamp_delta: float | None = None  # (1 + e^ε) clamp_probability: add it to δ
    # Adaptive clipping only (Andrew et al. 2021; clip_norm is then this round's S). The
    # accountant composes the update sum and the count as one Gaussian of noise_multiplier z.
    clip_adaptive: bool | None = None
    update_noise_multiplier: float | None = None  # z_Delta > z: the noise on the update sum
    clip_count_stddev: float | None = None  # sigma_b: the noise on the count of centred bits
    clip_quantile: float | None = None  # gamma: the fraction meant to be under S
    clip_fraction_under: float | None = None  # released: the noised fraction under S
    next_clip_norm: float | None = None  # S of the next round, from the released fraction
    extra: Mapping[str, Any] = field(default_factory=dict)
    OPTIONAL: ClassVar[frozenset[str]] = frozenset(
        {
            *("noise_source", "mu_device", "min_survivors", "survivors", "mu_present", "scale"),
            *("l2_sensitivity", "l1_sensitivity", "noise_clamped", "clamp_probability"),
            "clamp_delta",
            *("clip_adaptive", "update_noise_multiplier", "clip_count_stddev", "clip_quantile"),
            *("clip_fraction_under", "next_clip_norm"),
        }
    )


@dataclass(frozen=True)
class SecureAggregation(_Unit):
    """SecAgg+ is not DP: recorded beside the DP units so a reviewer sees what ran."""

    enabled: bool | None = False
    bound: float | None = None
    num_shares: int | None = None
    reconstruction_threshold: int | None = None
    clipping_range: float | None = None
    quantization_range: int | None = None
    modulus_range: int | None = None
    max_cohort: int | None = None
    survivors: int | None = None
    clipped_fraction: float | None = None
    status: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


UNITS = {
    "interaction_level": InteractionLevel,
    "user_level": UserLevel,
    "secure_aggregation": SecureAggregation,
}


@dataclass(frozen=True)
class LedgerEntry:
    """One round's privacy record (``privacy_ledger.jsonl``): every unit, on or off."""

    round: int
    stopped: str | None = None
    interaction_level: InteractionLevel = field(default_factory=InteractionLevel)
    user_level: UserLevel = field(default_factory=UserLevel)
    secure_aggregation: SecureAggregation = field(default_factory=SecureAggregation)
    library_versions: Mapping[str, str] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Units the row did not mention (rows from older runs): written back without them.
    absent: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"round": self.round}
        if self.stopped is not None:
            out["stopped"] = self.stopped
        for key in UNITS:
            if key not in self.absent:
                out[key] = getattr(self, key).to_json()
        if self.library_versions is not None:
            out["library_versions"] = dict(self.library_versions)
        return out | dict(self.extra)

    @classmethod
    def from_json(cls, obj: Any, where: str = "<entry>") -> LedgerEntry:
        row = _row(obj, where)
        units: dict[str, Any] = {}
        absent = set()
        for key, unit_cls in UNITS.items():
            unit = row.get(key)
            if unit is None and (key == "secure_aggregation" or "stopped" in row):
                # Older rows: no SecAgg+ record at all; a bare stop marker with no units.
                absent.add(key)
                continue
            if not isinstance(unit, dict):
                raise RunFileError(f"{where}: '{key}' must be a JSON object")
            units[key] = _parse(unit_cls, unit, where, prefix=f"{key}.")
        versions = row.get("library_versions")
        if versions is not None and not isinstance(versions, dict):
            raise RunFileError(f"{where}: 'library_versions' must be a JSON object")
        known = {"round", "stopped", "library_versions", *UNITS}
        return cls(
            round=row["round"],
            stopped=None if row.get("stopped") is None else str(row["stopped"]),
            library_versions=versions,
            extra={k: v for k, v in row.items() if k not in known},
            absent=frozenset(absent),
            **units,
        )


# -- reading -----------------------------------------------------------------------------------
def _row(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or type(obj.get("round")) is not int:
        raise RunFileError(f"{where}: expected a JSON object with an integer 'round'")
    return obj


def read_jsonl(path: Path, required: bool = True) -> list[tuple[str, Any]]:
    """``("file:line", object)`` per non-blank line, so later checks can name the line."""
    path = Path(path)
    if not path.is_file():
        if required:
            raise RunFileError(f"{path}: not found (not a run directory?)")
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            rows.append((where, json.loads(line)))
        except json.JSONDecodeError as err:
            raise RunFileError(f"{where}: malformed JSON: {err.msg} (column {err.colno})") from err
    return rows


def read_rounds(run_dir: Path, required: bool = True) -> list[RoundRecord]:
    """Every round of ``metrics.jsonl`` (``required=False``: [] when the file is missing)."""
    return [
        RoundRecord.from_json(obj, where)
        for where, obj in read_jsonl(Path(run_dir) / METRICS_FILE, required)
    ]


def read_ledger(run_dir: Path) -> list[tuple[str, LedgerEntry]]:
    """Every entry of ``privacy_ledger.jsonl`` with its ``file:line`` ([] without a ledger)."""
    return [
        (where, LedgerEntry.from_json(obj, where))
        for where, obj in read_jsonl(Path(run_dir) / LEDGER_FILE, required=False)
    ]
