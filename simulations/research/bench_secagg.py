"""SecAgg+ cost: training-round time with and without SecAgg+, side by side, ML-100K model.

For each cohort size K, two simulations of the same config (one with ``secagg = true``) run one
after the other on K supernodes, every device training every round; the fit time per round
(sampling to aggregated model, all SecAgg+ stages included; the first round, which pays Ray's
start-up, is left out) is compared as a ratio. Without the ML-100K files it falls back to a
synthetic catalogue of the same size (1682 items: the same model).

    python -m simulations.research.bench_secagg [--cohorts 20,100] [--rounds 4] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from shared.config import ConfigError, resolve_config
from shared.defaults import CHECKOUT_PYPROJECT
from shared.records import read_rounds
from simulations.configs import CONFIG_DIR
from simulations.simulate import run_simulation

# Where a source checkout keeps the real data: beside the checkout, in ../shared/data.
ML100K = CHECKOUT_PYPROJECT.parent.parent / "shared" / "data" / "ml-100k"


def fit_seconds(config_file: Path, settings: dict, supernodes: int, out: Path) -> list[float]:
    overrides = [f"{k}={json.dumps(v)}" for k, v in settings.items()]  # JSON values are TOML
    config, changed = resolve_config(str(config_file), overrides, str(out))
    code = run_simulation(config, changed, supernodes=supernodes)
    if code:
        raise RuntimeError(f"simulation failed (exit {code}); see its log above")
    return [r.fit_seconds for r in read_rounds(out)[1:] if r.fit_seconds is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", default="20,100")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--data-dir", default=str(ML100K))
    args = parser.parse_args(argv)
    data = Path(args.data_dir)
    base = {"num-server-rounds": args.rounds, "eval-every": 1000, "local-epochs": 1}
    if (data / "u.data").exists():
        base |= {"dataset": "ml-100k", "data-dir": str(data.resolve())}
    else:
        print(f"[bench] no ML-100K at {data}: synthetic data with 1682 items (same model)")
        base |= {"dataset": "synthetic", "synthetic-users": 943, "synthetic-items": 1682}
    rows = []
    with tempfile.TemporaryDirectory(prefix="confide-bench-") as tmp:
        for k in (int(c) for c in args.cohorts.split(",")):
            times = {}
            for secagg in (False, True):
                settings = base | {"clients-per-round": k, "secagg": secagg}
                out = Path(tmp) / f"k{k}-{'secagg' if secagg else 'plain'}"
                try:
                    times[secagg] = fit_seconds(CONFIG_DIR / "ml-100k.toml", settings, k, out)
                except ConfigError as err:
                    print(f"[bench] config error: {err}", file=sys.stderr)
                    return 2
            plain, masked = (statistics.median(times[s]) for s in (False, True))
            rows.append((k, plain, masked, masked / plain, times))
    print("\nK    plain s/round  SecAgg+ s/round  ratio   (median fit time, rounds 2..)")
    for k, plain, masked, ratio, times in rows:
        print(f"{k:<4} {plain:>13.2f} {masked:>16.2f} {ratio:>6.2f}x  {json.dumps(times)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
