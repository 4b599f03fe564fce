"""`xfrmctl`: the command line, a client of the REST API.

Subcommands live in their own modules of this package and are imported only when used.
To add one, add an entry to SUBCOMMANDS: "name": "module:attribute".

Exit codes: 0 ok, 1 error, 2 usage, 3 API unreachable, 4 auth (401/403), 5 not found,
6 conflict, 7 invalid input (422), 8 daemon not running (503), 78 a bad setting.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import click

from xfrmctl.config import Settings, SettingsError

from .client import Api, ApiError, ClientOptions

EXIT_CONFIG = 78  # a bad setting (EX_CONFIG): systemd does not restart the daemon for it
SUBCOMMANDS: dict[str, str] = {
    "sa": "xfrmctl.cli.live:sa",
    "status": "xfrmctl.cli.live:status",
    "policy": "xfrmctl.cli.live:policy",
    "events": "xfrmctl.cli.live:events",
    "conn": "xfrmctl.cli.conn:conn",
    "token": "xfrmctl.cli.admin:token",
    "secret": "xfrmctl.cli.creds:secret",
    "ca": "xfrmctl.cli.creds:ca",
    "cert": "xfrmctl.cli.creds:cert",
    "eap-user": "xfrmctl.cli.eapusers:eap_user",
    "crl": "xfrmctl.cli.creds:crl",
    "db": "xfrmctl.cli.db:db",
    "daemon": "xfrmctl.cli.daemon:daemon",  # imports the daemon only when it runs
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def __init__(self, *args: object, lazy: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module, attr = self.lazy[cmd_name].split(":")
            command = getattr(importlib.import_module(module), attr)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            return command
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except SettingsError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_CONFIG)


@dataclass
class State:
    """What every subcommand gets from the top-level options."""

    options: ClientOptions
    json: bool
    _api: Api | None = None
    gateway: str | None = None  # --gateway: the fleet view of one gateway

    @property
    def api(self) -> Api:
        if self._api is None:
            self._api = Api(self.options)
        return self._api


pass_state = click.make_pass_decorator(State)


@click.group(cls=LazyGroup, lazy=SUBCOMMANDS, context_settings={"help_option_names": ["-h",
                                                                                    "--help"]})
@click.option("--url", envvar="XFRMCTL_URL", help="API URL: http(s)://host:port or "
              "unix:///path/to/socket [env XFRMCTL_URL, config file `url`]")
@click.option("--token", envvar="XFRMCTL_TOKEN", help="API bearer token [env XFRMCTL_TOKEN]")
@click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False),
              help="CA bundle to verify the API's TLS certificate")
@click.option("--client-cert", type=click.Path(path_type=Path, dir_okay=False),
              help="client certificate (PEM) for mutual TLS")
@click.option("--client-key", type=click.Path(path_type=Path, dir_okay=False),
              help="client key (PEM) for mutual TLS")
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON output")
@click.option("--gateway", metavar="NAME", help="a fleet gateway on the same database: "
              "SAs it recorded and connections it runs (any gateway's API serves them)")
@click.version_option(package_name="xfrmctl")
@click.pass_context
def main(ctx: click.Context, url: str | None, token: str | None, ca_file: Path | None,
         client_cert: Path | None, client_key: Path | None, as_json: bool,
         gateway: str | None) -> None:
    """Control the xfrmctl IPsec daemon through its REST API."""
    settings = Settings()  # the config file and defaults fill what flags/env leave out
    options = ClientOptions(
        url=url or settings.url, token=token or settings.token,
        ca_file=ca_file or settings.ca_file,
        client_cert=client_cert or settings.client_cert_file,
        client_key=client_key or settings.client_key_file)
    state = State(options, as_json, gateway=gateway)
    ctx.obj = state
    ctx.call_on_close(lambda: state._api.close() if state._api else None)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(State).json = True


json_flag = click.option("--json", "as_json", is_flag=True, expose_value=False,
                         callback=_set_json, is_eager=True,
                         help="machine-readable JSON output")
