"""Privacy–utility sweep: the same federated run with no DP, interaction-level DP and user-level DP.

Every row is a real ``confide simulate`` run (Flower's simulation engine) into its own run
directory under ``--out``; a row whose run directory already holds a finished run is not run again,
so an interrupted sweep resumes where it stopped. The script then reads each run's last evaluation
and its privacy report and writes ``table.md``, ``table.json`` and ``privacy_utility.png``.

Beside the models, the table has the line a private model must clear: the popularity ranking on the
same split, plain and released under each DP unit at each ε (:mod:`shared.dp_popularity`; noisy
counts, accounted with the runs' accountant; computed in this process, no simulation).

    python -m simulations.research.privacy_utility --data-dir ../shared/data/ml-100k --out runs/pu
    python -m simulations.research.privacy_utility ... --only none,interaction-8  # some rows

The pooled rows (``pooled-1/4/8``: interaction level, one DP-SGD step over the cohort's pooled
batch each round, docs/design.md §4) run their own config (``--pooled-config``, default
``ml-100k-pooled.toml``: every device every round, server Adam), since local epochs' learning
settings do not carry over to one gradient step a round; the same split and evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.baselines import dp_popularity_baseline
from shared.config import RunConfig, resolve_config
from shared.privacy import planned_participations
from shared.records import CONFIG_FILE, MODEL_FILE, read_rounds
from shared.split import split_for
from shared.training import evaluate_popularity
from shared.wire import EVAL_METRICS, FULL_HR10, FULL_NDCG10, HR10, NDCG10
from simulations.cli import main as confide
from simulations.configs import CONFIG_DIR
from simulations.research.tables import cell

EPSILONS = (1, 4, 8)


@dataclass(frozen=True)
class Row:
    name: str
    unit: (
        str  # "none", "interaction", "interaction-pooled", "user", "user-adaptive", "user-devices"
    )
    target_epsilon: float | None
    overrides: dict[str, Any] = field(default_factory=dict)
    config: Path | None = None  # the row's own config file (else the sweep's base config)


def pooled_rows(config_path: Path, common: list[str]) -> list[Row]:
    """Pooled interaction-level DP at each ε: every device plans for every round of its config
    (it takes part in all of them) and stops at its cap."""
    rounds = resolve_config(str(config_path), common, None)[0].num_server_rounds
    return [
        Row(
            f"pooled-{eps}",
            "interaction-pooled",
            eps,
            {
                "dp-target-epsilon": float(eps),
                "dp-planned-participations": rounds,
                "dp-epsilon-cap": float(eps),
                "dp-delta": 1e-5,
            },
            config=config_path,
        )
        for eps in EPSILONS
    ]


def default_rows(
    rounds: int,
    clients_per_round: int,
    population: int,
    *,
    fraction: float = 0.0,
    shards: bool = False,
) -> list[Row]:
    """No DP, then each unit at each target ε (δ = 1e-5 throughout).

    Interaction level: each device plans for the participations it expects plus two standard
    deviations (Flower samples a fixed K of N each round, so a device's count is binomial) and
    stops at its cap, so no device ever passes the target. User level: the server's accountant
    solves for z over all rounds with q = K/N and the run stops at the cap. User level with an
    adaptive clip: the same z, S from ``dp-user-clip-norm`` on, moved every round.
    """
    cohort = clients_per_round or fraction * population or population
    planned = planned_participations(rounds, round(cohort), population)
    rows = [Row("none", "none", None)]
    for eps in EPSILONS:
        rows.append(
            Row(
                f"interaction-{eps}",
                "interaction",
                eps,
                {
                    "dp-interaction": True,
                    "dp-target-epsilon": float(eps),
                    "dp-planned-participations": planned,
                    "dp-epsilon-cap": float(eps),
                    "dp-delta": 1e-5,
                },
            )
        )
    for eps in EPSILONS:
        rows.append(
            Row(
                f"user-{eps}",
                "user",
                eps,
                {
                    "dp-user": True,
                    "dp-user-target-epsilon": float(eps),
                    "dp-user-epsilon-cap": float(eps),
                    "dp-user-delta": 1e-5,
                },
            )
        )
    user_rows = rows[-len(EPSILONS) :]
    # the same, with S tracking the median update norm (Andrew et al. 2021)
    adaptive = {"dp-user-adaptive-clip": True}
    rows += [
        Row(
            f"user-adaptive-{u.target_epsilon}",
            "user-adaptive",
            u.target_epsilon,
            u.overrides | adaptive,
        )  # fmt: skip
        for u in user_rows
    ]
    # the same target with the noise added by the devices inside SecAgg+ (one device per node)
    devices = device_noise_overrides(cohort, shards)
    rows += [
        Row(
            f"user-devices-{u.target_epsilon}",
            "user-devices",
            u.target_epsilon,
            u.overrides | devices,
        )
        for u in user_rows
    ]
    return rows


def device_noise_overrides(cohort: float, shards: bool) -> dict[str, Any]:
    """Device-added noise planned for 80% of the expected cohort K: each device adds 1/(0.8 K)
    of the noise, and a round with fewer survivors halts before anything is unmasked (design
    §4); 80% leaves about 2 standard deviations of a Poisson cohort of 100 below its mean. One
    device per node runs SecAgg+; on shards each simulated user adds its share and the shard
    sums them (secagg stays off: it is not built across shards)."""
    return {
        "secagg": not shards,
        "dp-noise-source": "devices",
        "dp-noise-min-survivors": max(DEVICE_NOISE_MIN_SURVIVORS, int(0.8 * cohort)),
    }


DEVICE_NOISE_MIN_SURVIVORS = 4  # never below SecAgg+'s default reconstruction threshold


def _rows_for(base: RunConfig, population: int) -> list[Row]:
    return default_rows(
        base.num_server_rounds,
        base.clients_per_round,
        population,
        fraction=base.fraction_fit,
        shards=base.cohort_size > 1,
    )


def _finished(run_dir: Path) -> bool:
    try:
        records = read_rounds(run_dir)
    except (OSError, ValueError):
        return False
    return any(r.evaluated for r in records) and (run_dir / MODEL_FILE).exists()


def run_row(row: Row, base_config: Path, common: list[str], out: Path) -> int:
    config = row.config or base_config
    argv = ["simulate", "--config", str(config), "--out", str(out / row.name)]
    for key, value in row.overrides.items():
        argv += ["--set", f"{key}={json.dumps(value) if isinstance(value, bool) else value}"]
    for text in common:
        argv += ["--set", text]
    print(f"[sweep] {row.name}: confide {' '.join(argv)}", flush=True)
    return confide(argv)


def summarize(row: Row, run_dir: Path) -> dict[str, Any]:
    """One table row from a finished run: last evaluation, privacy report, federation size."""
    from server.report import write_report

    config = json.loads((run_dir / CONFIG_FILE).read_text())
    records = read_rounds(run_dir)
    final = [r for r in records if r.evaluated][-1]
    summary: dict[str, Any] = {
        "row": row.name,
        "unit": row.unit,
        "target_epsilon": row.target_epsilon,
        "rounds": max(r.round for r in records),
        # K: a fixed count, or (clients-per-round 0) the fraction q of the users each round
        "clients_per_round": config["clients-per-round"] or f"q {config['fraction-fit']:g}",
        "eval_round": final.round,
        **{k: final.metric(k) for k in EVAL_METRICS},
    }
    if row.unit == "none":
        return summary
    report = write_report(run_dir)
    if row.unit.startswith("interaction"):
        unit = report["interaction_level"]
        summary.update(
            epsilon=unit["epsilon_max"],
            epsilon_median=unit["epsilon_median"],
            delta=unit["delta"],
            noise_multiplier=unit["noise_multiplier"] or _sigma_range(unit),
            clip=unit["max_grad_norm"],
            devices_at_cap=unit["devices_at_cap"],
            accountant=unit["accountant"],
        )
    else:
        unit = report["user_level"]
        summary.update(
            epsilon=unit["epsilon"],
            delta=unit["delta"],
            noise_multiplier=unit["noise_multiplier"],
            clip=unit["clip_norm"],
            accountant=unit["accountant"],
            stopped=report["run"].get("stopped"),
        )
    return summary


def popularity_rows(config: RunConfig) -> list[dict[str, Any]]:
    """The popularity ranking on the runs' split: plain, and released under each unit and ε."""
    split = split_for(config)
    rows: list[dict[str, Any]] = [
        {"row": "popularity", "unit": "popularity", "target_epsilon": None}
        | evaluate_popularity(split)
    ]
    for unit in ("interaction", "user"):
        for eps in EPSILONS:
            metrics = dp_popularity_baseline(config, split, unit, float(eps), 1e-5)
            rows.append(
                {
                    "row": f"dp-popularity-{unit}-{eps}",
                    "unit": f"dp-popularity-{unit}",
                    "target_epsilon": eps,
                    "epsilon": metrics.pop("epsilon"),
                    "delta": metrics.pop("delta"),
                    "noise_stddev": metrics.pop("noise_stddev"),
                    **metrics,
                }
            )
    return rows


def _sigma_range(unit: dict[str, Any]) -> str | None:
    """'median (min–max)' of the devices' σ, when each device calibrated its own."""
    low, mid, high = (unit.get(f"noise_multiplier_{k}") for k in ("min", "median", "max"))
    if mid is None:
        return None
    return f"{mid:.2f} ({low:.2f}–{high:.2f})"


def _markdown(rows: list[dict[str, Any]]) -> str:
    base = next((r[HR10] for r in rows if r["unit"] == "none"), None)
    head = (
        "| row | unit | target ε | ε reached | δ | σ or z | clip | rounds | K | HR@10 | NDCG@10 "
        "| full HR@10 | full NDCG@10 | HR@10 / no DP |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )

    lines = []
    for r in rows:
        ratio = r[HR10] / base if base else None
        noise = r.get("noise_multiplier")
        lines.append(
            "| "
            + " | ".join(
                [
                    r["row"],
                    r["unit"],
                    cell(r["target_epsilon"], 0),
                    cell(r.get("epsilon"), 2),
                    cell(r.get("delta"), 6) if r.get("delta") else "–",
                    noise if isinstance(noise, str) else cell(noise, 3),
                    cell(r.get("clip"), 2),
                    str(r.get("rounds", "–")),
                    str(r.get("clients_per_round", "–")),
                    cell(r[HR10]),
                    cell(r[NDCG10]),
                    cell(r[FULL_HR10]),
                    cell(r[FULL_NDCG10]),
                    cell(ratio, 2),
                ]
            )
            + " |"
        )
    return head + "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    base = next((r for r in rows if r["unit"] == "none"), None)
    for ax, (sampled, full, title) in zip(
        axes,
        [(HR10, FULL_HR10, "HR@10"), (NDCG10, FULL_NDCG10, "NDCG@10")],
        strict=True,
    ):
        markers = (("interaction", "o"), ("interaction-pooled", "^"), ("user", "s"))
        for unit, marker in (*markers, ("user-adaptive", "D"), ("user-devices", "v")):
            points = sorted(
                (r["target_epsilon"], r[sampled], r[full]) for r in rows if r["unit"] == unit
            )
            if points:
                eps, values, full_values = zip(*points, strict=True)
                ax.plot(eps, values, marker=marker, label=f"{unit}-level, sampled")
                ax.plot(eps, full_values, marker=marker, ls="--", label=f"{unit}-level, full")
            line = sorted(
                (r["target_epsilon"], r[sampled])
                for r in rows
                if r["unit"] == f"dp-popularity-{unit}"
            )
            if line:
                eps, values = zip(*line, strict=True)
                ax.plot(
                    eps,
                    values,
                    marker=marker,
                    color="grey",
                    ls=":",
                    lw=1,
                    label=f"DP popularity ({unit}), sampled",
                )
        if base:
            ax.axhline(base[sampled], color="k", lw=1, label="no DP, sampled")
            ax.axhline(base[full], color="k", lw=1, ls="--", label="no DP, full")
        ax.set(xlabel="target ε (δ = 1e-5)", ylabel=title, title=title, xticks=list(EPSILONS))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default=str(CONFIG_DIR / "ml-100k.toml"), help="base config TOML"
    )
    parser.add_argument("--data-dir", help="dataset directory (overrides the config's data-dir)")
    parser.add_argument("--out", default="runs/privacy-utility", help="sweep directory")
    parser.add_argument("--only", help="comma-separated row names (default: all)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key in every row (repeatable)",
    )
    parser.add_argument("--population", type=int, default=943, help="devices (users) N")
    parser.add_argument(
        "--pooled-config",
        default=str(CONFIG_DIR / "ml-100k-pooled.toml"),
        help="config of the pooled interaction-level rows",
    )
    args = parser.parse_args(argv)

    common = list(args.set) + ([f"data-dir={args.data_dir}"] if args.data_dir else [])
    base, _ = resolve_config(args.config, common, None)
    rows = _rows_for(base, args.population)
    rows += pooled_rows(Path(args.pooled_config), common)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {r.name for r in rows}
        if unknown:
            parser.error(f"unknown rows {sorted(unknown)}: choose from {[r.name for r in rows]}")
        rows = [r for r in rows if r.name in wanted]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for row in rows:
        if _finished(out / row.name):
            print(f"[sweep] {row.name}: already finished, reusing {out / row.name}", flush=True)
            continue
        code = run_row(row, Path(args.config), common, out)
        if code:
            print(f"[sweep] {row.name}: simulation failed (exit {code})", file=sys.stderr)
            return code
    every = _rows_for(base, args.population)
    every += pooled_rows(Path(args.pooled_config), common)
    done = [r for r in every if _finished(out / r.name)]
    summaries = [summarize(r, out / r.name) for r in done] + popularity_rows(base)
    (out / "table.json").write_text(json.dumps(summaries, indent=2) + "\n")
    (out / "table.md").write_text(_markdown(summaries))
    _plot(summaries, out / "privacy_utility.png")
    print(_markdown(summaries))
    print(f"[sweep] table.md, table.json and privacy_utility.png in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
