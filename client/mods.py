"""Client mods: behaviour added around the ClientApp without touching the training code.

The ClientApp's mods are fixed when it is built, so each one acts only on the messages meant for
it: ``[fault_injection_mod, secagg_mod, user_clipping_mod]``. SecAgg+ wraps the clipping mod, so
clipping sees the plain update and SecAgg+ masks the clipped one (the order docs/design.md §8
requires).
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
    Stage,
)
from flwr.compat.common.recorddict_compat import (
    fitres_to_recorddict,
    recorddict_to_fitins,
    recorddict_to_fitres,
)

from client.noise import device_noise_rng, noised_for_secagg
from client.policy import TEST_FAULT, DevicePolicy
from client.reply import shape_masked_reply
from client.store_adapter import uses_store
from shared.config import RunConfig
from shared.faults import FIT, REPLY_MODES, parse_fault
from shared.privacy import clip_update
from shared.secagg import STAGES, quantizer_clip_count
from shared.wire import (
    BUDGET_EXHAUSTED,
    CLIP_BIT,
    CLIP_BIT_UNITS,
    CLIP_NORM,
    CLIP_UNDER,
    DP_STATUS,
    NOISE_MU,
    SECAGG_BOUND,
    SERVER_ROUND,
    SHARD_USERS,
)

_STAGE_NAMES = dict(zip(Stage.all(), STAGES, strict=True))  # Flower's names -> ours


def secagg_mod(msg: Message, ctxt: Context, call_next) -> Message:
    """Flower's ``secaggplus_mod``, only on messages of a SecAgg+ round.

    ``secaggplus_mod`` raises KeyError on any training message without its config record, so on
    its own it would break every run without SecAgg+; this guard makes one ClientApp serve both.
    """
    if msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def user_clipping_mod(msg: Message, ctxt: Context, call_next) -> Message:
    """Clip the whole update before it leaves the device (DP-FedAvg's device step, and SecAgg+).

    Acts only on training messages carrying a bound: the user-level clip norm S (runs with
    user-level DP) and/or the SecAgg+ bound. Flower's ``fixedclipping_mod`` does the same but
    raises when no norm is sent and divides by zero on a zero update (a device that declined).

    Under SecAgg+ the reply becomes the clipped UPDATE itself, in float64, with weight 1: the
    derived quantizer (:mod:`shared.secagg`) can then neither clip nor wrap, and the server,
    which sees only the sum, adds it to the model. The mod also counts the coordinates that
    SecAgg+'s quantizer would clip, with the parameters its setup stage delivered (0 by
    construction), and reports the count in plaintext (it says nothing about the data).

    Under device noise (``dp-noise-source = "devices"``) the clipped update then gets this
    device's share of the noise in SecAgg+'s integer domain (:mod:`client.noise`) before
    SecAgg+ masks it; the device refuses a round that asks it for no noise
    (:meth:`client.policy.DevicePolicy.check_device_noise`).

    Under adaptive clipping (the round sends ``confide.clip-bit``) the device also reports its
    clip bit, whether its update was within S before clipping: in plaintext as a metric (the
    clipped update shows it anyway), under SecAgg+ as one more masked coordinate,
    (bit - 1/2) x B (0 for a device that declined), so that only the cohort's count is
    unmasked (:func:`centred_bit`); under device noise that coordinate is noised with the update.
    """
    if msg.metadata.message_type != MessageType.TRAIN or not msg.has_content():
        return call_next(msg, ctxt)
    fit_ins = recorddict_to_fitins(msg.content, keep_input=True)
    norm, bound = fit_ins.config.get(CLIP_NORM), fit_ins.config.get(SECAGG_BOUND)
    if (norm is None and bound is None) or SHARD_USERS in fit_ins.config:
        return call_next(msg, ctxt)  # (a shard clips each of its users itself: client/shard.py)
    reply = call_next(msg, ctxt)
    if reply.has_error():
        return reply
    fit_res = recorddict_to_fitres(reply.content, keep_input=True)
    sent = parameters_to_ndarrays(fit_ins.parameters)
    new = parameters_to_ndarrays(fit_res.parameters)
    bit = bool(fit_ins.config.get(CLIP_BIT)) and norm is not None
    declined = fit_res.metrics.get(DP_STATUS) == BUDGET_EXHAUSTED
    if bound is None:
        update = [n - old for n, old in zip(new, sent, strict=True)]
        clipped, before = clip_update(update, float(norm))
        fit_res.parameters = ndarrays_to_parameters(
            [old + c for old, c in zip(sent, clipped, strict=True)]
        )
        if bit:
            fit_res.metrics = {**fit_res.metrics, CLIP_UNDER: int(before <= float(norm))}
    else:
        update = [n.astype(np.float64) - old for n, old in zip(new, sent, strict=True)]
        if not all(np.isfinite(u).all() for u in update):
            # NaN would quantize to garbage that no check could see in the sum: drop out instead.
            raise ValueError("the local update is not finite: this device drops out of the round")
        limit = float(bound) if norm is None else min(float(bound), float(norm))
        clipped, before = clip_update(update, limit)
        centred = centred_bit(before <= limit, declined) if bit else None
        clipped, clamped = _device_noise(msg, ctxt, fit_ins.config, clipped, limit, centred)
        if centred is not None and clamped is None:  # server noise: the bit in float units
            clipped.append(np.array([centred * float(bound)], dtype=np.float64))
        fit_res.parameters = ndarrays_to_parameters(clipped)
        fit_res.num_examples, fit_res.metrics = shape_masked_reply(
            fit_res.metrics, _quantizer_clips(ctxt, clipped), clamped
        )
    reply.content = fitres_to_recorddict(fit_res, keep_input=True)
    return reply


def centred_bit(under: bool, declined: bool) -> float:
    """Adaptive clipping under SecAgg+: the clip bit, centred, as one more masked coordinate.

    (bit - 1/2), scaled by B: with server noise B is SecAgg+'s bound (|value| <= B / 2 is within
    the quantizer's range c >= B, so it can neither clip nor wrap); with device noise it is the
    round's integer B, noised with the update (:func:`client.noise.noised_for_secagg`). One
    device then moves the unmasked sum by at most B / 2, what the count's noise is calibrated
    to (shared/adaptive_clip.py). A device that declined (at its budget) sends 0, as its update
    is 0.
    """
    return 0.0 if declined else (0.5 if under else -0.5)


def _secagg_state(ctxt: Context):
    state = ctxt.state.config_records.get(RECORD_KEY_STATE)
    if state is None or "clipping_range" not in state:
        raise RuntimeError(
            "the server asked for a SecAgg+ update outside a SecAgg+ round: the ClientApp's mods "
            "must be [secagg_mod, user_clipping_mod] in this order"
        )
    return state


def _device_noise(
    msg: Message,
    ctxt: Context,
    instructions,
    clipped: list[np.ndarray],
    clip_norm: float,
    centred: float | None,
) -> tuple[list[np.ndarray], int | None]:
    """This device's noise share on its clipped update and its centred clip bit, if asked
    (device noise only; else unchanged, and the clamped count is None)."""
    config = RunConfig.from_mapping(ctxt.run_config)
    mu = instructions.get(NOISE_MU)
    policy = DevicePolicy.from_node_config(ctxt.node_config, deployed=uses_store(ctxt.node_config))
    policy.check_device_noise(config, mu)  # refuses "no noise" when the run says devices add it
    if not config.device_noise:
        return clipped, None
    state = _secagg_state(ctxt)
    device = int(ctxt.node_config.get("partition-id", 0))  # a deployed device refused seeding
    rng = device_noise_rng(config, device, int(msg.metadata.group_id))
    return noised_for_secagg(
        clipped,
        clip_norm,
        float(state["clipping_range"]),
        int(state["target_range"]),
        float(mu),
        rng,
        centred,
        instructions.get(CLIP_BIT_UNITS, 0) if centred is not None else 0,
    )


def _quantizer_clips(ctxt: Context, update: list[np.ndarray]) -> int:
    state = _secagg_state(ctxt)
    return quantizer_clip_count(
        update,
        float(state["clipping_range"]),
        int(state["target_range"]),
        1.0,
        float(state["max_weight"]),
    )


def fault_injection_mod(msg: Message, ctxt: Context, call_next) -> Message:
    """TEST ONLY: make chosen devices fail in a chosen round (``test-secagg-fault``).

    Why it exists: devices of a real cohort crash, go silent or send garbage mid-round, and a
    simulation's never do. The end-to-end tests set ``test-secagg-fault`` (parsed by
    :func:`shared.faults.parse_fault`) to make chosen devices fail in a plain training round
    (``fit``) or at a SecAgg+ stage, to prove that the server carries on with the others (or
    skips the round) and that what it aggregates is still exact. A failing device raises (Flower
    reports the error), with ``hang`` sleeps past the timeout first (``round-timeout`` for fit,
    ``secagg-timeout`` for a stage) as a silent device would, or, in a fit round, trains and then
    replies garbage: a NaN update (``nan``) or arrays of the wrong shapes (``shapes``), which the
    server's reply validation must reject.

    Inactive unless the run sets it (empty by default). A deployed device (its node config names
    a store) refuses every message of a run that sets it, before anything is trained or stored
    (:meth:`client.policy.DevicePolicy.check_test_faults`), as it refuses
    ``dp-reproducible-noise``: otherwise a server could make devices drop out on command, e.g.
    to shrink a SecAgg+ cohort until a sum reveals one device.
    """
    spec = str(ctxt.run_config.get(TEST_FAULT, ""))
    DevicePolicy(deployed=uses_store(ctxt.node_config)).check_test_faults(spec)
    if not spec or not msg.has_content() or msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    secagg = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    if secagg is None:  # a plain fit round: the run's round, as the server numbers it
        where, timeout = FIT, float(ctxt.run_config["round-timeout"])
        fit_ins = recorddict_to_fitins(msg.content, keep_input=True)
        server_round = int(fit_ins.config.get(SERVER_ROUND, msg.metadata.group_id))
    else:  # a SecAgg+ stage: only Flower's round (see shared.faults.Fault)
        where = _STAGE_NAMES.get(str(secagg.get(Key.STAGE)))
        timeout = float(ctxt.run_config["secagg-timeout"])
        server_round = int(msg.metadata.group_id)
    device = int(ctxt.node_config.get("partition-id", -1))
    for fault in parse_fault(spec):
        if (fault.round, fault.where) != (server_round, where) or device not in fault.ids:
            continue
        if fault.mode in REPLY_MODES:
            return _garbage(call_next(msg, ctxt), fault.mode)
        if fault.mode == "hang":
            time.sleep(timeout + 1)  # the server stopped waiting at least 1 s ago
        raise RuntimeError(f"test fault: device {device} fails in {where} ({server_round})")
    return call_next(msg, ctxt)


def _garbage(reply: Message, mode: str) -> Message:
    """The device's reply with its arrays replaced: all NaN, or each one element too long."""
    if reply.has_error():
        return reply
    fit_res = recorddict_to_fitres(reply.content, keep_input=True)
    arrays = parameters_to_ndarrays(fit_res.parameters)
    if mode == "nan":
        arrays = [np.full_like(a, np.nan) for a in arrays]
    else:
        arrays = [np.zeros(a.size + 1, a.dtype) for a in arrays]
    fit_res.parameters = ndarrays_to_parameters(arrays)
    reply.content = fitres_to_recorddict(fit_res, keep_input=True)
    return reply
