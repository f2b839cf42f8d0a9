"""A server that restarts: kill the SuperLink and the ServerApp mid-run, start them again, resume.

On 127.0.0.1 with the machinery of :mod:`simulations.deploy_local` (TLS, SuperNode
authentication, 3 SuperNodes with encrypted device stores): submits a run, waits until the server
has checkpointed round ``--kill-after``, then SIGKILLs the ServerApp and the SuperLink (their
process groups, by PID: a crash, not a shutdown), reads every device's ε, accountant steps and
private embedding from its store, starts the SuperLink again on the same port and ``--database``,
waits for the SuperNodes (left running) to reconnect by themselves, and submits the same run
config with ``resume-from`` naming the run directory. It then checks that the run completed every
round exactly once, that every device kept its private embedding and accountant (steps only grew)
and that no device's ε went down. Prints one JSON line; progress goes to stderr.

    python -m simulations.restart_local                  # 4 rounds, killed after round 2
    python -m simulations.restart_local --set secagg=true --keep /tmp/restart
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from client.device import Device
from server.checkpoint import CheckpointError, read_checkpoint
from shared.config import ConfigError, RunConfig, resolve_config
from shared.records import CHECKPOINT_FILE, CONFIG_FILE, read_rounds
from simulations.deploy_local import (
    CONNECTION,
    DEPLOY_DEFAULTS,
    Deployment,
    _finished_status,
    node_config,
    prepare_devices,
    run_in_workdir,
    submit,
)
from simulations.simulate import _bin, _children, _json_or_none, _run_status, _toml_value

# 4 rounds, plain aggregation (SecAgg+ with --set secagg=true), interaction-level DP; a round
# waits at most a minute for a device (a SuperNode that never came back would fail it).
RESTART_DEFAULTS = DEPLOY_DEFAULTS | {
    "num-server-rounds": 4,
    "eval-every": 4,
    "secagg": False,
    "round-timeout": 60.0,
}


def wait_checkpoint(run_dir: Path, round_: int, process: subprocess.Popen, timeout: float) -> int:
    """Until the server has checkpointed round ``round_`` or later; the checkpoint's round."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the SuperLink exited with code {process.returncode}")
        try:
            done = read_checkpoint(run_dir / CHECKPOINT_FILE).round
        except CheckpointError:
            done = 0  # not written yet (the rename makes a half-written one impossible)
        if done >= round_:
            return done
        time.sleep(0.2)
    raise TimeoutError(f"no checkpoint of round {round_} in {timeout:.0f}s")


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        children = _children(todo.pop())
        found += children
        todo += children
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def crash(process: subprocess.Popen) -> dict[str, list[int]]:
    """SIGKILL a SuperLink, its ServerApp and every process group under it: nothing may clean up.

    Returns the PIDs killed, the ServerApp's (``flwr-serverapp``) named apart.
    """
    pids = descendants(process.pid)
    serverapps = [p for p in pids if "flwr-serverapp" in command_line(p)]
    groups = {process.pid}
    for pid in pids:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    groups.discard(os.getpgid(0))  # never our own group
    for pid in serverapps:  # the ServerApp first: it must not see its SuperLink go away
        _kill(pid)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=10)
    return {"serverapp": serverapps, "superlink_tree": [process.pid, *pids]}


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_idle(supernodes: list[subprocess.Popen], timeout: float) -> None:
    """Until no SuperNode runs a ClientApp process (``flwr-clientapp``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for s in supernodes for p in descendants(s.pid)]
        if not any("flwr-clientapp" in command_line(p) for p in pids):
            return
        time.sleep(0.5)
    raise TimeoutError(f"a ClientApp was still running {timeout:.0f}s after the kill")


def device_state(store: Path, key_file: Path) -> dict[str, Any]:
    """What the device keeps: its ε (at the binding cap's δ), accountant steps, embedding digest."""
    key = bytes.fromhex(key_file.read_text().strip())
    with Device.open(store, key) as device:
        budget = device.privacy_budget()
        private = device.private_embedding() or {}
    digest = hashlib.sha256()
    for name in sorted(private):
        digest.update(name.encode() + private[name].tobytes())
    return {
        "epsilon": budget.epsilon,
        "delta": budget.delta,
        "dp_steps": budget.steps,
        "embedding_sha256": digest.hexdigest()[:16] if private else None,
    }


def wait_online(deployment: Deployment, count: int, timeout: float) -> tuple[float, list[dict]]:
    """Until ``count`` SuperNodes are online on the SuperLink; seconds waited, and the nodes."""
    started = time.monotonic()
    nodes: list[dict] = []
    while time.monotonic() - started < timeout:
        listed = _json_or_none(deployment.flwr("supernode", "list", "--format", "json").stdout)
        nodes = (listed or {}).get("nodes") or []
        if sum(n.get("status") == "online" for n in nodes) >= count:
            return time.monotonic() - started, nodes
        time.sleep(1)
    raise TimeoutError(f"only {nodes} online after {timeout:.0f}s")


def run(config: RunConfig, changed: dict[str, Any], work: Path, devices: int, kill_after: int):
    if not 1 <= kill_after < config.num_server_rounds:
        raise ConfigError(
            f"--kill-after {kill_after} must be in 1..{config.num_server_rounds - 1} (a round "
            "before the last one, after which the run is killed)"
        )
    started = time.monotonic()
    creds, names, stores = prepare_devices(config, changed, work, devices)
    run_dir = Path(changed["out-dir"])
    database = work / "superlink.db"
    deployment = Deployment(work, creds)
    result: dict[str, Any] = {"ok": False, "tls": True, "supernode_auth": True}
    result["database"] = str(database)
    try:
        superlink = deployment.start_superlink("--database", str(database))
        _log(f"SuperLink pid {superlink.pid} on https://127.0.0.1:{deployment.port}, {database}")
        deployment.register(names)
        for name in names:
            deployment.start_supernode(
                name, node_config(*stores[name]), key=creds.device_keys[name]
            )
        deployment.wait_connected(names)
        nodes_before = {_node_id(n) for n in wait_online(deployment, devices, 60)[1]}
        first = submit(deployment, changed, work / "run-config.toml")
        _log(f"run {first} submitted; killing the server after round {kill_after}")
        done = wait_checkpoint(run_dir, kill_after, superlink, timeout=600)
        killed = crash(superlink)
        result["killed"] = {"after_checkpoint_of_round": done, **killed}
        _log(f"killed after round {done}: ServerApp {killed['serverapp']}, SuperLink tree")
        # A ClientApp that got round done+1 before the kill trains and writes its store, then
        # fails to reply: read the stores once no ClientApp runs any more.
        wait_idle([deployment.processes[n] for n in names], timeout=120)
        before = {name: device_state(*stores[name]) for name in names}
        result["supernodes_alive_after_kill"] = all(
            deployment.processes[n].poll() is None for n in names
        )

        restarted_at = time.monotonic()
        superlink = deployment.start_superlink(
            "--database", str(database), name="superlink-restarted"
        )
        waited, nodes = wait_online(deployment, devices, 180)  # nobody re-registers anything
        result["reconnect_s"] = round(time.monotonic() - restarted_at, 1)
        result["same_node_ids"] = {_node_id(n) for n in nodes} == nodes_before
        # The killed run is still "running" in the restarted SuperLink's database: stop it, so
        # that nothing (the SuperNodes, `flwr ls`) takes it for a live one.
        stale = _run_status(first, deployment.env, CONNECTION)
        deployment.flwr("stop", first, CONNECTION, "--format", "json")
        result["killed_run"] = {
            "after_restart": stale,
            "after_stop": _finished_status(first, deployment.env, 30),
        }
        _log(f"SuperLink restarted (pid {superlink.pid}); SuperNodes back in {waited:.0f}s")

        second = submit(
            deployment, changed | {"resume-from": str(run_dir)}, work / "resume-config.toml"
        )
        with (work / "run.log").open("w") as log:
            subprocess.run(
                [_bin("flwr"), "log", second, CONNECTION, "--stream"],
                env=deployment.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=900,
            )
        result["status"] = _finished_status(second, deployment.env)
        result["run_ids"] = [first, second]
        _log(f"resumed run {second}: {result['status']}")
        after = {name: device_state(*stores[name]) for name in names}
        rounds = [r.to_json() for r in read_rounds(run_dir)]
        saved = json.loads((run_dir / CONFIG_FILE).read_text())
        result["resumed"] = saved.get("resumed", [])
        result["rounds"] = [
            {k: r.get(k) for k in ("round", "fit_replies", "fit_failures", "skipped", "hr10")}
            for r in rounds
        ]
        result["devices"] = [
            {"name": name, "before": before[name], "after": after[name]} for name in names
        ]
        result["ok"] = (
            result["status"].startswith("finished:completed")
            and [r["round"] for r in rounds] == list(range(1, config.num_server_rounds + 1))
            and result["resumed"] == [{"after_round": done}]
            and not any("skipped" in r for r in rounds)
            and result["killed_run"]["after_stop"].startswith("finished")
            and all(_kept(before[n], after[n]) for n in names)
        )
    except Exception as err:
        result["error"] = f"{type(err).__name__}: {err}"
        for name in deployment.processes:
            print(f"--- {name} log (tail) ---\n{deployment.tail(name)}", file=sys.stderr)
    finally:
        result["pids"] = {name: p.pid for name, p in deployment.processes.items()}
        result["processes_stopped"] = deployment.stop()
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["run_config"] = changed
    return result


def _node_id(node: dict[str, Any]) -> Any:
    return node.get("node-id", node.get("node_id"))


def _kept(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """The device continued: an embedding before and after, more steps, ε not lower."""
    return (
        before["embedding_sha256"] is not None
        and after["embedding_sha256"] is not None
        and after["dp_steps"] > before["dp_steps"] > 0
        and after["epsilon"] >= before["epsilon"] > 0
    )


def _log(message: str) -> None:
    print(f"[restart_local] {message}", file=sys.stderr, flush=True)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="run-config override"
    )
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument(
        "--kill-after", type=int, default=2, help="kill the server after this round (default 2)"
    )
    parser.add_argument("--keep", help="keep the work directory (logs, stores) here")
    args = parser.parse_args(argv)
    sets = [f"{k}={_toml_value(v)}" for k, v in RESTART_DEFAULTS.items()]
    try:
        config, changed = resolve_config(None, sets + args.set, None)
    except (ConfigError, OSError) as err:
        print(f"restart_local: config error: {err}", file=sys.stderr)
        return 2
    return run_in_workdir(
        "restart_local",
        args.keep,
        lambda work: run(config, changed, work, args.devices, args.kill_after),
    )


if __name__ == "__main__":
    sys.exit(main())
