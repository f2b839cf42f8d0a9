"""A server that restarts, in a real deployment on 127.0.0.1 (TLS, SuperNode authentication).

Runs ``simulations.restart_local``: the SuperLink and the ServerApp are SIGKILLed after round 1
of 2, the SuperLink is started again on its ``--database``, the SuperNodes (never restarted)
reconnect by themselves, and the run resumes from its checkpoint. Every device's store keeps
its private embedding and accountant: its DP steps continue and its ε never goes down.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT


@pytest.mark.slow  # about 90 s on 2 cores: a fresh ClientApp process per device and message
def test_killed_superlink_and_serverapp_restart_and_the_run_resumes(tmp_path):
    work = tmp_path / "work"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "simulations.restart_local", "--keep", str(work)]
        + ["--set", "num-server-rounds=2", "--kill-after", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    print(f"restart_local took {time.monotonic() - started:.0f}s")
    assert result.returncode == 0, result.stderr[-4000:] + result.stdout[-2000:]
    lines = result.stdout.strip().splitlines()
    print(lines[-1] if lines else "no output")
    assert len(lines) == 1  # one JSON line
    report = json.loads(lines[0])
    assert report["ok"] and report["status"] == "finished:completed"
    assert report["tls"] and report["supernode_auth"] and report["processes_stopped"]

    killed = report["killed"]
    assert killed["after_checkpoint_of_round"] == 1 and len(killed["serverapp"]) == 1
    assert report["supernodes_alive_after_kill"] and report["same_node_ids"]
    assert report["killed_run"]["after_restart"] == "running"  # what the database remembered
    assert report["killed_run"]["after_stop"].startswith("finished")
    assert report["resumed"] == [{"after_round": 1}]
    assert [r["round"] for r in report["rounds"]] == [1, 2]  # each exactly once
    assert all(r["fit_replies"] == 3 and not r["skipped"] for r in report["rounds"])

    for device in report["devices"]:
        before, after = device["before"], device["after"]
        assert before["embedding_sha256"] and after["embedding_sha256"]
        # continued: round 2 adds at least a step to round 1's (a restarted accountant would hold
        # only round 2's)
        assert after["dp_steps"] > before["dp_steps"] >= 1
        assert after["epsilon"] > before["epsilon"] > 0
    for pid in report["pids"].values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
