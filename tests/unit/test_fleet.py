"""Fleet fan-out with fake connectors: ordering, isolation of failures, connection reuse."""

from __future__ import annotations

import threading

import pytest

from fedctl.connectors.base import CommandResult, HostInfo
from fedctl.errors import ConnectError, HostKeyError
from fedctl.fleet import Fleet, FleetResult, HostResult
from tests.fakes import FakeConnector, FakeFactory, hosts


def test_results_in_host_order_with_values():
    factory = FakeFactory([(r"^hostname$", lambda cmd, env, stdin: "fake\n")])
    hs = hosts(4)
    with Fleet(hs, connector_factory=factory) as fleet:
        res = fleet.map(lambda c: c.host.name.upper())
        assert [r.host for r in res] == ["h1", "h2", "h3", "h4"]
        assert [r.value for r in res] == ["H1", "H2", "H3", "H4"]
        assert res.ok and len(res.succeeded) == 4 and res.failed == []
        sub = fleet.map(lambda c: c.host.name, hosts=["h3", hs[0]])
        assert [r.host for r in sub] == ["h3", "h1"]
        assert fleet.run("hostname").by_host()["h2"].value.stdout == "fake\n"


def test_one_exception_does_not_kill_the_others():
    def fn(c):
        if c.host.name == "h2":
            raise KeyError("boom")
        return 1

    with Fleet(hosts(3), connector_factory=FakeFactory()) as fleet:
        res = fleet.map(fn)
    assert [r.ok for r in res] == [True, False, True]
    bad = res[1]
    assert isinstance(bad.exception, KeyError)
    assert bad.error == "KeyError: 'boom'" and bad.value is None
    assert not res.ok and [r.host for r in res.failed] == ["h2"]


def test_connect_error_is_a_failed_result_and_not_retried():
    err = HostKeyError("host h2 key changed", hint="ssh-keygen -f x -R 'h2'")
    factory = FakeFactory(connect_errors={"h2": err})
    with Fleet(hosts(3), connector_factory=factory) as fleet:
        first = fleet.run("true")
        second = fleet.run("true")
        assert [r.ok for r in first] == [True, False, True]
        assert second[1].exception is err
        assert first[1].error is not None and "ssh-keygen -f x -R 'h2'" in first[1].error
        assert fleet.unreachable == {"h2": err}
        # the dead host was asked to connect once, not once per call
        assert [c.verb for c in factory.connectors["h2"].calls] == ["connect"]
        fleet.forget("h2")
        fleet.run("true")
        assert [c.verb for c in factory.connectors["h2"].calls] == ["connect", "connect"]


def test_one_connector_per_host_reused_and_closed():
    factory = FakeFactory()
    fleet = Fleet(hosts(5), connector_factory=factory)
    for _ in range(3):
        assert fleet.run("true").ok
    assert factory.created == 5
    assert all(c.connects == 1 for c in factory.connectors.values())
    assert all(len(c.commands) == 3 for c in factory.connectors.values())
    fleet.close()
    assert all(c.closed for c in factory.connectors.values())
    with pytest.raises(RuntimeError):
        fleet.run("true")


def test_nonzero_exit_and_timeout_are_failures_with_the_result_kept():
    factory = FakeFactory(
        per_host={
            "h1": [(r".", CommandResult(2, "", "line1\nno such file\n", 0.1))],
            "h2": [(r".", CommandResult(-1, "partial", "", 5.0, timed_out=True))],
        }
    )
    with Fleet(hosts(3), connector_factory=factory) as fleet:
        res = fleet.run("cat x", timeout=5)
    assert res[0].error == "exit 2: no such file" and res[0].value.exit_code == 2
    assert res[1].error == "timed out" and res[1].value.stdout == "partial"
    assert res[2].ok
    assert [c.args["timeout"] for c in factory.connectors["h1"].calls if c.verb == "run"] == [5]


def test_runs_in_parallel_bounded_by_pool():
    active = 0
    peak = 0
    lock = threading.Lock()
    # each task waits until 4 run at once: that happens only when the pool really runs 4 in parallel
    # (fewer: the barrier times out and the tasks fail); more than 4 would raise the peak
    together = threading.Barrier(4, timeout=10)

    def task(c):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        together.wait()
        with lock:
            active -= 1
        return True

    with Fleet(hosts(12), pool=4, connector_factory=FakeFactory()) as fleet:
        res = fleet.map(task)
    assert res.ok, [r.error for r in res.failed]
    assert peak == 4


def test_unknown_and_duplicate_hosts_are_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        Fleet([HostInfo("a", "1"), HostInfo("a", "2")])
    with Fleet(hosts(2), connector_factory=FakeFactory()) as fleet:
        with pytest.raises(ValueError, match="h1, h2"):
            fleet.map(lambda c: 1, hosts=["nope"])
        assert fleet.map(lambda c: 1, hosts=[]) == []


def test_fleet_result_helpers():
    r = FleetResult([HostResult("a", True, 1), HostResult("b", False, None, "x", ConnectError("x"))])
    assert [x.host for x in r.succeeded] == ["a"] and [x.host for x in r.failed] == ["b"]
    assert not r.ok and FleetResult().ok
    assert r.by_host()["b"].error == "x"


def test_fake_connector_rules_files_and_expand(tmp_path):
    c = FakeConnector(HostInfo("h", "x"), rules=[(r"^echo (\w+)", CommandResult(0, "hi\n", "", 0.0))])
    assert c.run("echo hello").stdout == "hi\n"
    assert c.run("other").ok and c.commands == ["echo hello", "other"]
    c.put_bytes(b"s", "~/tok", mode=0o600)
    assert c.files["/home/fake/tok"] == b"s" and c.modes["/home/fake/tok"] == 0o600
    c.get("~/tok", str(tmp_path / "t"))
    assert (tmp_path / "t").read_bytes() == b"s"


def test_local_hosts_get_local_connectors_by_default(tmp_path):
    h = HostInfo("me", "localhost", kind="local")
    with Fleet([h]) as fleet:
        res = fleet.run("echo $((1+2))")
    assert res.ok and res[0].value.stdout == "3\n"
