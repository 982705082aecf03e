"""The `meter` command: one entry point, one subcommand per service or task.

    meter gateway            the metering proxy (hot path)
    meter admin              the admin API
    meter portal             the billing portal (customers' pages)
    meter ledger             the ledger worker (Redis streams -> Postgres)
    meter migrate            apply the SQL migrations
    meter reconcile [--repair]  prove Redis == Postgres; rebuild Redis from Postgres
    meter close-period [--period YYYY-MM] [--account ID]  close a billing period by hand
    meter dev [--help]       everything on one machine, with a seeded demo account

Settings come from the environment (see the README); a bad value stops here
with one line naming the variable. Services are imported only by the
subcommand that runs them, so the gateway never loads the admin code.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import fields

from meter.settings import ConfigError, Settings


def _gateway(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.service import main

    main(settings)
    return 0


def _admin(settings: Settings, args: argparse.Namespace) -> int:
    from admin.service import main

    main(settings)
    return 0


def _portal(settings: Settings, args: argparse.Namespace) -> int:
    from portal.service import main

    main(settings)
    return 0


def _ledger(settings: Settings, args: argparse.Namespace) -> int:
    from ledger.service import main

    main(settings)
    return 0


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from meter.migrate import migrate

    applied = asyncio.run(migrate(settings.database_url))
    print(f"applied: {', '.join(applied)}" if applied else "database is up to date")
    return 0


def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from ledger.reconcile import command

    return asyncio.run(command(settings, repair=args.repair))


def _close_period(settings: Settings, args: argparse.Namespace) -> int:
    from billing.command import close_period

    return asyncio.run(close_period(settings, args.period, args.account))


# `meter dev`'s options: each overrides these settings (and so their variables).
DEV_OPTIONS = {
    "host": ("gateway_host", "admin_host", "ledger_host", "portal_host"),
    "gateway_port": ("gateway_port",),
    "admin_port": ("admin_port",),
    "portal_port": ("portal_port",),
    "ledger_port": ("ledger_port",),
    "data_dir": ("data_dir",),
}


def _dev(settings: Settings, args: argparse.Namespace) -> int:
    from meter.devstack import run
    from meter.local_servers import ServerError

    given = {o: getattr(args, o) for o in DEV_OPTIONS if getattr(args, o) is not None}
    settings = settings.replace(**{f: v for o, v in given.items() for f in DEV_OPTIONS[o]})
    try:
        return run(settings)
    except ServerError as exc:
        print(f"meter dev: {exc}", file=sys.stderr)
        return 1


def _port(raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {raw!r}")
    return port


def _from(*names: str) -> str:
    """``(default: $METER_X, else D)`` for the settings ``names`` set."""
    found = {f.name: f.metadata for f in fields(Settings)}
    variables = ", ".join(f"${found[n]['env']}" for n in names)
    return f"(default: {variables}, else {found[names[0]]['default']})"


def _dev_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    summary = "run everything locally with a demo account"
    dev = sub.add_parser(
        "dev",
        help=summary,
        description=f"{summary}: Redis, PostgreSQL, an echo upstream, the gateway, the admin API,"
        " the billing portal and the ledger worker. Options override the METER_* variables"
        " (see the README).",
    )
    dev.add_argument(
        "--host",
        metavar="ADDRESS",
        help="listen address of the gateway, admin API, billing portal and"
        f" ledger worker {_from(*DEV_OPTIONS['host'])}",
    )
    for service, whose in (
        ("gateway", "gateway's"),
        ("admin", "admin API's"),
        ("portal", "billing portal's"),
        ("ledger", "ledger worker's"),
    ):
        dev.add_argument(
            f"--{service}-port",
            type=_port,
            metavar="PORT",
            help=f"the {whose} port {_from(f'{service}_port')}",
        )
    dev.add_argument(
        "--data-dir",
        metavar="DIR",
        help=f"where Redis and Postgres data and the logs are kept {_from('data_dir')}",
    )
    dev.set_defaults(run=_dev)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="meter", description="Usage-metering gateway")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("gateway", help="run the metering proxy").set_defaults(run=_gateway)
    sub.add_parser("admin", help="run the admin API").set_defaults(run=_admin)
    sub.add_parser("portal", help="run the billing portal").set_defaults(run=_portal)
    sub.add_parser("ledger", help="run the ledger worker").set_defaults(run=_ledger)
    sub.add_parser("migrate", help="apply the SQL migrations").set_defaults(run=_migrate)
    rec = sub.add_parser("reconcile", help="compare Redis with Postgres, per account")
    rec.add_argument("--repair", action="store_true", help="rebuild Redis state from Postgres")
    rec.set_defaults(run=_reconcile)
    close = sub.add_parser(
        "close-period",
        help="close a billing period: one invoice per account (idempotent)",
        description="Close a billing period as the ledger worker does after it ends: one"
        " invoice per account and period, then finalize the drafts whose grace ran out."
        " Running it again changes nothing.",
    )
    close.add_argument("--period", help="YYYY-MM (default: the last period that has ended)")
    close.add_argument("--account", help="only this account")
    close.set_defaults(run=_close_period)
    _dev_parser(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        code: int = args.run(settings, args)
    except ConfigError as exc:
        print(f"meter: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
