"""The deployed ClientApp's store adapter: node config and key in, data and device state out.

A SuperNode names its store in its node config, with one way to get the key:

    flower-supernode ... --node-config 'store-path="/data/confide.db" store-key-file="/keys/k"'
    flower-supernode ... --node-config 'store-path="/data/confide.db" store-key-env="CONFIDE_KEY"'

The key is 64 hex digits (32 bytes), in a file readable only by its owner, kept outside the
store's directory, or in an environment variable of the SuperNode. Each round runs in a fresh
ClientApp process (docs/design.md §8), so the store is opened per message: it is the source of truth
for the private embedding and the accountant, which are restored from it before training and
saved back after, together with the global model the server sent (:class:`StoreState`). The
node config's own cap and δ (:mod:`client.policy`) are recorded there too, on every message, so
that the SDK and the device agent, which never see the node config, report them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import RecordDict

from client.device import Device
from client.policy import DevicePolicy
from client.state import ContextState
from client.store import KEY_BYTES
from client.training_round import TrainResult
from shared.config import RunConfig
from shared.privacy import PrivacyHistory
from shared.split import UserData
from shared.wire import TRAINED

STORE_PATH = "store-path"
STORE_KEY_FILE = "store-key-file"
STORE_KEY_ENV = "store-key-env"


def uses_store(node_config: Mapping[str, object]) -> bool:
    """Whether the node is a deployed device (it names its store), not a simulated one."""
    return STORE_PATH in node_config


def parse_key(text: str, source: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise ValueError(
            f"{source} must hold the store key as {2 * KEY_BYTES} hex digits "
            f"(e.g. python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return key


def read_key_file(path: Path, store_path: Path | None = None) -> bytes:
    """The key from a file that only its owner can read, and that is not beside the store."""
    if not path.is_file():
        raise ValueError(f"store key file {path} does not exist")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(
            f"store key file {path} is readable by others: chmod 600 {path} (like an SSH key)"
        )
    if store_path is not None and path.resolve().parent == store_path.resolve().parent:
        raise ValueError(
            f"store key file {path} is in the store's directory: keep the key apart from the data"
        )
    return parse_key(path.read_text(), f"store key file {path}")


def store_key(node_config: Mapping[str, object]) -> bytes:
    store_path = Path(str(node_config[STORE_PATH]))
    given = [k for k in (STORE_KEY_FILE, STORE_KEY_ENV) if k in node_config]
    if len(given) != 1:
        raise ValueError(
            f"node config names {STORE_PATH} and must give its key in exactly one of "
            f"{STORE_KEY_FILE} (a file) or {STORE_KEY_ENV} (an environment variable's name); "
            f"got {given or 'neither'}"
        )
    if given[0] == STORE_KEY_FILE:
        return read_key_file(Path(str(node_config[STORE_KEY_FILE])), store_path)
    name = str(node_config[STORE_KEY_ENV])
    if name not in os.environ:
        raise ValueError(f"environment variable {name} ({STORE_KEY_ENV}) is not set")
    return parse_key(os.environ[name], f"environment variable {name}")


@dataclass(frozen=True)
class StoreState:
    """:class:`client.state.DeviceState` in the device's encrypted store.

    Reads come from Flower's node state, which :meth:`StoreRun.open` fills from the store;
    writes go to both. The store is the source of truth (each message may be a fresh process);
    the node state, which Flower keeps for the run, is kept in step so it never holds a stale
    embedding or accountant.
    """

    path: Path
    key: bytes
    config: RunConfig
    node: ContextState

    def private_embedding(self) -> dict[str, np.ndarray] | None:
        return self.node.private_embedding()

    def privacy_history(self) -> PrivacyHistory:
        return self.node.privacy_history()

    def save_fit(self, result: TrainResult, sent_model: Sequence[np.ndarray]) -> None:
        """The private embedding, the accountant and the model that was sent.

        A round trained without interaction-level DP is counted: no finite ε covers it.
        """
        self.node.save_fit(result, sent_model)
        with Device.open(self.path, self.key) as device:
            trained = result.status == TRAINED
            if self.config.dp_interaction:
                device.save_training(result.private, result.history)
            elif trained:
                device.save_training(result.private, None)
                device.count_unprotected_round()
            device.save_global(self.config, [np.asarray(a) for a in sent_model])

    def save_model(self, sent_model: Sequence[np.ndarray]) -> None:
        with Device.open(self.path, self.key) as device:
            device.save_global(self.config, [np.asarray(a) for a in sent_model])


@dataclass(frozen=True)
class StoreRun:
    """One message's view of a deployed device: its data, its seed identity, its state."""

    data: UserData
    user_id: int  # secret, and different in every run (:meth:`client.device.Device.seed_identity`)
    state: StoreState

    @classmethod
    def open(
        cls,
        config: RunConfig,
        node_config: Mapping[str, object],
        run_id: int,
        node_state: RecordDict | None = None,
    ) -> StoreRun:
        """Read the store named in ``node_config``; ``node_state`` (Flower's) is made to match it.

        The store is the source of truth: what it lacks (after ``forget()``) the node state drops.
        The device's own policy is recorded first, even if there is not enough data to train.
        """
        if not config.num_items:
            raise ValueError(
                "num-items is 0: a deployed device has no dataset to count the catalogue from; "
                "set num-items in the run config (flwr run --run-config 'num-items=N')"
            )
        path = Path(str(node_config[STORE_PATH]))
        if not path.exists():
            raise ValueError(f"store {path} (node config {STORE_PATH}) does not exist")
        key = store_key(node_config)
        node = ContextState(RecordDict() if node_state is None else node_state)
        policy = DevicePolicy.from_node_config(node_config, deployed=True)
        with Device.open(path, key) as device:
            device.save_policy(policy)
            data = device.training_data(config.num_items, config.eval_negatives)
            user_id = device.seed_identity(run_id)
            node.load(device.private_embedding(), device.privacy_history())
        return cls(data=data, user_id=user_id, state=StoreState(path, key, config, node))
