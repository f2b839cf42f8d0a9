"""Typed run records: today's rows round-trip, older rows load, bad rows name their line."""

import json
from pathlib import Path

import pytest

from shared import records

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DP_RUN = FIXTURES / "run-2026-12"  # dp-interaction + dp-user, the user-level cap stops round 3
SECAGG_RUN = FIXTURES / "run-2026-12-secagg"  # SecAgg+ with user-level DP


def _lines(path):
    return [line for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("run", [DP_RUN, SECAGG_RUN])
def test_todays_rows_round_trip(run):
    for line in _lines(run / "metrics.jsonl"):
        assert records.RoundRecord.from_json(json.loads(line)).to_json() == json.loads(line)
    for line in _lines(run / "privacy_ledger.jsonl"):
        # byte for byte: same keys, same order, same values
        assert json.dumps(records.LedgerEntry.from_json(json.loads(line)).to_json()) == line
    if run is DP_RUN:  # the plaintext path writes metrics keys in the record's field order
        for line in _lines(run / "metrics.jsonl"):
            assert json.dumps(records.RoundRecord.from_json(json.loads(line)).to_json()) == line


def test_fixture_values_read_typed():
    rounds = records.read_rounds(DP_RUN)
    assert [r.round for r in rounds] == [1, 2, 3]
    assert rounds[0].fit_sampled == rounds[0].fit_replies == 20 and rounds[0].fit_rejected == 0
    assert rounds[0].hr10 == 0.2 and rounds[0].metric("full_hr10") == 0.15
    assert rounds[2].stopped.startswith("user-level epsilon cap 3.5 reached")
    assert rounds[2].fit_sampled == 0 and rounds[2].fit_replies is None
    assert rounds[2].model_sha256 == rounds[1].model_sha256  # a stopped round kept the model
    ledger = [entry for _, entry in records.read_ledger(DP_RUN)]
    assert ledger[0].user_level.epsilon == 2.1657156590294435
    assert ledger[1].user_level.epsilon == ledger[2].user_level.epsilon == 3.188991562633588
    assert ledger[2].user_level.status == "stopped" and ledger[2].stopped == rounds[2].stopped
    inter = ledger[1].interaction_level
    assert (inter.epsilon_max, inter.target_epsilon, inter.noise_multiplier) == (1.7, 4.0, None)
    assert ledger[0].secure_aggregation.enabled is False
    assert ledger[0].library_versions["opacus"] == "1.6.0"
    secagg = [entry for _, entry in records.read_ledger(SECAGG_RUN)]
    assert (
        secagg[0].secure_aggregation.survivors == 7 and secagg[0].interaction_level.enabled is False
    )
    assert records.read_rounds(SECAGG_RUN)[0].secagg_active == {
        "setup": 7,
        "share-keys": 7,
        "collect": 7,
        "unmask": 7,
    }


def test_older_rows_load_and_unknown_keys_are_kept():
    old = {"round": 4, "fit_sampled": 3, "future_field": [1, 2]}
    record = records.RoundRecord.from_json(old)
    assert record.fit_replies is None and record.extra == {"future_field": [1, 2]}
    assert record.to_json() == old
    # A bare stop marker (older writers) and a row from before SecAgg+ was recorded.
    stop = records.LedgerEntry.from_json({"round": 2, "stopped": "cap"})
    assert not stop.interaction_level.enabled and not stop.user_level.enabled
    assert stop.to_json() == {"round": 2, "stopped": "cap"}
    row = {"round": 1, "interaction_level": {"enabled": False}, "user_level": {"enabled": True}}
    entry = records.LedgerEntry.from_json(
        row | {"user_level": {"enabled": True, "epsilon": 1.5, "x": 1}}
    )
    assert entry.user_level == records.UserLevel(enabled=True, epsilon=1.5, extra={"x": 1})
    assert entry.interaction_level == records.InteractionLevel(enabled=False)
    assert "secure_aggregation" not in entry.to_json()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "expected a JSON object with an integer 'round'"),
        ('{"round": "1"}', "expected a JSON object with an integer 'round'"),
        ('{"round": 1, "fit_sampled": "many"}', "'fit_sampled' must be a number, got 'many'"),
    ],
)
def test_bad_metrics_rows_name_file_and_line(tmp_path, line, message):
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n\n' + line + "\n")
    with pytest.raises(records.RunFileError, match=message) as err:
        records.read_rounds(tmp_path)
    assert f"{tmp_path / 'metrics.jsonl'}:3" in str(err.value)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"round": 1, "user_level": {"enabled": False}},
            "'interaction_level' must be a JSON object",
        ),
        (
            {"round": 1, "interaction_level": {"enabled": True, "epsilon_max": "3"}},
            "'interaction_level.epsilon_max' must be a number, got '3'",
        ),
        (
            {"round": 1, "interaction_level": {"enabled": "yes"}, "user_level": {}},
            "'interaction_level.enabled' must be true or false",
        ),
    ],
)
def test_bad_ledger_rows_name_file_and_line(tmp_path, row, message):
    (tmp_path / "privacy_ledger.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(records.RunFileError, match=message) as err:
        records.read_ledger(tmp_path)
    assert "privacy_ledger.jsonl:1" in str(err.value)


def test_missing_files(tmp_path):
    with pytest.raises(records.RunFileError, match="not found"):
        records.read_rounds(tmp_path)
    assert (
        records.read_rounds(tmp_path, required=False) == [] and records.read_ledger(tmp_path) == []
    )
