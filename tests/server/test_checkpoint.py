"""Checkpoint and resume at the strategy: a run stopped after round 2 and resumed reaches what the
uninterrupted run reached (model bytes, records, ledger), and every refused checkpoint says why."""

import json

import numpy as np
import pytest
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)

from server import checkpoint as ckpt
from server.app import build_round
from server.checkpoint import Checkpointer, CheckpointError, load_for_resume, read_checkpoint
from server.strategy import ConfideStrategy
from server.validation import ReplyValidator
from shared.models import global_arrays, global_names
from shared.records import CHECKPOINT_FILE, CONFIG_FILE, LEDGER_FILE, METRICS_FILE
from shared.rundir import RunDirectory
from shared.split import catalog_size
from shared.wire import CLIP_UNDER, SERVER_ROUND
from tests.conftest import read_jsonl, small_config
from tests.server.rounds_driver import VOLATILE, Clients

CASES = {
    "fedadam": {"strategy": "fedadam", "server_learning_rate": 0.01},
    "fedavg_m": {"server_momentum": 0.9, "server_learning_rate": 0.7},
    "dp_user": {
        "dp_user": True,
        "dp_reproducible_noise": True,
        "fraction_fit": 0.5,
        "dp_interaction": True,
    },
    "dp_cap": {  # the run stops at the cap in round 3: the resumed run must stay stopped
        "dp_user": True,
        "dp_reproducible_noise": True,
        "dp_user_noise_multiplier": 2.0,
        "dp_user_epsilon_cap": 3.5,
    },
    "adaptive_clip": {  # S moves every round: the resumed run must go on from the saved S
        "dp_user": True,
        "dp_reproducible_noise": True,
        "fraction_fit": 0.5,
        "dp_user_adaptive_clip": True,
        "dp_user_clip_count_stddev": 1.0,
    },
}
EVAL = {"hr10": 0.5, "ndcg10": 0.25, "full_hr10": 0.4, "full_ndcg10": 0.1}


def _config(run, **changes):
    return small_config(out_dir=str(run), num_server_rounds=4, eval_every=2, **changes)


def _strategy(config, run_dir, rounds_done=0):
    model = config.build_model(catalog_size(config))
    names, arrays = global_names(model), global_arrays(model)
    validator = ReplyValidator.for_global(
        names, arrays, max_num_examples=1000, max_update_norm=50.0
    )
    sampler, pipeline, state = build_round(config, names, arrays, run_dir, validator)
    return ConfideStrategy(config, sampler, pipeline, state, rounds_done=rounds_done)


def _drive(strategy, flower_rounds):
    """Flower's rounds 1..flower_rounds; each reply is a function of the RUN's round and node."""
    clients = Clients()
    params = strategy.initialize_parameters(clients)
    for flower_round in range(1, flower_rounds + 1):
        ins = strategy.configure_fit(flower_round, params, clients)
        if ins:
            run_round = ins[0][1].config[SERVER_ROUND]
            current = parameters_to_ndarrays(params)
            replies = []
            for proxy, _ in ins:
                rng = np.random.default_rng((run_round, proxy.node_id))
                new = [(a + rng.normal(scale=0.05, size=a.shape)).astype(a.dtype) for a in current]
                metrics = {"dp_status": "trained", "dp_epsilon": 1.5, "dp_noise_multiplier": 1.0}
                metrics[CLIP_UNDER] = proxy.node_id % 2  # read under adaptive clipping only
                res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(new), 1, metrics)
                replies.append((proxy, res))
            new_params, _ = strategy.aggregate_fit(flower_round, replies, [])
            params = new_params if new_params is not None else params
        evaluate = strategy.configure_evaluate(flower_round, params, clients)
        if evaluate:
            ok = Status(Code.OK, "")
            results = [(p, EvaluateRes(ok, 0.5, 1, dict(EVAL))) for p, _ in evaluate]
            strategy.aggregate_evaluate(flower_round, results, [])
    return parameters_to_ndarrays(params)


def _rows(path):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in read_jsonl(path)]


def _ledger(path):
    return [{k: v for k, v in e.items() if k != "library_versions"} for e in read_jsonl(path)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_resumed_run_reaches_the_uninterrupted_one(tmp_path, name):
    changes = CASES[name]
    whole = _config(tmp_path / "whole", **changes)
    want = _drive(_strategy(whole, RunDirectory.create(whole, "federated")), 4)

    first = _config(tmp_path / "resumed", **changes)
    _drive(_strategy(first, RunDirectory.create(first, "federated")), 2)  # then it "crashes"
    # A crash may fall after a round's rows and before its checkpoint: a row of round 3 and a
    # line cut short are on disk, and the resume must drop both.
    for name_ in (METRICS_FILE, LEDGER_FILE):
        path = tmp_path / "resumed" / name_
        if path.exists():
            path.write_text(path.read_text() + '{"round": 3}\n{"round": 3, "hr')

    resume = first.replace(resume_from=str(tmp_path / "resumed"))
    checkpoint, where = load_for_resume(resume)
    assert checkpoint.round == 2 and where == (tmp_path / "resumed").resolve()
    run_dir = RunDirectory.resume(where, resume, checkpoint.round)
    strategy = _strategy(resume, run_dir, rounds_done=2)
    strategy.pipeline.find(Checkpointer).restore(checkpoint)
    got = _drive(strategy, 2)  # Flower's rounds 1..2 are the run's rounds 3..4

    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.tobytes() == w.tobytes()
    assert _rows(run_dir.path / METRICS_FILE) == _rows(tmp_path / "whole" / METRICS_FILE)
    assert [r["round"] for r in read_jsonl(run_dir.path / METRICS_FILE)] == [1, 2, 3, 4]
    if whole.dp_user_adaptive_clip:  # S moved in every round, and on from where it was
        clips = [e["user_level"]["clip_norm"] for e in _ledger(run_dir.path / LEDGER_FILE)]
        assert len(set(clips)) == 4, clips
    if whole.dp_user:
        resumed_ledger = _ledger(run_dir.path / LEDGER_FILE)
        assert [e["round"] for e in resumed_ledger] == [1, 2, 3, 4]
        assert resumed_ledger == _ledger(tmp_path / "whole" / LEDGER_FILE)
    assert read_checkpoint(run_dir.path / CHECKPOINT_FILE).round == 4
    saved = json.loads((run_dir.path / CONFIG_FILE).read_text())
    assert saved["resumed"] == [{"after_round": 2}] and saved["resume-from"] == ""


def test_the_checkpoint_round_trips_the_whole_server_state(tmp_path):
    config = _config(tmp_path / "run", **CASES["dp_user"], strategy="fedadam")
    strategy = _strategy(config, RunDirectory.create(config, "federated"))
    _drive(strategy, 2)
    checkpoint = read_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)
    user, optimizer = strategy.sampler.state, strategy.pipeline.optimizer.state
    names = global_names(config.build_model(catalog_size(config)))
    assert checkpoint.round == 2 and checkpoint.names == tuple(names)
    assert checkpoint.user_dp.mechanism == user.mechanism  # scalars and accountant history
    assert checkpoint.user_dp.mechanism.history.steps == 2
    assert checkpoint.user_dp.population == user.population == 12
    for got, want in zip(checkpoint.optimizer.second_moment, optimizer.second_moment, strict=True):
        assert got.tobytes() == want.tobytes()
    assert checkpoint.optimizer.velocity is None
    assert not list((tmp_path / "run").glob(".*.tmp"))  # written via a temporary, then renamed


def test_a_fresh_run_in_a_used_directory_keeps_nothing_of_the_old_one(tmp_path):
    config = _config(tmp_path / "run", **CASES["dp_user"])
    _drive(_strategy(config, RunDirectory.create(config, "federated")), 2)
    (tmp_path / "run" / "devices").mkdir()
    RunDirectory.create(config, "federated")
    assert not (tmp_path / "run" / CHECKPOINT_FILE).exists()
    assert not (tmp_path / "run" / LEDGER_FILE).exists()
    assert not (tmp_path / "run" / "devices").exists()
    assert (tmp_path / "run" / METRICS_FILE).read_text() == ""


@pytest.fixture
def saved(tmp_path):
    """A run directory checkpointed after round 2, and the config that wrote it."""
    config = _config(tmp_path / "run")
    _drive(_strategy(config, RunDirectory.create(config, "federated")), 2)
    return config.replace(resume_from=str(tmp_path / "run"))


def _refusal(config) -> str:
    with pytest.raises(CheckpointError) as err:
        load_for_resume(config)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_resume_may_extend_the_run_and_change_its_evaluation(saved):
    checkpoint, _ = load_for_resume(saved.replace(num_server_rounds=9, eval_every=3))
    assert checkpoint.round == 2


def test_a_checkpoint_of_another_confide_version_is_refused(saved, monkeypatch):
    monkeypatch.setattr(ckpt, "confide_version", lambda: "9.9.9")
    message = _refusal(saved)
    assert "written by Confide" in message and "this is Confide 9.9.9" in message


def test_a_checkpoint_of_another_model_is_refused(saved):
    message = _refusal(saved.replace(model="gmf"))
    assert "of model 'neumf'" in message and "builds 'gmf'" in message


def test_a_checkpoint_of_other_shapes_is_refused_naming_the_key(saved):
    message = _refusal(saved.replace(embedding_dim=4))
    assert "other shapes" in message and "embedding-dim 8 -> 4" in message


def test_a_changed_config_key_is_refused_naming_it(saved):
    message = _refusal(saved.replace(learning_rate=0.5, seed=3))
    assert "learning-rate 0.001 -> 0.5" in message and "seed 0 -> 3" in message
    assert "may change only num-server-rounds, eval-every, eval-clients" in message


def test_more_rounds_than_a_target_epsilon_was_planned_for_are_refused(tmp_path):
    config = _config(tmp_path / "run", dp_user=True, dp_user_target_epsilon=5.0)
    _drive(_strategy(config, RunDirectory.create(config, "federated")), 2)
    resume = config.replace(resume_from=str(tmp_path / "run"))
    assert load_for_resume(resume)[0].round == 2
    assert "dp-user-target-epsilon" in _refusal(resume.replace(num_server_rounds=8))


def test_a_missing_or_foreign_checkpoint_is_refused(tmp_path, saved):
    assert "no checkpoint at" in _refusal(saved.replace(resume_from=str(tmp_path / "nowhere")))
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(2))
    assert "not a Confide checkpoint" in _refusal(saved.replace(resume_from=str(other)))
