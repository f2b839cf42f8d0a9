"""Research tools, apart from the product: sweeps, diagnostics, probes, benchmarks and checks.

The product is the ``confide`` CLI, the Flower apps, the device SDK and what they need. What is
here measures or probes that product (each module is a ``python -m simulations.research.NAME``
command) and may change with the questions asked of it. The one piece the CLI runs is
:mod:`simulations.research.audit`, behind ``confide audit item-inference``. Logic the product
shares with these tools lives in the package it belongs to (``shared.privacy``,
``shared.saved_run``, ``shared.config``), never here.
"""
