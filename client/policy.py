"""The device owner's own privacy limit, which no run config can raise.

The run config (``dp-epsilon-cap``, ``dp-delta``, even ``dp-interaction``) comes from the server,
so a device that trusted it alone would train without DP, or past any budget, whenever a server
asked it to. A deployed SuperNode can therefore set its own limit in its node config:

    flower-supernode ... --node-config 'store-path="..." store-key-file="..."
                                        device-epsilon-cap=8.0 device-delta=1e-5'

With a cap set, the device trains only under interaction-level DP, and declines (status
"budget exhausted", nothing spent) any round after which its ε at ITS δ would pass ITS cap,
whatever the run's own cap says.

A deployed device (one with a store) also refuses the run settings that exist for simulations
only, because each would hand the server a lever over the device:

- ``dp-reproducible-noise``: its DP noise would be seeded from the run's seed, which the server
  knows, so the server could replay the noise and subtract it;
- ``test-secagg-fault``: the server could make it crash, hang or reply garbage on command, in
  a plain round or a SecAgg+ stage (see :func:`client.mods.fault_injection_mod`).

Under device noise (``dp-noise-source = "devices"``) the user-level guarantee rests on the noise
the devices add themselves, so every device refuses a round whose instructions ask it for none
(a missing, zero or non-finite Skellam variance): the run config says the devices add the noise,
and a server that then asked for none would hold the exact sum. A device with its own ε cap
names it in the refusal.

What a device says in federated evaluation is its owner's choice too. Every evaluated device
sends its held-out item's HR/NDCG@10 and its list's diversity (numbers about one held-out item
and one list); its top-10 list itself, which the server needs for catalogue coverage, exposure
Gini and novelty, reveals the user's recommendations and is sent only with ``share-top-list =
true`` (the default in simulations, where the devices are the run's own; off when deployed).

Plain Python: no Flower, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from shared.config import RunConfig
from shared.privacy import PrivacyHistory

EPSILON_CAP = "device-epsilon-cap"
DELTA = "device-delta"
DEFAULT_DELTA = 1e-5
SHARE_TOP_LIST = "share-top-list"
TEST_FAULT = "test-secagg-fault"  # the run config key of the test-only fault hook


class PolicyViolation(ValueError):
    """The run asks for something the device's own policy forbids."""


@dataclass(frozen=True)
class DevicePolicy:
    epsilon_cap: float = 0.0  # 0: no limit of the device's own
    delta: float = DEFAULT_DELTA
    deployed: bool = False  # refuse the settings meant for simulations only (see above)
    share_top_list: bool = True  # send the top-10 list in evaluation replies (see above)

    @classmethod
    def from_node_config(
        cls, node_config: Mapping[str, object], deployed: bool = False
    ) -> DevicePolicy:
        cap = _number(node_config, EPSILON_CAP, 0.0)
        delta = _number(node_config, DELTA, DEFAULT_DELTA)
        if cap < 0:
            raise ValueError(f"node config {EPSILON_CAP} must be 0 (none) or positive, got {cap}")
        if not 0 < delta < 1:
            raise ValueError(f"node config {DELTA} must be in (0, 1), e.g. 1e-5; got {delta}")
        if DELTA in node_config and not cap:
            raise ValueError(f"node config sets {DELTA} without {EPSILON_CAP}: set both")
        share = node_config.get(SHARE_TOP_LIST, not deployed)
        if not isinstance(share, bool):
            raise ValueError(
                f"node config {SHARE_TOP_LIST} must be true or false (e.g. {SHARE_TOP_LIST}=false)"
                f", got {share!r}"
            )
        return cls(epsilon_cap=cap, delta=delta, deployed=deployed, share_top_list=share)

    def check_run(self, config: RunConfig) -> None:
        """Refuse, before touching any data, a run whose ε would not hold or not exist."""
        if self.epsilon_cap and not config.dp_interaction:
            raise PolicyViolation(
                f"this device's node config sets {EPSILON_CAP}={self.epsilon_cap:g}, but the run "
                "trains without interaction-level DP (dp-interaction = false), which no finite ε "
                "covers: the device declines. Run with dp-interaction = true, or remove "
                f"{EPSILON_CAP} from the device's node config to allow non-private training"
            )
        if self.deployed and config.dp_reproducible_noise and config.device_noise:
            raise PolicyViolation(
                'the run sets dp-reproducible-noise = true with dp-noise-source = "devices": '
                "the device's noise would be seeded from the run's seed, which the server knows "
                "and could use to remove it. A deployed device declines"
            )
        if self.deployed and config.dp_interaction and config.dp_reproducible_noise:
            raise PolicyViolation(
                "the run sets dp-reproducible-noise = true: the device's DP noise would be "
                "seeded from the run's seed, which the server knows and could use to remove it. "
                "A deployed device declines; that setting is for simulations only"
            )

    def check_device_noise(self, config: RunConfig, mu: object) -> None:
        """Refuse a round that asks for no device noise where the run says devices add it.

        ``mu``: the Skellam variance the round's instructions ask this device to add (None when
        absent). A run without device noise must not send one either (inconsistent).
        """
        if not config.device_noise:
            if mu is not None:
                raise PolicyViolation(
                    "the round asks for device noise, but the run config has "
                    f"dp-noise-source = {config.dp_noise_source!r} (or dp-user off): "
                    "inconsistent, so the device declines"
                )
            return
        ok = isinstance(mu, int | float) and not isinstance(mu, bool) and math.isfinite(mu)
        if ok and mu > 0:
            return
        cap = (
            f"; its node config sets {EPSILON_CAP}={self.epsilon_cap:g}" if self.epsilon_cap else ""
        )
        raise PolicyViolation(
            f'the run says the devices add the user-level noise (dp-noise-source = "devices"), '
            f"but this round asks this device for a noise variance of {mu!r}: with no noise no "
            f"user-level ε holds{cap}. The device declines the round"
        )

    def check_research_only(self, config: RunConfig) -> None:
        """Refuse, if deployed, a run that makes devices attack (the poisoning audit)."""
        if self.deployed and config.audit_poison_fraction:
            raise PolicyViolation(
                f"the run sets audit-poison-fraction = {config.audit_poison_fraction:g}: that "
                "switch makes devices upload poisoned updates for the poisoning audit. A deployed "
                "device declines; that setting is for simulations only"
            )

    def check_test_faults(self, spec: str) -> None:
        """Refuse a run that sets the test-only fault hook (``spec``: its value), if deployed."""
        if self.deployed and spec:
            raise PolicyViolation(
                f"the run sets {TEST_FAULT} = {spec!r}: that hook makes devices fail on the "
                "server's command, which would let a server shrink a SecAgg+ cohort until a sum "
                "reveals one device. A deployed device declines; that setting is for tests only"
            )

    def would_pass(self, history_after: PrivacyHistory, accountant: str) -> bool:
        """Whether the device's ε after the planned round passes its own cap (at its own δ)."""
        return bool(self.epsilon_cap) and (
            history_after.epsilon(self.delta, accountant) > self.epsilon_cap
        )

    def declines(self, config: RunConfig, history_after: PrivacyHistory) -> bool:
        """Whether a device declines the round: its ε after it would pass the run's cap
        (``dp-epsilon-cap``, at the run's δ) or its owner's (at the owner's δ)."""
        cap = config.dp_epsilon_cap
        over_run_cap = cap and history_after.epsilon(config.dp_delta, config.dp_accountant) > cap
        return bool(over_run_cap) or self.would_pass(history_after, config.dp_accountant)


def _number(node_config: Mapping[str, object], key: str, default: float) -> float:
    value = node_config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"node config {key} must be a number (e.g. {key}=8.0), got {value!r}")
    return float(value)
