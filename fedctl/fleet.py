"""Run one operation on many hosts at once and get one typed result per host.

A ``Fleet`` keeps ONE connector per host for its whole life (opened lazily, reused by every call,
closed by ``close()``), so a command sequence such as provision -> start -> watch pays the SSH
handshake once per host. A failure on one host (unreachable, changed host key, an exception in the
operation) becomes that host's failed ``HostResult``; it never stops the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Generic, Iterable, Sequence, TypeVar

from fedctl.connectors.base import CommandResult, Connector, HostInfo
from fedctl.errors import FedctlError

log = logging.getLogger("fedctl.fleet")

T = TypeVar("T")
ConnectorFactory = Callable[[HostInfo], Connector]


@dataclass(frozen=True)
class HostResult(Generic[T]):
    """What one operation did on one host. ``error`` is a readable one-line-ish message when not ok."""

    host: str
    ok: bool
    value: T | None = None
    error: str | None = None
    exception: BaseException | None = None
    duration: float = 0.0


class FleetResult(list, Generic[T]):  # type: ignore[type-arg]
    """A list of HostResult in the order of the hosts asked for, with Fabric-GroupResult-like helpers."""

    @property
    def succeeded(self) -> list[HostResult[T]]:
        return [r for r in self if r.ok]

    @property
    def failed(self) -> list[HostResult[T]]:
        return [r for r in self if not r.ok]

    @property
    def host_key_failed(self) -> bool:
        """Whether a host failed because its key changed (or was unknown under ``strict``)."""
        from fedctl.errors import HostKeyError

        return any(isinstance(r.exception, HostKeyError) for r in self)

    @property
    def ok(self) -> bool:
        """True when every host succeeded (and vacuously for no hosts)."""
        return all(r.ok for r in self)

    def by_host(self) -> dict[str, HostResult[T]]:
        return {r.host: r for r in self}


def describe_error(e: BaseException) -> str:
    """A message for a table cell: fedctl errors as written (with hint), others with their type."""
    if isinstance(e, FedctlError):
        return str(e)
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class Fleet:
    """Parallel fan-out over ``hosts`` with one persistent connector per host.

    ``pool`` bounds the number of hosts worked on at once; ``connector_factory(host)`` replaces the
    default (``fedctl.connectors.connector_for``: local, SSH, or the host's provider's own), e.g.
    with fakes in tests. A host whose connect failed keeps that error for the Fleet's lifetime
    (``forget`` clears it), so a dead host costs one connect timeout per Fleet, not one per call.
    Do not call ``map`` from inside ``fn``.
    """

    def __init__(
        self,
        hosts: Sequence[HostInfo],
        known_hosts: str | None = None,
        pool: int = 32,
        connect_timeout: float = 10.0,
        connector_factory: ConnectorFactory | None = None,
    ) -> None:
        # one Counter pass: list.count per name was O(n^2), 1.7 s at 10,000 hosts
        dupes = sorted(name for name, n in Counter(h.name for h in hosts).items() if n > 1)
        if dupes:
            raise ValueError(f"duplicate host names in fleet: {', '.join(dupes)}")
        self.hosts: tuple[HostInfo, ...] = tuple(hosts)
        self.known_hosts = known_hosts
        self.pool = max(1, pool)
        self.connect_timeout = connect_timeout
        self._factory = connector_factory or self._default_factory
        self._by_name = {h.name: h for h in self.hosts}
        self._connectors: dict[str, Connector] = {}
        self._connect_errors: dict[str, BaseException] = {}
        self._host_locks = {h.name: threading.Lock() for h in self.hosts}
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    def _default_factory(self, host: HostInfo) -> Connector:
        # local, SSH, or the connector the host's provider registered (a Slurm node: job steps)
        from fedctl.connectors import connector_for

        return connector_for(host, known_hosts=self.known_hosts, connect_timeout=self.connect_timeout)

    # ---- connectors ------------------------------------------------------------------------------

    def connector(self, host: HostInfo | str) -> Connector:
        """The connected connector of one host (created and connected on first use).

        Raises the host's connect error, the remembered one if an earlier connect failed.
        """
        name = host if isinstance(host, str) else host.name
        info = self._resolve([name])[0]
        with self._host_locks[name]:  # one connect per host even when two calls race
            if name in self._connect_errors:
                raise self._connect_errors[name]
            conn = self._connectors.get(name)
            if conn is None:
                conn = self._factory(info)
                self._connectors[name] = conn
            try:
                conn.connect()  # idempotent; reconnects a connection that died
            except BaseException as e:
                self._connect_errors[name] = e
                raise
            return conn

    def forget(self, host: str | None = None) -> None:
        """Drop remembered connect failures (of one host, or all) so the next call tries again."""
        if host is None:
            self._connect_errors.clear()
        else:
            self._connect_errors.pop(host, None)

    @property
    def unreachable(self) -> dict[str, BaseException]:
        """Hosts whose connect failed in this Fleet, with the error."""
        return dict(self._connect_errors)

    # ---- fan-out ---------------------------------------------------------------------------------

    def map(
        self, fn: Callable[[Connector], T], hosts: Iterable[HostInfo | str] | None = None
    ) -> FleetResult[T]:
        """Run ``fn(connector)`` on each host in parallel; results in the order of ``hosts``."""
        targets = self._resolve(hosts)
        if not targets:
            return FleetResult()
        executor = self._get_executor()
        futures = [executor.submit(self._one, h, fn) for h in targets]
        return FleetResult(f.result() for f in futures)

    def run(
        self,
        command: str,
        timeout: float | None = None,
        hosts: Iterable[HostInfo | str] | None = None,
        env: dict[str, str] | None = None,
    ) -> FleetResult[CommandResult]:
        """Run one shell command everywhere. A host is ok when the command exited 0 in time; the
        CommandResult is in ``value`` either way (None only when the host could not be reached)."""

        def call(c: Connector) -> CommandResult:
            return c.run(command, timeout=timeout, env=env)

        results = self.map(call, hosts)
        out: FleetResult[CommandResult] = FleetResult()
        for r in results:
            v = r.value
            if r.ok and v is not None and not v.ok:
                why = "timed out" if v.timed_out else f"exit {v.exit_code}"
                tail = v.stderr.strip().splitlines()[-1:] if v.stderr.strip() else []
                msg = why + (f": {tail[0][:300]}" if tail else "")
                r = HostResult(r.host, False, v, msg, None, r.duration)
            out.append(r)
        return out

    def _one(self, host: HostInfo, fn: Callable[[Connector], T]) -> HostResult[T]:
        start = time.monotonic()
        try:
            conn = self.connector(host.name)
            value = fn(conn)
        except Exception as e:  # noqa: BLE001 - one host's failure becomes its result, by design
            if not isinstance(e, FedctlError):
                log.debug("host %s: %s", host.name, e, exc_info=True)
            return HostResult(host.name, False, None, describe_error(e), e, time.monotonic() - start)
        return HostResult(host.name, True, value, None, None, time.monotonic() - start)

    def _resolve(self, hosts: Iterable[HostInfo | str] | None) -> list[HostInfo]:
        if hosts is None:
            return list(self.hosts)
        out = []
        for h in hosts:
            name = h if isinstance(h, str) else h.name
            if name not in self._by_name:
                raise ValueError(
                    f"host {name!r} is not in this fleet (hosts: {', '.join(self._by_name) or 'none'})"
                )
            out.append(self._by_name[name])
        return out

    def _get_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("this Fleet is closed")
            if self._executor is None:
                # threads start as work arrives, so a fleet that grows (a session's) is not capped
                self._executor = ThreadPoolExecutor(max_workers=self.pool, thread_name_prefix="fedctl-fleet")
            return self._executor

    def add_hosts(self, hosts: Sequence[HostInfo]) -> None:
        """Take ``hosts`` into the fleet. A host whose HostInfo changed (a corrected identity file)
        gets a fresh connector; unchanged hosts keep their open connection."""
        stale = []
        with self._lock:
            for h in hosts:
                old = self._by_name.get(h.name)
                if old == h:
                    continue
                if old is None:
                    self._host_locks[h.name] = threading.Lock()
                else:
                    conn = self._connectors.pop(h.name, None)
                    if conn is not None:
                        stale.append(conn)
                    self._connect_errors.pop(h.name, None)
                self._by_name[h.name] = h
            self.hosts = tuple(self._by_name.values())
        for conn in stale:
            _close_quietly(conn)

    # ---- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connector (in parallel: closing 50 SSH connections serially adds up)."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
            conns, self._connectors = list(self._connectors.values()), {}
        if executor is not None:
            list(executor.map(_close_quietly, conns))
            executor.shutdown(wait=True)
        else:
            for c in conns:
                _close_quietly(c)

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FleetView:
    """Some hosts of a longer-lived Fleet, used like a Fleet; closing it closes nothing.

    A command session (``fedctl.ops.common.session``) owns one Fleet, so each host is connected
    once for the whole command, and hands out views to the operations it runs. A view starts each
    operation with fresh connect attempts (``forget``): in a long ``fedctl run`` a host that was
    down for a minute is tried again, over the same Fleet.
    """

    def __init__(self, fleet: Fleet, names: Sequence[str]) -> None:
        self._fleet = fleet
        self.names = tuple(names)
        for n in self.names:
            fleet.forget(n)

    @property
    def hosts(self) -> tuple[HostInfo, ...]:
        return tuple(self._fleet._resolve(self.names))

    def connector(self, host: HostInfo | str) -> Connector:
        return self._fleet.connector(host)

    def forget(self, host: str | None = None) -> None:
        for n in self.names if host is None else [host]:
            self._fleet.forget(n)

    @property
    def unreachable(self) -> dict[str, BaseException]:
        return {n: e for n, e in self._fleet.unreachable.items() if n in self.names}

    def map(self, fn: Callable[[Connector], T], hosts: Iterable[HostInfo | str] | None = None) -> FleetResult[T]:
        return self._fleet.map(fn, self.names if hosts is None else hosts)

    def run(
        self,
        command: str,
        timeout: float | None = None,
        hosts: Iterable[HostInfo | str] | None = None,
        env: dict[str, str] | None = None,
    ) -> FleetResult[CommandResult]:
        return self._fleet.run(command, timeout=timeout, hosts=self.names if hosts is None else hosts, env=env)

    def close(self) -> None:
        """Nothing: the session that owns the Fleet closes it."""

    def __enter__(self) -> "FleetView":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_quietly(conn: Connector) -> None:
    try:
        conn.close()
    except Exception as e:  # noqa: BLE001 - closing must go on for the other hosts
        log.warning("closing %r: %s", conn, e)
