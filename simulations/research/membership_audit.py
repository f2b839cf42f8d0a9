"""``confide audit membership``: an empirical lower bound on ε from one real training run.

Steinke, Nasr and Jagielski's one-run audit (NeurIPS 2023; statistics in
:mod:`shared.one_run_audit`, design in docs/design.md §4 "Membership audit"): the run's split
carries m canaries, each included with probability 1/2 (:mod:`shared.canaries`); the run is an
ordinary ``confide simulate`` run (Flower's simulation engine, :mod:`simulations.simulate`).
Afterwards an attacker scores every canary from what it sees, guesses "in" for the most and "out"
for the least confident, and the number of right guesses becomes a lower bound on ε at the
run's δ. A bound above the reported ε means the mechanism or its accounting is broken.

The attackers (white-box, from the run's released outputs):

- user level: the released (final) global model. For each canary the attacker refits a fresh
  private embedding on the canary's items with the global model frozen (as a device
  personalizes before ranking) and scores how well it then ranks them: the mean logit of the
  canary's items minus the mean logit of random other items. A model trained with the canary
  has item embeddings that fit the set together.
- interaction level: the most generous attacker, who holds the final global model AND the
  canary device's own final private embedding (both are outputs of the device's DP-SGD steps,
  docs/design.md §4): score = logit of the canary item minus the mean logit of random items
  the device never interacted with.

The guess fraction is fixed before any score exists: "in" for the top GUESS_FRACTION of the
scores and "out" for the bottom GUESS_FRACTION (the rest abstain).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client import training_round
from client.state import FileState
from shared.canaries import REFERENCE, Canaries, canaries_for
from shared.config import ConfigError, RunConfig
from shared.one_run_audit import CONFIDENCE, epsilon_lower_bound, guess_from_scores
from shared.records import DEVICES_DIR
from shared.saved_run import load_run
from shared.split import LeaveOneOut, UserData, base_split_for, sample_excluding
from shared.streams import Stream, generator

AUDIT_FILE = "audit.json"
TABLE_FILE = "audit.md"
RUN_SUBDIR = "run"
GUESS_FRACTION = 0.25  # "in" for the top quarter, "out" for the bottom quarter: half abstain
REFIT_EPOCHS = 30  # the user-level attacker's refit of a fresh private embedding
REFERENCE_ITEMS = 100  # random items a canary's logits are compared with
NO_DP_DELTA = 1e-5  # the δ at which a run without DP is audited


def run_membership_audit(
    config: RunConfig,
    changed: dict[str, Any],
    out_dir: Path,
    guess_fraction: float = GUESS_FRACTION,
) -> dict[str, Any]:
    """Train one run with canaries into ``out_dir/run``, then audit it (see :func:`audit_run`)."""
    from simulations.simulate import run_simulation

    if not config.audit_canaries:
        raise ConfigError(
            "the membership audit needs canaries: pass --canaries M (or set audit-canaries)"
        )
    _check_fraction(guess_fraction)
    run_dir = (out_dir / RUN_SUBDIR).resolve()
    config = config.replace(out_dir=str(run_dir))
    changed = changed | {"out-dir": str(run_dir)}
    code = run_simulation(config, changed)
    if code:
        raise RuntimeError(f"the audited run failed (exit code {code}): see its log above")
    return audit_run(run_dir, out_dir, guess_fraction)


def audit_run(
    run_dir: Path, out_dir: Path, guess_fraction: float = GUESS_FRACTION
) -> dict[str, Any]:
    """Score, guess and bound the canaries of a finished run; writes audit.json and audit.md."""
    torch.set_num_threads(1)
    started = time.monotonic()
    _check_fraction(guess_fraction)
    config, model = load_run(Path(run_dir))
    if not config.audit_canaries:
        raise ConfigError(f"{run_dir} was trained without canaries (audit-canaries = 0)")
    base = base_split_for(config)
    canaries = canaries_for(config, base)
    if canaries.unit == "user":
        scores = user_scores(config, base, canaries, model)
    else:
        scores = interaction_scores(config, base, canaries, model, Path(run_dir) / DEVICES_DIR)
    each = int(guess_fraction * canaries.count)
    guesses = guess_from_scores(scores, canaries.included, each, each)
    reported, delta = reported_epsilon(Path(run_dir), config)
    bound = epsilon_lower_bound(
        guesses.canaries, guesses.guesses, guesses.correct, delta, CONFIDENCE
    )
    included = canaries.included
    result = {
        "unit": canaries.unit,
        "attacker": ATTACKERS[canaries.unit],
        "epsilon_reported": reported,
        "epsilon_lower_bound": bound,
        "confidence": CONFIDENCE,
        "delta": delta,
        "canaries": guesses.canaries,
        "canaries_included": int(included.sum()),
        "canary_items": config.audit_canary_items if canaries.unit == "user" else 1,
        "guess_fraction": guess_fraction,
        "guesses": guesses.guesses,
        "correct": guesses.correct,
        "guessed_in": guesses.guessed_in,
        "guessed_out": guesses.guessed_out,
        "mean_score_included": float(np.mean(scores[included])) if included.any() else None,
        "mean_score_excluded": float(np.mean(scores[~included])) if (~included).any() else None,
        "run_dir": str(Path(run_dir).resolve()),
        "dp_interaction": config.dp_interaction,
        "dp_user": config.dp_user,
        "rounds": config.num_server_rounds,
        "seconds": round(time.monotonic() - started, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / AUDIT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    text = table(result)
    (out_dir / TABLE_FILE).write_text(text + "\n")
    print(text)
    print(f"[confide] membership audit written to {out_dir / AUDIT_FILE}")
    return result


ATTACKERS = {
    "user": "released final global model; a fresh private embedding refit on the canary's "
    f"items ({REFIT_EPOCHS} epochs, global frozen); score = mean logit of its items minus mean "
    f"logit of {REFERENCE_ITEMS} random other items",
    "interaction": "final global model and the canary device's own final private embedding; "
    f"score = logit of the canary item minus mean logit of {REFERENCE_ITEMS} random items the "
    "device never interacted with",
}


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction <= 0.5:
        raise ConfigError(f"--guess-fraction must be in (0, 0.5], got {fraction!r}")


def _reference(seed: int, index: int, num_items: int, excluded: np.ndarray) -> np.ndarray:
    rng = generator(seed, Stream.AUDIT_CANARIES, REFERENCE, index + 1)
    return sample_excluding(
        rng, num_items, excluded, min(REFERENCE_ITEMS, num_items - len(excluded))
    )


def user_scores(
    config: RunConfig, base: LeaveOneOut, canaries: Canaries, model: list[np.ndarray]
) -> np.ndarray:
    """The user-level attacker's score of every canary, from the final global model alone."""
    refit = config.replace(personalize_epochs=REFIT_EPOCHS)
    scores = np.empty(canaries.count)
    for i in range(canaries.count):
        items = canaries.items[i]
        attacker_id = base.num_users + i  # a fresh embedding, seeded alike for every canary
        data = UserData(base.num_items, items, int(canaries.heldout[i]), np.empty(0, np.int64))
        net = training_round.device_model(config, base.num_items, attacker_id, model, None)
        training_round.personalize(refit, net, data, attacker_id)
        scores[i] = _margin(net, items, _reference(config.seed, i, base.num_items, items))
    return scores


def interaction_scores(
    config: RunConfig,
    base: LeaveOneOut,
    canaries: Canaries,
    model: list[np.ndarray],
    devices_dir: Path,
) -> np.ndarray:
    """The interaction-level attacker's score of every canary: the device's own final model."""
    scores = np.empty(canaries.count)
    for i in range(canaries.count):
        user = int(canaries.device[i])
        private = FileState(devices_dir / f"user-{user}.npz").private_embedding()
        if private is None:
            raise FileNotFoundError(
                f"{devices_dir} has no state of device {user}: audit the run directory that "
                "confide audit membership (or confide simulate) wrote"
            )
        net = training_round.device_model(config, base.num_items, user, model, private)
        seen = np.concatenate(
            [base.user_train_items(user), [base.test_item[user]], canaries.items[i]]
        )
        scores[i] = _margin(
            net, canaries.items[i], _reference(config.seed, i, base.num_items, seen)
        )
    return scores


def _margin(net, items: np.ndarray, reference: np.ndarray) -> float:
    with torch.no_grad():
        logits = net.score_all_items(training_round.LOCAL_USER).numpy()
    return float(logits[items].mean() - logits[reference].mean())


def reported_epsilon(run_dir: Path, config: RunConfig) -> tuple[float | None, float]:
    """The ε the run's privacy report claims for the audited unit, and its δ (no DP: None)."""
    from server.report import build_report

    report = build_report(run_dir)
    if config.audit_canary_unit == "user" and config.dp_user:
        unit = report["user_level"]
        return unit.get("epsilon"), float(unit.get("delta") or config.dp_user_delta)
    if config.audit_canary_unit == "interaction" and config.dp_interaction:
        unit = report["interaction_level"]
        return unit.get("epsilon_max"), float(unit.get("delta") or config.dp_delta)
    return None, NO_DP_DELTA


def _fmt(value: Any) -> str:
    if value is None:
        return "none (no DP)"
    if isinstance(value, float):
        return "∞" if math.isinf(value) else f"{value:.3g}"
    return str(value)


def table(result: dict[str, Any]) -> str:
    """The audit as a markdown table (audit.md and the command's output)."""
    rows = [
        ("unit", result["unit"]),
        ("ε reported", _fmt(result["epsilon_reported"])),
        ("ε lower bound", _fmt(result["epsilon_lower_bound"])),
        ("confidence", _fmt(result["confidence"])),
        ("δ", _fmt(result["delta"])),
        ("canaries (included)", f"{result['canaries']} ({result['canaries_included']})"),
        (
            "guesses (in + out)",
            f"{result['guesses']} ({result['guessed_in']} + {result['guessed_out']})",
        ),
        ("correct", str(result["correct"])),
    ]
    lines = ["| membership audit | |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)
