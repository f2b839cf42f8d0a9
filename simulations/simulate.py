"""Run the Flower app as a multi-process simulation on a SuperLink we start and stop ourselves.

Why not plain ``flwr run .``: with no connection configured it starts a detached SuperLink that
keeps running and ``uv sync``s the app's dependencies (torch included) into a fresh environment
per run (docs/design.md §8). Here we start ``flower-superlink --simulation`` with runtime dependency
installation disabled, in a private ``FLWR_HOME`` (the user's ``~/.flwr`` is left alone), stream
the run's log, read its real status (``flwr run`` exits 0 even when the ServerApp raised) and stop
every process we started, by PID and process group.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from shared.config import ConfigError, RunConfig, parse_override
from shared.defaults import default_values
from shared.records import CONFIG_FILE, read_rounds
from shared.rundir import default_run_dir
from shared.shards import shard_count
from shared.split import split_for
from shared.wire import FULL_HR10, FULL_NDCG10, HR10, NDCG10
from simulations.app_bundle import flower_app_dir

CONNECTION = "confide-simulation"


def _bin(name: str) -> str:
    """Flower's executables from the same environment as this interpreter."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    return repr(value)


def _wait_healthy(
    port: int, process: subprocess.Popen, timeout: float = 60.0, *, ca_file: Path | None = None
) -> None:
    """Wait for the SuperLink's /health; over HTTPS, verified against ``ca_file``, if given."""
    url = f"{'https' if ca_file else 'http'}://127.0.0.1:{port}/health"
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1, context=context):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"flower-superlink did not become healthy on port {port} in {timeout:.0f}s")


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _alive_in_group(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def stop_process_tree(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a Flower process and its children's process groups (a SuperLink's SuperExec, with
    the simulation and Ray; a SuperNode's SuperExec and ClientApps).

    SIGTERM to the SuperLink alone orphans the running simulation, so the groups go first.
    """
    groups = set()
    for child in _children(process.pid):
        try:
            groups.add(os.getpgid(child))
        except ProcessLookupError:
            pass
    groups.discard(os.getpgid(0))  # never our own group
    _signal_groups(groups, signal.SIGTERM)
    if process.poll() is None:
        process.terminate()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None and not any(_alive_in_group(g) for g in groups):
            return
        time.sleep(0.2)
    _signal_groups(groups, signal.SIGKILL)
    if process.poll() is None:
        process.kill()
    process.wait(timeout=5)


def _signal_groups(groups: set[int], signum: int) -> None:
    for pgid in groups:
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            pass  # the group is gone already


def resume_config(
    run_dir: str, overrides: list[str], config_file: str | None = None, out: str | None = None
) -> tuple[RunConfig, dict[str, Any]]:
    """The config of ``confide simulate --resume RUN_DIR``: the run's own ``config.json``, with
    ``--set`` overrides (the checkpoint refuses any a resume may not change), into RUN_DIR."""
    if config_file or out:
        raise ConfigError(
            "--resume continues a run with its own config.json, into its own directory: drop "
            "--config and --out (change what a resume may change with --set)"
        )
    path = Path(run_dir).expanduser().resolve()
    try:
        saved = json.loads((path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path} has no {CONFIG_FILE}: give --resume the directory a federated run wrote"
        ) from None
    if saved.get("kind") != "federated":
        raise ConfigError(f"{path} holds a {saved.get('kind')!r} run; only federated runs resume")
    values = dict(saved)
    for text in overrides:
        key, value = parse_override(text)
        if key not in RunConfig.keys():
            raise ConfigError(f"unknown config key {key!r} in --set {text!r}")
        values[key] = value
    values |= {"out-dir": str(path), "resume-from": str(path)}
    config = RunConfig.from_saved(values)
    defaults = default_values()
    return config, {k: v for k, v in config.to_mapping().items() if defaults.get(k) != v}


def run_simulation(
    config: RunConfig,
    changed: dict[str, Any],
    *,
    supernodes: int = 0,
    ray_address: str | None = None,
) -> int:
    """Run the app with one supernode per user; returns a process exit code.

    ``ray_address`` (``HOST:PORT`` of a running Ray cluster's head, as ``ray start --head``
    prints it) runs the ClientApps on that cluster instead of a Ray started for this run alone.

    ``changed`` holds the values that differ from the app's defaults (see
    :func:`shared.config.resolve_config`): Flower merges them into its own copy of the defaults.
    A resume (``resume-from``) is checked here first, so that a refused checkpoint or a finished
    run answers in one line, before any SuperLink starts.
    """
    try:
        config.check_federated_run()  # the ServerApp checks again; here, before any SuperLink
    except ConfigError as err:
        print(f"confide: {err}", file=sys.stderr)
        return 2
    if config.resume_from:
        from server.checkpoint import CheckpointError, load_for_resume

        try:
            checkpoint, where = load_for_resume(config)
        except CheckpointError as err:
            print(f"confide: cannot resume: {err}", file=sys.stderr)
            return 2
        if checkpoint.round >= config.num_server_rounds:
            print(
                f"[confide] {where} finished all {checkpoint.round} rounds: nothing to resume "
                "(extend it with --set num-server-rounds=N)"
            )
            return 0
        print(f"[confide] resuming {where} after round {checkpoint.round}", flush=True)
    if ray_address:
        try:
            check_ray_address(ray_address)
        except ConfigError as err:
            print(f"confide: {err}", file=sys.stderr)
            return 2
    num_users = split_for(config).num_users
    nodes = shard_count(num_users, config.cohort_size)  # one per user, or one per shard
    supernodes = supernodes or nodes
    if supernodes > nodes:
        shards = f" in {nodes} shards of {config.cohort_size}" if config.cohort_size > 1 else ""
        print(
            f"confide: {supernodes} supernodes but the dataset has {num_users} users{shards}",
            file=sys.stderr,
        )
        return 2
    if not config.out_dir:  # the ServerApp runs elsewhere: give it an absolute path
        changed["out-dir"] = str(default_run_dir(config, "federated").resolve())
    out_dir = Path(changed.get("out-dir", config.out_dir))

    # SIGTERM (and SIGINT, even when a shell started us in the background) unwinds through the
    # `finally` below, so the SuperLink and the simulation are always stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    with tempfile.TemporaryDirectory(prefix="confide-flwr-") as home:
        home_path = Path(home)
        port = _free_port()
        (home_path / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        overrides = home_path / "run-config.toml"
        overrides.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in changed.items()))
        env = {
            **os.environ,
            "FLWR_HOME": home,
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "OMP_NUM_THREADS": "1",  # one torch thread per Ray actor
        }
        # Attach to a Ray cluster only when asked: Flower 1.42 calls ray.init() with no address
        # (its federation config has no init-args.address), so Ray reads RAY_ADDRESS from the
        # environment the SuperLink hands its SuperExec and the simulation process (§8).
        env.pop("RAY_ADDRESS", None)
        if ray_address:
            env["RAY_ADDRESS"] = ray_address
        log_file = (home_path / "superlink.log").open("w")
        superlink = subprocess.Popen(
            [
                _bin("flower-superlink"),
                "--simulation",
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=home,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            _wait_healthy(port, superlink)
            where = f"the Ray cluster at {ray_address}" if ray_address else "a local Ray"
            print(
                f"[confide] SuperLink pid {superlink.pid} on 127.0.0.1:{port}; "
                f"{supernodes} supernodes on {where}; run directory {out_dir}",
                flush=True,
            )
            federation = (
                f"num-supernodes={supernodes} client-resources-num-cpus=1 "
                "client-resources-num-gpus=0"
            )
            with flower_app_dir() as app_dir:  # Flower bundles it here, when submitting
                submitted = subprocess.run(
                    [
                        _bin("flwr"),
                        "run",
                        str(app_dir),
                        CONNECTION,
                        "--run-config",
                        str(overrides),
                        "--federation-config",
                        federation,
                        "--format",
                        "json",
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                )
            reply = _json_or_none(submitted.stdout)
            if submitted.returncode or not reply or not reply.get("success"):
                print(
                    f"confide: flwr run failed:\n{submitted.stdout}{submitted.stderr}",
                    file=sys.stderr,
                )
                return 1
            run_id = str(reply["run-id"])
            subprocess.run([_bin("flwr"), "log", run_id, CONNECTION, "--stream"], env=env)
            status = _run_status(run_id, env)
        finally:
            stop_process_tree(superlink)
            log_file.close()
    return _summarize(status, out_dir)


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Refuse a ``--ray-address`` that is not ``HOST:PORT`` or where nothing listens, in one line
    and before any SuperLink starts (else Ray's own error comes minutes later, deep in the log)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"--ray-address {address!r} is not HOST:PORT: give the address `ray start --head` "
            "printed, e.g. 10.0.0.5:6379"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({err.strerror or err}): start one with "
            f"`ray start --head --port {port}` there, or drop --ray-address for a local Ray"
        ) from None


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def _json_or_none(text: str) -> dict | None:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _run_status(run_id: str, env: dict[str, str], connection: str = CONNECTION) -> str:
    out = subprocess.run(
        [_bin("flwr"), "ls", connection, "--run-id", run_id, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
    )
    info = _json_or_none(out.stdout) or {}
    runs = info.get("runs") or []
    if not runs:
        return f"unknown ({out.stdout.strip() or out.stderr.strip()})"
    run = runs[0]
    details = run.get("status-details") or ""
    details = "" if details == "N/A" else details
    return f"{run.get('status', 'unknown')}{': ' + details if details else ''}"


def _summarize(status: str, out_dir: Path) -> int:
    print(f"[confide] run status: {status}")
    records = [r.to_json() for r in read_rounds(out_dir, required=False)]
    skipped = [r["round"] for r in records if "skipped" in r]
    if skipped:
        print(f"[confide] WARNING: {len(skipped)} round(s) left the model unchanged: {skipped}")
    evaluated = [r for r in records if HR10 in r]
    if evaluated:
        last = evaluated[-1]
        print(
            f"[confide] round {last['round']}: "
            f"HR@10 {last[HR10]:.4f} NDCG@10 {last[NDCG10]:.4f} "
            f"full HR@10 {last[FULL_HR10]:.4f} full NDCG@10 {last[FULL_NDCG10]:.4f}"
        )
    print(f"[confide] run directory: {out_dir}")
    if not status.startswith("finished:completed"):
        return 1
    return 0 if records and len(skipped) < len(records) else 1
