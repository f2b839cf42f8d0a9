"""Flower's delivery scan against Confide's link-state index, side by side on one config.

    python -m simulations.research.bench_linkstate --config simulations/ml-100k.toml --out DIR

Runs the same short simulation (``--rounds``, the last round evaluating every device, no
personalization) alternately with Flower's own ``get_message_ins`` (``CONFIDE_FLOWER_SCAN=1``)
and with :mod:`server.linkstate_index`, ``--repeats`` times each, and prints and writes
``DIR/bench_linkstate.json``: the mean training-round and whole-run seconds of each and their
ratio. Both variants share the machine's noise, so the ratio is what to read.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from server.linkstate_index import USE_FLOWER_SCAN
from shared.records import read_rounds


def run_once(config: str, rounds: int, out: Path, scan: bool) -> dict[str, float]:
    env = dict(os.environ, **{USE_FLOWER_SCAN: "1" if scan else "0"})
    started = time.monotonic()
    settings = [f"num-server-rounds={rounds}", f"eval-every={rounds}", "personalize-epochs=0"]
    argv = [sys.executable, "-m", "simulations.cli", "simulate", "--config", config]
    argv += [part for s in settings for part in ("--set", s)] + ["--out", str(out)]
    subprocess.run(argv, env=env, check=True, capture_output=True)
    wall = time.monotonic() - started
    records = read_rounds(out)
    training = [r.fit_seconds for r in records[1:] if r.fit_seconds is not None]  # after round 1
    return {"wall_s": wall, "fit_s": sum(training) / max(len(training), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="simulations/ml-100k.toml")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default="runs/bench-linkstate")
    args = parser.parse_args(argv)
    out = Path(args.out)
    rows: dict[str, list[dict[str, float]]] = {"flower_scan": [], "index": []}
    for repeat in range(args.repeats):
        for name in rows:  # alternate, so drift in the machine's load hits both
            run = run_once(
                args.config, args.rounds, out / f"{name}-{repeat}", name == "flower_scan"
            )
            rows[name].append(run)
            print(f"[bench] {name} #{repeat}: {run}", flush=True)
    mean = {
        n: {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]} for n, runs in rows.items()
    }
    result = {
        "config": args.config,
        "rounds": args.rounds,
        "mean": mean,
        "speedup_fit": mean["flower_scan"]["fit_s"] / mean["index"]["fit_s"],
        "speedup_wall": mean["flower_scan"]["wall_s"] / mean["index"]["wall_s"],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_linkstate.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
