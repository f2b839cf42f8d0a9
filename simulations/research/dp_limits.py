"""What limits utility under DP: the noise-to-signal ratio of one round's aggregate, per unit.

For one cohort of devices and one global model (a finished run's, or the initial one), it
measures what the server adds up in a round and how much DP noise rides on it, per parameter
group (item tables, dense layers), with the real client code and the mechanisms' real σ:

- interaction level (on-device DP-SGD): each device's signal is its mean clipped per-sample
  gradient over one local epoch, ḡ = Σ clip_C(g_i) / n; its DP-SGD noise over that epoch has
  std σ C / (n √q) per coordinate (1/q steps of N(0, σ²C²) divided by the expected batch q n).
  The cohort adds K such signals and K independent noises.
- user level (DP-FedAvg): each device's signal is its real local update clipped to S; the server
  adds N(0, z²S²) once to the cohort's sum.

NSR = ‖noise‖ / ‖signal‖ of the cohort sum (‖noise‖ = its expected norm). Repeating the cohort
sum over sub-cohorts gives how the signal grows with the cohort size K (‖Σ‖ ∝ K^a: a = 1 when
devices agree, 1/2 when they are unrelated), hence the population a unit would need. σ is
calibrated exactly as the sweep does it (simulations.research.privacy_utility). A device starts
from a fresh private embedding here; its negatives are those of its first local epoch.

    python -m simulations.research.dp_limits --config simulations/ml-100k.toml \\
        --set data-dir=../shared/data/ml-100k [--model RUN_DIR] --epsilon 8 --out DIR
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from client import training_round
from client.dp import GroupedBCE, InteractionGroups, plan_round
from shared.config import ConfigError, RunConfig, resolve_config
from shared.models import global_arrays, global_names
from shared.privacy import clip_update, noise_for_target, planned_participations
from shared.saved_run import load_run
from shared.split import split_for
from shared.streams import Stream, generator, train_negatives_rng
from simulations.cli import add_config_args

RESULT_FILE = "dp_limits.json"
CHUNK = 64  # per-sample gradients are dense over the item tables: bound the memory per chunk


# -- pure math ------------------------------------------------------------------------------
def noise_to_signal(signal_sum: np.ndarray, noise_variance_per_coord: float) -> float:
    """Expected ‖noise‖ / ‖signal‖ for i.i.d. Gaussian noise of that variance per coordinate."""
    noise = math.sqrt(noise_variance_per_coord * signal_sum.size)
    norm = float(np.linalg.norm(signal_sum))
    return noise / norm if norm > 0 else math.inf


def growth_exponent(cohort_sizes: Sequence[int], norms: Sequence[float]) -> float:
    """a in ‖Σ_K signal‖ ∝ K^a, least squares in log-log."""
    return float(np.polyfit(np.log(cohort_sizes), np.log(norms), 1)[0])


def population_for(nsr: float, exponent: float, noise_exponent: float, population: int) -> float:
    """The population at the same sampling rate at which NSR would reach 1 (inf if never).

    NSR(K) ∝ K^(noise_exponent - exponent): user-level noise is fixed (noise_exponent 0),
    interaction-level noise grows as √K (noise_exponent 1/2).
    """
    slope = noise_exponent - exponent
    if nsr <= 1:
        return float(population)
    if slope >= 0:
        return math.inf
    return population * nsr ** (-1 / slope)


# -- measurements ---------------------------------------------------------------------------
def mean_clipped_gradient(
    config: RunConfig, model: torch.nn.Module, data, user: int
) -> tuple[list[np.ndarray], float]:
    """(Σ clip_C(g_i) / n over one epoch, restricted to the global parameters; clipped fraction).

    Clipping is over the whole per-sample gradient (private embedding included), as Opacus does.
    """
    dataset = InteractionGroups(data, config.train_negatives)
    dataset.resample(train_negatives_rng(config.seed, user, 1))  # round 1, epoch 0
    params = {n: p.detach() for n, p in model.named_parameters()}
    names = global_names(model)
    criterion = GroupedBCE()

    def loss(p, items, labels):
        users = torch.zeros_like(items)
        logits = functional_call(model, p, (users[None], items[None]))
        return criterion(logits, labels[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    total = {n: torch.zeros_like(params[n]) for n in names}
    clipped = 0
    for start in range(0, len(dataset), CHUNK):
        items, labels = dataset.items[start : start + CHUNK], dataset.labels[start : start + CHUNK]
        grads = per_sample(params, items, labels)
        norms = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in grads.values()))
        scale = torch.clamp(config.dp_max_grad_norm / (norms + 1e-12), max=1.0)
        clipped += int((norms > config.dp_max_grad_norm).sum())
        for n in names:
            total[n] += torch.einsum("b,b...->...", scale, grads[n])
    n = len(dataset)
    return [(total[name] / n).numpy().astype(np.float64) for name in names], clipped / n


def measure(
    config: RunConfig, model_arrays: list[np.ndarray] | None, epsilon: float, cohort: int
) -> dict:
    torch.set_num_threads(1)
    split = split_for(config)
    population = split.num_users
    fresh = config.build_model(split.num_items)
    arrays = model_arrays if model_arrays is not None else global_arrays(fresh)
    names = global_names(fresh)
    groups = {
        "item tables": [i for i, n in enumerate(names) if n.startswith("item_")],
        "dense layers": [i for i, n in enumerate(names) if not n.startswith("item_")],
    }
    cohort_rng = generator(config.seed, Stream.DP_LIMITS_COHORT)
    users = cohort_rng.permutation(population)[:cohort].tolist()
    rounds, q_user = config.num_server_rounds, cohort / population
    participations = planned_participations(rounds, cohort, population)
    dp_config = replace(
        config,
        dp_interaction=True,
        dp_target_epsilon=epsilon,
        dp_planned_participations=participations,
    )
    sizes = sorted({max(2, cohort // 4), max(2, cohort // 2), cohort})

    # interaction level: per device, ḡ and its epoch noise variance per coordinate
    signals, variances, sigmas, clipped = [], [], [], []
    for user in users:
        data = split.user_data(user)
        plan = plan_round(dp_config, len(data.train_items))
        model = training_round.device_model(config, split.num_items, user, arrays, None)
        mean_grad, frac = mean_clipped_gradient(config, model, data, user)
        n = len(data.train_items)
        signals.append(mean_grad)
        variances.append(
            (plan.noise_multiplier * config.dp_max_grad_norm) ** 2 / (n * n * plan.sample_rate)
        )
        sigmas.append(plan.noise_multiplier)
        clipped.append(frac)
    interaction = _unit_rows(
        signals, groups, sizes, lambda k: float(np.sum(variances[:k])), 0.5, population
    )

    # user level: real local updates, clipped to S; noise z S once on the sum
    z = noise_for_target(epsilon, config.dp_user_delta, q_user, rounds, config.dp_accountant)
    clip = config.dp_user_clip_norm
    updates, raw_norms = [], []
    for user in users:
        result = training_round.train(config, split.user_data(user), user, 1, arrays, None)
        delta = [
            n.astype(np.float64) - o for n, o in zip(result.global_arrays, arrays, strict=True)
        ]
        clipped_update, norm = clip_update(delta, clip)
        updates.append(clipped_update)
        raw_norms.append(norm)
    user = _unit_rows(updates, groups, sizes, lambda k: (z * clip) ** 2, 0.0, population)
    return {
        "population": population,
        "cohort": cohort,
        "rounds": rounds,
        "epsilon": epsilon,
        "interaction_level": {
            "delta": config.dp_delta,
            "planned_participations": participations,
            "local_epochs": config.local_epochs,
            "max_grad_norm": config.dp_max_grad_norm,
            "sigma_min_median_max": _spread(sigmas),
            "clipped_fraction_median": float(np.median(clipped)),
            "note": "NSR of one local epoch; E epochs per round divide it by √E",
            "groups": interaction,
        },
        "user_level": {
            "delta": config.dp_user_delta,
            "sample_rate": q_user,
            "noise_multiplier": z,
            "clip_norm": clip,
            "update_norm_min_median_max": _spread(raw_norms),
            "groups": user,
        },
    }


def _unit_rows(signals, groups, sizes, noise_variance, noise_exponent, population) -> dict:
    rows = {}
    for name, index in groups.items():
        norms, nsr = [], {}
        for k in sizes:
            total = np.concatenate(
                [np.sum([s[i] for s in signals[:k]], axis=0).ravel() for i in index]
            )
            norms.append(float(np.linalg.norm(total)))
            nsr[k] = noise_to_signal(total, noise_variance(k))
        exponent = growth_exponent(sizes, norms)
        full = nsr[sizes[-1]]
        rows[name] = {
            "coordinates": int(sum(signals[0][i].size for i in index)),
            "signal_norm": norms[-1],
            "nsr_per_round": full,
            "nsr_by_cohort": {str(k): v for k, v in nsr.items()},
            "signal_growth_exponent": exponent,
            "population_for_nsr_1": population_for(full, exponent, noise_exponent, population),
        }
    return rows


def _spread(values: Sequence[float]) -> list[float]:
    return [float(np.min(values)), float(np.median(values)), float(np.max(values))]


def table(result: dict) -> str:
    lines = [
        f"ε = {result['epsilon']:g} per unit, {result['rounds']} rounds, cohort K = "
        f"{result['cohort']} of N = {result['population']}",
        "| unit | group | coords | NSR per round | NSR over all rounds (÷√R) | signal ∝ K^a | "
        "N for NSR 1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for unit in ("interaction_level", "user_level"):
        for group, row in result[unit]["groups"].items():
            nsr = row["nsr_per_round"]
            lines.append(
                f"| {unit.replace('_', '-')} | {group} | {row['coordinates']} | {nsr:.3g} | "
                f"{nsr / math.sqrt(result['rounds']):.3g} | {row['signal_growth_exponent']:.2f} | "
                f"{row['population_for_nsr_1']:.3g} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--model", help="a finished run whose final global model to measure at")
    parser.add_argument("--epsilon", type=float, default=8.0, help="target ε of both units")
    parser.add_argument("--cohort", type=int, default=0, help="K (default: clients-per-round)")
    args = parser.parse_args(argv)
    try:
        config, _ = resolve_config(args.config, args.set, None)
        arrays = None
        if args.model:
            saved, arrays = load_run(Path(args.model))
            config = replace(config, **{f: getattr(saved, f) for f in _MODEL_FIELDS})
    except (ConfigError, OSError, ValueError) as err:
        print(f"dp_limits: {err}", file=sys.stderr)
        return 2
    started = time.monotonic()
    result = measure(config, arrays, args.epsilon, args.cohort or config.clients_per_round)
    result["model"] = args.model or "initial"
    result["seconds"] = round(time.monotonic() - started, 1)
    out = Path(args.out or "runs/dp-limits")
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"[confide] written to {out / RESULT_FILE}")
    return 0


_MODEL_FIELDS = ("model", "embedding_dim", "mlp_layers", "dataset", "data_dir", "seed")

if __name__ == "__main__":
    sys.exit(main())
