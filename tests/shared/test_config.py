from pathlib import Path

import pytest

from shared.config import ConfigError, RunConfig, load_toml, parse_override, resolve_config
from shared.defaults import default_values, pyproject_defaults
from tests.conftest import ROOT, small_config


def defaults() -> dict:
    return default_values()


def test_defaults_in_a_checkout_are_the_pyproject_table():
    # the single source: what `flwr run .` reads is what confide starts from
    assert default_values() == pyproject_defaults(ROOT / "pyproject.toml")
    values = default_values()
    values["seed"] = 99  # callers get their own copy to change
    assert default_values()["seed"] == 0


def test_pyproject_defaults_parse_into_typed_config():
    config = RunConfig.from_mapping(defaults())
    assert config.dataset == "synthetic" and config.layers == (64, 32, 16)
    assert RunConfig.from_mapping(config.to_mapping()) == config  # round trip
    assert sorted(defaults()) == sorted(RunConfig.keys())  # one source: every key has a default


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model", "bert", "model must be one of"),
        ("dataset", "netflix", "dataset must be one of"),
        ("num-server-rounds", 0, "at least 1"),
        ("num-server-rounds", "3", "must be a int"),
        ("learning-rate", True, "must be a float"),
        ("fraction-fit", 1.5, "fraction-fit"),
        ("mlp-layers", "64,x", "comma-separated"),
        ("mlp-layers", "63,32", "start even"),
        ("dp-delta", 1.5, "dp-delta must be in"),
        ("dp-max-grad-norm", 0.0, "dp-max-grad-norm must be positive"),
        ("dp-accountant", "gdp", "dp-accountant must be one of"),
        ("learning-rate-decay", 0.0, r"learning-rate-decay must be in \(0, 1\]"),
        ("dp-interaction", "yes", "true or false"),
        ("num-items", -1, "num-items must be 0 or more"),
        ("server-momentum", 1.0, r"server-momentum must be in \[0, 1\)"),
        ("server-momentum", -0.1, r"server-momentum must be in \[0, 1\)"),
    ],
)
def test_bad_values_rejected_with_reason(key, value, message):
    values = defaults() | {key: value}
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(values)


def test_unknown_and_missing_keys_rejected():
    with pytest.raises(ConfigError, match="unknown config key.*num-rounds"):
        RunConfig.from_mapping(defaults() | {"num-rounds": 3})
    values = defaults()
    del values["seed"]
    with pytest.raises(ConfigError, match="missing config key.*seed"):
        RunConfig.from_mapping(values)


def test_dp_without_noise_is_refused():
    with pytest.raises(ConfigError, match="no noise there is no privacy"):
        RunConfig.from_mapping(defaults() | {"dp-interaction": True, "dp-noise-multiplier": 0.0})
    with pytest.raises(ConfigError, match="no noise there is no privacy"):
        RunConfig.from_mapping(defaults() | {"dp-user": True, "dp-user-noise-multiplier": 0.0})


def test_file_dataset_needs_data_dir():
    with pytest.raises(ConfigError, match="needs data-dir"):
        RunConfig.from_mapping(defaults() | {"dataset": "ml-100k"})


def test_int_is_accepted_where_float_expected():
    assert RunConfig.from_mapping(defaults() | {"learning-rate": 1}).learning_rate == 1.0


def test_parse_override():
    assert parse_override("num-server-rounds=5") == ("num-server-rounds", 5)
    assert parse_override("model=mf") == ("model", "mf")  # bare word taken as a string
    assert parse_override('data-dir="/a b"') == ("data-dir", "/a b")
    assert parse_override("fraction-fit = 0.5") == ("fraction-fit", 0.5)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("model")


def test_shipped_simulation_configs_are_valid():
    for path in sorted((ROOT / "simulations").glob("*.toml")):
        values = defaults() | load_toml(path)
        if values.get("data-dir"):
            values["data-dir"] = str(Path("/nonexistent"))  # validity of keys, not of the data
        RunConfig.from_mapping(values)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("model = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(bad)
    nested = tmp_path / "nested.toml"
    nested.write_text("[tool]\nx = 1\n")
    with pytest.raises(ConfigError, match="flat key"):
        load_toml(nested)


def test_secagg_parameters_are_derived_from_the_bound():
    config = RunConfig.from_mapping(defaults() | {"secagg": True})
    plan = config.secagg_plan()
    assert plan.bound == config.secagg_update_bound and plan.clipping_range >= plan.bound
    with_dp = RunConfig.from_mapping(defaults() | {"secagg": True, "dp-user": True})
    assert with_dp.secagg_plan().bound == with_dp.dp_user_clip_norm  # S bounds the update
    assert RunConfig.from_mapping(defaults()).secagg_plan() is None


@pytest.mark.parametrize(
    ("changes", "message", "fix"),
    [
        ({"secagg-num-shares": 6}, "odd", {"secagg-num-shares": 7}),
        ({"secagg-reconstruction-threshold": 7}, "4 <= threshold <= 6", {}),
        ({"secagg-timeout": float("inf")}, "finite", {"secagg-timeout": 120.0}),
        # a cohort larger than the modulus was derived for could wrap around
        ({"clients-per-round": 1500}, "secagg-max-cohort = 1500", {"secagg-max-cohort": 1500}),
        # a cohort below the threshold could never complete a round
        ({"clients-per-round": 3}, "clients-per-round >= 4", {"clients-per-round": 4}),
        ({"secagg-max-cohort": 10**7}, r"secagg-max-cohort <= \d+", {"secagg-max-cohort": 10**6}),
    ],
)
def test_unsafe_secagg_config_refused_at_setup_naming_what_works(changes, message, fix):
    values = defaults() | {"secagg": True} | changes
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(values)
    if fix:  # the suggested value is accepted
        assert RunConfig.from_mapping(values | fix).secagg


def test_fault_injection_key_is_validated():
    with pytest.raises(ConfigError, match="test-secagg-fault"):
        RunConfig.from_mapping(defaults() | {"test-secagg-fault": "1:nowhere:0"})


def test_device_learning_rate_decays_to_its_floor():
    floored = small_config(learning_rate=0.01, learning_rate_decay=0.5, learning_rate_floor=0.002)
    rates = [floored.local_learning_rate(r) for r in (1, 2, 3, 4, 50)]
    assert rates == pytest.approx([0.01, 0.005, 0.0025, 0.002, 0.002])
    plain = small_config(learning_rate=0.01, learning_rate_decay=0.5)
    assert plain.local_learning_rate(4) == pytest.approx(0.00125)
    # a floor above the starting rate never raises it
    high = small_config(learning_rate=0.01, learning_rate_decay=0.5, learning_rate_floor=0.1)
    assert high.local_learning_rate(3) == pytest.approx(0.01)


def test_fedadam_refuses_server_momentum_naming_the_fix():
    values = defaults() | {"strategy": "fedadam", "server-momentum": 0.9}
    with pytest.raises(ConfigError, match="fedadam keeps its own first moment"):
        RunConfig.from_mapping(values)


def test_resolve_config_layers_file_sets_and_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config_file = tmp_path / "run.toml"
    config_file.write_text('model = "mf"\nnum-server-rounds = 3\ndata-dir = "data"\n')
    config, changed = resolve_config(config_file, ["num-server-rounds=4", "seed=0"], "out")
    assert (config.model, config.num_server_rounds) == ("mf", 4)  # --set wins over the file
    # relative paths are made absolute here: the simulation's processes run elsewhere
    assert config.out_dir == str(tmp_path / "out") and config.data_dir == str(tmp_path / "data")
    # only what differs from the defaults (seed=0 is the default): what flwr run must be told
    assert changed == {
        "model": "mf",
        "num-server-rounds": 4,
        "data-dir": str(tmp_path / "data"),
        "out-dir": str(tmp_path / "out"),
    }
    assert resolve_config(None, [], None) == (RunConfig.from_mapping(defaults()), {})
    with pytest.raises(ConfigError, match="unknown config key"):
        resolve_config(None, ["num-rounds=3"], None)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dp_noise_source": "clients"}, "dp-noise-source must be one of server, devices"),
        ({"dp_noise_source": "devices", "dp_user": True}, "needs secagg = true and dp-user"),
        ({"dp_noise_source": "devices", "secagg": True}, "needs secagg = true and dp-user"),
        (
            {"dp_noise_source": "devices", "secagg": True, "dp_user": True, "dp_accountant": "prv"},
            'set dp-accountant = "rdp"',
        ),
        (
            {
                **{"dp_noise_source": "devices", "secagg": True, "dp_user": True},
                **{"clients_per_round": 10, "dp_noise_min_survivors": 11},
            },
            "use dp-noise-min-survivors <= 10",
        ),
        (
            {
                **{"dp_noise_source": "devices", "secagg": True, "dp_user": True},
                **{"secagg_max_cohort": 50, "dp_noise_min_survivors": 51},
            },
            "more than secagg-max-cohort 50",
        ),
        ({"dp_noise_min_survivors": -1}, "dp-noise-min-survivors must be 0"),
    ],
)
def test_device_noise_settings_are_refused_with_the_fix(changes, message):
    with pytest.raises(ConfigError, match=message):
        small_config(**changes)


def test_device_noise_plans_for_the_reconstruction_threshold_by_default():
    config = small_config(dp_noise_source="devices", secagg=True, dp_user=True)
    assert config.device_noise and config.noise_min_survivors == 4
    # more than the threshold is allowed: the server's workflow halts below it (server/secagg.py)
    more = config.replace(dp_noise_min_survivors=9)
    more.validate()
    assert more.noise_min_survivors == 9
    assert small_config(dp_user=True).device_noise is False


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dp_interaction_mode": "pooled"}, "set dp-interaction = true"),
        ({"dp_interaction_mode": "batched"}, "dp-interaction-mode must be one of"),
        ({"dp_interaction": True, "dp_pooled_sample_rate": 0.0}, "use a value in \\(0, 1\\]"),
        (
            {"dp_interaction": True, "dp_interaction_mode": "pooled", "strategy": "itemsum"},
            'use strategy = "fedadam"',
        ),
        (
            {"dp_interaction": True, "dp_interaction_mode": "pooled", "dp_user": True},
            'use dp-interaction-mode = "local-epochs" with dp-user',
        ),
    ],
)
def test_pooled_mode_refuses_what_it_cannot_do(changes, message):
    with pytest.raises(ConfigError, match=message):
        small_config(**changes)


def test_pooled_mode_is_a_property_of_interaction_level_dp():
    assert not small_config().pooled
    assert not small_config(dp_interaction=True).pooled  # local epochs stay the default
    assert small_config(dp_interaction=True, dp_interaction_mode="pooled").pooled


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dp_user_adaptive_clip": True}, "set dp-user = true"),
        ({"dp_user_clip_quantile": 1.0}, r"in \(0, 1\)"),
        ({"dp_user_clip_learning_rate": 0.0}, "dp-user-clip-learning-rate"),
        (
            {"dp_user_adaptive_clip": True, "dp_user": True, "dp_user_clip_norm_max": 0.5},
            "below the initial dp-user-clip-norm 1.0",
        ),
        (
            {"dp_user_adaptive_clip": True, "dp_user": True, "dp_user_clip_count_stddev": 0.4},
            "set it above 0.5",  # z = 1: the count alone would spend the budget
        ),
    ],
)
def test_adaptive_clipping_refuses_what_cannot_work(changes, message):
    with pytest.raises(ConfigError, match=message):
        small_config(**changes)


def test_adaptive_clipping_derives_secagg_for_the_ceiling_of_s():
    fixed = small_config(dp_user=True, secagg=True, dp_user_clip_norm=0.5)
    adaptive = small_config(
        dp_user=True, secagg=True, dp_user_clip_norm=0.5, dp_user_adaptive_clip=True
    )
    assert fixed.secagg_plan().bound == 0.5
    assert adaptive.user_clip_ceiling == 5.0  # 10 x the initial S by default
    assert adaptive.secagg_plan().bound == 5.0  # S can grow to it and nothing clips
    capped = small_config(
        dp_user=True, secagg=True, dp_user_adaptive_clip=True, dp_user_clip_norm_max=2.0
    )
    assert capped.secagg_plan().bound == 2.0


def test_device_noise_on_shards_runs_without_secagg_in_secaggs_own_integer_domain():
    devices = {"dp_user": True, "dp_noise_source": "devices", "cohort_size": 8}
    config = small_config(**devices)
    assert config.device_noise and not config.secagg and config.secagg_plan() is None
    plan = config.noise_quantizer_plan()  # what SecAgg+ would derive for these devices
    assert plan == small_config(**devices, secagg=True).secagg_plan()
    assert small_config(dp_user=True, cohort_size=8).noise_quantizer_plan() is None
    config.check_federated_run()  # allowed
    with pytest.raises(ConfigError, match="adaptive clipping with device noise on shards"):
        small_config(**devices, dp_user_adaptive_clip=True).check_federated_run()
    with pytest.raises(ConfigError, match="needs secagg = true and dp-user"):
        small_config(dp_user=True, dp_noise_source="devices")  # one device per node, no SecAgg+
