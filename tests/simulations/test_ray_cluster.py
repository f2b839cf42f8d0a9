"""`confide simulate --ray-address` on a real two-node Ray cluster (both nodes on loopback).

A head (`ray start --head --block`) and a second node that joins it (`ray start --block
--address`), each in its own process group, so that stopping that group stops exactly the Ray
daemons this test started (never `ray stop`: it stops every Ray on the machine). Each node offers
one CPU and a ClientApp asks for one, so Flower's actor pool has one actor per node: the run
completing, with actors on both nodes, shows the devices ran across the cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import read_jsonl, run_confide


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_ports() -> list[str]:
    """Every port a node listens on, free ones: two nodes (and other people's Ray) on one host
    must not collide on Ray's fixed defaults (e.g. the dashboard agent's 52365)."""
    names = (
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
    )
    return [part for name in names for part in (name, str(_free_port()))]


def _ray_env() -> dict[str, str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


def _start(args: list[str], log: Path) -> subprocess.Popen:
    ray = Path(sys.executable).parent / "ray"
    with log.open("w") as out:
        return subprocess.Popen(
            [str(ray if ray.exists() else "ray"), "start", "--block", *args],
            env=_ray_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: we stop exactly this node
        )


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies, dead but not yet reaped, do not)."""
    out = subprocess.run(["ps", "-eo", "pgid=,stat="], capture_output=True, text=True)
    rows = (line.split() for line in out.stdout.splitlines())
    return any(int(row[0]) == pgid and not row[1].startswith("Z") for row in rows)


def _stop(process: subprocess.Popen) -> None:
    """Stop one node: SIGTERM to its process group (`ray start --block` stops its daemons on it),
    SIGKILL to what is left."""
    for signum, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            process.poll()  # reap the leader
            if not _group_alive(process.pid):
                return
            time.sleep(0.2)


# Asks the cluster, from a driver of its own, about its nodes and the actors it ran (the GCS keeps
# dead actors' records): run in a subprocess, so that this test's process never imports Ray.
CLUSTER_QUERY = textwrap.dedent(
    """
    import json, sys, time
    import ray
    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
    want = int(sys.argv[2])
    deadline = time.monotonic() + 60
    while sum(n["Alive"] for n in ray.nodes()) < want and time.monotonic() < deadline:
        time.sleep(0.5)
    from ray._private.state import actors
    print(json.dumps({
        "nodes": [n["NodeID"] for n in ray.nodes() if n["Alive"]],
        "actors": [
            {"class": a["ActorClassName"], "node": a["Address"]["NodeID"]}
            for a in actors().values()
        ],
    }))
    ray.shutdown()
    """
)


def _query(address: str, want_nodes: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CLUSTER_QUERY, address, str(want_nodes)],
        env=_ray_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def ray_cluster() -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """A head and a joined second node, one CPU each; (head address, [head, node])."""
    # Short: Ray's Unix socket paths live under it and may not exceed 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    common += ["--object-store-memory", str(100 * 1024 * 1024), "--temp-dir", str(temp_dir)]
    nodes: list[subprocess.Popen] = []
    try:
        head_args = ["--head", "--port", str(port), "--include-dashboard", "false"]
        head_args += ["--ray-client-server-port", str(_free_port())]
        nodes.append(_start([*head_args, *common, *_node_ports()], temp_dir / "head.log"))
        _query(address, 1)  # the head answers before the second node asks to join it
        nodes.append(_start(["--address", address, *common, *_node_ports()], temp_dir / "node.log"))
        yield address, nodes
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_simulation_runs_on_a_two_node_ray_cluster(ray_cluster, tmp_path):
    address, nodes = ray_cluster
    before = _query(address, 2)
    assert len(before["nodes"]) == 2, before  # the second node joined the head

    out = tmp_path / "run"
    code, log = run_confide(
        "simulate",
        "--config",
        "simulations/smoke.toml",
        "--out",
        str(out),
        "--supernodes",
        "4",
        "--ray-address",
        address,
        settings={"synthetic-users": 8, "synthetic-items": 200},
    )
    assert code == 0, log[-3000:]
    assert f"on the Ray cluster at {address}" in log
    assert "run status: finished:completed" in log
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in records] == [1, 2]
    assert all(r["fit_replies"] == 4 and "skipped" not in r for r in records)

    # The run attached to this cluster (no Ray of its own) and its actors ran on both nodes; the
    # cluster outlived the run (Flower's ray.shutdown() only disconnects a driver).
    after = _query(address, 2)
    assert sorted(after["nodes"]) == sorted(before["nodes"])
    ran_on = {a["node"] for a in after["actors"] if a["class"] == "ClientAppActor"}
    assert ran_on == set(before["nodes"]), after

    for node in nodes:  # stopped by process group: nothing of either node is left
        _stop(node)
        assert node.poll() is not None and not _group_alive(node.pid)


def test_a_ray_address_where_nothing_listens_is_refused_before_flower_starts(tmp_path):
    port = _free_port()  # bound and released: nothing listens there
    code, log = run_confide(
        "simulate",
        "--config",
        "simulations/smoke.toml",
        "--out",
        str(tmp_path / "run"),
        "--ray-address",
        f"127.0.0.1:{port}",
    )
    assert code == 2, log
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in log
    assert "SuperLink pid" not in log
    code, log = run_confide("simulate", "--ray-address", "head-node", "--out", str(tmp_path))
    assert code == 2 and "is not HOST:PORT" in log, log
