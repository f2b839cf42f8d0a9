"""ServerApp: Flower glue on the legacy workflow route, which supports SecAgg+ (DESIGN.md §6)."""

from __future__ import annotations

from logging import INFO

from flwr.app import Context
from flwr.common import log, ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

from server.secagg import GuardedSecAggPlusWorkflow
from server.strategy import ConfideStrategy, build_aggregator
from server.validation import ReplyValidator
from shared.config import RunConfig
from shared.models import global_arrays, global_names
from shared.rundir import RunDirectory
from shared.split import catalog_size

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_mapping(context.run_config)
    run_dir = RunDirectory.create(config, kind="federated")
    log(INFO, "[confide] run directory: %s", run_dir.path)

    # The server never sees user rows: it builds a one-user model and keeps only the global part.
    model = config.build_model(catalog_size(config))
    names, arrays = global_names(model), global_arrays(model)
    initial = ndarrays_to_parameters(arrays)
    strategy = ConfideStrategy(
        config,
        aggregator=build_aggregator(config, initial, names),
        validator=ReplyValidator.for_global(
            names,
            arrays,
            max_num_examples=config.max_num_examples,
            max_update_norm=config.max_update_norm,
        ),
        initial=initial,
        run_dir=run_dir,
    )
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=config.num_server_rounds),
        strategy=strategy,
    )
    plan = config.secagg_plan()  # parameters derived so that nothing can clip or wrap around
    fit_workflow = None if plan is None else GuardedSecAggPlusWorkflow(plan, strategy.secagg_stage)
    DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)

    final = legacy.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
    run_dir.save_model(names, final)
    run_dir.plot()
    log(INFO, "[confide] finished: model, metrics and plot in %s", run_dir.path)
