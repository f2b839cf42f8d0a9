"""REPLIES-phase steps: check each plaintext reply, clip it, and note what devices report."""

from __future__ import annotations

from collections.abc import Callable
from logging import WARNING

import numpy as np
from flwr.common import log

from server.optimizers import ModelState
from server.pipeline import Phase, Step
from server.round import Reply, RoundState, SkipRound
from server.shard_replies import decode_floats
from server.validation import InvalidReply, ReplyValidator
from shared.config import RunConfig
from shared.pooled import plan_pooled
from shared.privacy import clip_update
from shared.records import InteractionLevel
from shared.wire import (
    BUDGET_EXHAUSTED,
    CLIP_UNDER,
    DP_EPSILON,
    DP_NOISE_MULTIPLIER,
    DP_STATUS,
    SHARD_EPSILONS,
    SHARD_NOISE_MULTIPLIERS,
)


class ReplyValidation(Step):
    """Every plaintext reply is checked (:mod:`server.validation`); a bad one is never used."""

    phase = Phase.REPLIES

    def __init__(self, validator: ReplyValidator, model: ModelState) -> None:
        self.validator = validator
        self.model = model

    def on_replies(self, rnd: RoundState, replies: list[Reply]) -> list[Reply]:
        # A device that hung past round-timeout is in neither list: it is a failure too.
        silent = (rnd.record.fit_sampled or 0) - len(replies) - len(rnd.failures)
        rnd.failures += [TimeoutError("no reply within round-timeout")] * max(silent, 0)
        valid = []
        for reply in replies:
            try:
                arrays = self.validator.check(reply.res, self.model.arrays)
            except InvalidReply as err:
                log(
                    WARNING,
                    "round %d: rejected reply from node %s: %s",
                    rnd.number,
                    reply.node_id,
                    err,
                )
                rnd.failures.append(err)
                continue
            reply.update = [new - old for new, old in zip(arrays, self.model.arrays, strict=True)]
            valid.append(reply)
        for failure in rnd.failures:
            if isinstance(failure, BaseException) and not isinstance(failure, InvalidReply):
                log(WARNING, "round %d: client failure: %s", rnd.number, failure)
        rnd.note(
            fit_replies=len(valid),
            fit_rejected=len(replies) - len(valid),
            fit_failures=len(rnd.failures),
        )
        return valid


class ServerClip(Step):
    """User-level DP: clip each update to this round's S again (a no-op for an honest device)."""

    phase = Phase.REPLIES
    must_follow = ("ReplyValidation",)

    def __init__(self, clip_norm: float | Callable[[], float]) -> None:
        # this round's S: a callable when it moves (adaptive clipping)
        self.clip_norm = clip_norm if callable(clip_norm) else (lambda: clip_norm)

    def on_replies(self, rnd: RoundState, replies: list[Reply]) -> list[Reply]:
        clip = self.clip_norm()
        for reply in replies:
            if reply.trained and reply.update is not None:
                reply.update = clip_update(reply.update, clip)[0]
        return replies


class ClipCounts(Step):
    """Adaptive clipping without SecAgg+: each reply's count of users within S, checked.

    A device reports 0 or 1, a shard up to its trained users (``confide.clip-under``); a reply
    without a valid count is rejected like any malformed reply, since the count's sensitivity
    (one user moves it by at most 1) is what the accountant assumes. The count reveals nothing
    the server does not see already (a clipped update has norm exactly S); it is summed and
    noised in the RELEASE step.
    """

    phase = Phase.REPLIES
    must_follow = ("ReplyValidation", "ShardValidation", "DeviceReports")

    def on_replies(self, rnd: RoundState, replies: list[Reply]) -> list[Reply]:
        kept, lost = [], 0  # lost: users in rejected replies (a shard's count as its users)
        for reply in replies:
            count = reply.metrics.get(CLIP_UNDER)
            if not reply.trained:
                kept.append(reply)
                continue
            valid = isinstance(count, int) and not isinstance(count, bool)
            if not (valid and 0 <= count <= reply.users):
                err = InvalidReply(
                    f"{CLIP_UNDER} must be a count of the reply's users within the clip norm, "
                    f"0 to {reply.users}, got {count!r}"
                )
                log(WARNING, "round %d: rejected reply from node %s: %s",
                    rnd.number, reply.node_id, err)  # fmt: skip
                rnd.failures.append(err)
                lost += reply.users + len(reply.declined)
                continue
            reply.clip_under = count
            kept.append(reply)
        if lost:
            rnd.note(
                fit_replies=(rnd.record.fit_replies or 0) - lost,
                fit_rejected=(rnd.record.fit_rejected or 0) + lost,
                fit_failures=(rnd.record.fit_failures or 0) + lost,
            )
        return kept


class DeviceReports(Step):
    """What the devices report about their own DP-SGD: recorded for the ledger, never trusted.

    A device's ε and σ are rounded on the device; junk values are dropped. Devices that declined
    (at their budget) are counted per round and, distinct, over the run.
    """

    phase = Phase.REPLIES
    must_follow = ("ReplyValidation", "ShardValidation")

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.nodes_at_cap: set[int] = set()  # distinct devices that declined, whole run
        self.seen: tuple[int, list[float], list[float]] = (0, [], [])  # round, ε's, σ's

    def on_replies(self, rnd: RoundState, replies: list[Reply]) -> list[Reply]:
        trained = [r for r in replies if r.trained]
        self.seen = (
            rnd.number,
            _reported(replies, DP_EPSILON, SHARD_EPSILONS),
            _reported(trained, DP_NOISE_MULTIPLIER, SHARD_NOISE_MULTIPLIERS),
        )
        singles = [r for r in replies if r.weight is None]
        # Distinct devices: node ids, or a shard's user ids (``-1 - user``: apart from node ids).
        self.nodes_at_cap |= {
            r.node_id for r in singles if r.metrics.get(DP_STATUS) == BUDGET_EXHAUSTED
        }
        self.nodes_at_cap |= {-1 - user for r in replies for user in r.declined}
        declined = len(singles) - sum(1 for r in singles if r.trained)
        rnd.note(budget_exhausted=declined + sum(len(r.declined) for r in replies))
        return replies

    def ledger_units(self, rnd: RoundState) -> dict[str, InteractionLevel]:
        cfg = self.config
        if not cfg.dp_interaction:
            return {}
        number, eps, sigmas = self.seen
        if number != rnd.number:  # no replies this round
            eps, sigmas = [], []
        rules = _pooled_rules(cfg) if cfg.pooled else _local_rules(cfg)
        return {
            "interaction_level": InteractionLevel(
                enabled=True,
                accountant=cfg.dp_accountant,
                target_epsilon=cfg.dp_target_epsilon or None,
                max_grad_norm=cfg.dp_max_grad_norm,
                delta=cfg.dp_delta,
                epsilon_cap=cfg.dp_epsilon_cap or None,
                sampling="poisson",
                devices_reporting=len(eps),
                epsilon_min=min(eps) if eps else None,
                epsilon_median=float(np.median(eps)) if eps else None,
                epsilon_max=max(eps) if eps else None,
                # σ per device (a target ε is met with a σ that depends on the device's size)
                noise_multiplier_min=min(sigmas) if sigmas else None,
                noise_multiplier_median=float(np.median(sigmas)) if sigmas else None,
                noise_multiplier_max=max(sigmas) if sigmas else None,
                devices_at_cap=len(self.nodes_at_cap),
                budget_exhausted=rnd.record.budget_exhausted or 0,
                **rules,
            )
        }


def _local_rules(cfg: RunConfig) -> dict:
    """Local DP-SGD epochs: each device's q and steps depend on its data size, which stays
    private, so only how they are derived is recorded (and σ, unless a target ε sets it per
    device)."""
    return {
        "noise_multiplier": cfg.dp_noise_multiplier if not cfg.dp_target_epsilon else None,
        "sample_rate_rule": f"batch-size / n per device (batch-size {cfg.batch_size})",
        "steps_rule": "local-epochs x ceil(n / batch-size)",
        "local_epochs": cfg.local_epochs,
        # noise_source absent: device-local (the ledger's rows stay as they were)
    }


def _pooled_rules(cfg: RunConfig) -> dict:
    """Pooled: one σ, q and step for every device; the server adds the noise (σC) to the sum."""
    plan = plan_pooled(cfg)
    return {
        "noise_multiplier": plan.noise_multiplier,
        "sample_rate_rule": f"dp-pooled-sample-rate {plan.sample_rate:g} for every device",
        "steps_rule": "1 per round the device trains",
        "noise_source": "server",
        "mode": "pooled",
        "noise_stddev": plan.noise_stddev,
    }


def _reported(replies: list[Reply], key: str, shard_key: str) -> list[float]:
    """A numeric metric the devices report, for the ledger only (never trusted); junk dropped.
    A shard reports one value per user, as float64 bytes under ``shard_key``."""
    values: list[float] = []
    for r in replies:
        if r.weight is not None:
            values += [float(v) for v in decode_floats(r.metrics.get(shard_key))]
        elif isinstance(value := r.metrics.get(key), (int, float)):
            values.append(float(value))
    return [v for v in values if 0 <= v < 1e6]


class EnoughReplies(Step):
    """The round aggregates only when at least ``min-fit-clients`` valid replies trained.

    A device that crashed, hung past ``round-timeout`` or replied garbage mid-round is a failure
    (counted in the round's record); the others still make the round unless too few are left,
    and then it is skipped with the model unchanged: an average over one or two devices would be
    released as if it were the cohort's. Plaintext rounds only: under SecAgg+ the protocol's own
    reconstruction threshold decides whether enough devices survived.
    """

    phase = Phase.REPLIES
    must_follow = ("ReplyValidation", "DeviceReports", "ServerClip", "ClipCounts")

    def __init__(self, min_replies: int) -> None:
        self.min_replies = min_replies

    def on_replies(self, rnd: RoundState, replies: list[Reply]) -> list[Reply]:
        trained = sum(r.users for r in replies if r.trained)
        if not trained:
            raise SkipRound("no valid trained replies")  # as the sum step would say
        if trained < self.min_replies:
            raise SkipRound(
                f"{trained} valid trained repl{'y' if trained == 1 else 'ies'}, "
                f"min-fit-clients is {self.min_replies}"
            )
        return replies


class ItemRowClip(Step):
    """A defence against item promotion: each device's change to each item row is clipped to
    ``factor`` times the round's median row change (over every device's changed rows).

    Why: under item-sum an item's row moves by the sum of the changes of the devices that touched
    it, so one device that writes a large change into one row (a promoted item) moves it as far
    as it likes, and a whole-update norm bound spends the budget on that row alone. Bounding each
    row's change by what honest devices typically write makes an attacker worth one ordinary
    holder of the item per round. The median over thousands of changed rows moves little with a
    few attackers. Plaintext only: under SecAgg+ the server sees no single update.
    """

    phase = Phase.REPLIES
    must_follow = ("ReplyValidation",)

    def __init__(self, factor: float, names: list[str], arrays: list[np.ndarray]) -> None:
        self.factor = factor
        # the item tables: one row per item (embeddings, and MF's item bias)
        self.tables = [
            i for i, (n, a) in enumerate(zip(names, arrays, strict=True)) if _item_table(n, a)
        ]

    def on_replies(self, rnd: RoundState, replies: list[Reply]) -> list[Reply]:
        updates = [r.update for r in replies if r.trained and r.update is not None]
        clipped = 0
        for index in self.tables:
            norms = [np.linalg.norm(u[index], axis=1) for u in updates]
            changed = np.concatenate([n[n > 0] for n in norms]) if norms else np.zeros(0)
            if not len(changed):
                continue
            bound = self.factor * float(np.median(changed))
            for update, norm in zip(updates, norms, strict=True):
                over = norm > bound
                update[index][over] *= (bound / norm[over])[:, None]
                clipped += int(over.sum())
        rnd.note(item_rows_clipped=clipped)
        return replies


def _item_table(name: str, array: np.ndarray) -> bool:
    return name.startswith("item_") and array.ndim == 2
