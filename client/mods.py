"""Client mods: behaviour added around the ClientApp without touching the training code."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import (
    fitres_to_recorddict,
    recorddict_to_fitins,
    recorddict_to_fitres,
)
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from shared.privacy import clip_update


def user_clipping_mod(msg: Message, ctxt: Context, call_next) -> Message:
    """DP-FedAvg's device step: clip the whole update to the norm S the server sends.

    It acts only on training messages that carry a norm (runs with user-level DP), since mods are
    fixed when the ClientApp is built. Flower's ``fixedclipping_mod`` does the same but raises
    when no norm is sent and divides by zero on a zero update (a device that declined to train).
    Under SecAgg+ the order is ``[secaggplus_mod, user_clipping_mod]``: clipping sees the plain
    update, before it is masked.
    """
    if msg.metadata.message_type != MessageType.TRAIN or not msg.has_content():
        return call_next(msg, ctxt)
    fit_ins = recorddict_to_fitins(msg.content, keep_input=True)
    if KEY_CLIPPING_NORM not in fit_ins.config:
        return call_next(msg, ctxt)
    reply = call_next(msg, ctxt)
    if reply.has_error():
        return reply
    fit_res = recorddict_to_fitres(reply.content, keep_input=True)
    sent = parameters_to_ndarrays(fit_ins.parameters)
    update = [
        new - old for new, old in zip(parameters_to_ndarrays(fit_res.parameters), sent, strict=True)
    ]
    clipped, _ = clip_update(update, float(fit_ins.config[KEY_CLIPPING_NORM]))
    fit_res.parameters = ndarrays_to_parameters(
        [old + c for old, c in zip(sent, clipped, strict=True)]
    )
    reply.content = fitres_to_recorddict(fit_res, keep_input=True)
    return reply
