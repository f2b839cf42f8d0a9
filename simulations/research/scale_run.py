"""A population-scale federated run, with every process's memory watched round by round.

    python -m simulations.research.scale_run --users 100000 --out runs/scale-100k [--set K=V ...]

Runs ``confide simulate`` (Flower's real Ray engine) on ``--config`` (by default the synthetic
population of ``simulations/scale.toml``) at ``--users`` users, with nodes that simulate shards
(``cohort-size``; default: one shard per core), user-level DP at ``--epsilon`` (server noise,
Poisson sampling at ``--fraction``; ``--epsilon 0``: no DP, ``--fraction`` of the users each
round). It samples the RSS of every process of the run (SuperLink, simulation, Ray workers and
actors) every second, tagged with the last round the
run has recorded, and writes ``DIR/scale.json``: rounds per hour (from the rounds' fit phases,
and from the wall time of the whole run, evaluations included), each process's RSS at round
``--from-round`` and in the last round's training and their ratio, its peak (the last
evaluation's, which ranks every user), the peak RSS of the tree, and the final
HR@10 beside the popularity baseline's. The run directory itself is ``DIR/run``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from shared.config import resolve_config
from shared.records import read_rounds
from simulations.bench import tree_rss

CORES = 2


def scale_settings(args: argparse.Namespace) -> list[str]:
    settings = [
        f"synthetic-users={args.users}",
        f"synthetic-items={args.items}",
        f"num-server-rounds={args.rounds}",
        f"eval-every={args.rounds}",
        f"cohort-size={args.cohort_size or -(-args.users // CORES)}",
        f"fraction-fit={args.fraction}",
    ]
    if args.epsilon > 0:  # user-level DP, server noise calibrated to reach ε after the rounds
        settings += ["dp-user=true", f"dp-user-target-epsilon={args.epsilon}"]
    return settings + list(args.set or [])


class ProcessRss(threading.Thread):
    """Every second: the RSS (MB) of each process under ``root``, and the last recorded round."""

    def __init__(self, root: int, metrics: Path) -> None:
        super().__init__(daemon=True)
        self.root, self.metrics = root, metrics
        self.samples: list[dict[str, Any]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(1.0):
            self.samples.append({"t": time.monotonic(), "round": _rounds(self.metrics),
                                 "rss_mb": tree_rss(self.root)})  # fmt: skip

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def _rounds(metrics: Path) -> int:
    try:
        return sum(1 for line in metrics.read_text().splitlines() if line.strip())
    except OSError:
        return 0


def summarize(samples: list[dict[str, Any]], from_round: int, last_round: int) -> dict[str, Any]:
    """Each process's RSS at ``from_round`` and in the last round's training, and its peak.

    A sample is tagged with the rounds recorded so far, and the last round is recorded only after
    its evaluation (which ranks every user: its memory is the evaluation's, not a leak), so the
    last round's training is the first sample after round ``last_round - 1`` was recorded.
    """

    def at(round_number: int) -> dict[str, float]:
        hits = [s for s in samples if s["round"] >= round_number]
        return hits[0]["rss_mb"] if hits else {}

    start, end = at(from_round), at(last_round - 1)
    peaks: dict[str, float] = {}
    for sample in samples:
        for name, mb in sample["rss_mb"].items():
            peaks[name] = max(peaks.get(name, 0.0), mb)
    processes = {
        name: {"from": round(start[name], 1), "last_training": round(end[name], 1),
               "ratio": round(end[name] / start[name], 3), "peak": round(peaks[name], 1)}
        for name in start
        if name in end and start[name] > 50  # the run's processes, not shells and helpers
    }  # fmt: skip
    peak = max((sum(s["rss_mb"].values()) for s in samples), default=0.0)
    worst = max((p["ratio"] for p in processes.values()), default=None)
    return {"processes": processes, "max_ratio": worst, "peak_tree_rss_mb": round(peak, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="simulations/scale.toml")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--epsilon", type=float, default=8.0, help="0: no DP")
    parser.add_argument("--cohort-size", type=int, default=0)
    parser.add_argument("--from-round", type=int, default=5)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE")
    parser.add_argument("--out", default="runs/scale")
    args = parser.parse_args(argv)
    out = Path(args.out)
    run_dir = out / "run"
    settings = scale_settings(args)
    config, changed = resolve_config(args.config, settings, str(run_dir))
    from simulations.simulate import run_simulation

    sampler = ProcessRss(os.getpid(), run_dir / "metrics.jsonl")
    started = time.monotonic()
    sampler.start()
    try:
        code = run_simulation(config, changed)
    finally:
        sampler.stop()
    wall = time.monotonic() - started
    if code:
        print(f"scale_run: the simulation exited with code {code}", file=sys.stderr)
        return code
    records = read_rounds(run_dir)
    training = sum(r.fit_seconds or 0.0 for r in records)
    data = json.loads((run_dir / "data.json").read_text())
    memory = summarize(sampler.samples, args.from_round, len(records))
    last = records[-1]
    result = {
        "settings": settings,
        "users": args.users,
        "rounds": len(records),
        "wall_s": round(wall, 1),
        "rounds_per_hour_wall": round(len(records) / wall * 3600, 1),
        "rounds_per_hour_training": round(len(records) / training * 3600, 1) if training else None,
        "mean_fit_s": round(training / len(records), 2),
        "final": {k: getattr(last, k) for k in ("hr10", "ndcg10", "full_hr10", "eval_clients")},
        "popularity": data["baselines"]["popularity"],
        "memory": memory,
    }
    ledger = run_dir / "privacy_ledger.jsonl"
    if ledger.exists():
        entries = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
        result["user_level_epsilon"] = entries[-1].get("user_level", {}).get("epsilon")
    (out / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "rss_samples.json").write_text(json.dumps(sampler.samples) + "\n")
    brief = {k: v for k, v in result.items() if k != "memory"}
    brief |= {"rss_max_ratio": memory["max_ratio"], "peak_tree_rss_mb": memory["peak_tree_rss_mb"]}
    print(json.dumps(brief))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
