"""The run's Slurm job for watch, status and cost: ``scontrol show job -o`` parsed strictly (odd lines
and fields reported, not guessed), the provider-neutral hook, the 10 s throttle, the job line on the
80x24 screen and in plain lines, node-hours and their price in the one cost ledger and the budget.
(The same on a real cluster: tests/integration/test_slurm_watch.py.)"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import pytest

from fedctl.budget import Budget, budget_notes, check_guards, watchdog_spec
from fedctl.connectors.base import HostInfo
from fedctl.cost import estimate, run_cost
from fedctl.dashboard.fmt import allocation_text
from fedctl.dashboard.plain import render_lines, status_line
from fedctl.monitor.allocation import AllocationReader, aged
from fedctl.ops.status import RunStatus
from fedctl.provider_fields import MachineRecord
from fedctl.providers import provider_class
from fedctl.providers.base import AllocationStatus, Provider, RunContext
from fedctl.providers.slurm_config import SlurmHostSettings
from fedctl.providers.slurm_jobs import SlurmCli
from fedctl.providers.slurm_status import FORGOTTEN, UNKNOWN, allocation_status, parse_show_job, slurm_seconds
from fedctl.state import HostRecord, RunState
from tests.unit.test_render import broken_words, build_model, screen

T0 = 1_764_000_000.0
# what Slurm 22.05's scontrol printed on the test cluster (shortened: the fields after NodeList kept)
RUNNING = ("JobId=12 JobName=fedctl-r1 UserId=me(1000) GroupId=me(1000) Priority=4294901759 Nice=0 Account=(null) "
           "QOS=(null) JobState=RUNNING Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 "
           "ExitCode=0:0 RunTime=00:01:05 TimeLimit=00:10:00 TimeMin=N/A SubmitTime=2026-12-06T02:53:47 "
           "StartTime=2026-12-06T02:53:47 EndTime=2026-12-06T03:03:47 Partition=debug AllocNode:Sid=localhost:17166 "
           "ReqNodeList=(null) ExcNodeList=(null) NodeList=fl[1-2] BatchHost=fl1 NumNodes=2 NumCPUs=2 NumTasks=2 "
           "CPUs/Task=1 TRES=cpu=2,node=2,billing=2 Comment=fedctl-origin=abc Power= \n")
PENDING = RUNNING.replace("JobState=RUNNING Reason=None", "JobState=PENDING Reason=Resources").replace(
    "RunTime=00:01:05", "RunTime=00:00:00").replace("NodeList=fl[1-2]", "NodeList=(null)").replace(
    "NumNodes=2 ", "NumNodes=2-2 ")
TIMEOUT = RUNNING.replace("JobState=RUNNING Reason=None", "JobState=TIMEOUT Reason=TimeLimit").replace(
    "RunTime=00:01:05", "RunTime=00:10:00").replace("ExitCode=0:0", "ExitCode=0:15")


# -- parsing ----------------------------------------------------------------------------------------
def test_a_running_job_its_nodes_and_time_left() -> None:
    a = parse_show_job("12", RUNNING)
    assert (a.job, a.state, a.reason, a.nodelist, a.nodes) == ("12", "RUNNING", None, "fl[1-2]", 2)
    assert (a.elapsed_s, a.time_limit_s, a.time_left_s, a.ended, a.problems) == (65.0, 600.0, 535.0, False, ())


def test_a_pending_job_says_why_and_has_no_time_left() -> None:
    a = parse_show_job("12", PENDING)
    assert (a.state, a.reason, a.nodelist, a.nodes, a.time_left_s, a.ended) == (
        "PENDING", "Resources", "", 2, None, False)
    assert allocation_text(a) == "job 12 PENDING (Resources) · 2 nodes asked · limit 10m00s"


def test_an_ended_job_gives_slurms_reason_and_exit_code() -> None:
    a = parse_show_job("12", TIMEOUT)
    assert (a.state, a.reason, a.ended, a.time_left_s) == ("TIMEOUT", "TimeLimit, exit 0:15", True, None)
    assert allocation_text(a) == "job 12 ended: TIMEOUT (TimeLimit, exit 0:15) after 10m00s"


def test_slurm_times_and_an_unlimited_job() -> None:
    assert [slurm_seconds(t) for t in ("00:00:07", "1-02:03:04", "120:00:00", "5:00", "00:61:00", "x")] == [
        7.0, 93784.0, 432000.0, None, None, None]
    a = parse_show_job("12", RUNNING.replace("TimeLimit=00:10:00", "TimeLimit=UNLIMITED"))
    assert (a.time_limit_s, a.time_left_s, a.problems) == (None, None, ())
    assert "left" not in allocation_text(a) and "limit no limit" in allocation_text(a)


def test_odd_lines_and_fields_are_reported_not_guessed() -> None:
    text = RUNNING.replace("RunTime=00:01:05", "RunTime=soon").replace("NumNodes=2 ", "NumNodes=two ")
    text += "garbage without fields\nJobId=99 JobState=RUNNING\n"
    a = parse_show_job("12", text)
    assert (a.state, a.elapsed_s, a.nodes, a.time_left_s) == ("RUNNING", None, None, None)
    assert a.problems == ("line 2 is not a job record: 'garbage without fields'", "line 3 is job 99, no part of job 12",
                          "NumNodes 'two' is not a node count", "RunTime 'soon' is not [D-]HH:MM:SS")
    assert "4 odd field(s)" in allocation_text(a)
    bad_state = parse_show_job("12", RUNNING.replace("JobState=RUNNING", "JobState=running!"))
    assert bad_state.state == UNKNOWN and not bad_state.ended  # an unreadable state is no end
    assert parse_show_job("12", "").problems == ("no record of job 12 in scontrol's answer",)


def test_the_answer_read_is_bounded() -> None:
    a = parse_show_job("12", RUNNING + "x=y\n" * 40000)
    assert a.state == "RUNNING"
    assert a.problems[0].startswith("scontrol printed ") and a.problems[-1].endswith("more line(s) not read")


def test_a_heterogeneous_jobs_parts_add_their_nodes() -> None:
    second = RUNNING.replace("JobId=12 ", "JobId=13 HetJobId=12 ").replace("NodeList=fl[1-2]", "NodeList=fl3").replace(
        "NumNodes=2 ", "NumNodes=1 ")
    a = parse_show_job("12", RUNNING.replace("JobId=12 ", "JobId=12 HetJobId=12 ") + second)
    assert (a.nodelist, a.nodes, a.problems) == ("fl[1-2],fl3", 3, ())


# -- asking slurmctld through the provider's hook -----------------------------------------------------
class FakeCli(SlurmCli):
    """scontrol's answers, keyed by job id; every command run is recorded."""

    def __init__(self, answers: dict[str, Any]) -> None:
        super().__init__()
        self.answers = answers
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str]) -> str:
        from fedctl.providers.base import ProviderError

        self.calls.append(list(argv))
        answer = self.answers[argv[-1]]
        if isinstance(answer, Exception):
            raise answer
        if answer is None:
            raise ProviderError("scontrol show failed (1): slurm_load_jobs error: Invalid job id specified")
        return str(answer)


def slurm_host(name: str, role: str, address: str = "(slurm node)", job: str | None = "12",
               settings: SlurmHostSettings | None = None) -> HostInfo:
    return HostInfo(name=name, address=address, roles=(role,), currency="SU",
                    provider_settings=settings or SlurmHostSettings(nodes=2),
                    machine=MachineRecord(id=job, origin="abc", done=("create",)) if job else None)


def test_the_slurm_provider_answers_through_the_hook_and_others_have_none() -> None:
    from fedctl.providers.base import ProviderError

    hosts = [slurm_host("slurm-server", "server"), slurm_host("slurm-node-01", "client")]
    ctx = RunContext(run_id="r1", origin="abc")
    cli = FakeCli({"12": RUNNING})
    slurm = provider_class("slurm")(hosts, ctx, cli=cli)  # type: ignore[call-arg]
    assert slurm.allocation_status(hosts) == parse_show_job("12", RUNNING)
    assert cli.calls == [["scontrol", "show", "job", "-o", "12"]]  # read-only, one command
    cli.answers["12"] = None
    assert slurm.allocation_status(hosts) == AllocationStatus(
        "12", FORGOTTEN, "no longer known to slurmctld (its record expired)")
    cli.answers["12"] = ProviderError("scontrol show failed (1): Unable to contact slurm controller")
    down = slurm.allocation_status(hosts)
    assert down is not None and (down.state, down.ended) == (UNKNOWN, False)
    assert down.problems == ("cannot ask slurmctld: scontrol show failed (1): Unable to contact slurm controller",)
    # nothing submitted yet: no job to ask about
    assert allocation_status([slurm_host("slurm-server", "server", job=None)], cli=cli) is None
    static_hosts = [HostInfo(name="h1", address="127.0.0.1")]
    static = provider_class("static").from_run(static_hosts, ctx)
    assert isinstance(static, Provider) and static.allocation_status(static_hosts) is None


def test_the_reader_asks_at_most_every_ten_seconds() -> None:
    now = [0.0]
    answers = iter([parse_show_job("12", PENDING), parse_show_job("12", RUNNING)])
    reader = AllocationReader(lambda: next(answers), clock=lambda: now[0])
    assert reader.get().state == "PENDING"  # type: ignore[union-attr]
    now[0] = 9.9
    assert reader.get().state == "PENDING" and reader.asked == 1  # type: ignore[union-attr]
    now[0] = 10.0
    assert reader.get().state == "RUNNING" and reader.asked == 2  # type: ignore[union-attr]


def test_a_running_jobs_elapsed_time_moves_on_between_reads() -> None:
    a = parse_show_job("12", RUNNING)
    assert aged(a, 100.0, 104.0).time_left_s == 531.0  # type: ignore[union-attr]
    pending = parse_show_job("12", PENDING)
    assert aged(pending, 100.0, 104.0) is pending


# -- on screen ----------------------------------------------------------------------------------------
def with_job(a: AllocationStatus, node_hours: float | None = 0.04) -> Any:
    snap = build_model().snapshot()
    return dataclasses.replace(snap, allocation=a, node_hours=node_hours)


def test_the_job_line_fits_80x24_and_breaks_no_word() -> None:
    snap = with_job(parse_show_job("12", RUNNING))
    lines = screen(snap, 80, 24)
    assert len(lines) <= 24 and max(len(ln) for ln in lines) <= 80
    job = [ln for ln in lines if ln.startswith("job 12 ")]
    assert job == ["job 12 RUNNING on fl[1-2] (2 nodes) · 8m55s left of 10m00s · 0.04 node-h"]
    assert not broken_words(lines)
    assert any(ln.startswith("client") for ln in lines) and any(ln.startswith("host") for ln in lines)


def test_plain_lines_and_json_carry_the_job() -> None:
    snap = with_job(parse_show_job("12", PENDING))
    assert status_line(snap).endswith(" job=12 job_state=PENDING job_reason=Resources")
    assert "job 12 PENDING (Resources) · 2 nodes asked · limit 10m00s" in render_lines(snap)
    d = json.loads(json.dumps(snap.to_dict()))
    assert d["allocation"]["state"] == "PENDING" and d["allocation"]["reason"] == "Resources"
    assert d["node_hours"] == 0.04
    running = with_job(parse_show_job("12", RUNNING))
    # the plain status line is printed when it changes: it holds no ticking time
    assert status_line(running).endswith(" job=12 job_state=RUNNING nodes=fl[1-2]")
    assert status_line(build_model().snapshot()).endswith("straggler=c5(4.00s)")  # no job, no job fields


def test_fedctl_status_json_and_table_carry_the_job() -> None:
    from rich.console import Console

    from fedctl.cli.render import status_table

    st = RunStatus("r1", "running", 3, 10, None, None, [], {}, allocation=parse_show_job("12", RUNNING))
    assert st.to_dict()["allocation"]["time_left_s"] == 535.0
    console = Console(width=100, record=True)
    console.print(status_table(st))
    assert "job 12 RUNNING on fl[1-2] (2 nodes) · 8m55s left of 10m00s" in console.export_text()


# -- cost: node-hours, and money only with a price ------------------------------------------------------
def slurm_state(settings: SlurmHostSettings, released: float | None = None, placed: bool = True) -> RunState:
    names = [("slurm-server", "server", "fl1"), ("slurm-node-01", "client", "fl1"), ("slurm-node-02", "client", "fl2")]
    records = [HostRecord(slurm_host(n, role, addr if placed else "(slurm node)", settings=settings), role=role,
                          status="provisioned", acquired_at=T0, released_at=released) for n, role, addr in names]
    return RunState(run_id="r1", hosts=records, created_at=T0, rounds=10, clients=2, provider="slurm")


def test_the_allocation_is_one_row_of_node_hours_and_unpriced_without_a_price() -> None:
    rc = run_cost(slurm_state(SlurmHostSettings(nodes=2)), now=T0 + 1800)
    assert [(r.name, r.role, r.nodes, r.node_hours, r.cost, r.running) for r in rc.rows] == [
        ("job 12", "allocation", 2, pytest.approx(1.0), None, True)]
    assert rc.node_hours == pytest.approx(1.0)
    assert (rc.total, rc.per_hour, rc.unpriced, rc.unpriced_allocations) == ({}, {}, ["job 12"], ["job 12"])
    assert rc.to_dict()["node_hours"] == pytest.approx(1.0)


def test_money_is_node_hours_times_the_price_plus_gpu_hours() -> None:
    priced = SlurmHostSettings(nodes=2, price_per_node_hour=2.0)
    rc = run_cost(slurm_state(priced, released=T0 + 3600), now=T0 + 7200)
    assert rc.node_hours == pytest.approx(2.0)  # 2 nodes held one hour: released is the end
    assert rc.total == pytest.approx({"SU": 4.0}) and rc.per_hour == {} and not rc.rows[0].running
    gpus = SlurmHostSettings(nodes=2, gpus_per_node=4, price_per_node_hour=1.0, price_per_gpu_hour=0.5)
    rc = run_cost(slurm_state(gpus), now=T0 + 3600)
    assert rc.total == pytest.approx({"SU": 2 * 1.0 + 8 * 0.5}) and rc.rows[0].gpu_hours == pytest.approx(8.0)
    assert rc.per_hour == pytest.approx({"SU": 6.0})
    # before placement (a plan, a pending job): the nodes the clients will take
    est = estimate(slurm_state(priced, placed=False), rounds=10)
    assert [(r.name, r.price_per_hour) for r in est.rows] == [("job 12", 4.0)]


def test_the_budget_trips_on_max_cost_with_a_price_and_says_so_once_without_one() -> None:
    priced = slurm_state(SlurmHostSettings(nodes=2, price_per_node_hour=2.0))  # 4 SU an hour
    budget = Budget(max_cost=4.0)
    assert check_guards(budget, priced, T0 + 1800, None, None) is None
    trip = check_guards(budget, priced, T0 + 3600, None, None)
    assert trip is not None and trip.reason == "max_cost" and "SU" in trip.message
    assert budget_notes(priced, budget) == []
    spec = watchdog_spec(priced, priced.hosts[0], now=T0 + 1800, budget=budget, run_dir="/w/r1")
    assert (spec["rate_per_hour"], spec["spent"], spec["currency"]) == (4.0, pytest.approx(2.0), "SU")
    unpriced = slurm_state(SlurmHostSettings(nodes=2))
    assert check_guards(budget, unpriced, T0 + 10 * 3600, None, None) is None  # no money to count ...
    notes = budget_notes(unpriced, budget)  # ... and it is said, not silent
    assert len(notes) == 1 and notes[0].startswith("budget.max_cost is not applied to job 12 (2 node(s))")
    assert budget_notes(unpriced, Budget(max_hours=1.0)) == []


def test_a_job_that_never_ran_held_no_node() -> None:
    rc = run_cost(slurm_state(SlurmHostSettings(nodes=2, price_per_node_hour=2.0), placed=False), now=T0 + 3600)
    assert (rc.rows[0].nodes, rc.node_hours, rc.total) == (0, 0.0, {"SU": 0.0})
