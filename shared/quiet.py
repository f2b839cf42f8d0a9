"""Import Opacus without its side effect on logging.

Opacus calls ``logging.basicConfig`` when imported, which adds a root handler and makes every
Flower log line appear twice. We import it once here and remove only the handler it added.
"""

import logging


def import_opacus_quietly() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    import opacus  # noqa: F401

    for handler in root.handlers:
        if handler not in before:
            root.removeHandler(handler)
