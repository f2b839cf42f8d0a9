"""The ``confide`` command: ``simulate`` (Flower simulation), ``centralized`` (baseline),
``report`` (privacy-budget report of a run directory), ``certs`` (deployment credentials) and
``audit item-inference`` (what a curious server learns about a user's items)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shared.config import ConfigError, RunConfig, load_toml, parse_override, pyproject_defaults

APP_DIR = Path(__file__).resolve().parents[1]  # the Flower app: the directory with pyproject.toml


def resolve_config(
    config_file: str | None, overrides: list[str], out: str | None
) -> tuple[RunConfig, dict[str, Any]]:
    """Defaults from pyproject.toml <- config file <- --set <- --out, validated once.

    Returns the config and the values that differ from the defaults (what `flwr run` must be told).
    Relative paths (data-dir, out-dir) are made absolute against the current directory, since the
    simulation's processes do not run here.
    """
    pyproject = APP_DIR / "pyproject.toml"
    if not pyproject.exists():
        raise ConfigError(
            f"{pyproject} not found: install confide from a source checkout (pip install -e .)"
        )
    defaults = pyproject_defaults(pyproject)
    values = dict(defaults)
    if config_file:
        values.update(load_toml(Path(config_file)))
    for text in overrides:
        key, value = parse_override(text)
        values[key] = value
    if out:
        values["out-dir"] = out
    for key in ("data-dir", "out-dir"):
        if isinstance(values.get(key), str) and values[key]:
            values[key] = str(Path(values[key]).expanduser().resolve())
    config = RunConfig.from_mapping(values)
    changed = {k: v for k, v in config.to_mapping().items() if defaults.get(k) != v}
    return config, changed


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file of config keys (see simulations/*.toml)")
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
    commands = parser.add_subparsers(dest="command", required=True)
    simulate = commands.add_parser("simulate", help="federated simulation on Flower's Ray backend")
    _add_config_args(simulate)
    simulate.add_argument(
        "--supernodes",
        type=int,
        default=0,
        help="number of simulated devices (default: one per user of the dataset)",
    )
    centralized = commands.add_parser("centralized", help="centralized baseline on pooled data")
    _add_config_args(centralized)
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
    _add_config_args(inference)
    inference.add_argument("--cohorts", default="10,100", help="SecAgg+ cohort sizes to audit")
    inference.add_argument("--users", type=int, default=0, help="audit only N users (0: all)")
    args = parser.parse_args(argv)
    if args.command == "audit":
        return _audit(args)
    if args.command == "certs":
        return _certs(args.dir, args.host, args.devices)
    if args.command == "report":  # reads a finished run: no config to resolve
        from server.report import main as report_main

        return report_main(args.run_dir)

    try:
        config, changed = resolve_config(args.config, args.set, args.out)
    except (ConfigError, OSError) as err:
        print(f"confide: config error: {err}", file=sys.stderr)
        return 2
    if args.command == "centralized":
        from simulations.centralized import run_centralized

        run_centralized(config)
        return 0
    from simulations.simulate import run_simulation

    return run_simulation(config, changed, APP_DIR, supernodes=args.supernodes)


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
    from simulations.audit import load_run, run_item_inference

    try:
        if args.run_dir:
            config, model = load_run(Path(args.run_dir))
            out = Path(args.out or args.run_dir)
        else:
            config, _ = resolve_config(args.config, args.set, args.out)
            model, out = None, Path(args.out or "runs/audit")
        cohorts = [int(k) for k in args.cohorts.split(",")]
    except (ConfigError, OSError, ValueError) as err:
        print(f"confide: audit error: {err}", file=sys.stderr)
        return 2
    run_item_inference(config, model, out, cohorts, args.users)
    return 0


if __name__ == "__main__":
    sys.exit(main())
