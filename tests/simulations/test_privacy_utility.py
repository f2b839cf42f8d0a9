"""The privacy–utility sweep: its rows are valid configs, and its table reads finished runs."""

import json
import math

import numpy as np
import pytest

from shared.config import RunConfig, resolve_config
from shared.defaults import default_values
from simulations.research.privacy_utility import default_rows, main
from tests.server.test_report import OFF, interaction, ledger_line, make_run, user


def test_rows_are_valid_configs_with_binomial_planning():
    rows = default_rows(rounds=150, clients_per_round=100, population=943)
    assert [r.name for r in rows] == [
        "none",
        "interaction-1",
        "interaction-4",
        "interaction-8",
        "user-1",
        "user-4",
        "user-8",
        "user-adaptive-1",
        "user-adaptive-4",
        "user-adaptive-8",
        "user-devices-1",
        "user-devices-4",
        "user-devices-8",
    ]
    q = 100 / 943
    planned = math.ceil(150 * q + 2 * math.sqrt(150 * q * (1 - q)))  # 15.9 + 2 x 3.77
    assert planned == 24
    defaults = default_values()
    for row in rows[1:]:
        config = RunConfig.from_mapping({**defaults, **row.overrides})
        if row.unit == "interaction":
            assert config.dp_interaction and not config.dp_user
            assert config.dp_planned_participations == planned
            assert config.dp_epsilon_cap == config.dp_target_epsilon == row.target_epsilon
        else:
            assert config.dp_user and not config.dp_interaction
            assert config.dp_user_epsilon_cap == config.dp_user_target_epsilon == row.target_epsilon
            assert config.dp_user_adaptive_clip is (row.unit == "user-adaptive")
            assert config.device_noise is (row.unit == "user-devices")
            if config.device_noise:  # planned for 80 of the 100 expected survivors
                assert config.secagg and config.noise_min_survivors == 80
        assert 1e-5 in (config.dp_delta, config.dp_user_delta)


def _finished_run(tmp_path, name, hr10, config=None, ledger=None):
    final = {"round": 3, "hr10": hr10, "ndcg10": hr10 / 2, "full_hr10": 0.05, "full_ndcg10": 0.02}
    base = {"clients-per-round": 100, "num-server-rounds": 3}
    run = make_run(tmp_path, name, base | (config or {}), ledger, [{"round": 1}, final])
    np.savez(run / "global_model.npz", w=np.zeros(2))
    return run


# σ calibrated per device to the target ε: the ledger has each round's range, not one σ
CALIBRATED = {
    "noise_multiplier": None,
    "target_epsilon": 8.0,
    "noise_multiplier_min": 1.2,
    "noise_multiplier_median": 2.0,
    "noise_multiplier_max": 2.9,
}


def test_table_from_finished_runs(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    _finished_run(sweep, "none", 0.5)
    _finished_run(
        sweep,
        "interaction-8",
        0.45,
        {"dp-interaction": True},
        [
            ledger_line(r, interaction(1.0, 6.0 + r / 10, 7.5 + r / 10, 3) | CALIBRATED, OFF)
            for r in (1, 2, 3)
        ],
    )
    _finished_run(
        sweep,
        "user-8",
        0.2,
        {"dp-user": True},
        [ledger_line(r, OFF, user(2.0 * r, r)) for r in (1, 2, 3)],
    )
    # Every requested row is finished: nothing is simulated, the table is built.
    small = ["--set", "dataset=synthetic", "--set", "synthetic-users=60"]  # the popularity rows
    assert main(["--out", str(sweep), "--only", "none,interaction-8,user-8", *small]) == 0
    table = {r["row"]: r for r in json.loads((sweep / "table.json").read_text())}
    assert table["none"]["hr10"] == 0.5 and "epsilon" not in table["none"]
    assert table["interaction-8"]["epsilon"] == 7.8  # the max over devices and rounds
    assert table["interaction-8"]["devices_at_cap"] == 3
    assert table["user-8"]["epsilon"] == 6.0 and table["user-8"]["noise_multiplier"] == 1.0
    markdown = (sweep / "table.md").read_text()
    assert "| interaction-8 | interaction | 8 | 7.80 | 0.000010 | 2.00 (1.20–2.90) |" in markdown
    user_8 = next(line for line in markdown.splitlines() if line.startswith("| user-8 "))
    assert user_8.endswith("| 0.40 |")  # HR@10 / no DP = 0.2 / 0.5
    # the line to beat: plain popularity, and popularity released under each unit at each ε
    assert table["popularity"]["target_epsilon"] is None and 0 < table["popularity"]["hr10"] < 1
    for unit in ("interaction", "user"):
        for eps in (1, 4, 8):
            row = table[f"dp-popularity-{unit}-{eps}"]
            assert 0.95 * eps <= row["epsilon"] <= eps and row["delta"] == 1e-5
    assert "| dp-popularity-user-8 | dp-popularity-user | 8 | " in markdown
    assert (sweep / "privacy_utility.png").read_bytes()[:4] == b"\x89PNG"
    assert "interaction-8" in capsys.readouterr().out


def test_unknown_row_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--only", "interaction-2"])
    assert "unknown rows ['interaction-2']" in capsys.readouterr().err


def test_pooled_rows_run_their_own_config_planned_for_every_round():
    from simulations.configs import CONFIG_DIR
    from simulations.research.privacy_utility import pooled_rows

    path = CONFIG_DIR / "ml-100k-pooled.toml"
    rows = pooled_rows(path, ["num-server-rounds=120"])
    assert [r.name for r in rows] == ["pooled-1", "pooled-4", "pooled-8"]
    for row in rows:
        assert row.config == path and row.unit == "interaction-pooled"
        config, _ = resolve_config(str(path), [f"{k}={v}" for k, v in row.overrides.items()], None)
        assert config.pooled and config.fraction_fit == 1.0 and not config.clients_per_round
        assert config.dp_planned_participations == 120  # every device takes part in every round
        assert config.dp_epsilon_cap == config.dp_target_epsilon == row.target_epsilon
