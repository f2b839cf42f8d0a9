"""The privacy report as a page: the unit tables, the ε plot and the self-contained HTML.

:mod:`server.report` builds the summary (what may be claimed); this module only renders it.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from shared.beyond_accuracy import COVERAGE10, EXPOSURE_GINI10, NOVELTY10
from shared.records import InteractionLevel, UserLevel
from shared.wire import DIVERSITY10, FULL_HR10, FULL_NDCG10, HR10, NDCG10

Series = list[tuple[int, Any]]  # (round, the unit's ledger record) on the rounds it was on

PROTECTS = {
    "interaction_level": "Whoever sees what a device sends (its updates, and every global model "
    "built from them) can hardly tell whether any single rating of that device, with the "
    "negatives sampled for it, was in its training data: bounded by ε = {eps}, δ = {delta} per "
    "device. Each device keeps its own budget; the ε shown is the largest over all devices.",
    "interaction_level_pooled": "Whoever sees the released global models can hardly tell "
    "whether any single rating of a device, with the negatives sampled for it, was in its "
    "training data: bounded by ε = {eps}, δ = {delta} per device. The server is trusted: it "
    "sees each device's un-noised gradient sum and adds the noise itself. Each device keeps its "
    "own budget; the ε shown is the largest over all devices.",
    "user_level": "Whoever sees the released global model can hardly tell whether one user took "
    "part at all, with all of their interactions: bounded by ε = {eps}, δ = {delta}. The server "
    "is trusted: it sees the clipped updates before the noise is added.",
}
# (label, value) templates per unit; fields are formatted by _fmt (None -> "—").
TABLES = {
    "interaction_level": [
        ("Unit", "{unit}"),
        ("Mode / noise added by", "{mode} / {noise_source}"),
        (
            "ε (max over devices, running max)",
            "{epsilon_max} (reached in round {epsilon_max_round})",
        ),
        ("ε median / min (devices of round {stats_round})", "{epsilon_median} / {epsilon_min}"),
        ("δ", "{delta}"),
        ("Accountant", "{accountant} (Opacus {opacus})"),
        ("q (per-device sample rate)", "{sample_rate_rule}"),
        ("σ (noise multiplier)", "{noise_multiplier}"),
        (
            "σ per device: min / median (last round) / max",
            "{noise_multiplier_min} / {noise_multiplier_median} / {noise_multiplier_max}",
        ),
        ("Target ε (σ calibrated on each device)", "{target_epsilon}"),
        ("C (max grad norm)", "{max_grad_norm}"),
        (
            "Rounds with DP training / DP-SGD steps per round",
            "{rounds_accounted} / {steps_rule}",
        ),
        ("Sampling", "{sampling}"),
        (
            "ε cap / devices at cap (distinct, run) / declined (max in a round)",
            "{epsilon_cap} / {devices_at_cap} / {budget_exhausted}",
        ),
    ],
    "user_level": [
        ("Unit", "{unit}"),
        ("ε", "{epsilon}"),
        ("δ", "{delta}"),
        ("Accountant", "{accountant} (Opacus {opacus})"),
        ("q (client sample rate)", "{sample_rate}"),
        ("σ (noise multiplier z; noise stddev z·S/K)", "{noise_multiplier} ({noise_stddev})"),
        ("S (update clip norm)", "{clip_norm}"),
        ("Population N / expected cohort K", "{population} / {expected_cohort}"),
        ("Rounds accounted / skipped", "{rounds_accounted} / {rounds_skipped}"),
        ("Clients sampled / replied (all rounds)", "{clients_sampled} / {clients_replied}"),
        ("Sampling", "{sampling}"),
        ("ε cap", "{epsilon_cap}"),
    ],
}


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class Formatted(dict):
    def __getitem__(self, key: str) -> str:
        return fmt(self.get(key))


def table(report: dict[str, Any], key: str) -> list[tuple[str, str]]:
    unit = Formatted(report[key], opacus=report["library_versions"].get("opacus"))
    if unit["enabled"] != "yes":
        return [("Unit", unit["unit"]), ("Enabled", "no: no ε claimed")]
    return [(label.format_map(unit), value.format_map(unit)) for label, value in TABLES[key]]


def plot(report: dict[str, Any], inter_rows: Series, user_rows: Series) -> bytes:
    """ε over rounds: interaction-level min-max band, median, running max; the user-level line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(9, 3.6))
    inter: list[tuple[int, InteractionLevel]] = [(r, u) for r, u in inter_rows if u.epsilon_max]
    if inter:
        x, hi = [r for r, _ in inter], [u.epsilon_max for _, u in inter]
        lo = [u.epsilon_min or 0 for _, u in inter]
        ax.fill_between(x, lo, hi, color="C0", alpha=0.2, label="interaction-level min–max")
        mid = [u.epsilon_median for _, u in inter]
        ax.plot(x, mid, "o:", color="C0", ms=3, label="interaction-level median")
        running = [max(hi[: i + 1]) for i in range(len(hi))]
        ax.plot(x, running, "-", color="C0", lw=2, label="interaction-level max (running)")
    user = [(r, u.epsilon) for r, u in user_rows if isinstance(u, UserLevel) and u.epsilon]
    if user:
        ax.plot(*zip(*user, strict=True), "s-", color="C3", ms=3, label="user-level")
    for key, color in (("interaction_level", "C0"), ("user_level", "C3")):
        if report[key].get("epsilon_cap"):
            cap_label = f"{key.replace('_', '-')} cap"
            ax.axhline(report[key]["epsilon_cap"], ls="--", color=color, lw=1, label=cap_label)
    if not inter and not user:
        ax.text(0.5, 0.5, "no DP in this run: no ε claimed", ha="center", transform=ax.transAxes)
    ax.set(xlabel="round", ylabel="ε (cumulative)")
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


STYLE = """body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}h1{font-size:1.5em;overflow-wrap:anywhere}h2{font-size:1.2em;margin-top:1.6em;
border-bottom:1px solid #ddd}table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;
padding:4px 8px;text-align:left;vertical-align:top}th{background:#f4f4f4;font-weight:600}
.unit th{width:40%}.meta{color:#555}img{max-width:100%}li{margin:.3em 0}"""


def page(report: dict[str, Any], png: bytes) -> str:
    e, run, util = html.escape, report["run"], report["utility"]
    cohort = run["clients_per_round"] or f"fraction {fmt(run['fraction_fit'])}"
    meta = {"model": run["model"], "dataset": run["dataset"], "kind": run["kind"]}
    meta |= {"rounds": f"{run['rounds_completed']} of {fmt(run['rounds_planned'])}"}
    meta |= {"clients per round": cohort, "stopped early": run["stopped"] or "no"}
    name = e(str(run["name"]))
    out = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Privacy report: "
        f"{name}</title><style>{STYLE}</style></head><body><h1>Privacy report: {name}</h1>",
        "<p class='meta'>" + " · ".join(e(f"{k}: {fmt(v)}") for k, v in meta.items()) + "</p>",
    ]
    for key, title in (
        ("interaction_level", "Interaction-level DP"),
        ("user_level", "User-level DP"),
    ):
        unit = Formatted(report[key])
        eps = unit["epsilon_max" if key == "interaction_level" else "epsilon"]
        pooled = key == "interaction_level" and report[key].get("mode") == "pooled"
        what = PROTECTS[f"{key}_pooled" if pooled else key].format(eps=eps, delta=unit["delta"])
        if not report[key]["enabled"]:
            what = "Off in this run: no guarantee for this unit, and no ε is claimed."
        rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in table(report, key))
        out.append(
            f"<h2>{title}</h2><p><b>What is protected.</b> "
            f"{e(what)}</p><table class='unit'>{rows}</table>"
        )
    # The plot sits beside the tables it illustrates, above the longer caveats.
    data = base64.b64encode(png).decode("ascii")
    out.append(
        f"<h2>ε over rounds</h2><img alt='ε over rounds' src='data:image/png;base64,{data}'>"
    )
    out.append("<h2>Caveats</h2><ul>" + "".join(f"<li>{e(c)}</li>" for c in report["caveats"]))
    out.append("</ul>")
    if util["round"] is None:
        out.append("<h2>Utility reached</h2><p>No evaluation round was recorded.</p>")
    else:
        cells = "".join(
            f"<tr><td>{name}</td><td>{fmt(util[k])}</td><td>{fmt(util[full])}</td></tr>"
            for name, k, full in (("HR@10", HR10, FULL_HR10), ("NDCG@10", NDCG10, FULL_NDCG10))
        )
        out.append(
            f"<h2>Utility reached (round {util['round']})</h2><table><tr><th>metric</th>"
            f"<th>sampled (1 + 99 negatives)</th><th>full ranking</th></tr>{cells}</table>"
        )
        out.append(beyond_accuracy_table(util))
    versions = ", ".join(f"{k} {v}" for k, v in report["library_versions"].items())
    out.append(
        f"<p class='meta'>Library versions: {e(versions or 'not recorded')}</p></body></html>\n"
    )
    return "\n".join(out)


BEYOND_ROWS = (
    ("HR@10 (sampled)", HR10),
    ("Catalogue coverage of the top-10 lists", COVERAGE10),
    ("Novelty (mean self-information, bits)", NOVELTY10),
    ("Intra-list diversity (1 − cos, final model's item tables)", DIVERSITY10),
    ("Exposure Gini (0 even, 1 all on few items)", EXPOSURE_GINI10),
)


def beyond_accuracy_table(util: dict[str, Any]) -> str:
    """The top-10 lists' figures, the model's beside the popularity ranking's (— where the run
    has none: a deployment has no pooled data for novelty or the popularity ranking)."""
    e = html.escape
    popularity = util.get("popularity") or {}
    cells = "".join(
        f"<tr><td>{e(name)}</td><td>{fmt(util.get(key))}</td><td>{fmt(popularity.get(key))}</td>"
        "</tr>"
        for name, key in BEYOND_ROWS
    )
    return (
        "<h2>Beyond accuracy (top-10 lists over unseen items)</h2><table><tr><th>figure</th>"
        f"<th>model</th><th>popularity ranking</th></tr>{cells}</table>"
    )
