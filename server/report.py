"""The privacy-budget report of one run directory: privacy.json, privacy.png and report.html.

It follows docs/design.md §4: each unit is named with its ε, δ, accountant (and library version),
q, σ, rounds/steps and sampling scheme, and ε is claimed only for a unit the privacy ledger shows
was on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from server.report_page import fmt, page, plot, table
from shared.baselines import POPULARITY
from shared.beyond_accuracy import BEYOND_ACCURACY
from shared.data.summary import DATA_SUMMARY_FILE
from shared.records import (
    BEYOND_ACCURACY_FILE,
    CONFIG_FILE,
    InteractionLevel,
    LedgerEntry,
    RoundRecord,
    RunFileError,
    UserLevel,
    read_ledger,
    read_rounds,
)
from shared.wire import EVAL_METRICS

INTERACTION_UNIT = "one interaction (one rating) of one device"
USER_UNIT = "all interactions of one user"
OUTPUTS = ("privacy.json", "privacy.png", "report.html")
UNIT_KEYS = ("interaction_level", "user_level")
Ledger = list[tuple[str, LedgerEntry]]  # ("file:line", entry), so later checks can name the line
Row = tuple[str, int, Any]  # (file:line, round, the unit's ledger record)

CAVEATS = {
    "normalize": "Opacus 1.0-1.6 divides the noisy gradient sum by the expected batch size, which "
    "depends on how many interactions a device holds, while its accountant analyses the plain "
    "sum (opacus issue #819); tiny datasets leak their size (opacus issue #571). Devices here "
    "hold 20-700 interactions, so the interaction-level ε may understate the leakage.",
    "rounded": "Each device rounds its ε and σ before sending them and sends nothing else "
    "computed from its data (weight 1, no training loss: an example count would change with one "
    "interaction); the ledger keeps only the min, median and max over the devices that trained "
    "in a round.",
    "negatives": "Training negatives are sampled from items outside the device's positives, so one "
    "interaction also shapes its negatives: the privacy unit is the interaction together with "
    "its sampled negatives.",
    "embedding": "The private user embedding is trained inside the same DP-SGD steps (clipped and "
    "noised too): a non-private update of it would leak into later item updates.",
    "pooled": 'Pooled interaction-level DP (dp-interaction-mode = "pooled"): each round is one '
    "DP-SGD step over the cohort's pooled interactions. Every device Poisson-samples its "
    "interactions at the run's rate (the same q for every device, so neither q nor ε reveals a "
    "device's size), clips each one's gradient (global and private parameters jointly) and "
    "sends the sum of the global part; the server adds N(0, (σC)²) once to the cohort's sum, "
    "and each device adds the same noise to its private part before stepping its embedding. The "
    "ε holds against whoever sees the released models, assuming the server adds the noise it "
    "announces; NOT against the server, which sees each device's un-noised sum (under SecAgg+, "
    "the cohort's exact sum).",
    "per_device": "Interaction-level ε is per device (each device has its own accountant and its "
    "ε grows with every round it trains); it is not a bound for the whole population.",
    "running_max": "The interaction-level ε max fell from {a} (round {r1}) to {b} (round {r2}) "
    "because a ledger line covers only the devices that trained that round: the max reported "
    "is the running max over rounds; median and min cover only the devices of round {last}.",
    "group": "Only interaction-level DP was on: a user's whole history is protected only by group "
    "privacy, which weakens with the number of interactions the user holds.",
    "trust": "User-level DP (DP-FedAvg, McMahan et al. 2018) protects against anyone who sees the "
    "released global model, not against the server, which sees the clipped updates (or with "
    "SecAgg, their un-noised sum): it is central DP with a trusted aggregator.",
    "adaptive": "The clip norm S adapted every round (Andrew et al. 2021): from {first} to {last} "
    "(ceiling {ceiling}), towards the {quantile} quantile of the devices' update norms. Each "
    "round released the fraction of devices within S, noised with std {sigma} on the count "
    "(under SecAgg+ summed inside the masked sum, never one device's bit); the same ε covers "
    "it: the accountant composes the update noise (multiplier {zd}) and the count as one "
    "Gaussian of multiplier {z}.",
    "adaptive_devices": "The clip norm S adapted every round (Andrew et al. 2021): from {first} "
    "to {last} (ceiling {ceiling}), towards the {quantile} quantile of the devices' update "
    "norms. Each device sent its clip bit as one more coordinate of its noised integer vector, "
    "so the server unmasked only the cohort's count, already noised by the devices (std at "
    "least {sigma} with the fewest survivors; the server adds nothing), and released the "
    "fraction within S. The same ε covers it: each round is accounted as one Skellam mechanism "
    "of the (update, bit) vector at that round's S, whose Gaussian-equivalent multiplier is "
    "{z} (the update's share: {zd}).",
    "devices": 'User-level DP with device-added noise (dp-noise-source = "devices"): every '
    "device adds its share of Skellam noise (Agarwal, Kairouz, Liu 2021) to its clipped, "
    "quantized update before SecAgg+ masks it, and the server adds nothing. The ε holds against "
    "whoever sees the released models AND a semi-honest server, provided SecAgg+ holds (at "
    "least {m} devices of a round follow the protocol honestly, the server follows it too) and "
    "the devices follow the protocol; it assumes the devices' noise is secret (OS entropy). "
    "Each device adds enough for the sum of {m} survivors; the ε is computed from the noise the "
    "survivors actually added (fewest in one round: {s}). Accounted by the Skellam RDP bound "
    "(Theorem 3.5) under Poisson subsampling (Zhu & Wang 2019, Theorem 6).",
    "devices_shards": "This simulation ran on shards (cohort-size > 1): each simulated user "
    "added its own share exactly as its device would, but the server saw each shard's noised sum "
    "in the clear (no SecAgg+ across shards), so against the server this run shows the utility of "
    "the deployment's guarantee, not the guarantee itself; against the released models it holds.",
    "clamp": "Device noise can fail only by clamping a noised coordinate into SecAgg+'s range: "
    "{n} coordinates were clamped; the plan bounds the chance of any clamp over the run by {p}, "
    "which adds {d} to δ.",
    "poisson": "Clients are sampled by Poisson sampling (q = {q}) and the noisy sum is divided by "
    "a fixed denominator (the expected cohort, {k}), which is what the {acc} accountant assumes.",
    "not_poisson": "{unit} sampling is recorded as '{s}', not Poisson: the {acc} accountant "
    "assumes Poisson sampling, so the ε shown does not hold as stated.",
    "dropouts": "Of {m} sampled clients, {n} sent no usable update (dropped, failed or out of "
    "budget); replies rejected by validation: {r}. Neither changes the accounting: the sampling "
    "happened and the fixed denominator is kept.",
    "skipped": "{n} round(s) were skipped ({why}); each still counts as a composed round in the "
    "user-level ε (conservative).",
    "user_decrease": "The ledger's user-level ε fell between rounds {r1} and {r2}, which an "
    "accountant cannot do: the ledger is inconsistent; the largest recorded ε is reported.",
    "mismatch": "config.json turns {unit} DP on but the privacy ledger has no enabled record of "
    "it: no ε is claimed for it.",
    "over_cap": "The final {unit} ε ({eps}) exceeds its cap ({cap}): the cap was checked only "
    "after the round that crossed it, so the cap is not a bound on the ε reached.",
    "reproducible": "This run drew its DP noise and DP sampling from the run's seed "
    "(dp-reproducible-noise, for research simulations that must repeat exactly): anyone who "
    "knows the seed (it is in config.json) can replay the noise and remove it, so the ε above "
    "holds only against whoever does not know the seed. Deployments keep it off.",
    "stopped": "The run stopped early after round {r}: {why}.",
    "no_dp": "No differential privacy was on in this run: no ε is claimed, and the server sees "
    "each device's individual update.",
    "evaluation": "Federated evaluation is not covered by DP: each evaluated device sends its own "
    "hit/miss and NDCG of its held-out item (and its loss) in plaintext; the ε above covers "
    "training "
    "only. Before ranking, a device may re-fit its private embedding on its own data "
    "(personalize-epochs); that re-fit is not kept and never reaches an update.",
}


class ReportError(Exception):
    """A run directory the report cannot be built from; the message names the file and line."""


def _or(value: Any, default: Any) -> Any:
    """A ledger field, or the config's value when the row does not have it (older rows)."""
    return default if value is None else value


def _load(run_dir: Path) -> tuple[dict[str, Any], list[RoundRecord], Ledger]:
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: run directory not found")
    path = run_dir / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ReportError(f"{path}: not found (not a run directory?)") from err
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}:{err.lineno}: malformed JSON: {err.msg}") from err
    if not isinstance(config, dict):
        raise ReportError(f"{path}:1: expected a JSON object")
    try:  # the typed readers check every row and name the file and line of a bad one
        return config, read_rounds(run_dir), read_ledger(run_dir)
    except RunFileError as err:
        raise ReportError(str(err)) from err


def _unit_rows(ledger: Ledger, key: str) -> list[Row]:
    """The ledger lines on which this unit was on."""
    return [(where, e.round, getattr(e, key)) for where, e in ledger if getattr(e, key).enabled]


def _common(unit: InteractionLevel | UserLevel, name: str, caveats: list[str]) -> tuple[str, bool]:
    """Accountant name and whether sampling is Poisson, the only scheme the accountants analyse."""
    acc, scheme = str(unit.accountant or "?").upper(), str(unit.sampling)
    if scheme.lower() != "poisson":
        caveats.append(CAVEATS["not_poisson"].format(unit=name, s=scheme, acc=acc))
    return acc, scheme.lower() == "poisson"


def _enabled_rows(
    config: dict, ledger: Ledger, key: str, flag: str, caveats: list[str]
) -> list[Row]:
    """The unit's ledger rows; a unit the config turned on but the ledger never saw is flagged."""
    rows = _unit_rows(ledger, key)
    if not rows and config.get(flag):
        caveats.append(CAVEATS["mismatch"].format(unit=key.replace("_", "-")))
    return rows


def _interaction(config: dict, ledger: Ledger, caveats: list[str]) -> dict[str, Any]:
    rows = _enabled_rows(config, ledger, "interaction_level", "dp-interaction", caveats)
    if not rows:
        return {"enabled": False, "unit": INTERACTION_UNIT}
    last = rows[-1][2]
    acc, poisson = _common(last, "Interaction-level", caveats)
    mode = last.mode or "local-epochs"  # older ledgers: local DP-SGD epochs
    source = last.noise_source or "device-local"
    first = ("pooled",) if mode == "pooled" else ("normalize",)
    caveats += [CAVEATS[k] for k in (*first, "rounded", "negatives", "embedding", "per_device")]
    # Only the devices that trained in a round report, so a round's max can fall: keep the max.
    reported = [(r, u) for _, r, u in rows if u.epsilon_max is not None]
    maxes = [u.epsilon_max for _, u in reported]
    eps_max = max(maxes, default=None)
    stats_round, stats = reported[-1] if reported else (None, InteractionLevel())
    drop = next((i for i in range(1, len(maxes)) if maxes[i] < maxes[i - 1]), None)
    sigma_rows = [u for _, _, u in rows if u.noise_multiplier_median is not None]
    if drop is not None:
        a, b, r1, r2 = maxes[drop - 1], maxes[drop], reported[drop - 1][0], reported[drop][0]
        caveats.append(CAVEATS["running_max"].format(a=a, r1=r1, b=b, r2=r2, last=stats_round))
    return {
        "enabled": True,
        "unit": INTERACTION_UNIT,
        "mode": mode,
        "noise_source": source,  # device-local: each device noises its own DP-SGD steps
        "holds_against": "released models (the server adds the noise: trusted)"
        if source == "server"
        else "released models and the server (each device noises its own updates)",
        "epsilon_max": eps_max,
        "epsilon_max_round": reported[maxes.index(eps_max)][0] if maxes else None,
        "epsilon_median": stats.epsilon_median,
        "epsilon_min": stats.epsilon_min,
        "stats_round": stats_round,  # median and min are over the devices of this round only
        "devices_reporting": stats.devices_reporting,
        "delta": _or(last.delta, config.get("dp-delta")),
        "accountant": acc,
        "noise_multiplier": last.noise_multiplier,  # None: calibrated to the target ε
        # With a target ε each device's σ depends on its size: the range over the whole run.
        "noise_multiplier_min": min((u.noise_multiplier_min for u in sigma_rows), default=None),
        "noise_multiplier_median": sigma_rows[-1].noise_multiplier_median if sigma_rows else None,
        "noise_multiplier_max": max((u.noise_multiplier_max for u in sigma_rows), default=None),
        "target_epsilon": last.target_epsilon,
        "max_grad_norm": last.max_grad_norm,
        # q and steps depend on each device's data size, which is not sent: only the rule is.
        "sample_rate_rule": last.sample_rate_rule,
        "steps_rule": last.steps_rule,
        "rounds_accounted": len(rows),
        "epsilon_cap": _or(last.epsilon_cap, config.get("dp-epsilon-cap")) or None,
        # The ledger's count is cumulative (distinct devices that declined so far).
        "devices_at_cap": max(int(u.devices_at_cap or 0) for _, _, u in rows),
        "budget_exhausted": max(int(u.budget_exhausted or 0) for _, _, u in rows),
        "sampling": "Poisson (Opacus)" if poisson else last.sampling,
    }


def _user(config: dict, ledger: Ledger, rejected: int, caveats: list[str]) -> dict[str, Any]:
    rows = _enabled_rows(config, ledger, "user_level", "dp-user", caveats)
    if not rows:
        return {"enabled": False, "unit": USER_UNIT}
    last = rows[-1][2]
    acc, poisson = _common(last, "User-level", caveats)
    eps = [(r, u.epsilon) for _, r, u in rows if u.epsilon is not None]
    drop = next((i for i in range(1, len(eps)) if eps[i][1] < eps[i - 1][1]), None)
    if drop is not None:  # an accountant only composes upwards: flag it, claim the larger value
        caveats.append(CAVEATS["user_decrease"].format(r1=eps[drop - 1][0], r2=eps[drop][0]))
    skipped = [str(u.status) for _, _, u in rows if str(u.status).startswith("skip")]
    sampled = sum(int(u.sampled or 0) for _, _, u in rows)
    replied = sum(int(u.replied or 0) for _, _, u in rows)
    source = last.noise_source or "server"  # older ledgers: the server added it
    devices = {}
    if source == "devices":
        survivors = [int(u.survivors) for _, _, u in rows if u.survivors is not None]
        clamped = sum(int(u.noise_clamped or 0) for _, _, u in rows)
        caveats.append(
            CAVEATS["devices"].format(m=last.min_survivors, s=min(survivors, default="none"))
        )
        if int(config.get("cohort-size", 1) or 1) > 1:
            caveats.append(CAVEATS["devices_shards"])
        caveats.append(
            CAVEATS["clamp"].format(
                n=clamped, p=fmt(last.clamp_probability), d=fmt(last.clamp_delta)
            )
        )
        devices = {
            "mu_device": last.mu_device,
            "min_survivors": last.min_survivors,
            "survivors_min": min(survivors, default=None),
            "noise_clamped": clamped,
            "clamp_probability": last.clamp_probability,
            "clamp_delta": last.clamp_delta,  # add to δ
        }
    else:
        caveats.append(CAVEATS["trust"])
    adaptive = _adaptive_clip(config, rows, last, caveats)
    if poisson:
        q, k = fmt(last.sample_rate), fmt(last.expected_cohort)
        caveats.append(CAVEATS["poisson"].format(q=q, k=k, acc=acc))
    if replied < sampled or rejected:
        caveats.append(CAVEATS["dropouts"].format(n=sampled - replied, r=rejected, m=sampled))
    if skipped:
        why = "; ".join(sorted({s.partition(":")[2].strip() or s for s in skipped}))
        caveats.append(CAVEATS["skipped"].format(n=len(skipped), why=why))
    keys = ("noise_multiplier", "clip_norm", "noise_stddev", "sample_rate", "population")
    return {
        "enabled": True,
        "unit": USER_UNIT,
        "noise_source": source,
        "holds_against": "released models and a semi-honest server (SecAgg+ holds)"
        if source == "devices"
        else "released models (the server is trusted)",
        **devices,
        **adaptive,
        "epsilon": max(e for _, e in eps) if eps else None,
        "delta": _or(last.delta, config.get("dp-user-delta")),
        "accountant": acc,
        **{k: getattr(last, k) for k in (*keys, "expected_cohort", "rounds_accounted")},
        "rounds_skipped": len(skipped),
        "clients_sampled": sampled,
        "clients_replied": replied,
        "epsilon_cap": _or(last.epsilon_cap, config.get("dp-user-epsilon-cap")) or None,
        "sampling": "Poisson, fixed denominator" if poisson else last.sampling,
    }


def _adaptive_clip(config: dict, rows, last, caveats: list[str]) -> dict[str, Any]:
    """Adaptive clipping's summary (empty for a fixed S): where S started and ended."""
    if not last.clip_adaptive:
        return {}
    clips = [u.clip_norm for _, _, u in rows if u.clip_norm is not None]
    ceiling = config.get("dp-user-clip-norm-max") or 10 * (clips[0] if clips else 0)
    devices = last.noise_source == "devices"
    caveats.append(
        CAVEATS["adaptive_devices" if devices else "adaptive"].format(
            first=fmt(clips[0]),
            last=fmt(last.next_clip_norm),
            ceiling=fmt(ceiling),
            quantile=fmt(last.clip_quantile),
            sigma=fmt(last.clip_count_stddev),
            zd=fmt(last.update_noise_multiplier),
            z=fmt(last.noise_multiplier),
        )
    )
    return {
        "clip_adaptive": True,
        "clip_norm_first": clips[0] if clips else None,
        "clip_norm_next": last.next_clip_norm,
        "clip_quantile": last.clip_quantile,
        "clip_count_stddev": last.clip_count_stddev,
        "update_noise_multiplier": last.update_noise_multiplier,
    }


def _summarize(run_dir: Path, config: dict, metrics: list[RoundRecord], ledger: Ledger) -> dict:
    caveats: list[str] = []
    stop = next(((e.round, e.stopped) for _, e in ledger if e.stopped is not None), None)
    rejected = sum(int(r.fit_rejected or 0) for r in metrics)
    interaction, user = (
        _interaction(config, ledger, caveats),
        _user(config, ledger, rejected, caveats),
    )
    if interaction["enabled"] and not user["enabled"]:
        caveats.append(CAVEATS["group"])
    if not interaction["enabled"] and not user["enabled"]:
        caveats.append(CAVEATS["no_dp"])
    elif config.get("dp-reproducible-noise") is True:
        caveats.append(CAVEATS["reproducible"])
    for unit, eps in ((interaction, "epsilon_max"), (user, "epsilon")):
        if unit.get("epsilon_cap") and (unit.get(eps) or 0) > unit["epsilon_cap"]:
            name = "interaction-level" if unit is interaction else "user-level"
            caveats.append(
                CAVEATS["over_cap"].format(
                    unit=name, eps=fmt(unit[eps]), cap=fmt(unit["epsilon_cap"])
                )
            )
    if stop:
        caveats.append(CAVEATS["stopped"].format(r=stop[0], why=stop[1]))
    evals = [r for r in metrics if r.evaluated]
    if evals and (interaction["enabled"] or user["enabled"]):
        caveats.append(CAVEATS["evaluation"])
    cohort = config.get("clients-per-round") or None
    versions = next(
        (dict(e.library_versions) for _, e in ledger[::-1] if e.library_versions is not None), {}
    )
    run = {"name": run_dir.resolve().name, "rounds_planned": config.get("num-server-rounds")}
    run |= {k: config.get(k) for k in ("kind", "model", "dataset", "seed")}
    return {
        "run": run
        | {
            "rounds_completed": max((r.round for r in metrics), default=0),
            "clients_per_round": cohort,
            "fraction_fit": None if cohort else config.get("fraction-fit"),
            "local_epochs": config.get("local-epochs"),
            "batch_size": config.get("batch-size"),
            "stopped": stop[1] if stop else None,
        },
        "interaction_level": interaction,
        "user_level": user,
        "utility": {"round": evals[-1].round if evals else None}
        | {k: evals[-1].metric(k) if evals else None for k in EVAL_METRICS + BEYOND_ACCURACY}
        | {POPULARITY: popularity_figures(run_dir)},
        "library_versions": versions,
        "caveats": caveats,
    }


def popularity_figures(run_dir: Path) -> dict[str, float] | None:
    """The popularity ranking's figures on the run's split, the line beside the model's:
    accuracy, coverage, novelty and Gini from ``data.json``, diversity (which needs a model's
    item space) from ``beyond_accuracy.json``; None for a run without the pooled data."""
    figures: dict[str, float] = {}
    for name, pick in ((DATA_SUMMARY_FILE, _baseline), (BEYOND_ACCURACY_FILE, _popularity)):
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            found = pick(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise ReportError(f"{path}:{err.lineno}: malformed JSON: {err.msg}") from err
        wanted = EVAL_METRICS + BEYOND_ACCURACY
        figures |= {k: v for k, v in found.items() if k in wanted and isinstance(v, int | float)}
    return figures or None


def _baseline(summary: Any) -> dict[str, Any]:
    baselines = summary.get("baselines") if isinstance(summary, dict) else None
    found = baselines.get(POPULARITY) if isinstance(baselines, dict) else None
    return found if isinstance(found, dict) else {}


def _popularity(figures: Any) -> dict[str, Any]:
    found = figures.get(POPULARITY) if isinstance(figures, dict) else None
    return found if isinstance(found, dict) else {}


def build_report(run_dir: Path) -> dict[str, Any]:
    """The privacy summary of a run directory (raises ReportError naming the bad file and line)."""
    run_dir = Path(run_dir)
    return _summarize(run_dir, *_load(run_dir))


def write_report(run_dir: Path) -> dict[str, Any]:
    """Writes privacy.json, privacy.png and report.html; all are built before any is written."""
    run_dir = Path(run_dir)
    config, metrics, ledger = _load(run_dir)
    report = _summarize(run_dir, config, metrics, ledger)
    series = [[(r, u) for _, r, u in _unit_rows(ledger, k)] for k in UNIT_KEYS]
    png = plot(report, *series)
    html_page = page(report, png)
    (run_dir / "privacy.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (run_dir / "privacy.png").write_bytes(png)
    (run_dir / "report.html").write_text(html_page, encoding="utf-8")
    return report


def main(run_dir: str | Path) -> int:
    """`confide report RUN_DIR`: prints the summary table and writes the report; 2 if unreadable."""
    try:
        report = write_report(Path(run_dir))
    except (ReportError, OSError, ValueError) as err:  # ValueError: also undecodable text
        print(f"confide report: error: {err}", file=sys.stderr)
        return 2
    run = report["run"]
    print(
        f"Privacy report: {run['name']} ({run['model']}, {run['dataset']}, "
        f"{run['rounds_completed']} rounds; stopped early: {run['stopped'] or 'no'})"
    )
    for key, title in (
        ("interaction_level", "Interaction-level DP"),
        ("user_level", "User-level DP"),
    ):
        rows = table(report, key)
        width = max(len(label) for label, _ in rows)
        print(f"\n{title}\n" + "\n".join(f"  {label:<{width}}  {value}" for label, value in rows))
    print(f"\n{len(report['caveats'])} caveats (see report.html); wrote {', '.join(OUTPUTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
