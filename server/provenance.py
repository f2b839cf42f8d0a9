"""What identifies a run's output: the global model's digest and the library versions."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import metadata

import numpy as np

LIBRARIES = ("opacus", "flwr", "torch", "numpy")


def model_digest(arrays: Sequence[np.ndarray]) -> str:
    """SHA-256 over every global array's dtype, shape and bytes (proof a skipped round kept it)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """The versions an ε depends on (the accountant's library above all)."""
    return {name: metadata.version(name) for name in LIBRARIES}
