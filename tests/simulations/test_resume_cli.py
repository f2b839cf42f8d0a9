"""`confide simulate --resume RUN_DIR`: the run's own config, what may be set on top, refusals.

No Flower run here (tests/simulations/test_resume_e2e.py runs one): the config is resolved and
checked before any SuperLink starts.
"""

import json

import pytest

from shared.config import ConfigError
from shared.rundir import RunDirectory
from simulations.simulate import resume_config, run_simulation
from tests.conftest import small_config


@pytest.fixture
def run(tmp_path):
    config = small_config(out_dir=str(tmp_path / "run"), num_server_rounds=3, seed=7)
    RunDirectory.create(config, "federated")
    return tmp_path / "run"


def test_resume_takes_the_runs_own_config_into_its_directory(run):
    config, changed = resume_config(str(run), ["num-server-rounds=5"])
    assert (config.seed, config.num_server_rounds, config.synthetic_users) == (7, 5, 30)
    assert config.resume_from == config.out_dir == str(run.resolve())
    assert changed["resume-from"] == str(run.resolve()) and changed["num-server-rounds"] == 5


def test_resume_refuses_what_it_cannot_mean(tmp_path, run):
    with pytest.raises(ConfigError, match="drop --config and --out"):
        resume_config(str(run), [], out=str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match="unknown config key 'num-rounds'"):
        resume_config(str(run), ["num-rounds=5"])
    with pytest.raises(ConfigError, match="has no config.json"):
        resume_config(str(tmp_path), [])
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(saved | {"kind": "centralized"}))
    with pytest.raises(ConfigError, match="only federated runs resume"):
        resume_config(str(run), [])


def test_a_run_without_a_checkpoint_is_refused_before_flower_starts(run, capsys):
    config, changed = resume_config(str(run), [])
    assert run_simulation(config, changed) == 2
    assert "cannot resume: no checkpoint at" in capsys.readouterr().err


def test_the_command_line_resumes_through_the_same_checks(run, capsys):
    from simulations.cli import main

    assert main(["simulate", "--resume", str(run)]) == 2
    assert "cannot resume: no checkpoint at" in capsys.readouterr().err
    assert main(["simulate", "--resume", str(run), "--config", "smoke-dp"]) == 2
    assert "drop --config and --out" in capsys.readouterr().err
