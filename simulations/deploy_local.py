"""A real deployment on 127.0.0.1: TLS, SuperNode authentication, encrypted device stores.

Starts a SuperLink (HTTPS, ``--enable-supernode-auth``, its own ``FLWR_HOME``), registers one EC
key per device, starts 3 SuperNodes whose node config names each device's encrypted store (built
from a few users of a dataset: synthetic by default, MovieLens with ``--data-dir``), submits the
app with ``flwr run`` (2 rounds, interaction-level DP and SecAgg+ on), then asks every device for
recommendations through its local gRPC agent. Every process it starts is stopped by PID (and
process group). Prints one JSON line; progress goes to stderr.

    python -m simulations.deploy_local                        # synthetic data
    python -m simulations.deploy_local --data-dir ../shared/data/ml-100k --set secagg=false
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.device import Device
from client.service import AgentClient, serve
from shared.certs import Credentials, make_credentials
from shared.config import ConfigError, RunConfig, resolve_config
from shared.data import Interactions, dataset_for
from shared.records import read_rounds
from simulations.app_bundle import flower_app_dir
from simulations.simulate import (
    _alive_in_group,
    _bin,
    _free_port,
    _json_or_none,
    _run_status,
    _toml_value,
    _wait_healthy,
    stop_process_tree,
)

CONNECTION = "confide-deploy"
# Small and quick unless overridden: 2 rounds, interaction-level DP, every device every round,
# under SecAgg+ (3 devices: 3 shares, any 2 of them reconstruct; the cohort can never exceed 3).
DEPLOY_DEFAULTS = {
    "num-server-rounds": 2,
    "eval-every": 2,  # evaluate (and send devices the final model) after the last round
    "dp-interaction": True,
    "secagg": True,
    "secagg-num-shares": 3,
    "secagg-reconstruction-threshold": 2,
    "secagg-max-cohort": 3,
    "synthetic-users": 50,
    "synthetic-items": 200,
    "embedding-dim": 8,
    "mlp-layers": "16,8",
    "min-fit-clients": 2,
}


def pick_users(data: Interactions, count: int, low: int = 10, high: int = 150) -> list[int]:
    """The first ``count`` users (by id) with a moderate history: quick DP rounds, real signal."""
    counts = [int((data.user == u).sum()) for u in range(data.num_users)]
    chosen = [u for u, n in enumerate(counts) if low <= n <= high][:count]
    if len(chosen) < count:
        raise ValueError(
            f"the dataset has only {len(chosen)} users with {low}..{high} interactions"
        )
    return chosen


def build_store(path: Path, key_file: Path, data: Interactions, user: int) -> int:
    """A device store holding one user's interactions, its key in a 0600 file elsewhere."""
    key = secrets.token_bytes(32)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex() + "\n")
    rows = data.user == user
    with Device.open(path, key, num_items=data.num_items) as device:
        for item, timestamp in zip(data.item[rows], data.timestamp[rows], strict=True):
            device.record(int(item), timestamp=float(timestamp))
        return device.store.count_interactions()


class Deployment:
    """A SuperLink and SuperNodes on 127.0.0.1; :meth:`stop` ends every process it started."""

    def __init__(self, work: Path, creds: Credentials) -> None:
        self.work = work
        self.creds = creds
        self.port = _free_port()
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: list[Any] = []
        cli_home = work / "flwr-cli"
        cli_home.mkdir(exist_ok=True)
        (cli_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{creds.ca_cert}"\n'
        )
        self.env = {
            **os.environ,
            "FLWR_HOME": str(cli_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "OMP_NUM_THREADS": "1",
        }

    def start(self, name: str, args: list[str], home: str | None = None) -> subprocess.Popen:
        """Start ``args`` as ``name`` (its log: ``name.log``), in its own FLWR_HOME: ``home``'s
        (a restarted process reuses the home of the one it replaces), else its own."""
        home = self.work / f"{home or name}-home"  # each process its own FLWR_HOME
        home.mkdir(exist_ok=True)
        log = (self.work / f"{name}.log").open("w")
        self.logs.append(log)
        process = subprocess.Popen(
            args,
            cwd=home,
            env={**self.env, "FLWR_HOME": str(home)},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped as a whole
        )
        self.processes[name] = process
        return process

    def start_superlink(self, *extra: str, name: str = "superlink") -> subprocess.Popen:
        """HTTPS with our certificate, and only registered SuperNodes may connect."""
        superlink = self.start(
            name,
            [
                _bin("flower-superlink"),
                *("--ssl-ca-certfile", str(self.creds.ca_cert)),
                *("--ssl-certfile", str(self.creds.server_cert)),
                *("--ssl-keyfile", str(self.creds.server_key)),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                *("--host", "127.0.0.1", "--port", str(self.port)),
                *extra,
            ],
            home="superlink",
        )
        _wait_healthy(self.port, superlink, ca_file=self.creds.ca_cert)
        return superlink

    def register(self, names: list[str]) -> None:
        """``flwr supernode register`` every device's public key (concurrently: CLI start-up)."""
        calls = [
            subprocess.Popen(
                [_bin("flwr"), "supernode", "register", str(self.creds.public_key(name))]
                + [CONNECTION, "--format", "json"],
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for name in names
        ]
        for name, call in zip(names, calls, strict=True):
            out, _ = call.communicate(timeout=120)
            if not (_json_or_none(out) or {}).get("success"):
                raise RuntimeError(f"registering {name} failed: {out}")

    def start_supernode(
        self, name: str, node_config: str, *, key: Path | None, tls: bool = True, retries: int = -1
    ) -> subprocess.Popen:
        args = [_bin("flower-supernode"), "--superlink", f"127.0.0.1:{self.port}"]
        args += ["--root-certificates", str(self.creds.ca_cert)] if tls else ["--insecure"]
        args += ["--auth-supernode-private-key", str(key)] if key else []
        args += ["--node-config", node_config] if node_config else []
        args += ["--max-retries", str(retries), "--max-wait-time", "10"] if retries >= 0 else []
        return self.start(name, args + ["--port", str(_free_port())])  # its local ClientApp API

    def wait_connected(self, names: list[str], timeout: float = 120) -> None:
        """Until each SuperNode logs the node id the SuperLink gave it (it is online then)."""
        deadline = time.monotonic() + timeout
        waiting = set(names)
        while waiting and time.monotonic() < deadline:
            for name in list(waiting):
                if self.processes[name].poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with code {self.processes[name].returncode}:\n"
                        + self.tail(name)
                    )
                if "SuperNode ID:" in (self.work / f"{name}.log").read_text():
                    waiting.discard(name)
            time.sleep(0.5)
        if waiting:
            raise TimeoutError(f"{sorted(waiting)} did not connect in {timeout:.0f}s")

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [_bin("flwr"), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def stop(self) -> bool:
        """Stop every process (SuperNodes first); True when none of them is left."""
        for name in sorted(self.processes, key=lambda n: n.startswith("superlink")):
            stop_process_tree(self.processes[name])
            _stop_group(self.processes[name].pid)  # what outlived a leader that already exited
        for log in self.logs:
            log.close()
        return not any(p.poll() is None or _alive_in_group(p.pid) for p in self.processes.values())

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.work / f"{name}.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""


def prepare_devices(
    config: RunConfig, changed: dict[str, Any], work: Path, devices: int
) -> tuple[Credentials, list[str], dict[str, tuple[Path, Path]]]:
    """Credentials, and one encrypted store (and its key file) per device, from the dataset."""
    data = dataset_for(config)
    if config.num_items and config.num_items != data.num_items:
        raise ConfigError(f"num-items is {config.num_items}, the dataset has {data.num_items}")
    changed["num-items"] = data.num_items  # the server and devices know only the catalogue size
    changed.setdefault("out-dir", str(work / "run"))
    names = [f"device-{i}" for i in range(devices)]
    creds = make_credentials(work / "credentials", ["127.0.0.1", "localhost"], names)
    (work / "keys").mkdir(mode=0o700)
    stores = {}
    for name, user in zip(names, pick_users(data, devices), strict=True):
        (work / "devices" / name).mkdir(parents=True, mode=0o700)
        stores[name] = (work / "devices" / name / "confide.db", work / "keys" / f"{name}.key")
        build_store(*stores[name], data, user)
    return creds, names, stores


def node_config(store: Path, key_file: Path) -> str:
    return f'store-path="{store}" store-key-file="{key_file}"'


def submit(deployment: Deployment, changed: dict[str, Any], overrides: Path) -> str:
    """``flwr run`` the app with ``changed`` as its run config; the run's id."""
    overrides.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in changed.items()))
    with flower_app_dir() as app_dir:  # Flower bundles it here, when submitting
        submitted = deployment.flwr(
            "run", str(app_dir), CONNECTION, "--run-config", str(overrides), "--format", "json"
        )
    reply = _json_or_none(submitted.stdout) or {}
    if not reply.get("success"):
        raise RuntimeError(f"flwr run failed: {submitted.stdout}{submitted.stderr}")
    return str(reply["run-id"])


def run(config: RunConfig, changed: dict[str, Any], work: Path, devices: int, k: int) -> dict:
    started = time.monotonic()
    creds, names, stores = prepare_devices(config, changed, work, devices)
    deployment = Deployment(work, creds)
    result: dict[str, Any] = {"ok": False, "tls": True, "supernode_auth": True}
    phases: dict[str, float] = {"stores_s": time.monotonic() - started}
    result["phases"] = phases
    try:
        superlink = deployment.start_superlink()
        _log(f"SuperLink pid {superlink.pid} on https://127.0.0.1:{deployment.port}")
        deployment.register(names)
        for name in names:
            deployment.start_supernode(
                name, node_config(*stores[name]), key=creds.device_keys[name]
            )
        deployment.wait_connected(names)
        phases["connect_s"] = time.monotonic() - started - sum(phases.values())
        _log(f"{devices} SuperNodes connected (TLS, authenticated): submitting the run")
        run_id = submit(deployment, changed, work / "run-config.toml")
        with (work / "run.log").open("w") as log:
            subprocess.run(
                [_bin("flwr"), "log", run_id, CONNECTION, "--stream"],
                env=deployment.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=900,
            )
        result["status"] = _finished_status(run_id, deployment.env)
        phases["run_s"] = time.monotonic() - started - sum(phases.values())
        result["run_id"] = run_id
        _log(f"run {run_id}: {result['status']}")
        result["rounds"] = [r.to_json() for r in read_rounds(Path(changed["out-dir"]))]
        result["devices"] = [_ask_device(name, *stores[name], k, work) for name in names]
        phases["ask_s"] = time.monotonic() - started - sum(phases.values())
        rounds = result["rounds"]
        result["ok"] = (
            result["status"].startswith("finished:completed")
            and len(rounds) == config.num_server_rounds
            and not any("skipped" in r or r.get("fit_failures") for r in rounds)
            and all(d["recommendations"] for d in result["devices"])
        )
    except Exception as err:
        result["error"] = f"{type(err).__name__}: {err}"
        for name in deployment.processes:
            print(f"--- {name} log (tail) ---\n{deployment.tail(name)}", file=sys.stderr)
    finally:
        result["pids"] = {name: p.pid for name, p in deployment.processes.items()}
        result["processes_stopped"] = deployment.stop()
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["phases"] = {k: round(v, 1) for k, v in phases.items()}
    result["run_config"] = changed
    return result


def _finished_status(run_id: str, env: dict[str, str], timeout: float = 120) -> str:
    """The run's final status (``flwr log --stream`` may return before the run is marked done)."""
    deadline = time.monotonic() + timeout
    status = _run_status(run_id, env, CONNECTION)
    while not status.startswith("finished") and time.monotonic() < deadline:
        time.sleep(2)
        status = _run_status(run_id, env, CONNECTION)
    return status


def _stop_group(pgid: int, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL, the process group we created for one process (pgid = its pid)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive_in_group(pgid):
                return
            time.sleep(0.2)


def _ask_device(name: str, store: Path, key_file: Path, k: int, work: Path) -> dict[str, Any]:
    """Through the device's own local gRPC agent, as a host app would."""
    key = bytes.fromhex(key_file.read_text().strip())
    with Device.open(store, key) as device:
        server, address = serve(device, f"unix:{work / (name + '.sock')}")
        try:
            with AgentClient(address) as agent:
                recommendations = agent.recommend(k)
                budget = agent.privacy_budget()
                status = agent.status()
        finally:
            server.stop(grace=1).wait()
    return {
        "name": name,
        "interactions": status["interactions"],
        "epsilon": round(budget.epsilon, 3),
        "delta": budget.delta,
        "dp_steps": budget.steps,
        "recommendations": [[r.item, round(r.score, 4)] for r in recommendations],
    }


def _log(message: str) -> None:
    print(f"[deploy_local] {message}", file=sys.stderr, flush=True)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="MovieLens-100K directory (default: synthetic data)")
    parser.add_argument("--config", help="TOML file of config keys")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="run-config override"
    )
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--k", type=int, default=5, help="recommendations per device")
    parser.add_argument("--keep", help="keep the work directory (logs, stores) here")
    args = parser.parse_args(argv)
    sets = [f"{k}={_toml_value(v)}" for k, v in DEPLOY_DEFAULTS.items()]
    if args.data_dir:
        sets += ["dataset=ml-100k", f'data-dir="{Path(args.data_dir).resolve()}"']
    try:
        config, changed = resolve_config(args.config, sets + args.set, None)
    except (ConfigError, OSError) as err:
        print(f"deploy_local: config error: {err}", file=sys.stderr)
        return 2
    return run_in_workdir(
        "deploy_local", args.keep, lambda work: run(config, changed, work, args.devices, args.k)
    )


def run_in_workdir(name: str, keep: str | None, body: Callable[[Path], dict[str, Any]]) -> int:
    """Run ``body`` in a private work directory (``keep``, or a temporary one removed after),
    print its JSON result and turn it into an exit code; SIGTERM unwinds through the cleanup."""
    signal.signal(signal.SIGTERM, _interrupt)
    if keep and Path(keep).exists() and any(Path(keep).iterdir()):
        print(f"{name}: --keep {keep} is not empty: name a new one", file=sys.stderr)
        return 2
    work = Path(keep or tempfile.mkdtemp(prefix=f"confide-{name.split('_')[0]}-")).resolve()
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        result = body(work)
    except ConfigError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 2
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] and result["processes_stopped"] else 1


if __name__ == "__main__":
    sys.exit(main())
