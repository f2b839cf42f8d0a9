"""Every user-facing error of the CLI is one or two lines naming the problem and the fix, with
no traceback; ``--debug`` shows the traceback instead."""

from __future__ import annotations

import json

import pytest

from shared.config import ConfigError
from shared.data import DataError, DataFormatError
from simulations.cli import main
from tests.shared.data_golden import FIXTURES

SMALL = ["--set", "embedding-dim=8", "--set", "mlp-layers=16,8", "--set", "centralized-epochs=1"]


def csv_run(path, *more: str) -> list[str]:
    return ["centralized", "--set", "dataset=csv", "--set", f"data-dir={path}", *SMALL, *more]


def error_of(capsys, argv: list[str]) -> list[str]:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert 1 <= len(lines) <= 2, captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (csv_run("/nonexistent/plays.tsv"), "file not found: /nonexistent/plays.tsv not found"),
        (
            [
                "centralized",
                "--set",
                "dataset=ml-1m",
                "--set",
                f"data-dir={FIXTURES / 'malformed' / 'ratings_bad_id.dat'}",
            ],
            "data error: ",
        ),
        (csv_run(FIXTURES / "generic.tsv", "--set", "min-rating=6"), "no interactions are left"),
        (csv_run(FIXTURES / "plays.tsv", "--set", "min-user-interactions=1"), "at least 2"),
        (["centralized", "--config", "no-such-config"], "file not found: config file no-such"),
        (csv_run(FIXTURES / "plays.tsv"), "data error: a user has interacted with 8 of the 29"),
        (["simulate", "--set", "dataset=ml-100k", "--set", "data-dir=/nonexistent"], "u.data"),
        (["simulate", "--set", "min-rating=-1"], "config error: min-rating must be 0"),
    ],
)
def test_user_errors_are_one_or_two_lines(capsys, argv, expected) -> None:
    lines = error_of(capsys, argv)
    assert expected in lines[0]
    assert lines[0].startswith("confide: ")


def test_a_data_error_says_the_file_the_line_and_what_was_expected(capsys) -> None:
    bad = FIXTURES / "malformed" / "ratings_bad_id.dat"
    (line,) = error_of(
        capsys, ["centralized", "--set", "dataset=ml-1m", "--set", f"data-dir={bad}"]
    )
    assert str(bad) in line and ", line " in line and "expected" in line


def test_min_rating_on_a_file_without_ratings_names_the_fix(tmp_path, capsys) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text("1,2\n1,3\n2,2\n2,3\n")
    (line,) = error_of(capsys, csv_run(path, "--set", "min-rating=3"))
    assert line.startswith("confide: data error: min-rating is 3") and "set min-rating = 0" in line


def test_an_unexpected_error_points_at_debug(capsys, monkeypatch) -> None:
    import simulations.centralized

    def broken(config, echo=print):
        raise ValueError("operands could not be broadcast")

    monkeypatch.setattr(simulations.centralized, "run_centralized", broken)
    lines = error_of(capsys, ["centralized"])
    assert lines == [
        "confide: error: operands could not be broadcast",
        "confide: rerun with --debug for the traceback",
    ]


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(where) -> None:
    argv = ["centralized", "--set", "model=bert"]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    with pytest.raises(ConfigError, match="model must be one of"):
        main(argv)
    with pytest.raises((DataError, DataFormatError, FileNotFoundError)):
        main(["--debug", *csv_run("/nonexistent/plays.tsv")])


def test_a_count_file_with_single_interaction_users_runs(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert (
        main(csv_run(FIXTURES / "plays.tsv", "--set", "eval-negatives=5", "--out", str(out))) == 0
    )
    log = capsys.readouterr().out
    assert "holdout: random: no timestamps" in log
    assert "dropped 3 users, 1 items, 3 interactions" in log
    assert "baselines on this split: popularity HR@10" in log
    summary = json.loads((out / "data.json").read_text())
    assert summary["holdout"] == "random" and summary["has_timestamps"] is False
    assert summary["filters"]["users_dropped"] == 3
    assert set(summary["baselines"]) == {"popularity", "random"}
    assert summary["baselines"]["random"]["hr10"] == 1.0  # 6 candidates, top 10


def test_a_cohort_size_the_simulation_cannot_honour_is_refused_in_one_line(capsys):
    """Shards have no SecAgg+ across them yet: a run must not silently drop either."""
    from simulations.cli import main

    assert (
        main(["simulate", "--config", "smoke", "--set", "cohort-size=8", "--set", "secagg=true"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "cohort-size 8" in err[0] and "set secagg = false" in err[0]


def test_more_supernodes_than_shards_is_refused_in_one_line(capsys):
    from simulations.cli import main

    args = ["simulate", "--config", "smoke", "--set", "cohort-size=8", "--supernodes", "9"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "60 users in 8 shards of 8" in err[0]
