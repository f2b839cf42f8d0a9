"""The poisoning audit: how far a few malicious devices push one item, and what stops them.

``confide audit poisoning --config FILE --out DIR`` trains one federated run per row, each in
``DIR/<row>`` (a finished row is reused, so an interrupted audit continues), and writes
``DIR/poisoning.json`` and ``DIR/poisoning.md``. In every row the same devices
(``audit-poison-fraction`` of them, 1% by default) and the same target item are chosen from the
run seed (:mod:`shared.poisoning`); in the no-attack rows they train honestly. The attack's
effect is the target's exposure in the OTHER users' top-10 lists at the last evaluation (ER@10:
the share of lists that show it; attackers keep their own lists to themselves), next to HR@10.

Rows (docs/design.md §4, "Poisoning audit"):

- ``no-attack``: the baseline (item-sum, no defence; the attackers train honestly);
- ``itemsum`` / ``fedavg``: the attack under plain item-sum and plain FedAvg (FedAvg's HR@10
  differs from item-sum's without any attack: compare its ER@10, not its HR drop);
- ``norm-bound``: item-sum, the server rejecting updates longer than ``--norm-bound`` (the
  attacker, who reads the config, stays just under it);
- ``user-dp``: item-sum under user-level DP at ε ``--user-epsilon`` (each update clipped to S
  by the server, Gaussian noise);
- ``row-clip``: item-sum with the item-row-clip defence (each device's change to each item row
  at most ``--row-clip`` times the round's median row change);
- ``row-clip-no-attack``: the defence's own cost, without the attack.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config import RunConfig, resolve_config
from shared.records import MODEL_FILE, read_rounds
from simulations.research.tables import cell

NO_ATTACK = "no-attack"
RESULT_JSON, RESULT_MD = "poisoning.json", "poisoning.md"


@dataclass(frozen=True)
class Row:
    name: str
    attack: bool
    defence: str
    settings: dict[str, Any] = field(default_factory=dict)


def audit_rows(norm_bound: float, row_clip: float, user_epsilon: float) -> list[Row]:
    itemsum = {"strategy": "itemsum"}
    return [
        Row(NO_ATTACK, False, "none", itemsum),
        Row("itemsum", True, "none", itemsum),
        Row("fedavg", True, "none", {"strategy": "fedavg"}),
        Row(
            "norm-bound",
            True,
            f"update norm <= {norm_bound:g}",
            itemsum | {"max-update-norm": norm_bound},
        ),
        Row(
            "user-dp",
            True,
            f"user-level DP, ε {user_epsilon:g}",
            itemsum
            | {
                "dp-user": "true",
                "dp-user-target-epsilon": user_epsilon,
                "dp-user-epsilon-cap": user_epsilon,
                "dp-user-delta": 1e-5,
            },
        ),
        Row("row-clip", True, f"item-row-clip {row_clip:g}", itemsum | {"item-row-clip": row_clip}),
        Row(
            "row-clip-no-attack",
            False,
            f"item-row-clip {row_clip:g}",
            itemsum | {"item-row-clip": row_clip},
        ),
    ]


def run_poisoning_audit(
    config_file: Path | None,
    settings: list[str],
    out: Path,
    rows: list[Row],
    run=None,
) -> list[dict[str, Any]]:
    """Train every row not finished yet, then write the table; returns its rows.

    ``run(config, changed) -> exit code`` trains one row (default: a Confide simulation).
    """
    if run is None:
        from simulations.simulate import run_simulation as run
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for row in rows:
        row_dir = out / row.name
        if _finished(row_dir):
            print(f"[poisoning] {row.name}: finished already, reusing {row_dir}", flush=True)
            continue
        config, changed = row_config(config_file, settings, row, row_dir)
        print(f"[poisoning] {row.name}: attack {row.attack}, defence {row.defence}", flush=True)
        code = run(config, changed)
        if code:
            raise RuntimeError(f"row {row.name} failed (exit code {code}): see its log above")
    table = summarize(out, [r for r in rows if _finished(out / r.name)])
    (out / RESULT_JSON).write_text(json.dumps(table, indent=2) + "\n")
    (out / RESULT_MD).write_text(markdown(table))
    print(markdown(table))
    return table


def row_config(
    config_file: Path | None, settings: list[str], row: Row, row_dir: Path
) -> tuple[RunConfig, dict[str, Any]]:
    """The row's config: the audit's settings, then the row's own, then its boost."""
    own = [f"{k}={v}" for k, v in row.settings.items()]
    boost = [] if row.attack else ["audit-poison-boost=0.0"]
    config, changed = resolve_config(config_file, [*settings, *own, *boost], str(row_dir))
    if not config.audit_poison_fraction:
        raise ValueError(
            "the poisoning audit needs attackers: set audit-poison-fraction (e.g. --fraction 0.01)"
        )
    return config, changed


def _finished(run_dir: Path) -> bool:
    try:
        records = read_rounds(run_dir)
    except (OSError, ValueError):
        return False
    return (run_dir / MODEL_FILE).exists() and any(r.evaluated for r in records)


def summarize(out: Path, rows: list[Row]) -> list[dict[str, Any]]:
    """One entry per finished row: its last evaluation and what the defences did."""
    table = []
    for row in rows:
        records = read_rounds(out / row.name)
        last = [r for r in records if r.evaluated][-1]
        table.append(
            {
                "row": row.name,
                "attack": row.attack,
                "defence": row.defence,
                "round": last.round,
                "er10": last.target_exposure10,
                "hr10": last.hr10,
                "ndcg10": last.ndcg10,
                "coverage10": last.coverage10,
                "fit_rejected": sum(r.fit_rejected or 0 for r in records),
                "item_rows_clipped": sum(r.item_rows_clipped or 0 for r in records),
            }
        )
    base = next((t for t in table if t["row"] == NO_ATTACK), None)
    for entry in table:
        if base is not None:
            entry["hr10_drop"] = base["hr10"] - entry["hr10"]
            entry["er10_over_no_attack"] = _ratio(entry["er10"], base["er10"])
    return table


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return value / base


def markdown(table: list[dict[str, Any]]) -> str:
    head = (
        "| row | attack | defence | ER@10 | ×no-attack | HR@10 | HR drop | rejected | rows "
        "clipped |\n|---|---|---|---|---|---|---|---|---|\n"
    )

    lines = [
        f"| {t['row']} | {'yes' if t['attack'] else 'no'} | {t['defence']} | "
        f"{cell(t['er10'], 4)} | "
        f"{cell(t.get('er10_over_no_attack'), 1)} | {cell(t['hr10'], 4)} | "
        f"{cell(t.get('hr10_drop'), 4)} | {t['fit_rejected']} | {t['item_rows_clipped']} |"
        for t in table
    ]
    return head + "\n".join(lines) + "\n"
