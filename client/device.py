"""The device SDK: what a host app calls, over the encrypted on-device store.

    with Device.open("confide.db", key) as device:      # key: 32 bytes from the OS keystore
        device.record(item=42, rating=4.0)
        device.recommend(k=10)                           # [Recommendation(item, score), ...]
        device.explain(item=7, k=3)                      # my own past items most like item 7
        device.privacy_budget()                          # ε spent, the cap that binds, unit
        device.delete_interaction(record_id)             # one interaction
        device.forget(device.device_id)                  # deletes everything of this user

Items are catalogue indices ``0..num_items-1``: an item outside a known catalogue is refused;
before the catalogue is known (no run yet, no ``num_items`` at open) any index >= 0 is kept, and
training leaves out the ones the catalogue turns out not to hold (with a warning), so a stray id
never blocks a device. Timestamps are seconds since the epoch, from 0 to one day ahead of the
device's clock: a value that reads as milliseconds (JavaScript's ``Date.now()``) is refused, since
as the latest interaction it would be the held-out item for good.

The catalogue is public; the interactions are not. The store also keeps what the deployed
ClientApp needs between runs: the private embedding, the DP accountant, the latest global model
and the run config it belongs to, the device's own privacy policy, and a random secret from which
the device's seeds are derived (so its noise and negatives are neither predictable by the server
nor repeated across runs).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from client.explain import Explanation, explain
from client.policy import DevicePolicy
from client.store import EncryptedStore, Interaction
from client.training_round import LOCAL_USER, device_model, personalize
from shared.config import RunConfig
from shared.item_vectors import item_vectors
from shared.models import private_state
from shared.privacy import PrivacyHistory
from shared.split import UserData, sample_excluding

PRIVATE = "private-embedding"  # trained inside the DP-SGD steps of federated rounds
HISTORY = "privacy-history"  # the device's accountant: every DP-SGD step it ever took
GLOBAL = "global-model"
RUN_CONFIG = "run-config"
SECRET = "secret"
SERVING = "serving-embedding"  # re-fitted for recommending only; never used for training
UNPROTECTED = "unprotected-rounds"  # rounds this device trained without interaction-level DP
COLD_START_EPOCHS = 20  # local passes when personalize-epochs is 0
POLICY = "device-policy"  # the SuperNode's own cap and δ, recorded by the deployed ClientApp
UNIT = "one interaction of this device"
FUTURE_SLACK = 86_400.0  # seconds a timestamp may lie ahead of the device's clock (one day)
MAX_ITEM = 2**63 - 1  # items are stored as 64-bit integers (and sent as int64 by the agent)
MILLISECONDS_FROM = 1e11  # as seconds: the year 5138; as milliseconds: 1973 (Date.now() is ~1.8e12)
LOG = logging.getLogger(__name__)


class ModelNotReady(RuntimeError):
    """The device has no global model yet: it arrives with its first federated round."""


class NoInteractions(RuntimeError):
    """The device has no past items (in the catalogue) to explain a recommendation with."""


@dataclass(frozen=True)
class Recommendation:
    item: int
    score: float


@dataclass(frozen=True)
class PrivacyBudget:
    """Interaction-level DP spent by this device over every run it took part in."""

    epsilon: float  # at ``delta``: the binding cap's δ where a cap is set
    cap: float | None  # the binding cap: the device declines to train once a round would pass it
    delta: float | None
    unit: str
    accountant: str | None
    steps: int
    cap_source: str | None = None  # "device" (its node config) or "run" (the server's config)

    @property
    def remaining(self) -> float | None:
        return None if self.cap is None else max(0.0, self.cap - self.epsilon)


def arrays_to_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Arrays as an .npz, refused (ValueError) if they could not be read back: object arrays
    would be pickled, and :func:`bytes_to_arrays` never unpickles (the store is data only)."""
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **{k: np.asarray(v) for k, v in arrays.items()})
    return buffer.getvalue()


def bytes_to_arrays(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


class Device:
    """One user's device. Thread-safe as far as its store is; close it (or use ``with``)."""

    def __init__(self, store: EncryptedStore, num_items: int | None = None) -> None:
        self.store = store
        self._num_items = num_items
        self.last_fit = False  # whether the last recommend() re-fitted the private embedding

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], key: bytes, *, num_items: int | None = None
    ) -> Device:
        return cls(EncryptedStore(path, key), num_items)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def device_id(self) -> str:
        return self.store.device_id

    @property
    def num_items(self) -> int | None:
        """The catalogue size: given at open, or known from the last run's config."""
        config = self.run_config()
        return self._num_items or (config.num_items if config else None) or None

    # -- host app API ----------------------------------------------------------------------
    def record(self, item: int, rating: float | None = None, timestamp: float | None = None) -> int:
        """Append one interaction; returns its record id."""
        if isinstance(item, bool) or not isinstance(item, int | np.integer):
            raise ValueError(f"item must be an integer catalogue index, got {_shown(item)}")
        if item < 0 or item > MAX_ITEM or (self.num_items and item >= self.num_items):
            bound = f"0..{self.num_items - 1}" if self.num_items else f"0..{MAX_ITEM}"
            raise ValueError(
                f"item {_shown(item)} is outside the catalogue: use an index in {bound}"
            )
        if rating is not None and not _finite(rating):
            raise ValueError(f"rating must be a finite number or None, got {_shown(rating)}")
        now = time.time()
        timestamp = now if timestamp is None else timestamp
        check_timestamp(timestamp, now)
        return self.store.add_interaction(
            int(item), float(timestamp), None if rating is None else float(rating)
        )

    def interactions(self) -> list[Interaction]:
        return self.store.interactions()

    def delete_interaction(self, record_id: int) -> Interaction:
        """Delete one interaction by its record id (see :meth:`interactions`); returns it.

        Raises :class:`client.store.NoSuchRecordError` when there is none with that id.
        """
        if isinstance(record_id, bool) or not isinstance(record_id, int | np.integer):
            raise ValueError(f"record_id must be an integer, got {_shown(record_id)}")
        return self.store.delete_interaction(int(record_id))

    def recommend(self, k: int = 10) -> list[Recommendation]:
        """The k best items this device has not interacted with, best first.

        Scored by the latest global model with a private embedding re-fitted locally (no
        server) whenever the interactions or the model changed since the last fit: that is
        what makes a device with only a few interactions get personal results (cold start).
        The re-fitted embedding is kept apart from the one federated training uses, which is
        only ever trained inside DP-SGD steps (docs/design.md §4).
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        config, arrays = self._model()
        # items outside the current catalogue can be neither fitted to nor recommended
        seen = sorted({i.item for i in self.interactions() if i.item < config.num_items})
        model = device_model(
            config, config.num_items, self._seed(), arrays, self._serving(config, arrays, seen)
        )
        scores = model.score_all_items(LOCAL_USER).numpy().astype(np.float64)
        scores[seen] = -np.inf
        order = np.lexsort((np.arange(len(scores)), -scores))  # best first, ties by item id
        top = [int(i) for i in order[:k] if np.isfinite(scores[i])]
        return [Recommendation(i, float(scores[i])) for i in top]

    def explain(self, item: int, k: int = 5) -> list[Explanation]:
        """The device's own past items that most support ``item``, best first.

        Evidence: cosine similarity of the global model's item vectors
        (:mod:`client.explain`). Computed here from the stored global model and this device's
        own interactions only: no network call, nothing is written or sent, so it works with the
        server (and the SuperNode) stopped. ``item`` itself and items outside the catalogue are
        never among the reasons.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if isinstance(item, bool) or not isinstance(item, int | np.integer):
            raise ValueError(f"item must be an integer catalogue index, got {_shown(item)}")
        config, arrays = self._model()
        if not 0 <= item < config.num_items:
            raise ValueError(
                f"item {_shown(item)} is outside the catalogue: use an index in "
                f"0..{config.num_items - 1}"
            )
        own = {i.item for i in self.interactions() if i.item < config.num_items} - {int(item)}
        if not own:
            raise NoInteractions(
                f"this device has no past items other than {int(item)} to explain it with: "
                "record interactions first (Record)"
            )
        # user 0: only the global item tables are read, so the device's secret seed (and the
        # write that creates it) is not needed; explain writes nothing to the store
        model = device_model(config, config.num_items, 0, arrays, None)
        return explain(item_vectors(model, config.num_items), int(item), own, k)

    def privacy_budget(self) -> PrivacyBudget:
        """ε spent, against the cap that binds.

        Two caps may apply: the device's own (its SuperNode's node config, which the deployed
        ClientApp records here; :mod:`client.policy`) and the run's (``dp-epsilon-cap``). The one
        that binds is the one with less ε left, each at its own δ (with equal δs: the smaller
        cap); ε is reported at that cap's δ, and without a cap at the run's δ. ε is infinite once
        the device trained a round without DP: no finite ε covers it.
        """
        config, policy, history = self.run_config(), self.device_policy(), self.privacy_history()
        accountant = config.dp_accountant if config else None
        limits = []  # (source, cap, δ)
        if policy.epsilon_cap:
            limits.append(("device", policy.epsilon_cap, policy.delta))
        if config and config.dp_epsilon_cap:
            limits.append(("run", config.dp_epsilon_cap, config.dp_delta))
        unprotected = self.store.get(UNPROTECTED) is not None

        def spent(delta: float) -> float:
            if unprotected:
                return math.inf
            return history.epsilon(delta, accountant) if history.steps and accountant else 0.0

        if limits:
            source, cap, delta = min(limits, key=lambda lim: lim[1] - spent(lim[2]))
        else:
            source, cap = None, None
            delta = config.dp_delta if config else None
        return PrivacyBudget(
            epsilon=0.0 if delta is None else spent(delta),
            cap=cap,
            delta=delta,
            unit=UNIT,
            accountant=accountant,
            steps=history.steps,
            cap_source=source,
        )

    def device_policy(self) -> DevicePolicy:
        """The device's own cap and δ as its node config last set them (none: no cap)."""
        data = self.store.get(POLICY)
        if data is None:
            return DevicePolicy()
        saved = json.loads(data)
        return DevicePolicy(epsilon_cap=float(saved["epsilon-cap"]), delta=float(saved["delta"]))

    def save_policy(self, policy: DevicePolicy) -> None:
        """Record the node config's cap and δ, so the SDK and the agent can report them."""
        cap, delta = policy.epsilon_cap, policy.delta
        if not (_finite(cap) and cap >= 0 and _finite(delta) and 0 < delta < 1):
            # what DevicePolicy.from_node_config refuses: a stored NaN cap would bind nothing
            raise ValueError(
                f"a device policy needs a finite cap >= 0 and a delta in (0, 1), got cap {cap!r} "
                f"and delta {delta!r}"
            )
        if not cap:
            self.store.delete(POLICY)
            return
        saved = {"epsilon-cap": policy.epsilon_cap, "delta": policy.delta}
        self.store.put(POLICY, json.dumps(saved).encode())

    def forget(self, confirm: str) -> None:
        """Delete every interaction, the private embeddings, the accountant and the model.

        ``confirm`` must be this device's id (:attr:`device_id`): nothing a client sends by
        accident (a stray ``true``, a typo) can wipe the store.
        """
        if not isinstance(confirm, str) or confirm != self.device_id:
            raise ValueError(
                "Forget deletes every interaction, embedding and the accountant for good: to "
                "confirm, send this device's id (device_id, from Status) as the confirmation"
            )
        self.store.forget()

    def status(self) -> dict[str, object]:
        config = self.run_config()
        names = set(self.store.names())
        interactions = self.interactions()  # authenticated: a damaged store is not counted
        budget = self.privacy_budget()
        num_items = self.num_items or 0
        return {
            "device_id": self.device_id,
            "interactions": len(interactions),
            "num_items": num_items,
            "model": config.model if config else "",
            "has_global_model": GLOBAL in names,
            "has_private_embedding": PRIVATE in names,
            "epsilon": budget.epsilon,
            "epsilon_cap": budget.cap,
            "epsilon_remaining": budget.remaining,
            "delta": budget.delta,
            "cap_source": budget.cap_source or "",
            "outside_catalogue": sum(1 for i in interactions if num_items and i.item >= num_items),
        }

    # -- state the deployed ClientApp keeps here -------------------------------------------
    def run_config(self) -> RunConfig | None:
        data = self.store.get(RUN_CONFIG)
        # Saved by an earlier run, maybe by an older Confide: keys added since take defaults.
        return None if data is None else RunConfig.from_saved(json.loads(data))

    def global_model(self) -> list[np.ndarray] | None:
        data = self.store.get(GLOBAL)
        if data is None:
            return None
        arrays = bytes_to_arrays(data)
        return [arrays[k] for k in sorted(arrays)]

    def private_embedding(self) -> dict[str, np.ndarray] | None:
        data = self.store.get(PRIVATE)
        return None if data is None else bytes_to_arrays(data)

    def privacy_history(self) -> PrivacyHistory:
        data = self.store.get(HISTORY)
        return (
            PrivacyHistory()
            if data is None
            else PrivacyHistory.from_array(bytes_to_arrays(data)["steps"])
        )

    def save_training(
        self, private: Mapping[str, np.ndarray] | None, history: PrivacyHistory | None
    ) -> None:
        # Everything is encoded (and checked readable) before anything is written: a refused
        # write leaves the store as it was, and nothing written could fail every later read.
        records = []
        if private is not None:
            records.append((PRIVATE, arrays_to_bytes(private)))
        if history is not None:
            PrivacyHistory.from_array(history.to_array())  # finite, (n, 3): else ValueError
            records.append((HISTORY, arrays_to_bytes({"steps": history.to_array()})))
        for name, data in records:
            self.store.put(name, data)

    def save_global(self, config: RunConfig, arrays: Sequence[np.ndarray]) -> None:
        if not config.num_items:
            raise ValueError("a device's run config must name its catalogue size (num-items)")
        model = arrays_to_bytes({f"{i:04d}": a for i, a in enumerate(arrays)})  # before writing
        self.store.put(RUN_CONFIG, json.dumps(config.to_mapping()).encode())
        self.store.put(GLOBAL, model)

    def count_unprotected_round(self) -> None:
        count = int.from_bytes(self.store.get(UNPROTECTED) or b"", "little") + 1
        self.store.put(UNPROTECTED, count.to_bytes(8, "little"))

    def seed_identity(self, run_id: int) -> int:
        """This device's seed identity in a run (secret, different in every run)."""
        return self._seed(run_id)

    def training_data(self, num_items: int, eval_negatives: int) -> UserData:
        """Leave-one-out over this device's own interactions, as in simulation (docs/design.md §5).

        Every item counts once (its latest timestamp); the latest item is held out (ties: a
        uniform draw among the tied latest items, as :func:`shared.split.leave_one_out` does,
        from this device's secret seed so the held-out item stays put between rounds), and the
        evaluation negatives are items never seen, fixed per device.
        """
        latest: dict[int, float] = {}
        outside = []
        for interaction in self.interactions():
            if interaction.item >= num_items:
                outside.append(interaction.record_id)
                continue
            latest[interaction.item] = max(
                latest.get(interaction.item, -math.inf), interaction.timestamp
            )
        if outside:
            LOG.warning(
                "%d interaction(s) on this device name items outside the catalogue of %d items "
                "(recorded before the catalogue was known) and are left out of training; "
                "delete them with DeleteInteraction (record ids %s)",
                len(outside),
                num_items,
                ", ".join(map(str, outside[:10])),
            )
        if len(latest) < 2:
            raise ValueError(
                f"this device has {len(latest)} distinct item(s); training needs at least 2 "
                "(the latest is held out for evaluation): record more interactions first"
            )
        items = np.array(sorted(latest, key=lambda i: (latest[i], i)), dtype=np.int64)
        tied = sum(1 for t in latest.values() if t == latest[int(items[-1])])
        held = len(items) - 1
        if tied > 1:  # drawn only on a tie (as in shared/split.py), in item order among them
            held = len(items) - tied + int(np.random.default_rng(self._seed(-2)).integers(tied))
        rng = np.random.default_rng(self._seed(-1))
        negatives = sample_excluding(rng, num_items, items, eval_negatives)
        train = np.delete(items, held)
        return UserData(num_items, train, int(items[held]), np.sort(negatives))

    # -- internals -------------------------------------------------------------------------
    def _seed(self, run_id: int = 0) -> int:
        secret = self.store.get(SECRET)
        if secret is None:
            secret = secrets.token_bytes(32)
            self.store.put(SECRET, secret)
        digest = hashlib.sha256(secret + str(run_id).encode()).digest()
        return int.from_bytes(digest[:8], "little")

    def _model(self) -> tuple[RunConfig, list[np.ndarray]]:
        config, arrays = self.run_config(), self.global_model()
        if config is None or arrays is None:
            raise ModelNotReady(
                "no global model on this device yet: it arrives with the device's first "
                "federated round (start its SuperNode and wait for a run)"
            )
        return config, arrays

    def _serving(
        self, config: RunConfig, arrays: list[np.ndarray], seen: list[int]
    ) -> dict[str, np.ndarray] | None:
        """The private embedding to rank with: cached, or re-fitted if anything changed."""
        trained = self.store.get(PRIVATE)
        fingerprint = hashlib.sha256()
        for part in (self.store.get(GLOBAL) or b"", trained or b"", np.asarray(seen).tobytes()):
            fingerprint.update(hashlib.sha256(part).digest())
        tag = np.frombuffer(fingerprint.digest(), dtype=np.uint8)
        cached = self.store.get(SERVING)
        if cached is not None:
            cached_arrays = bytes_to_arrays(cached)
            if np.array_equal(cached_arrays.pop("fingerprint"), tag):
                self.last_fit = False
                return cached_arrays
        private = None if trained is None else bytes_to_arrays(trained)
        if not seen:  # nothing to fit to: the trained (or fresh) embedding as it is
            self.last_fit = False
            return private
        model = device_model(config, config.num_items, self._seed(), arrays, private)
        data = UserData(config.num_items, np.asarray(seen), -1, np.empty(0, dtype=np.int64))
        epochs = config.personalize_epochs or COLD_START_EPOCHS
        with torch.enable_grad():
            personalize(config.replace(personalize_epochs=epochs), model, data, self._seed())
        fitted = private_state(model)
        self.store.put(SERVING, arrays_to_bytes({**fitted, "fingerprint": tag}))
        self.last_fit = True
        return fitted


def check_timestamp(timestamp: object, now: float) -> None:
    """Seconds since the epoch, from 0 to one day past ``now``; milliseconds are named as such."""
    if not _finite(timestamp):
        raise ValueError(
            f"timestamp must be finite seconds since the epoch, got {_shown(timestamp)}"
        )
    latest = now + FUTURE_SLACK
    if timestamp < 0:
        raise ValueError(
            f"timestamp {timestamp!r} is before 1970: send seconds since the epoch (UTC)"
        )
    if timestamp > latest and MILLISECONDS_FROM <= timestamp <= latest * 1000:
        raise ValueError(
            f"timestamp {timestamp!r} looks like milliseconds (e.g. JavaScript's Date.now()): "
            "send seconds since the epoch, e.g. Date.now() / 1000"
        )
    if timestamp > latest:
        raise ValueError(
            f"timestamp {timestamp!r} is more than a day in the future of this device's clock: "
            "send seconds since the epoch (UTC), or leave it out for now"
        )


def _finite(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond float range (10**400)
        return False


def _shown(value: object) -> str:
    """A value for an error message, cut short (a 400-digit int is not a message)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."
