"""TEST ONLY: the fault spec that makes chosen simulated devices fail (``test-secagg-fault``).

Real devices crash, go silent and send garbage in the middle of a round; a simulation's never
do. The end-to-end tests name which devices fail, where and how, and check that the server
carries on with the others or skips the round (docs/design.md §3). A deployed device refuses any
run that sets a spec (``client/policy.py``): the hook would let a server make devices fail on
command. The mod that acts on it is :func:`client.mods.fault_injection_mod`.

Plain Python: no Flower.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.secagg import STAGES

FIT = "fit"  # a plain (non-SecAgg+) training round
WHERE = (FIT, *STAGES)
# raise: the ClientApp raises (Flower reports the error); hang: it answers only after the timeout
# that applies (round-timeout for fit, secagg-timeout for a SecAgg+ stage); nan / shapes: a
# reply whose update is NaN, or whose arrays have the wrong shapes (fit only: under SecAgg+ the
# server sees no single update to reject, and the device's own check drops a NaN one).
MODES = ("raise", "hang", "nan", "shapes")
REPLY_MODES = ("nan", "shapes")


@dataclass(frozen=True)
class Fault:
    """Devices ``ids`` fail in ``where`` of round ``round``, as ``mode`` says.

    ``round`` is the run's round for ``fit`` (the ``server-round`` the device is sent, which a
    resume continues), and Flower's round number for a SecAgg+ stage (the messages of the
    stages before collect carry no other): the two agree except after a resume, where Flower
    counts from 1 again.
    """

    round: int
    where: str
    ids: tuple[int, ...]
    mode: str = "raise"


def parse_fault(spec: str) -> list[Fault]:
    """``"ROUND:WHERE:ID,ID[:MODE]"`` entries separated by ``;``; empty: no faults.

    WHERE is ``fit`` or a SecAgg+ stage; MODE ``raise`` (the default), ``hang``, and for ``fit``
    also ``nan`` or ``shapes``. Raises ValueError, naming the entry and the form, on a bad spec.
    """
    faults = []
    for entry in filter(None, (e.strip() for e in spec.split(";"))):
        parts = entry.split(":")
        try:
            if len(parts) not in (3, 4) or parts[1] not in WHERE:
                raise ValueError
            mode = parts[3] if len(parts) == 4 else "raise"
            if mode not in MODES or (mode in REPLY_MODES and parts[1] != FIT):
                raise ValueError
            ids = tuple(int(i) for i in parts[2].split(","))
            faults.append(Fault(int(parts[0]), parts[1], ids, mode))
        except ValueError:
            raise ValueError(
                f"bad fault entry {entry!r}: expected ROUND:WHERE:ID,ID[:MODE] with WHERE one of "
                f"{', '.join(WHERE)} and MODE one of {', '.join(MODES)} (nan and shapes only for "
                "fit), e.g. '2:collect:0,1' or '3:fit:4:nan'"
            ) from None
    return faults
