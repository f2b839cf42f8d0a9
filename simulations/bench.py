"""``confide bench``: what one round of local training costs, measured side by side in one run.

Every row trains the same cohort (the dataset's first ``users`` users) on the same data, model
and seeds, one round (round 1, from the initial global model), in a fresh subprocess so that its
peak RSS is its own (docs/design.md §9):

- ``floor_*``: the cohort engine's kernel alone on tensors prepared before the clock starts (no
  framework, no state, no accountant): the best this machine does;
- ``per_device_*``: :func:`client.training_round.train` (Opacus under DP), users one after another;
- ``cohort_*``: :func:`client.cohort.train_shard`, everything a node does for its shard except
  Flower (negatives, state in and out, accountants, ε caps);
- ``flower_*``: a Confide simulation (Flower's Ray engine, one supernode per user, num_cpus=1)
  of 2 rounds; ``flower_cohort_*`` the same simulation with the cohort in two shards
  (``cohort-size``: two supernodes, each training its users on the cohort engine). The round
  time is the run's own record of round 2's fit phase (``fit_seconds``, warm actors), so
  simulation startup and evaluation are not counted. Peak RSS there is the largest sum of
  RSS over the process tree (SuperLink, SuperExec, Ray workers), sampled.

``*_pooled``: the same, under pooled interaction-level DP (``dp-interaction-mode = "pooled"``:
one Poisson-sampled, clipped gradient sum at the global model per user and round, no local
epochs; docs/design.md §4): per device (:func:`client.training_round.train`), on the cohort
engine (:func:`client.shard.pooled_shard`, one model with a row per user) and in Flower.

``users_per_s`` = users / seconds; ``ratio_to_floor`` = the floor's seconds / this row's seconds
(1.0 is as fast as the floor; the plain floor for plain rows, the DP floor for DP rows). A pooled
row is compared to the local-epochs DP floor: above 1.0 it is cheaper than the kernel of a
local-epochs DP round, which is what it replaces.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROWS = (
    "floor_plain",
    "floor_dp",
    "per_device_plain",
    "per_device_dp",
    "flower_plain",
    "flower_dp",
    "flower_dp_secagg",
    "cohort_plain",
    "cohort_dp",
    "flower_cohort_plain",
    "flower_cohort_dp",
    "per_device_pooled",
    "cohort_pooled",
    "flower_pooled",
    "flower_cohort_pooled",
)
FLOWER_SHARDS = 2  # flower_cohort_*: the cohort in two shards, one Ray actor (core) each
QUICK = {"users": 16, "repeats": 1}
FULL = {"users": 100, "repeats": 3}
DP_SETTINGS = {"dp-interaction": True}  # σ, C, δ from the config (defaults: σ 1.0, C 1.0)
SECAGG_SETTINGS = {"secagg": True}
# pooled rows: the rate and σ from the config; the server steps with Adam (item-sum is refused)
POOLED_SETTINGS = DP_SETTINGS | {"dp-interaction-mode": "pooled", "strategy": "fedadam"}


@dataclass(frozen=True)
class BenchSpec:
    values: dict[str, Any]  # the resolved run config (kebab-case)
    users: int
    repeats: int


def row_values(spec: BenchSpec, row: str) -> dict[str, Any]:
    """The row's config: the bench's, with DP (and SecAgg+) switched on for the rows named so."""
    values = dict(spec.values)
    values["dp-interaction"] = False
    values["secagg"] = False
    if row.endswith("_dp") or row.endswith("_dp_secagg"):
        values |= DP_SETTINGS
    if row.endswith("_pooled"):
        values |= POOLED_SETTINGS
    if row.endswith("_secagg"):
        values |= SECAGG_SETTINGS
    values["cohort-size"] = (
        -(-spec.users // FLOWER_SHARDS) if row.startswith("flower_cohort") else 1
    )
    return values


# -- in the row's own subprocess -------------------------------------------------------------------
def measure_row(spec: BenchSpec, row: str) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # as a Ray actor runs: one thread
    from shared.config import RunConfig

    config = RunConfig.from_mapping(row_values(spec, row))
    if row.startswith("flower"):
        seconds, peak = _flower_round(config, spec.users)
        return {"seconds": seconds, "repeats": 1, "peak_rss_mb": peak}
    run = _prepare(config, row, spec.users)
    # One untimed pass first: torch.func's first calls, Opacus' imports and first accountant
    # curves would otherwise be timed as the row's work (with --quick's single repeat, the
    # floor measured at 16 users was mostly that), while the Flower rows time a warm round 2.
    run()
    times = []
    for _ in range(spec.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "repeats": spec.repeats, "peak_rss_mb": _self_peak_mb()}


def _prepare(config, row: str, users: int):
    """A callable that does the row's timed work, with its untimed preparation done."""
    import numpy as np

    from client import cohort, training_round
    from shared.models import global_arrays
    from shared.split import split_for

    split = split_for(config)
    params = global_arrays(config.build_model(split.num_items))
    shard = [cohort.ShardUser(u, split.user_data(u)) for u in range(users)]
    if row.startswith("per_device"):
        return lambda: [
            training_round.train(config, u.data, u.user_id, 1, params, None) for u in shard
        ]
    if row.startswith("cohort") and config.pooled:
        from client.policy import DevicePolicy
        from client.shard import pooled_shard

        return lambda: pooled_shard(config, shard, 1, params, DevicePolicy())
    if row.startswith("cohort"):
        return lambda: cohort.train_shard(config, shard, 1, params)
    # the floor: the same kernel on tensors prepared before the clock starts
    shard.sort(key=lambda u: len(u.data.train_items))
    chunks = [shard[i : i + cohort.CHUNK_USERS] for i in range(0, len(shard), cohort.CHUNK_USERS)]
    privates = {u.user_id: cohort.fresh_private(config, split.num_items, u.user_id) for u in shard}
    jobs = []
    for chunk in chunks:
        mine = [privates[u.user_id] for u in chunk]
        if config.dp_interaction:
            from client.dp import plan_round

            sigmas = [plan_round(config, len(u.data.train_items)).noise_multiplier for u in chunk]
            prepared = cohort.dp_groups(config, chunk, 1, sigmas, "cpu")
        else:
            prepared = [
                cohort.plain_batches(config, chunk, 1, e, "cpu") for e in range(config.local_epochs)
            ]
        jobs.append((mine, prepared))
    np.random.seed(0)

    def run() -> None:
        for mine, prepared in jobs:
            stack = cohort.StackedParams(config, split.num_items, params, mine, "cpu")
            optimizer = cohort.StackedOptimizer(
                config.optimizer, stack.params, config.learning_rate
            )
            if config.dp_interaction:
                generator = cohort.shard_generator(config, 0, 1, "cpu")
                cohort.run_dp(stack, optimizer, prepared, config.dp_max_grad_norm, generator)
            else:
                for batches in prepared:
                    cohort.run_plain_epoch(stack, optimizer, batches)

    return run


def _flower_round(config, users: int) -> tuple[float, float]:
    from shared.defaults import default_values
    from shared.records import read_rounds
    from simulations.simulate import run_simulation

    with tempfile.TemporaryDirectory(prefix="confide-bench-") as out:
        config = config.replace(
            num_server_rounds=2,
            clients_per_round=users,
            fraction_fit=1.0,
            min_fit_clients=min(users, config.min_fit_clients),
            eval_every=1000,
            eval_clients=1,
            personalize_epochs=0,
            out_dir=out,
            secagg_max_cohort=max(users, config.secagg_max_cohort) if config.secagg else 1000,
        )
        defaults = default_values()
        changed = {k: v for k, v in config.to_mapping().items() if defaults.get(k) != v}
        sampler = _TreeRss()
        sampler.start()
        try:
            nodes = users if config.cohort_size <= 1 else -(-users // config.cohort_size)
            code = run_simulation(config, changed, supernodes=nodes)
        finally:
            sampler.stop()
        if code:
            raise RuntimeError(f"the Flower simulation of the bench exited with code {code}")
        records = read_rounds(Path(out))
        fit = records[-1].fit_seconds
        if fit is None:
            raise RuntimeError("the simulation recorded no fit_seconds for its last round")
        return float(fit), max(sampler.peak_mb, _self_peak_mb())


def _self_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _TreeRss(threading.Thread):
    """The largest sum of RSS over this process and all its descendants, sampled every 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_mb = 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.2):
            self.peak_mb = max(self.peak_mb, _tree_rss_mb(os.getpid()))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2)


def _tree_rss_mb(root: int) -> float:
    return sum(tree_rss(root).values())


def tree_rss(root: int) -> dict[str, float]:
    """``"pid name"`` -> RSS in MB for ``root`` and every process descended from it."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [c for c, p in parents.items() if p == pid and c not in tree]
        tree.update(children)
        frontier += children
    out: dict[str, float] = {}
    for pid in tree:
        try:
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status if ":" in line)
        if "VmRSS" in fields:
            out[f"{pid} {fields['Name'].strip()}"] = int(fields["VmRSS"].split()[0]) / 1024
    return out


# -- the parent: one subprocess per row, then bench.json and bench.png -----------------------------
def run_bench(
    config, out: Path, *, quick: bool = False, users: int = 0, rows: list[str] | None = None
) -> list[dict[str, Any]]:
    preset = QUICK if quick else FULL
    users = users or (config.cohort_size if config.cohort_size > 1 else preset["users"])
    from shared.split import split_for

    available = split_for(config).num_users
    if users > available:
        raise ValueError(
            f"the bench cohort has {users} users but the dataset has {available}: "
            f"use --users {available} or fewer"
        )
    spec = BenchSpec(values=config.to_mapping(), users=users, repeats=preset["repeats"])
    out.mkdir(parents=True, exist_ok=True)
    wanted = [r for r in ROWS if rows is None or r in rows]
    # the floors always run: every ratio is to the floor measured in the same run
    names = [r for r in ROWS if r.startswith("floor")] + [r for r in wanted if "floor" not in r]
    rows = []
    for row in names:
        print(f"[bench] {row}: {users} users ...", flush=True)
        rows.append({"name": row, "users": users, **_in_subprocess(spec, row)})
    floors = {"plain": _seconds(rows, "floor_plain"), "dp": _seconds(rows, "floor_dp")}
    for row in rows:
        floor = floors["plain" if row["name"].endswith("plain") else "dp"]
        row["users_per_s"] = round(users / row["seconds"], 2)
        row["ratio_to_floor"] = round(floor / row["seconds"], 4)
        print(
            f"[bench] {row['name']:<18} {row['users_per_s']:>9.1f} users/s  "
            f"{row['ratio_to_floor']:>6.3f}x floor  {row['peak_rss_mb']:>7.0f} MB",
            flush=True,
        )
    meta = {"dataset": config.dataset, "model": config.model, "users": users, "quick": quick}
    (out / "bench.json").write_text(json.dumps({"bench": meta, "rows": rows}, indent=2) + "\n")
    plot(rows, out / "bench.png", f"{config.model} on {config.dataset}, {users} users")
    print(f"[bench] wrote {out / 'bench.json'} and {out / 'bench.png'}")
    return rows


def _seconds(rows: list[dict[str, Any]], name: str) -> float:
    return next(r["seconds"] for r in rows if r["name"] == name)


def _in_subprocess(spec: BenchSpec, row: str) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    payload = json.dumps({"values": spec.values, "users": spec.users, "repeats": spec.repeats})
    done = subprocess.run(
        [sys.executable, "-m", "simulations.bench", row],
        input=payload,
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
    )
    if done.returncode:
        raise RuntimeError(f"bench row {row} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = [r["name"] for r in rows]
    speeds = [r["users_per_s"] for r in rows]
    colors = [
        "tab:gray" if "floor" in n else "tab:blue" if "dp" in n else "tab:green" for n in names
    ]
    bars = ax.barh(names, speeds, color=colors)
    for bar, row in zip(bars, rows, strict=True):
        ax.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {row['ratio_to_floor']:.2f}x, {row['peak_rss_mb']:.0f} MB",
            va="center",
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("users per second (log); label: ratio to the floor, peak RSS")
    ax.set_title(title)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":  # one row, in its own process: spec on stdin, result on stdout
    raw = json.loads(sys.stdin.read())
    result = measure_row(BenchSpec(raw["values"], raw["users"], raw["repeats"]), sys.argv[1])
    print(json.dumps(result))
