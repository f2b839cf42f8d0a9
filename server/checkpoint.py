"""Checkpoints: the server's whole state after each complete round, and what refuses one.

What outlives a round is plain state (docs/design.md §3): the global model (``ModelState``), the
server optimizer's moments (``OptimizerState``), the user-level DP state (``UserDPState``: the
mechanism with its accountant's history, the population, why the run stopped) and the devices
that reached their interaction-level cap (``DeviceReports.nodes_at_cap``). Sampling keeps none:
seeded sampling is drawn from (seed, stream, round), secret sampling from fresh OS entropy.

:class:`Checkpointer` writes it atomically after the round's metrics row and ledger entry (see
:mod:`shared.rundir` for why in that order). :func:`load_for_resume` reads it back and refuses,
in one line saying which, a checkpoint of another Confide version, another model, other shapes or
a config changed in a key a resume may not change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from server.optimizers import ModelState, OptimizerState
from server.pipeline import Phase, Step, Unit
from server.round import RoundState
from server.steps import DeviceReports, ServerOptimizer
from server.user_dp import DeviceNoiseDP, UserDPState, UserLevelDP
from shared.config import RunConfig
from shared.models import global_arrays, global_names
from shared.privacy import PrivacyHistory
from shared.records import CHECKPOINT_FILE
from shared.rundir import atomic_save_npz
from shared.skellam import SkellamHistory
from shared.split import catalog_size

FORMAT = 1  # the layout of the file below; bumped when it changes
# What a resume may change: how long the run is and how often it evaluates, not what it computes.
RESUMABLE = ("num-server-rounds", "eval-every", "eval-clients", "round-timeout")
PLACES = ("out-dir", "resume-from")  # where the run is, not what it computes
_MOMENTS = ("velocity", "first_moment", "second_moment")


class CheckpointError(ValueError):
    """A checkpoint this run cannot continue from; the message says which and what to do."""


def confide_version() -> str:
    try:
        return version("confide")
    except PackageNotFoundError:  # a checkout that was never installed
        return "unknown"


@dataclass(frozen=True)
class Checkpoint:
    """The server's state after round ``round``; ``config`` is the run's config at that time."""

    round: int
    version: str
    config: Mapping[str, Any]
    names: tuple[str, ...]
    model: list[np.ndarray]
    optimizer: OptimizerState
    user_dp: UserDPState
    nodes_at_cap: frozenset[int]
    elapsed_seconds: float

    def to_arrays(self) -> dict[str, np.ndarray]:
        dp = self.user_dp.mechanism
        if isinstance(dp, DeviceNoiseDP):  # device noise: its plan and a Skellam history
            scalars = {"kind": "devices", **dp.to_meta()}
        else:
            scalars = (
                None if dp is None else {k: v for k, v in asdict(dp).items() if k != "history"}
            )
        meta = {
            "format": FORMAT,
            "round": self.round,
            "version": self.version,
            "config": dict(self.config),
            "names": list(self.names),
            "moments": {m: getattr(self.optimizer, m) is not None for m in _MOMENTS},
            "user_dp": scalars,
            "population": self.user_dp.population,
            "stopped": self.user_dp.stopped,
            "nodes_at_cap": sorted(self.nodes_at_cap),
            "elapsed_seconds": self.elapsed_seconds,
        }
        arrays = {"meta": np.array(json.dumps(meta))}
        arrays |= {f"model/{i}": a for i, a in enumerate(self.model)}
        for moment in _MOMENTS:
            for i, a in enumerate(getattr(self.optimizer, moment) or []):
                arrays[f"{moment}/{i}"] = a
        if dp is not None:
            arrays["user_history"] = dp.history.to_array()
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], where: str) -> Checkpoint:
        try:
            meta = json.loads(str(arrays["meta"]))
        except (KeyError, ValueError):
            raise CheckpointError(f"{where} is not a Confide checkpoint (no metadata)") from None
        if meta.get("format") != FORMAT:
            raise CheckpointError(
                f"{where} has checkpoint format {meta.get('format')}, this Confide reads "
                f"format {FORMAT}: resume with the Confide version that wrote it"
            )
        count = len(meta["names"])
        moments = {
            m: [arrays[f"{m}/{i}"] for i in range(count)] if meta["moments"][m] else None
            for m in _MOMENTS
        }
        user = UserDPState(population=meta["population"], stopped=meta["stopped"])
        scalars = meta["user_dp"]
        if scalars is not None and scalars.get("kind") == "devices":
            history = SkellamHistory.from_array(arrays["user_history"])
            fields = {k: v for k, v in scalars.items() if k != "kind"}
            user.mechanism = DeviceNoiseDP.from_meta(fields, history)
        elif scalars is not None:
            history = PrivacyHistory.from_array(arrays["user_history"])
            user.mechanism = UserLevelDP(**scalars, history=history)
        return cls(
            round=meta["round"],
            version=meta["version"],
            config=meta["config"],
            names=tuple(meta["names"]),
            model=[arrays[f"model/{i}"] for i in range(count)],
            optimizer=OptimizerState(**moments),
            user_dp=user,
            nodes_at_cap=frozenset(meta["nodes_at_cap"]),
            elapsed_seconds=meta["elapsed_seconds"],
        )


def write_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    atomic_save_npz(path, checkpoint.to_arrays())  # whole or not at all: write, then rename


def read_checkpoint(path: Path) -> Checkpoint:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise CheckpointError(
            f"no checkpoint at {path}: the run did not complete a round, or this is not a run "
            "directory; start a new run"
        ) from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint ({err})") from None
    return Checkpoint.from_arrays(arrays, str(path))


def checkpoint_path(resume_from: str | Path) -> Path:
    """``resume-from`` names a run directory or its checkpoint file."""
    path = Path(resume_from)
    return path / CHECKPOINT_FILE if path.is_dir() else path


def check_resumable(
    checkpoint: Checkpoint,
    config: RunConfig,
    names: Sequence[str],
    shapes: Sequence[tuple[int, ...]],
    where: str,
) -> None:
    """Refuse, in one line saying which, a checkpoint this config cannot continue."""
    here = confide_version()
    if checkpoint.version != here:
        raise CheckpointError(
            f"{where} was written by Confide {checkpoint.version}, this is Confide {here}: "
            f"resume with Confide {checkpoint.version}, or start a new run"
        )
    now = config.to_mapping()
    changed = {k: (v, now[k]) for k, v in checkpoint.config.items() if k in now and now[k] != v}
    listed = "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
    if "model" in changed:
        raise CheckpointError(
            f"{where} is of model {changed['model'][0]!r}, this run's config builds "
            f"{changed['model'][1]!r}: resume with the run's own config, or start a new run"
        )
    old_shapes = [a.shape for a in checkpoint.model]
    if tuple(names) != checkpoint.names or [tuple(s) for s in shapes] != old_shapes:
        diffs = [
            f"{n} {o} -> {tuple(s)}"
            for n, o, s in zip(names, old_shapes, shapes, strict=False)
            if o != tuple(s)
        ] or [f"parameters {list(checkpoint.names)} -> {list(names)}"]
        raise CheckpointError(
            f"{where} holds a model of other shapes ({', '.join(diffs)}; config changed: "
            f"{listed or 'none'}): resume with the run's own config, or start a new run"
        )
    refused = {k: v for k, v in changed.items() if k not in RESUMABLE + PLACES}
    if refused:
        keys = "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in sorted(refused.items()))
        raise CheckpointError(
            f"{where}: the config changed since the checkpoint ({keys}); a resume may change "
            f"only {', '.join(RESUMABLE)}: drop those changes, or start a new run"
        )
    if "num-server-rounds" in changed and config.dp_user and config.dp_user_target_epsilon:
        raise CheckpointError(
            f"{where}: num-server-rounds changed, but dp-user-target-epsilon chose the noise for "
            f"{changed['num-server-rounds'][0]} rounds; more rounds would pass the target: keep "
            "num-server-rounds, or start a new run"
        )


def load_for_resume(config: RunConfig) -> tuple[Checkpoint, Path]:
    """The checkpoint ``resume-from`` names, checked against this config; and its run directory."""
    path = checkpoint_path(config.resume_from)
    checkpoint = read_checkpoint(path)
    model = config.build_model(catalog_size(config))  # as the ServerApp builds it
    names, arrays = global_names(model), global_arrays(model)
    check_resumable(checkpoint, config, names, [a.shape for a in arrays], str(path))
    return checkpoint, path.parent


class Checkpointer(Step):
    """RECORD: after the round's row and ledger entry, the server's state, written atomically."""

    phase = Phase.RECORD
    must_follow = ("RoundRecorder", "PrivacyLedger")

    def __init__(
        self,
        path: Path,
        config: RunConfig,
        names: Sequence[str],
        model: ModelState,
        optimizer: ServerOptimizer,
        user: UserDPState,
        reports: DeviceReports,
    ) -> None:
        self.path = path
        self.config = config
        self.names = tuple(names)
        self.model = model
        self.optimizer = optimizer
        self.user = user
        self.reports = reports

    def finish(self, rnd: RoundState, units: Mapping[str, Unit]) -> None:
        checkpoint = Checkpoint(
            round=rnd.number,
            version=confide_version(),
            config=self.config.to_mapping(),
            names=self.names,
            model=self.model.arrays,
            optimizer=self.optimizer.state,
            user_dp=self.user,
            nodes_at_cap=frozenset(self.reports.nodes_at_cap),
            elapsed_seconds=rnd.record.elapsed_seconds or 0.0,
        )
        write_checkpoint(self.path, checkpoint)

    def restore(self, checkpoint: Checkpoint) -> None:
        """Put the checkpoint's state into the steps that own it (same objects, new contents)."""
        self.model.arrays = [np.asarray(a) for a in checkpoint.model]
        self.optimizer.state = checkpoint.optimizer
        self.user.mechanism = checkpoint.user_dp.mechanism
        self.user.population = checkpoint.user_dp.population
        self.user.stopped = checkpoint.user_dp.stopped
        self.reports.nodes_at_cap = set(checkpoint.nodes_at_cap)
