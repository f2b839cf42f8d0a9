"""RESEARCH ONLY: the client mod that makes the poisoning audit's malicious devices attack.

A simulated device that :func:`shared.poisoning.poison_plan` names as an attacker trains as
usual (so its reply looks like any other: weight, metrics) and then replaces the arrays it
uploads with the promotion update (:func:`shared.poisoning.promotion_update`). It sits inside
SecAgg+'s mod and outside the clipping mod: an attacker does not clip its own update (the
config refuses the audit under SecAgg+, where nobody else could). In evaluation it keeps its
own top-10 list to itself, so the lists the server counts the target's exposure in are the
other users'.

Inactive unless the run sets ``audit-poison-fraction``. A deployed device refuses any run that
sets it (:meth:`client.policy.DevicePolicy.check_research_only`): a switch that makes devices
attack is for simulations only.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import (
    evaluateres_to_recorddict,
    fitres_to_recorddict,
    recorddict_to_evaluateres,
    recorddict_to_fitins,
    recorddict_to_fitres,
)

from client.policy import DevicePolicy
from client.store_adapter import uses_store
from shared.config import RunConfig
from shared.models import global_names
from shared.poisoning import dilution, poison_plan, promotion_update
from shared.split import split_for
from shared.wire import TOP10


def poisoning_mod(msg: Message, ctxt: Context, call_next) -> Message:
    fraction = ctxt.run_config.get("audit-poison-fraction", 0.0)
    if not fraction or not msg.has_content():
        return call_next(msg, ctxt)
    config = RunConfig.from_mapping(ctxt.run_config)
    DevicePolicy(deployed=uses_store(ctxt.node_config)).check_research_only(config)
    split = split_for(config)
    plan = poison_plan(config, split)
    device = int(ctxt.node_config.get("partition-id", -1))
    if plan is None or device not in plan.attackers:
        return call_next(msg, ctxt)
    kind = msg.metadata.message_type
    reply = call_next(msg, ctxt)
    if reply.has_error():
        return reply
    if kind == MessageType.EVALUATE:
        res = recorddict_to_evaluateres(reply.content)
        res.metrics = {k: v for k, v in res.metrics.items() if k != TOP10}
        reply.content = evaluateres_to_recorddict(res)
        return reply
    if kind != MessageType.TRAIN or not config.audit_poison_boost:
        return reply  # boost 0: the audit's no-attack row (same devices, same target, honest)
    fit_ins = recorddict_to_fitins(msg.content, keep_input=True)
    sent = parameters_to_ndarrays(fit_ins.parameters)
    names = global_names(config.build_model(split.num_items))
    poisoned = promotion_update(
        names,
        sent,
        plan,
        split.num_items,
        scale=config.audit_poison_boost * dilution(config),
        norm_bound=config.max_update_norm,
    )
    fit_res = recorddict_to_fitres(reply.content, keep_input=True)
    fit_res.parameters = ndarrays_to_parameters(poisoned)
    reply.content = fitres_to_recorddict(fit_res, keep_input=True)
    return reply
