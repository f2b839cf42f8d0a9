"""Client mods: behaviour added around the ClientApp by wrapping Flower's own mods."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import fixedclipping_mod
from flwr.compat.common.recorddict_compat import recorddict_to_fitins
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM


def user_clipping_mod(msg: Message, ctxt: Context, call_next) -> Message:
    """DP-FedAvg's device step: clip the whole update to the norm S the server sends.

    Flower's ``fixedclipping_mod`` raises when the server sends no clipping norm, and mods are
    fixed when the ClientApp is built; this wrapper applies it only to training messages that
    carry a norm, i.e. only in runs with user-level DP. Under SecAgg+ the order is
    ``[secaggplus_mod, user_clipping_mod]``: clipping sees the plain update, before masking.
    """
    if msg.metadata.message_type == MessageType.TRAIN and msg.has_content():
        if KEY_CLIPPING_NORM in recorddict_to_fitins(msg.content, keep_input=True).config:
            return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)
