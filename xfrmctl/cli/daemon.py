"""`xfrmctl daemon`: run the gateway in the foreground.

The daemon (asyncio, the IKE core, netlink, the API server) is imported inside the
command, so `xfrmctl --help` and `xfrmctl daemon --help` stay fast; this is the one
place where the CLI starts daemon code (pyproject's import contracts).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click


@click.command()
@click.option("--config", "-c", "config_path", type=click.Path(path_type=Path, exists=True),
              default=None, help="Connections file (YAML or TOML), applied into the "
              "database (XFRMCTL_DATABASE_URL) at start and on SIGHUP; the database is "
              "always the configuration.")
@click.option("--db", "use_db", is_flag=True,
              help="Without a file (the default without --config).")
@click.option("--listen", multiple=True, metavar="ADDR",
              help="Without --config: IKE address to listen on (repeat; default: all).")
@click.option("--kernel", "kernel_kind", type=click.Choice(["netlink", "memory"]),
              default="netlink", show_default=True,
              help="memory: an in-memory kernel, nothing installed (no root or ESP needed; "
              "for trying the API, CLI and dashboard).")
@click.option("--record/--no-record", default=True, show_default=True,
              help="Write IKE/CHILD SAs, counters and protocol events into the database "
              "(the API's live views and actions work either way).")
@click.option("--api/--no-api", default=False, show_default=True,
              help="Serve the REST API (unix socket and 127.0.0.1; see XFRMCTL_* settings).")
@click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Save IKE SAs here (encrypted) so a restart keeps the tunnels up.")
@click.option("--clear-on-exit", is_flag=True,
              help="On SIGTERM delete the SAs even with --state-dir.")
@click.option("--gateway", "gateway", default=None, metavar="NAME",
              help="This gateway's name in a fleet sharing the database: it runs the "
              "connections assigned to it and the unassigned ones (default: "
              "XFRMCTL_GATEWAY_NAME, else the host name).")
@click.option("--log-json/--log-text", default=False, help="One JSON object per log line.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def daemon(config_path: Path | None, use_db: bool, listen: tuple[str, ...], kernel_kind: str,
           record: bool, api: bool, state_dir: Path | None, clear_on_exit: bool, log_json: bool,
           log_level: str, gateway: str | None) -> None:
    """Run the IKEv2 daemon: negotiate SAs and install them into the kernel."""
    if config_path is not None and (use_db or listen):
        raise click.UsageError("--db and --listen are for a daemon without --config "
                               "(with a file, its `listen` says where to listen)")
    from xfrmctl.daemon.main import run, setup_logging  # noqa: PLC0415 - heavy, on use

    setup_logging(log_json, log_level)
    sys.exit(asyncio.run(run(config_path, api=api, state_dir=state_dir,
                             clear_on_exit=clear_on_exit, listen=listen,
                             kernel_kind=kernel_kind, record=record, gateway=gateway)))
