"""Every wait on the devices ends: Flower's grid with ``round-timeout`` as its default timeout.

Flower 1.42's ``DefaultWorkflow`` asks the grid for the fit and evaluate replies with no timeout
(``grid.send_and_receive(messages)`` waits until every device answers), and ``ServerConfig``'s
``round_timeout`` is read only by the older ``Server`` loop: one hung device would hang the run.
Wrapping the grid gives every wait that names no timeout of its own ``round-timeout``; SecAgg+'s
stages keep theirs (``secagg-timeout``). A device that has not answered by then is missing from
the replies: the strategy counts it as a failure (docs/design.md §3).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import Message
from flwr.server import Grid


class TimedGrid:
    """``grid`` with ``timeout`` seconds for every ``send_and_receive`` that sets none."""

    def __init__(self, grid: Grid, timeout: float) -> None:
        self._grid = grid
        self.timeout = timeout

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._grid.send_and_receive(
            messages, timeout=self.timeout if timeout is None else timeout
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)  # everything else is the grid's own
