"""The report of the run directories checked in from before the typed records (old format)."""

import json
import shutil

import pytest

from server.report import build_report, main
from shared.beyond_accuracy import BEYOND_ACCURACY
from tests.shared.test_records import FIXTURES


@pytest.mark.parametrize("name", ["run-2026-12", "run-2026-12-secagg"])
def test_report_of_a_checked_in_run_is_what_todays_code_wrote(tmp_path, name):
    """expected_privacy.json was written by the report before the typed records existed."""
    run = tmp_path / name
    shutil.copytree(FIXTURES / name, run)
    expected = json.loads((FIXTURES / name / "expected_privacy.json").read_text())
    got = json.loads(json.dumps(build_report(run)))
    # Added since the fixture was written (issue 11): who added the noise, and against whom the
    # user-level ε holds. An old ledger has no noise_source: the server added it.
    # The interaction level's mode (local epochs or pooled) and against whom its ε holds.
    # Issue 15: the beyond-accuracy figures and popularity's, none of which an old run recorded.
    new_keys = {
        "interaction_level": ("noise_source", "mode", "holds_against"),
        "user_level": ("noise_source", "holds_against"),
        "utility": (*BEYOND_ACCURACY, "popularity"),
    }
    added = {unit: {k: got[unit].pop(k, None) for k in keys} for unit, keys in new_keys.items()}
    assert got == expected
    assert set(added["utility"].values()) == {None}
    if got["user_level"]["enabled"]:
        assert added["user_level"]["noise_source"] == "server"
        assert added["user_level"]["holds_against"] == "released models (the server is trusted)"
    if got["interaction_level"]["enabled"]:
        assert added["interaction_level"]["noise_source"] == "device-local"
        assert added["interaction_level"]["mode"] == "local-epochs"  # the only mode then
    if name == "run-2026-12":
        assert expected["user_level"]["epsilon"] == 3.188991562633588
        assert expected["run"]["stopped"].startswith("user-level epsilon cap 3.5 reached")
        assert expected["interaction_level"]["epsilon_max"] == 1.7
        assert expected["utility"]["hr10"] == 0.1 and expected["run"]["rounds_completed"] == 3


def test_progress_and_summary_readers_on_the_old_run(tmp_path, capsys):
    from server.progress import progress_line
    from shared.records import read_rounds
    from simulations.simulate import _summarize

    rounds = read_rounds(FIXTURES / "run-2026-12")
    line = progress_line(rounds[2], 3)
    assert line.startswith("[confide] round 3/3 | STOPPED (user-level epsilon cap 3.5 reached")
    assert "HR@10 0.1000 NDCG@10 0.1000 (full 0.1000/0.1000)" in line
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "run-2026-12", run)
    assert _summarize("finished:completed", run) == 0
    out = capsys.readouterr().out
    assert "round 3: HR@10 0.1000" in out and "left the model unchanged" not in out
    assert main(run) == 0
