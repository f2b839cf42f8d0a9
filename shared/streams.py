"""Every seeded random stream, named: ``(seed, purpose, user, round, epoch)`` in one place.

A stream is a NumPy generator seeded by a tuple whose second element names its purpose, so two
purposes never share draws and one user's draws never depend on another user's (a device can
reproduce its own evaluation negatives from its own data alone). The numbers are part of every
seeded result: changing one changes every run that uses it.

Randomness that a DP guarantee rests on (DP-SGD noise and Poisson batches on the devices, the
server's user-level sampling and noise) is NOT drawn from these streams unless a research run
sets ``dp-reproducible-noise``: anyone who knows the run's seed (it is in config.json) could
replay it. :func:`secret_seed` is the source for those.
"""

from __future__ import annotations

import secrets
from enum import IntEnum, unique

import numpy as np


@unique  # two purposes sharing a number would silently share draws: refuse it at import
class Stream(IntEnum):
    EVAL_NEGATIVES = 1  # a user's fixed evaluation negatives
    TRAIN_NEGATIVES = 2  # a user's training negatives, fresh every round and epoch
    USER_EMBEDDING = 3  # a device's initial private embedding
    DEVICE_TORCH = 4  # torch's generator on a device (reproducible-noise runs only under DP)
    USER_DP_SAMPLING = 6  # the server's Poisson sampling under user-level DP (research runs)
    USER_DP_NOISE = 7  # the server's Gaussian noise under user-level DP (research runs)
    AUDIT_ATTACK = 11  # the item-inference attack's random directions
    AUDIT_USERS = 12  # which users an item-inference audit looks at
    DP_LIMITS_COHORT = 13  # the cohort the noise-to-signal diagnostic measures
    HOLDOUT = 14  # which of a user's tied latest interactions is held out (all tie: no timestamps)
    DEVICE_NOISE = 15  # a device's Skellam noise and rounding under device noise (research runs)
    DP_POPULARITY = 20  # the DP popularity baseline's noise and capping (research runs only)
    AUDIT_CANARIES = 21  # the membership audit's canaries: coins, items, reference items
    AUDIT_POISON = 22  # the poisoning audit: which devices attack, and the item they promote
    COHORT_SAMPLING = 23  # which users a round without user-level DP (or an evaluation) asks
    POOLED_DEVICE = 24  # pooled DP: a device's Poisson sample and private noise (research runs)
    POOLED_NOISE = 25  # pooled DP: the server's noise on the cohort's sum (research runs)
    CLIP_COUNT_NOISE = 26  # adaptive clipping: the noise on the count under S (research runs)


# A round's epochs get indices ``round * EPOCHS_PER_ROUND + epoch``; personalization (before
# ranking) uses ``PERSONALIZE_BASE + epoch``, far from any training round.
EPOCHS_PER_ROUND = 1000
PERSONALIZE_BASE = 10**9


def generator(seed: int, stream: Stream, *ids: int) -> np.random.Generator:
    """The generator of one purpose, optionally for one user / round / epoch."""
    return np.random.default_rng((seed, int(stream), *ids))


def eval_negatives_rng(seed: int, user: int) -> np.random.Generator:
    return generator(seed, Stream.EVAL_NEGATIVES, user)


def holdout_rng(seed: int, user: int) -> np.random.Generator:
    """Which of one user's tied latest interactions leave-one-out holds out.

    The user enters as ``user + 1`` so the seed tuple never ends in a zero: NumPy drops trailing
    zeros, and ``(seed, HOLDOUT, 0)`` would be the centralized baseline's epoch-14 shuffle
    ``(seed, 14)`` (see :func:`centralized_shuffle_rng`).
    """
    return generator(seed, Stream.HOLDOUT, user + 1)


def train_negatives_rng(
    seed: int, user: int, server_round: int, epoch: int = 0
) -> np.random.Generator:
    """One user's training negatives (and batch order) in one epoch of one round."""
    return generator(seed, Stream.TRAIN_NEGATIVES, user, server_round * EPOCHS_PER_ROUND + epoch)


def personalize_rng(seed: int, user: int, epoch: int) -> np.random.Generator:
    """One user's negatives in one personalization epoch (re-fit before ranking, never sent)."""
    return generator(seed, Stream.TRAIN_NEGATIVES, user, PERSONALIZE_BASE + epoch)


def synthetic_rng(seed: int) -> np.random.Generator:
    """The synthetic generator's one stream: the data set itself (every draw, in a fixed order).

    Seeded by the run seed alone, without a purpose element: it predates the named streams, and
    a purpose element would change every synthetic data set and every result measured on one.
    """
    return np.random.default_rng(seed)


def centralized_shuffle_rng(seed: int, epoch: int) -> np.random.Generator:
    """The centralized baseline's batch order in one epoch (its negatives are the devices' own
    :func:`train_negatives_rng` streams, so pooled and federated training see the same data).

    ``(seed, epoch)`` without a purpose element, as before the streams were named: adding one
    would change every seeded centralized result. NumPy pads seed tuples with zeros, so epoch
    ``e`` draws the same numbers as ``generator(seed, Stream(e), 0)`` (epoch 1: user 0's
    evaluation negatives). Harmless in practice (one permutation of the pooled rows, one user's
    negatives), but a new stream should not reuse the pattern.
    """
    return np.random.default_rng((seed, epoch))


def user_embedding_seed(seed: int, user: int) -> int:
    """The torch seed of a device's initial private embedding (32 bits, as models take)."""
    return int(
        np.random.SeedSequence((seed, int(Stream.USER_EMBEDDING), user)).generate_state(1)[0]
    )


def device_torch_seed(seed: int, user: int, server_round: int) -> int:
    """64-bit torch seed of a device's round when its randomness need not be secret."""
    sequence = np.random.SeedSequence((seed, int(Stream.DEVICE_TORCH), user, server_round))
    return int(sequence.generate_state(1, np.uint64)[0])


def secret_seed(bits: int = 64) -> int:
    """Fresh OS entropy: for randomness a DP guarantee rests on (never derivable from the seed)."""
    return secrets.randbits(bits)
