"""Fakes for fast unit tests: a Connector keyed by regex, with in-memory files.

    rules = [(r"^nvidia-smi", CommandResult(0, "GPU 0: ...", "", 0.0)),
             (r"cat .*/status.json", lambda cmd, env, stdin: CommandResult(0, "{}", "", 0.0))]
    fleet = Fleet(hosts, connector_factory=FakeFactory(rules))

Every call is recorded (``calls``; ``commands`` for just the command strings), so tests can assert
what would have run on a host without any network.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Union

from fedctl.connectors.base import CommandResult, Connector, HostInfo
from fedctl.errors import RemoteError

Responder = Callable[[str, Mapping[str, str] | None, bytes | None], Union[CommandResult, str]]
Rule = tuple[Union[str, "re.Pattern[str]"], Union[CommandResult, Responder]]

OK = CommandResult(0, "", "", 0.0)


@dataclass
class Call:
    """One recorded call: ``verb`` is run/put/put_bytes/get/connect/close."""

    verb: str
    args: dict[str, Any] = field(default_factory=dict)


class FakeConnector(Connector):
    """A Connector that answers commands from ``rules`` (first ``re.search`` match wins).

    A rule's value is a CommandResult, or a callable ``(command, env, stdin)`` returning a
    CommandResult or a str (taken as stdout, exit 0). Unmatched commands get ``default``
    (success with no output unless told otherwise). ``connect_error`` makes ``connect`` raise it.
    """

    def __init__(
        self,
        host: HostInfo,
        rules: Iterable[Rule] = (),
        files: Mapping[str, bytes] | None = None,
        default: CommandResult = OK,
        connect_error: BaseException | None = None,
        home: str = "/home/fake",
    ) -> None:
        super().__init__(host)
        self.rules = [(re.compile(p) if isinstance(p, str) else p, v) for p, v in rules]
        self.files: dict[str, bytes] = dict(files or {})
        self.modes: dict[str, int] = {}
        self.default = default
        self.connect_error = connect_error
        self._home = home
        self.calls: list[Call] = []
        self.connects = 0
        self.connected = False
        self.closed = False

    @property
    def commands(self) -> list[str]:
        return [c.args["command"] for c in self.calls if c.verb == "run"]

    def add_rule(self, pattern: str, value: CommandResult | Responder) -> None:
        """Add a rule that takes precedence over the existing ones."""
        self.rules.insert(0, (re.compile(pattern), value))

    def connect(self) -> None:
        self.calls.append(Call("connect"))
        if self.connect_error is not None:
            raise self.connect_error
        if not self.connected:  # idempotent, like the real connectors: count real (re)connects only
            self.connects += 1
            self.connected = True
        self.closed = False

    def close(self) -> None:
        self.calls.append(Call("close"))
        self.closed = True
        self.connected = False

    def run(
        self,
        command: str,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        self.calls.append(Call("run", {"command": command, "timeout": timeout, "env": dict(env or {}), "stdin": stdin}))
        for pattern, value in self.rules:
            if pattern.search(command):
                if callable(value):
                    out = value(command, env, stdin)
                    return CommandResult(0, out, "", 0.0) if isinstance(out, str) else out
                return value
        return self.default

    def put(self, local: str, remote: str, mode: int | None = None) -> None:
        with open(local, "rb") as f:
            data = f.read()
        self.calls.append(Call("put", {"local": local, "remote": remote, "mode": mode}))
        remote = self.expand(remote)
        self.files[remote] = data
        self.modes[remote] = mode if mode is not None else (os.stat(local).st_mode & 0o777)

    def put_bytes(self, data: bytes, remote: str, mode: int = 0o644) -> None:
        self.calls.append(Call("put_bytes", {"remote": remote, "mode": mode, "size": len(data)}))
        remote = self.expand(remote)
        self.files[remote] = bytes(data)
        self.modes[remote] = mode

    def get(self, remote: str, local: str) -> None:
        self.calls.append(Call("get", {"remote": remote, "local": local}))
        remote = self.expand(remote)
        if remote not in self.files:
            raise RemoteError(f"host {self.host.name}: cannot fetch {remote}: no such file (fake)")
        with open(local, "wb") as f:
            f.write(self.files[remote])

    def home(self) -> str:
        return self._home


class FakeFactory:
    """A ``connector_factory`` for Fleet: one FakeConnector per host, kept in ``connectors``.

    ``per_host`` adds rules for one host (checked before the shared ones); ``connect_errors`` maps a
    host name to the exception its connect raises.
    """

    def __init__(
        self,
        rules: Iterable[Rule] = (),
        per_host: Mapping[str, Iterable[Rule]] | None = None,
        connect_errors: Mapping[str, BaseException] | None = None,
        default: CommandResult = OK,
    ) -> None:
        self.rules = list(rules)
        self.per_host = {k: list(v) for k, v in (per_host or {}).items()}
        self.connect_errors = dict(connect_errors or {})
        self.default = default
        self.connectors: dict[str, FakeConnector] = {}
        self.created = 0

    def __call__(self, host: HostInfo) -> FakeConnector:
        self.created += 1
        conn = FakeConnector(
            host,
            rules=self.per_host.get(host.name, []) + self.rules,
            default=self.default,
            connect_error=self.connect_errors.get(host.name),
        )
        self.connectors[host.name] = conn
        return conn


def hosts(n: int, **overrides: Any) -> list[HostInfo]:
    """``n`` HostInfo objects h1..hn on 10.0.0.x, for tests that need some hosts."""
    return [HostInfo(name=f"h{i + 1}", address=f"10.0.0.{i + 1}", **overrides) for i in range(n)]
