"""ServerApp: Flower glue on the legacy workflow route, which supports SecAgg+ (docs/design.md §8).

:func:`build_round` is the whole server in one screen: who is sampled, and every step a round's
replies go through, in order (:mod:`server.pipeline` checks the order and says what is wrong).
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import INFO

import numpy as np
from flwr.app import Context
from flwr.common import log
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.workflow import DefaultWorkflow

from server import linkstate_index
from server.checkpoint import Checkpoint, Checkpointer, load_for_resume
from server.deadline import TimedGrid
from server.evaluation import Catalogue, write_beyond_accuracy
from server.optimizers import ModelState
from server.pipeline import Pipeline
from server.population import Population
from server.sampling import CountSampler, PoissonSampler, Sampler
from server.secagg import GuardedSecAggPlusWorkflow
from server.shard_replies import ShardValidation
from server.steps import (
    ClipCounts,
    DeviceNoise,
    DeviceReports,
    EnoughReplies,
    ItemRowClip,
    MeanOfTrained,
    PlaintextSum,
    PooledNoise,
    PrivacyLedger,
    ReplyValidation,
    RoundRecorder,
    SecAggSum,
    ServerClip,
    ServerOptimizer,
    UserLevelNoise,
)
from server.strategy import ConfideStrategy
from server.user_dp import UserDPState
from server.validation import ReplyValidator
from shared.baselines import record_data_summary
from shared.config import RunConfig
from shared.item_vectors import item_vectors
from shared.models import global_arrays, global_names, load_global
from shared.poisoning import poison_plan
from shared.records import CHECKPOINT_FILE
from shared.rundir import RunDirectory
from shared.secagg import plan_device_noise
from shared.split import catalog_size, split_for

app = ServerApp()
# Flower's simulation runs this app in the process that holds the in-memory link state, whose
# delivery scan is quadratic in the federation's size (server/linkstate_index.py: why, and why
# the answers are unchanged).
linkstate_index.install()


def build_round(
    config: RunConfig,
    names: Sequence[str],
    arrays: Sequence[np.ndarray],
    run_dir: RunDirectory,
    validator: ReplyValidator | None = None,
    population: Population | None = None,
) -> tuple[Sampler, Pipeline, ModelState]:
    """The sampler and the round's steps for this config; the model they all share."""
    model = ModelState([np.asarray(a) for a in arrays])
    population = population or Population(simulated=False)
    validator = validator or ReplyValidator.for_global(
        names,
        arrays,
        max_num_examples=config.max_num_examples,
        max_update_norm=config.max_update_norm,
    )
    plan = config.secagg_plan()  # None without SecAgg+; else derived so nothing clips or wraps
    user = UserDPState()
    if config.device_noise:  # the noise plan is derived from these once the population is known
        user.secagg, user.dimension = config.noise_quantizer_plan(), model.size
        if not config.dp_user_target_epsilon:  # known now: refuse an unsafe plan at setup
            plan_device_noise(
                user.secagg,
                model.size,
                config.dp_user_noise_multiplier,
                config.noise_min_survivors,
                config.num_server_rounds,
            )
    if config.dp_user:
        sampler: Sampler = PoissonSampler(config, user, population)
    else:
        sampler = CountSampler(config, population, max_cohort=plan.max_cohort if plan else None)
    uniform = config.uniform_weights
    plaintext = plan is None  # under SecAgg+ the server never sees a single update
    shards = config.cohort_size > 1  # nodes reply with their users' summed updates
    reports = DeviceReports(config)  # interaction-level ε / σ the devices report, for the ledger
    optimizer = ServerOptimizer(config.strategy, model, names, config)  # owns the global model
    adaptive = config.dp_user_adaptive_clip  # S moves: the steps read this round's

    def clip_norm() -> float:
        return user.clip_norm(config)

    steps = [
        *(
            [ShardValidation(validator, clip_norm if config.dp_user else 0, user.shard_noise_norm)]
            if shards
            else []
        ),
        *([ReplyValidation(validator, model)] if plaintext and not shards else []),
        *(  # the item-promotion defence (the config refuses it under SecAgg+)
            [ItemRowClip(config.item_row_clip, list(names), model.arrays)]
            if config.item_row_clip and plaintext
            else []
        ),
        reports,
        # (a shard clips each user itself: the server sees only their sum)
        *(
            [ServerClip(clip_norm)] if config.dp_user and plaintext and not shards else []
        ),  # fmt: skip
        *([ClipCounts()] if adaptive and plaintext else []),  # (under SecAgg+: in the sum)
        *([EnoughReplies(config.min_fit_clients)] if plaintext else []),  # else: skip the round
        PlaintextSum(model, uniform=uniform)
        if plaintext
        else SecAggSum(
            plan,
            model,
            user.noise_plan,
            clip_bits=adaptive,
            bit_coordinate=user.clip_bit_coordinate,
        ),
        release(config, user),  # who adds the noise: nobody, the server or the devices
        optimizer,
        RoundRecorder(run_dir, config.num_server_rounds),  # metrics.jsonl + progress line
        PrivacyLedger(config, run_dir),  # privacy_ledger.jsonl (DP runs)
        # The server's state after the round, written after its rows (shared/rundir.py: why).
        Checkpointer(
            run_dir.path / CHECKPOINT_FILE, config, names, model, optimizer, user, reports
        ),
    ]
    return sampler, Pipeline(steps), model


def release(config: RunConfig, user: UserDPState):
    """The RELEASE step: the one place that decides who adds the noise (docs/design.md §4)."""
    if config.pooled:
        return PooledNoise(config)
    if not config.dp_user:
        return MeanOfTrained()
    return DeviceNoise(config, user) if config.device_noise else UserLevelNoise(config, user)


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_mapping(context.run_config)
    config.check_federated_run()
    checkpoint: Checkpoint | None = None
    if config.resume_from:  # refused in one line if this config cannot continue it
        checkpoint, where = load_for_resume(config)
        if checkpoint.round >= config.num_server_rounds:
            log(INFO, "[confide] %s finished all %d rounds already", where, checkpoint.round)
            return
        run_dir = RunDirectory.resume(where, config, checkpoint.round)
        log(INFO, "[confide] resuming %s after round %d", run_dir.path, checkpoint.round)
    else:
        run_dir = RunDirectory.create(config, kind="federated")
        log(INFO, "[confide] run directory: %s", run_dir.path)
        if not config.num_items:  # a simulation has the pooled split (a deployment has none)
            record_data_summary(config, run_dir.path, lambda line: log(INFO, "%s", line))

    # A simulation's server has the pooled split (a deployment has none): it knows how many users
    # hold each item, for the top-10 lists' novelty, and can rank by popularity beside the model.
    split = None if config.num_items else split_for(config)
    poison = poison_plan(config, split) if split else None  # the poisoning audit's target
    catalogue = (
        Catalogue.of_split(split, poison.target if poison else None)
        if split
        else Catalogue(catalog_size(config))
    )
    # The server never sees user rows: it builds a one-user model and keeps only the global part.
    model = config.build_model(catalog_size(config))
    names, arrays = global_names(model), global_arrays(model)
    population = Population(
        cohort_size=config.cohort_size,
        num_users=split.num_users if split else 0,
        simulated=split is not None,
    )
    sampler, pipeline, state = build_round(config, names, arrays, run_dir, population=population)
    done = 0
    if checkpoint is not None:
        pipeline.find(Checkpointer).restore(checkpoint)
        done = checkpoint.round
    strategy = ConfideStrategy(
        config,
        sampler,
        pipeline,
        state,
        rounds_done=done,
        catalogue=catalogue,
        population=population,
    )
    if checkpoint is not None:
        strategy.started -= checkpoint.elapsed_seconds  # elapsed time continues too
    legacy = LegacyContext(
        context=context,
        # Flower numbers this run's rounds 1..; the strategy runs them as done+1..total.
        config=ServerConfig(num_rounds=config.num_server_rounds - done),
        strategy=strategy,
    )
    secagg = pipeline.find(SecAggSum)  # its plan: with device noise, c is derived at round 1
    fit_workflow = (
        None
        if secagg is None
        else GuardedSecAggPlusWorkflow(
            lambda: secagg.plan,
            strategy.secagg_stage,
            # device noise: no sum of fewer devices than the noise was planned for is unmasked
            min_survivors=config.noise_min_survivors if config.device_noise else 0,
        )
    )
    # Flower's workflow waits for replies without a timeout: every wait gets round-timeout.
    DefaultWorkflow(fit_workflow=fit_workflow)(TimedGrid(grid, config.round_timeout), legacy)

    run_dir.save_model(names, state.arrays)  # the server optimizer's model: the only copy
    if split is not None:
        load_global(model, state.arrays)
        write_beyond_accuracy(run_dir.path, split, item_vectors(model, split.num_items))
    run_dir.plot()
    log(INFO, "[confide] finished: model, metrics and plot in %s", run_dir.path)
