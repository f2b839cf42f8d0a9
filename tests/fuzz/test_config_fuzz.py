"""Config parsing, fuzzed: any key or value, from ``--set``, a TOML file or a mapping, gives a
valid :class:`RunConfig` or a :class:`ConfigError` naming the key, never another exception; and
valid configs round trip through a run directory's ``config.json`` (``RunConfig.from_saved``)."""

from __future__ import annotations

import json
import math
import re
import tempfile
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from shared.config import ConfigError, RunConfig, resolve_config
from shared.defaults import default_values
from shared.privacy import ACCOUNTANTS
from shared.rundir import CONFIG_FILE, RunDirectory

KEYS = RunConfig.keys()
TYPES = {f.name.replace("_", "-"): f.type for f in fields(RunConfig)}
TEXT = st.text(max_size=12)
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    TEXT,
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(TEXT, st.integers(), max_size=2),
)
# Values as a user types them after `--set key=`: TOML literals, bare words, and damage.
TYPED = st.one_of(
    st.sampled_from(
        [
            "inf",
            "-inf",
            "nan",
            "1e400",
            "9" * 30,
            "-1",
            "0",
            "1_0",
            "0x10",
            "true",
            '"x"',
            "[1]",
            "{a=1}",
            "'64,32'",
            "'6\u0664,32'",
            "'1_0,2'",
            "",
            "=",
            '"a\\u0000b"',
            "1\nseed=2",
            "1 # c",
            "'~nosuchuser/x'",
            "2026-12-02",
            "'\\t'",
        ]
    ),
    st.integers(-(2**70), 2**70).map(str),
    st.floats().map(repr),
    TEXT,
)


def _names_key(err: ConfigError, keys: set[str]) -> bool:
    return any(k in str(err) for k in keys)


@given(changes=st.dictionaries(st.sampled_from(KEYS), JUNK, min_size=1, max_size=3))
@example(changes={"learning-rate": 10**400})  # was: OverflowError from float()
@example(changes={"seed": -1})  # was: accepted, then NumPy's ValueError when data was loaded
@example(changes={"num-items": 2**64})  # was: accepted; Flower's run config holds int64 only
@example(changes={"round-timeout": math.inf})  # was: accepted, "every wait is finite" broken
@example(changes={"mlp-layers": "1_0,8"})  # was: accepted as 10,8 (Python's int() is lenient)
def test_any_value_of_a_known_key_is_parsed_or_refused_naming_it(changes):
    values = default_values() | changes
    try:
        config = RunConfig.from_mapping(values)
    except ConfigError as err:
        assert _names_key(err, set(changes)) or "data-dir" in str(err), str(err)
        return
    for key, value in config.to_mapping().items():
        kind = TYPES[key]
        assert type(value).__name__ == kind, (key, value)
        if kind == "float":
            assert math.isfinite(value), (key, value)
        if kind == "int":
            assert -(2**63) <= value < 2**63, (key, value)


@given(
    keys=st.lists(st.one_of(TEXT, st.integers(), st.none()), min_size=1, max_size=3),
    value=JUNK,
)
@example(keys=[1], value=2)  # was: TypeError from sorting str and int keys
def test_unknown_keys_are_refused_naming_them(keys, value):
    assume(any(k not in KEYS for k in keys))
    values = default_values() | {k: value for k in keys}
    try:
        RunConfig.from_mapping(values)
    except ConfigError as err:
        unknown = {repr(k) for k in keys if k not in KEYS}
        assert "unknown config key" in str(err) and _names_key(err, unknown)
    else:
        raise AssertionError("an unknown key was accepted")


@given(key=st.one_of(st.sampled_from(KEYS), TEXT), raw=TYPED)
@example(key="data-dir", raw='"a\\u0000b"')  # was: ValueError "embedded null byte" (no key)
@example(key="data-dir", raw="'~nosuchuser/x'")  # was: RuntimeError from expanduser
@example(key="seed", raw="1\nfoo=2")  # was: accepted as seed=1, foo silently dropped
def test_set_overrides_are_parsed_or_refused_naming_the_key(key, raw):
    extra = ["dataset=csv"] if key == "data-dir" else []
    try:
        resolve_config(None, [*extra, f"{key}={raw}"], None)
    except ConfigError as err:
        assert key.strip() in str(err) or "key=value" in str(err) or "data-dir" in str(err), str(
            err
        )


@given(content=st.binary(max_size=120))
@example(content=b"seed = 1\n\xff = 2\n")  # was: UnicodeDecodeError without the file's name
@example(content=b"[table]\nx = 1\n")
@example(content=b"seed = 1\nseed = 2\n")
def test_any_config_file_is_parsed_or_refused(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_bytes(content)
        try:
            resolve_config(path, [], None)
        except ConfigError as err:
            assert str(err)


@given(toml=st.dictionaries(st.sampled_from([*KEYS, "bogus"]), st.one_of(JUNK, TEXT), max_size=3))
def test_generated_toml_files_are_parsed_or_refused(toml):
    lines = []
    for key, value in toml.items():
        try:
            literal = _toml_literal(value)
            tomllib.loads(f"v = {literal}")
        except (ValueError, tomllib.TOMLDecodeError):
            continue
        lines.append(f'"{key}" = {literal}')
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_text("\n".join(lines) + "\n")
        try:
            resolve_config(path, [], None)
        except ConfigError as err:
            assert str(err)


def _toml_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        return {math.inf: "inf", -math.inf: "-inf"}.get(
            value, "nan" if value != value else repr(value)
        )
    if isinstance(value, int):
        return str(value)
    raise ValueError("no TOML literal")


def test_a_directory_as_config_file_is_a_config_error(tmp_path):
    try:
        resolve_config(tmp_path, [], None)  # was: IsADirectoryError
    except ConfigError as err:
        assert str(tmp_path) in str(err)
    else:
        raise AssertionError("a directory was read as a config file")


# -- valid configs round trip ------------------------------------------------------------------

VALID = {
    "seed": st.integers(0, 2**63 - 1),
    "model": st.sampled_from(["gmf", "mlp", "neumf", "mf"]),
    "strategy": st.sampled_from(["fedavg", "itemsum"]),
    "optimizer": st.sampled_from(["adam", "sgd"]),
    "dp-accountant": st.sampled_from(ACCOUNTANTS),
    "mlp-layers": st.lists(st.integers(1, 64), min_size=1, max_size=3).map(
        lambda w: ",".join(map(str, [2 * w[0], *w[1:]]))
    ),
    "embedding-dim": st.integers(1, 128),
    "num-server-rounds": st.integers(1, 10**6),
    "clients-per-round": st.integers(0, 1000),
    "fraction-fit": st.floats(1e-6, 1.0),
    "learning-rate": st.floats(1e-9, 1e9),
    "server-momentum": st.floats(0, 0.999),
    "dp-interaction": st.booleans(),
    "dp-user": st.booleans(),
    "dp-delta": st.floats(1e-12, 0.5),
    "dp-epsilon-cap": st.floats(0, 1e6),
    "min-rating": st.floats(0, 10),
    "min-user-interactions": st.integers(2, 100),
    "round-timeout": st.floats(0.001, 1e7),
    "out-dir": st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=10),
    "num-items": st.integers(0, 2**40),
}


@given(changes=st.fixed_dictionaries({}, optional=VALID), dropped=st.sets(st.sampled_from(KEYS)))
def test_valid_configs_round_trip_through_config_json(changes, dropped):
    config = RunConfig.from_mapping(default_values() | changes)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDirectory(Path(tmp) / "run", config, "federated")
        saved = json.loads((run.path / CONFIG_FILE).read_text())
    assert RunConfig.from_saved(saved) == config.replace(out_dir=str(run.path), resume_from="")
    # an older run's config.json lacks keys added since: they take their defaults
    old = {k: v for k, v in saved.items() if k not in dropped}
    expect = default_values() | {k: v for k, v in saved.items() if k in KEYS and k not in dropped}
    assert RunConfig.from_saved(old) == RunConfig.from_mapping(expect)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [  # each was accepted before the fuzzer (and failed later, or meant something else)
        ("seed", -1, "seed must be 0 or more"),
        ("mlp-layers", "1_0,8", "mlp-layers must be comma-separated"),
        ("mlp-layers", "\u0662,1", "mlp-layers must be comma-separated"),
        ("learning-rate", 10**400, "learning-rate must be a finite number"),
        ("round-timeout", math.inf, "round-timeout must be a finite number"),
        ("dp-target-epsilon", math.inf, "dp-target-epsilon must be a finite number"),
        ("num-items", 2**64, "num-items must fit in 64 bits"),
        ("csv-delimiter", '"', "csv-delimiter"),
    ],
)
def test_values_the_fuzzer_found_are_refused(key, value, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        RunConfig.from_mapping(default_values() | {key: value})
