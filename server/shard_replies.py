"""Replies of nodes that simulate a shard of users (``cohort-size > 1``): checked, then used.

A shard's fit reply is the SUM of its users' weighted updates, each user's update computed and
(under user-level DP) clipped exactly as its own device would (:mod:`client.shard`), with the
plaintext facts the server needs about them (``shared.wire``'s ``SHARD_*`` keys). The server
cannot check one user's update inside a sum; it checks what a sum of honest ones must satisfy:
the layout, finite values, no more users than it asked that node for, and a norm of at most the
summed weight times the per-user bound (S under user-level DP, ``max-update-norm`` otherwise).
A reply that fails is rejected whole and its users count as failures. Simulations only: the
shard is the simulation host, trusted as the devices' code is.

A shard's evaluate reply holds one row of figures per user (and their top-10 lists); it is
expanded into one result per user, so the evaluation summary is the same as with one user per
node.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from logging import WARNING
from typing import Any

import numpy as np
from flwr.common import Code, EvaluateRes, Status, log
from flwr.server.client_proxy import ClientProxy

from server.pipeline import Phase, Step
from server.round import Reply, RoundState
from server.validation import InvalidReply, ReplyValidator, check_metrics
from shared.wire import (
    DIVERSITY10,
    NOISE_CLAMPED,
    SHARD_DECLINED,
    SHARD_EVAL,
    SHARD_EVAL_COLUMNS,
    SHARD_TOP10,
    SHARD_TRAINED,
    SHARD_WEIGHT,
    TOP10,
)

NORM_SLACK = 1e-6  # relative float32 slack on the norm bound of a sum


def decode_floats(value: Any) -> np.ndarray:
    """float64 bytes as an array; anything else is empty (reported figures are never trusted)."""
    if not isinstance(value, bytes) or len(value) % 8:
        return np.zeros(0)
    return np.frombuffer(value, dtype=np.float64)


def decode_ints(value: Any, name: str) -> np.ndarray:
    """int64 bytes as an array; InvalidReply if they are not."""
    if not isinstance(value, bytes) or len(value) % 8:
        raise InvalidReply(f"{name} must be int64 bytes, got {type(value).__name__}")
    return np.frombuffer(value, dtype=np.int64)


class ShardValidation(Step):
    """Every shard's fit reply is checked before anything is computed from it (see module)."""

    phase = Phase.REPLIES

    def __init__(
        self,
        validator: ReplyValidator,
        clip_norm: float | Callable[[], float],
        noise_norm: Callable[[int], float] | None = None,
    ) -> None:
        self.validator = validator
        # user-level DP's S this round (0: none), the bound each user clips to; a callable when
        # it moves (adaptive clipping)
        self.clip_norm = clip_norm if callable(clip_norm) else (lambda: clip_norm)
        # device noise: how far n users' noise shares (and rounding) can move a sum's norm
        self.noise_norm = noise_norm or (lambda users: 0.0)

    def on_replies(self, rnd: RoundState, replies: list[Reply]) -> list[Reply]:
        valid, answered = [], 0
        for reply in replies:
            asked = rnd.asked.get(reply.node_id, ())
            answered += len(asked)
            try:
                self._check(reply, asked)
            except InvalidReply as err:
                log(WARNING, "round %d: rejected shard reply from node %s: %s",
                    rnd.number, reply.node_id, err)  # fmt: skip
                rnd.failures.append(err)
                continue
            valid.append(reply)
        users_in = sum(r.users + len(r.declined) for r in valid)
        rnd.note(
            fit_replies=users_in,
            fit_rejected=answered - users_in,
            fit_failures=(rnd.record.fit_sampled or 0) - users_in,
        )
        clamped = [r.res.metrics[NOISE_CLAMPED] for r in valid if NOISE_CLAMPED in r.res.metrics]
        if clamped:  # device noise: the users' failure events (checked counts), for the ledger
            rnd.note(noise_clamped=int(sum(clamped)))
        return valid

    def _check(self, reply: Reply, asked: Sequence[int]) -> None:
        res, metrics = reply.res, reply.res.metrics
        check_metrics(metrics)
        trained = metrics.get(SHARD_TRAINED)
        if isinstance(trained, bool) or not isinstance(trained, int):
            raise InvalidReply(f"{SHARD_TRAINED} must be an integer, got {type(trained).__name__}")
        declined = decode_ints(metrics.get(SHARD_DECLINED, b""), SHARD_DECLINED)
        if not set(declined.tolist()) <= set(asked) or len(set(declined.tolist())) != len(declined):
            raise InvalidReply(f"{SHARD_DECLINED} names users this node was not asked to train")
        if trained + len(declined) != len(asked):
            raise InvalidReply(
                f"{trained} trained and {len(declined)} declined, but the node was asked for "
                f"{len(asked)} users"
            )
        weight = metrics.get(SHARD_WEIGHT)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool):
            raise InvalidReply(f"{SHARD_WEIGHT} must be a number, got {type(weight).__name__}")
        limit = trained * self.validator.max_num_examples
        if not math.isfinite(weight) or not (trained == 0 or 0 < weight <= limit):
            raise InvalidReply(f"{SHARD_WEIGHT} {weight!r} outside (0, {limit}]")
        clamped = metrics.get(NOISE_CLAMPED, 0)
        if isinstance(clamped, bool) or not isinstance(clamped, int) or clamped < 0:
            raise InvalidReply(f"{NOISE_CLAMPED} must be a count, got {clamped!r}")
        arrays, squared = self.validator.checked_arrays(res.parameters, dtype=False)
        # Each user's update is within the bound, so their weighted sum is within weight x bound
        # (uniform weights under user-level DP, so that is trained x S).
        bound = min(self.clip_norm() or math.inf, self.validator.max_update_norm)
        noise = self.noise_norm(len(asked))  # device noise: at most every asked user added a share
        if math.sqrt(squared) > bound * weight * (1 + NORM_SLACK) + noise:
            noised = f" plus {noise:.3g} for the users' noise" if noise else ""
            raise InvalidReply(
                f"the sum's L2 norm {math.sqrt(squared):.3g} exceeds {weight:g} users' weight x "
                f"the per-user bound {bound:g}{noised}: some user's update was not clipped"
            )
        reply.update = [a.astype(np.float64) for a in arrays]
        reply.weight, reply.users, reply.declined = float(weight), trained, tuple(declined)


def expand_shard_evaluations(
    results: list[tuple[ClientProxy, EvaluateRes]], failures: list[Any]
) -> tuple[list[tuple[ClientProxy, EvaluateRes]], list[Any]]:
    """One result per evaluated user; a shard reply that cannot be read is one failure."""
    out, failed = [], list(failures)
    for proxy, res in results:
        try:
            out += [(proxy, r) for r in _per_user(res)]
        except ValueError as err:
            log(WARNING, "rejected shard evaluation from node %s: %s", proxy.node_id, err)
            failed.append(err)
    return out, failed


def _per_user(res: EvaluateRes) -> list[EvaluateRes]:
    table = decode_floats(res.metrics.get(SHARD_EVAL))
    width = len(SHARD_EVAL_COLUMNS)
    if not len(table) or len(table) % width:
        raise ValueError(f"{SHARD_EVAL} must be float64 bytes of rows of {width} figures")
    rows = table.reshape(-1, width)
    tops = None
    if SHARD_TOP10 in res.metrics:
        tops = decode_ints(res.metrics[SHARD_TOP10], SHARD_TOP10).reshape(-1, 10)
        if len(tops) != len(rows):
            raise ValueError(f"{SHARD_TOP10} has {len(tops)} lists for {len(rows)} users")
    ok = Status(code=Code.OK, message="")
    out = []
    for i, row in enumerate(rows):
        metrics: dict[str, Any] = {
            name: float(v) for name, v in zip(SHARD_EVAL_COLUMNS[1:], row[1:], strict=True)
        }
        if math.isnan(metrics[DIVERSITY10]):
            del metrics[DIVERSITY10]  # a model without item tables measures none
        if tops is not None:
            metrics[TOP10] = ",".join(str(int(x)) for x in tops[i])
        out.append(EvaluateRes(status=ok, loss=float(row[0]), num_examples=1, metrics=metrics))
    return out
