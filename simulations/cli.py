"""The ``confide`` command: ``simulate`` (Flower simulation), ``centralized`` (baseline),
``report`` (privacy-budget report of a run directory), ``certs`` (deployment credentials),
``audit item-inference`` (what a curious server learns about a user's items), ``audit
membership`` (an ε lower bound from canaries in one run) and ``bench`` (the cost of a round:
floor, per device, Flower, cohort engine; simulations/bench.py).

A user-facing error (a bad file, a bad config value, a bad checkpoint, a tool that would not
start) ends the command with one or two lines that name the problem and the fix, and exit code
2; ``--debug`` shows the traceback instead."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simulations.configs import shipped

# Nothing heavy is imported here: `confide --help` must not wait for torch or Flower (seconds).
# Each command imports what it needs when it runs.
if TYPE_CHECKING:
    from shared.config import RunConfig


# What a user can cause and fix: every error our own code raises for bad input is one of these
# (ConfigError, DataFormatError and DataError are ValueErrors; FileNotFoundError is an OSError;
# RuntimeError: a Flower process that would not start). Anything else is a bug: a traceback.
USER_ERRORS = (ValueError, OSError, RuntimeError)
DEBUG_HINT = "confide: rerun with --debug for the traceback"


def add_debug_arg(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--debug`` before or after the command name (a subcommand's must not reset the top's)."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="on an error, show the Python traceback instead of the one-line message",
    )


def error_lines(err: BaseException) -> list[str]:
    """The one or two lines a user sees for an error: what went wrong and what to do.

    Errors Confide raises for bad input already say the fix: one line. Others (an OS error, a
    library's ValueError) get a second line pointing at ``--debug``.
    """
    from shared.config import ConfigError
    from shared.data import DataError, DataFormatError

    message = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, ConfigError):
        return [f"confide: config error: {message}"]
    if isinstance(err, (DataFormatError, DataError)):
        return [f"confide: data error: {message}"]
    if isinstance(err, FileNotFoundError):
        return [f"confide: file not found: {message}"]
    return [f"confide: error: {message}", DEBUG_HINT]


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        help="TOML file of config keys, or the name of one shipped with confide "
        f"(simulations/*.toml): {', '.join(shipped())}",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (repeatable), e.g. --set num-server-rounds=5",
    )
    parser.add_argument(
        "--out", help="run directory (default: runs/<time>-<kind>-<model>-<dataset>)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="confide", description=__doc__)
    add_debug_arg(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True)
    simulate = commands.add_parser("simulate", help="federated simulation on Flower's Ray backend")
    add_config_args(simulate)
    simulate.add_argument(
        "--supernodes",
        type=int,
        default=0,
        help="number of simulated devices (default: one per user of the dataset)",
    )
    simulate.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="run the devices on this running Ray cluster (`ray start --head` on one machine, "
        "`ray start --address HOST:PORT` on the others) instead of a local Ray",
    )
    simulate.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last complete round, with its config.json "
        "(--set num-server-rounds=N extends it)",
    )
    centralized = commands.add_parser("centralized", help="centralized baseline on pooled data")
    add_config_args(centralized)
    report = commands.add_parser("report", help="privacy-budget report of a finished run")
    report.add_argument("run_dir", help="run directory (with config.json and metrics.jsonl)")
    certs = commands.add_parser("certs", help="TLS certificates and device keys for deployment")
    certs.add_argument("dir", help="output directory (created 0700; existing files are kept)")
    certs.add_argument(
        "--host",
        action="append",
        required=True,
        help="name or IP address SuperNodes reach the SuperLink by (repeatable)",
    )
    certs.add_argument("--devices", default="3", help="a count (device-0..) or names: a,b,c")
    audit = commands.add_parser("audit", help="privacy audits").add_subparsers(
        dest="audit", required=True
    )
    inference = audit.add_parser(
        "item-inference", help="can a curious server recover users' items from their updates?"
    )
    inference.add_argument("run_dir", nargs="?", help="a finished run (else: --config)")
    add_config_args(inference)
    inference.add_argument(
        "--cohorts", default="10,100", type=_sizes, help="SecAgg+ cohort sizes to audit"
    )
    inference.add_argument("--users", type=int, default=0, help="audit only N users (0: all)")
    bench = commands.add_parser(
        "bench", help="what a round of local training costs: floor, per device, Flower, cohort"
    )
    add_config_args(bench)
    bench.add_argument("--quick", action="store_true", help="16 users, 1 repeat (< 3 min)")
    bench.add_argument(
        "--users", type=int, default=0, help="cohort size (default: cohort-size if > 1, else 100)"
    )
    bench.add_argument(
        "--only", type=_rows, default=None, help="comma-separated rows (default: all)"
    )
    membership = audit.add_parser(
        "membership",
        help="train one run with canaries and bound ε from below (Steinke, Nasr, Jagielski 2023)",
    )
    membership.add_argument("run_dir", nargs="?", help="audit a finished canary run (else: train)")
    add_config_args(membership)
    membership.add_argument("--canaries", type=int, help="m canaries (sets audit-canaries)")
    membership.add_argument(
        "--guess-fraction",
        type=float,
        default=0.25,
        help="guess 'in' for this top fraction of scores and 'out' for the bottom one (0.25)",
    )
    poisoning = audit.add_parser(
        "poisoning",
        help="1%% of devices promote one item: its exposure and HR@10 under each defence",
    )
    add_config_args(poisoning)
    poisoning.add_argument(
        "--fraction", type=float, default=0.01, help="share of devices that attack (0.01)"
    )
    poisoning.add_argument(
        "--norm-bound", type=float, default=1.0, help="the norm-bound row's max-update-norm (1.0)"
    )
    poisoning.add_argument(
        "--row-clip", type=float, default=3.0, help="the row-clip rows' item-row-clip (3.0)"
    )
    poisoning.add_argument(
        "--user-epsilon", type=float, default=8.0, help="the user-dp row's target ε (8)"
    )
    poisoning.add_argument("--only", help="comma-separated rows (default: all)")
    for sub in (simulate, centralized, report, certs, inference, membership, bench, poisoning):
        add_debug_arg(sub)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except USER_ERRORS as err:
        if args.debug:
            raise
        for line in error_lines(err):
            print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("confide: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    """Dispatch a parsed command line (errors are :func:`main`'s to report)."""
    if args.command == "audit":
        return _audit(args)
    if args.command == "certs":
        return _certs(args.dir, args.host, args.devices)
    if args.command == "report":  # reads a finished run: no config to resolve
        from server.report import main as report_main

        return report_main(args.run_dir)

    config, changed = _resolve(args)
    if args.command == "bench":
        from simulations.bench import run_bench

        out = Path(args.out or "runs/bench")
        run_bench(config, out, quick=args.quick, users=args.users, rows=args.only)
        return 0
    if args.command == "centralized":
        from simulations.centralized import run_centralized

        run_centralized(config)
        return 0
    from shared.split import data_summary_for
    from simulations.simulate import run_simulation

    # The data is loaded here first (the split is cached for the run): a bad file fails before
    # Flower starts, and the log says how the held-out items were chosen and what was dropped.
    for line in data_summary_for(config).lines():
        print(f"[confide] {line}")
    return run_simulation(config, changed, supernodes=args.supernodes, ray_address=args.ray_address)


def _resolve(args: argparse.Namespace) -> tuple[RunConfig, dict[str, Any]]:
    """The run config of a command with config arguments (``--config`` may name a shipped one)."""
    from shared.config import resolve_config
    from simulations.configs import config_path

    if getattr(args, "resume", None):
        from simulations.simulate import resume_config

        return resume_config(args.resume, args.set, args.config, args.out)

    config_file = config_path(args.config) if args.config else None
    return resolve_config(config_file, args.set, args.out)


def _sizes(text: str) -> list[int]:
    """``--cohorts``: comma-separated positive sizes (argparse reports a bad one in one line)."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected sizes like 10,100, got {text!r}")
    return sizes


def _rows(text: str) -> list[str]:
    """``bench --only``: comma-separated row names, each one the bench has."""
    from simulations.bench import ROWS

    rows = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if not rows or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown bench rows {unknown or text!r}; the rows are {', '.join(ROWS)}"
        )
    return rows


def _certs(directory: str, hosts: list[str], devices: str) -> int:
    from shared.certs import device_names, make_credentials

    try:
        creds = make_credentials(Path(directory), hosts, device_names(devices))
    except (ValueError, OSError) as err:
        print(f"confide certs: {err}", file=sys.stderr)
        return 2
    for path in creds.created:
        print(f"created {path}")
    print(
        f"SuperLink: --ssl-ca-certfile {creds.ca_cert} --ssl-certfile {creds.server_cert} "
        f"--ssl-keyfile {creds.server_key}; keep {creds.ca_key} offline"
    )
    return 0


def _audit(args: argparse.Namespace) -> int:
    if args.audit == "membership":
        return _membership(args)
    if args.audit == "poisoning":
        return _poisoning(args)
    from shared.saved_run import load_run
    from simulations.research.audit import run_item_inference

    # A bad run directory or config is reported by main(), like every command's bad input.
    if args.run_dir:
        config, model = load_run(Path(args.run_dir))
        out = Path(args.out or args.run_dir)
    else:
        config, _ = _resolve(args)
        model, out = None, Path(args.out or "runs/audit")
    run_item_inference(config, model, out, args.cohorts, args.users)
    return 0


def _membership(args: argparse.Namespace) -> int:
    from simulations.research.membership_audit import audit_run, run_membership_audit

    if args.run_dir:
        audit_run(Path(args.run_dir), Path(args.out or args.run_dir), args.guess_fraction)
        return 0
    if args.canaries is not None:
        args.set = [*args.set, f"audit-canaries={args.canaries}"]
    out = Path(args.out or "runs/audit-membership")
    config, changed = _resolve(argparse.Namespace(**{**vars(args), "out": None}))
    run_membership_audit(config, changed, out, args.guess_fraction)
    return 0


def _poisoning(args: argparse.Namespace) -> int:
    from shared.config import ConfigError
    from simulations.configs import config_path
    from simulations.research.poisoning_audit import audit_rows, run_poisoning_audit

    rows = audit_rows(args.norm_bound, args.row_clip, args.user_epsilon)
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {r.name for r in rows})
        if unknown:
            raise ConfigError(
                f"--only: unknown rows {unknown}; choose from {[r.name for r in rows]}"
            )
        rows = [r for r in rows if r.name in wanted]
    settings = [f"audit-poison-fraction={args.fraction}", *args.set]
    config_file = config_path(args.config) if args.config else None
    run_poisoning_audit(config_file, settings, Path(args.out or "runs/audit-poisoning"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
