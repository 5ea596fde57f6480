"""The ``fedctl`` Typer application: wires command modules together and owns the error boundary."""

from __future__ import annotations

import sys

import typer

from fedctl import __version__

app = typer.Typer(
    name="fedctl",
    help="Run federated-learning experiments on SSH hosts, EC2 instances, a Slurm cluster or this machine: "
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
        "fedctl.cli.cmd_payloads",
        "fedctl.cli.cmd_lifecycle",
        "fedctl.cli.cmd_run",
        "fedctl.cli.cmd_exec",
        "fedctl.cli.cmd_watch",
        "fedctl.cli.cmd_logs",
        "fedctl.cli.cmd_cost",
        "fedctl.cli.cmd_results",
        "fedctl.cli.cmd_instances",
        "fedctl.cli.cmd_sweep",
    ):
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:  # command module not built yet: the CLI simply lacks it
                continue
            raise
        module.register(app)


_register()


def _usage_error(exc: BaseException) -> bool:
    """Is ``exc`` one of Click's own usage errors (bad option, missing argument, unknown command)?

    Typer >= 0.29 vendors Click as ``typer._click`` and no longer installs ``click``; older Typer
    raises ``click``'s classes. Both have ``ClickException`` in their MRO and ``format_message``, so
    the check needs neither import (an optional import in the error boundary is how a usage error
    once became two tracebacks)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return "ClickException" in names and hasattr(exc, "format_message")


def _print_error(message: str, hint: str | None) -> None:
    from rich.markup import escape

    from fedctl.cli.common import env
    from fedctl.textsafe import printable

    # escape: key paths such as hosts[2].port must not be read as rich markup; printable: control
    # characters from user input (a --set value) must not reach the terminal as themselves
    env().err.print(f"[bold red]error:[/] {escape(printable(message))}", highlight=False, soft_wrap=True)
    if hint:
        env().err.print(f"[yellow]hint:[/] {escape(printable(hint))}", highlight=False, soft_wrap=True)


def _usage_hint(exc: BaseException) -> str:
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or "fedctl"
    return f"`{path} --help` lists the valid options"


def _log_unexpected(exc: BaseException) -> str:
    """Write the traceback of a bug to ``.fedctl/last-error.log``; return where it went."""
    import os
    import tempfile
    import traceback
    from pathlib import Path

    from fedctl.cli.common import env
    from fedctl.fsutil import atomic_write

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    path = env().state_dir.absolute() / "last-error.log"
    try:
        atomic_write(path, text.encode(), mode=0o600)
    except OSError:  # no writable .fedctl here: the temp folder, one file per user
        path = Path(tempfile.gettempdir()) / f"fedctl-last-error-{os.getuid()}.log"
        atomic_write(path, text.encode(), mode=0o600)
    return str(path)


def main(argv: list[str] | None = None) -> None:
    """Entry point and the one error boundary: every outcome becomes one message and an exit code.

    - Click's usage errors (unknown option, bad value, unknown command): one line, exit 2;
    - a FedctlError: its message, its hint, its exit code (``fedctl.errors.ExitCode``);
    - Ctrl-C: exit 130; a declined confirmation is a ``Declined`` error (exit 1);
    - anything else is a bug: one line, the traceback in ``.fedctl/last-error.log``, exit 1.
    """
    from fedctl.errors import ExitCode, FedctlError

    from fedctl.cli.common import env
    from fedctl.ops.common import session

    try:
        # one Fleet for the whole command: each host is connected once, whatever steps it takes
        with session(env().store):
            rv = app(args=argv, standalone_mode=False)
    except FedctlError as exc:
        _print_error(exc.message, exc.hint)
        sys.exit(int(exc.exit_code))
    except KeyboardInterrupt:
        _print_error("interrupted", None)
        sys.exit(int(ExitCode.ABORTED))
    except typer.Exit as exc:
        sys.exit(int(exc.exit_code))
    except typer.Abort:
        _print_error("interrupted", None)
        sys.exit(int(ExitCode.ABORTED))
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the boundary: usage errors, then bugs
        if _usage_error(exc):
            _print_error(exc.format_message(), _usage_hint(exc))  # type: ignore[attr-defined]
            sys.exit(int(ExitCode.USAGE))
        if type(exc).__name__ == "Abort":  # Click's own Abort (Ctrl-C at a prompt)
            _print_error("interrupted", None)
            sys.exit(int(ExitCode.ABORTED))
        where = _log_unexpected(exc)
        _print_error(f"unexpected {type(exc).__name__}: {exc}", f"this is a bug in fedctl; the traceback is in {where}")
        sys.exit(int(ExitCode.ERROR))
    # standalone_mode=False returns the code of a typer.Exit raised inside a command instead of
    # raising it: honour it (this once turned a declined confirmation into exit 0).
    sys.exit(rv if isinstance(rv, int) else 0)
