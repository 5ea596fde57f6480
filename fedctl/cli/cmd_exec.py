"""``fedctl exec [-i F] [--role R] [--host NAME] -- CMD``: one command on many hosts in parallel."""

from __future__ import annotations

import shlex
from typing import List, Optional

import typer

from fedctl.cli.common import InventoryOpt, JsonOpt, env


def _targets(inventory: Optional[str], role: Optional[str], host: Optional[List[str]]):
    """(HostInfo list, store-or-None): the provisioned hosts, or every host of ``-i`` inventory."""
    from dataclasses import replace

    from fedctl.config.inventory import load_inventory
    from fedctl.errors import UsageError

    e = env()
    if inventory:
        inv = load_inventory(inventory)
        if inv.provider == "local":
            raise UsageError(f"{inventory}: provider local has no hosts to run commands on")
        hosts = [(h, set(h.roles) or {"server", "client"}) for h in inv.hosts]
    else:
        state = e.store.load()
        server = state.server.host
        hosts = []
        for r in state.hosts:
            if r.status == "torn_down":
                continue
            roles = ({"server"} if r.name == server else set()) | ({"client"} if r.client_processes else set())
            hosts.append((replace(r.info, workdir=r.workdir) if r.workdir else r.info, roles))
    if role:
        if role not in ("server", "client"):
            raise UsageError(f"--role {role!r} is not valid (valid: server, client)")
        hosts = [(h, rs) for h, rs in hosts if role in rs]
    if host:
        known = {h.name for h, _ in hosts}
        unknown = [n for n in host if n not in known]
        if unknown:
            raise UsageError(f"unknown host(s): {', '.join(unknown)} (hosts: {', '.join(sorted(known)) or 'none'})")
        hosts = [(h, rs) for h, rs in hosts if h.name in host]
    if not hosts:
        raise UsageError("no host matches the filters")
    return [h for h, _ in hosts]


def exec_cmd(
    command: List[str] = typer.Argument(..., help="the command; after `--`. One argument is run as a shell string"),
    inventory: Optional[str] = InventoryOpt,
    role: Optional[str] = typer.Option(None, "--role", help="only hosts with this role: server | client"),
    host: Optional[List[str]] = typer.Option(None, "--host", help="only this host (repeatable)"),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="per-host command timeout in seconds"),
    as_json: bool = JsonOpt,
) -> None:
    """Run CMD on hosts in parallel; output prefixed with the host; exit non-zero if any failed."""
    from rich.table import Table
    from rich.text import Text

    from fedctl.errors import HostsFailed
    from fedctl.fleet import Fleet
    from fedctl.ops.common import known_hosts_path

    e = env()
    hosts = _targets(inventory, role, host)
    cmd = command[0] if len(command) == 1 else shlex.join(command)
    with Fleet(hosts, known_hosts=known_hosts_path(e.store)) as fleet:
        results = fleet.run(cmd, timeout=timeout)
    if as_json:
        e.print_json(
            [
                {
                    "host": r.host,
                    "ok": r.ok and r.value.ok,
                    "exit_code": r.value.exit_code if r.ok else None,
                    "stdout": r.value.stdout if r.ok else "",
                    "stderr": r.value.stderr if r.ok else "",
                    "error": r.error,
                }
                for r in results
            ]
        )
    else:
        width = max(len(r.host) for r in results)
        for r in results:
            if not r.ok:
                continue
            # one output line, one printed line: soft_wrap leaves a long line to the terminal (and
            # whole in a pipe) instead of rich breaking it at the console width under the prefix
            for stream, mark, style in ((r.value.stdout, "|", "cyan"), (r.value.stderr, "!", "magenta")):
                for line in stream.splitlines():
                    e.console.print(Text.assemble((r.host.ljust(width), style), f" {mark} ", line),
                                    soft_wrap=True, highlight=False)
        t = Table(title_justify="left")
        t.add_column("host")
        t.add_column("exit")
        t.add_column("time")
        for r in results:
            if r.ok:
                code = "timeout" if r.value.timed_out else str(r.value.exit_code)
                style = "green" if r.value.ok else "red"
                t.add_row(r.host, Text(code, style=style), f"{r.value.duration:.2f}s")
            else:
                t.add_row(r.host, Text(f"error: {r.error}", style="red"), f"{r.duration:.2f}s")
        e.console.print(t)
    failed = [r.host for r in results if not (r.ok and r.value.ok)]
    if failed:
        raise HostsFailed(f"failed on {len(failed)} of {len(results)} host(s): {', '.join(failed)}",
                          host_key=results.host_key_failed)


def register(app: typer.Typer) -> None:
    app.command(
        "exec",
        context_settings={"allow_interspersed_args": False},
    )(exec_cmd)
