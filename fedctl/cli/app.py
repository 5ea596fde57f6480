"""The ``fedctl`` Typer application: wires command modules together and owns the error boundary."""

from __future__ import annotations

import sys

import typer

from fedctl import __version__

app = typer.Typer(
    name="fedctl",
    help="Run federated-learning experiments on SSH hosts or on this machine: "
    "provision -> start -> watch -> teardown.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fedctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version"),
) -> None:
    """fedctl: federated learning on a fleet of SSH hosts or on this machine."""


def _register() -> None:
    # Each module adds its commands to ``app``; they import the library lazily inside commands.
    import importlib

    for mod in (
        "fedctl.cli.cmd_init",
        "fedctl.cli.cmd_lifecycle",
        "fedctl.cli.cmd_exec",
        "fedctl.cli.cmd_watch",
        "fedctl.cli.cmd_logs",
        "fedctl.cli.cmd_cost",
        "fedctl.cli.cmd_results",
    ):
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:  # command module not built yet: the CLI simply lacks it
                continue
            raise
        module.register(app)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; turn FedctlError into a clear message and its exit code."""
    from fedctl.errors import ExitCode, FedctlError

    try:
        app(args=argv, standalone_mode=False)
    except FedctlError as exc:
        from rich.markup import escape

        from fedctl.cli.common import env

        # escape: key paths such as hosts[2].port must not be read as rich markup
        env().err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
        if exc.hint:
            env().err.print(f"[yellow]hint:[/] {escape(exc.hint)}", highlight=False)
        sys.exit(int(exc.exit_code))
    except KeyboardInterrupt:
        sys.exit(int(ExitCode.ABORTED))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(int(ExitCode.ABORTED))
    except Exception as exc:  # click's usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(0)
