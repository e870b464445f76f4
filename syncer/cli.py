"""Command line: `run`, `plan`, `check-config`, `demo`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from syncer import __version__
from syncer import log as logging_
from syncer.config import Config, ConfigError, with_kube_client
from syncer.config import load as load_config

EXIT_OK, EXIT_CHANGES, EXIT_ERROR = 0, 1, 2


def _load(path: str, args: argparse.Namespace | None = None) -> Config | None:
    try:
        config = load_config(Path(path))
    except ConfigError as e:
        for line in e.errors:
            print(f"error: {line}", file=sys.stderr)
        return None
    kubeconfig = getattr(args, "kubeconfig", None)
    return with_kube_client(
        config,
        kubeconfig=Path(kubeconfig) if kubeconfig else None,
        context=getattr(args, "context", None),
    )


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_ERROR
    print(
        f"{args.config}: ok ({len(config.sources)} source(s), "
        f"{len(config.proxies.static)} proxy(ies), policy {config.policy})"
    )
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from syncer.app import App

    config = _load(args.config, args)
    if config is None:
        return EXIT_ERROR
    logging_.configure(level=config.log.level, fmt=config.log.format)
    App(config).run_forever()
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from syncer.app import dry_run

    config = _load(args.config, args)
    if config is None:
        return EXIT_ERROR
    logging_.configure(level="warning", fmt=config.log.format)
    results, desired = dry_run(config, logging_.get("dyups_syncer"))
    status = EXIT_OK
    for label, result in results.items():
        print(f"proxy {label}:")
        if isinstance(result, str):
            print(f"  error: {result}")
            status = EXIT_ERROR
            continue
        for upsert in result.upserts:
            print(f"  upsert {upsert.name} ({upsert.reason}): {upsert.body}")
        for delete in result.deletes:
            print(f"  delete {delete.name}")
        for name in result.refused_deletes:
            print(f"  refused delete {name} (max_delete_fraction {config.max_delete_fraction})")
        for name in result.conflicts:
            print(f"  conflict {name}: on the proxy but not owned; left alone")
        if result.empty:
            print("  no changes")
        elif status == EXIT_OK:
            status = EXIT_CHANGES
    print(f"desired: {len(desired)} upstream(s)")
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    from syncer.demo import run_demo

    logging_.configure(level="warning", fmt="console" if sys.stderr.isatty() else "json")
    return run_demo(listen=args.listen, keep_running=args.keep_running)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dyups-syncer",
        description="Keeps nginx dyups upstreams in step with service discovery.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("run", cmd_run, "run the daemon"),
        (
            "plan",
            cmd_plan,
            "print the changes each proxy needs, write nothing (exit 0: none, 1: some, 2: error)",
        ),
        ("check-config", cmd_check_config, "validate a configuration file (exit 0 or 2)"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("-c", "--config", required=True, help="configuration YAML file")
        if name != "check-config":
            sp.add_argument("--kubeconfig", help="kubeconfig for local runs (default: in-cluster)")
            sp.add_argument("--context", help="kubeconfig context")
        sp.set_defaults(func=func)
    demo = sub.add_parser("demo", help="run against two simulated proxies and a bundled example")
    demo.add_argument("--listen", default="127.0.0.1:9105", help="metrics/health address")
    demo.add_argument("--keep-running", action="store_true", help="keep serving after the tour")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
