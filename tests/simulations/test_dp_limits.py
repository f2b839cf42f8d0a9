"""The DP noise-to-signal diagnostic: its clipped gradient is Opacus', its math is right."""

import json
import math

import numpy as np
import pytest
import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader

from client import training_round
from client.dp import GroupedBCE, GroupScorer, InteractionGroups
from shared.models import global_names
from shared.split import split_for
from shared.streams import train_negatives_rng
from simulations.research.dp_limits import (
    growth_exponent,
    main,
    mean_clipped_gradient,
    noise_to_signal,
    population_for,
)
from tests.conftest import small_config


def test_mean_clipped_gradient_is_opacus_noise_free_full_batch_step():
    config = small_config(dp_max_grad_norm=0.05)  # small: most per-sample gradients are clipped
    split = split_for(config)
    user = 3
    data = split.user_data(user)
    arrays = [a * 20 for a in _g(config)]  # larger weights: gradients well above the clip norm
    model = training_round.device_model(config, split.num_items, user, arrays, None)
    ours, clipped_fraction = mean_clipped_gradient(config, model, data, user)
    assert clipped_fraction > 0.5

    # Opacus: the noise-free DP gradient of one batch holding the whole epoch is Σ clip(g) / n.
    torch.manual_seed(0)
    dataset = InteractionGroups(data, config.train_negatives)
    dataset.resample(train_negatives_rng(config.seed, user, 1))
    module, optimizer, loader = PrivacyEngine().make_private(
        module=GroupScorer(model),
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        data_loader=DataLoader(dataset, batch_size=len(dataset)),
        noise_multiplier=0.0,
        max_grad_norm=config.dp_max_grad_norm,
        poisson_sampling=False,
        grad_sample_mode="hooks",
    )
    items, labels = next(iter(loader))
    optimizer.zero_grad()
    GroupedBCE()(module(items), labels).backward()
    optimizer.pre_step()  # clip, accumulate, add (zero) noise, divide by the batch size
    params = dict(model.named_parameters())
    for name, mine in zip(global_names(model), ours, strict=True):
        opacus_grad = params[name].grad.detach().numpy()
        assert np.abs(opacus_grad).max() > 0
        np.testing.assert_allclose(
            mine, opacus_grad, rtol=1e-4, atol=1e-5 * np.abs(opacus_grad).max()
        )


def _g(config):
    from shared.models import global_arrays

    return global_arrays(config.build_model(split_for(config).num_items))


def test_noise_to_signal_and_growth():
    signal = np.full(100, 0.5)  # norm 5
    assert noise_to_signal(signal, 0.25) == pytest.approx(math.sqrt(0.25 * 100) / 5)
    assert noise_to_signal(np.zeros(3), 1.0) == math.inf
    sizes = [25, 50, 100]
    assert growth_exponent(sizes, [3 * k**0.5 for k in sizes]) == pytest.approx(0.5)
    assert growth_exponent(sizes, [0.1 * k for k in sizes]) == pytest.approx(1.0)


def test_population_for_nsr_one():
    # fixed noise (user level), coherent signal: NSR falls as 1/N
    assert population_for(4.0, 1.0, 0.0, 943) == pytest.approx(4 * 943)
    # noise growing as √K with a signal growing no faster: more devices never help
    assert population_for(4.0, 0.5, 0.5, 943) == math.inf
    assert population_for(0.5, 1.0, 0.0, 943) == 943  # already below 1


def test_cli_writes_both_units(tmp_path, capsys):
    out = tmp_path / "limits"
    settings = ["synthetic-users=30", "synthetic-items=200", "embedding-dim=8", "mlp-layers=16,8"]
    args = [part for s in settings for part in ("--set", s)]
    assert main([*args, "--set", "num-server-rounds=10", "--cohort", "8", "--out", str(out)]) == 0
    result = json.loads((out / "dp_limits.json").read_text())
    assert (result["population"], result["cohort"], result["epsilon"]) == (30, 8, 8.0)
    for unit in ("interaction_level", "user_level"):
        groups = result[unit]["groups"]
        assert set(groups) == {"item tables", "dense layers"}
        assert all(0 < g["nsr_per_round"] < math.inf for g in groups.values())
        assert set(groups["item tables"]["nsr_by_cohort"]) == {"2", "4", "8"}
    sigma = result["interaction_level"]["sigma_min_median_max"]
    assert 0 < sigma[0] <= sigma[1] <= sigma[2]
    assert "interaction-level | item tables" in capsys.readouterr().out
