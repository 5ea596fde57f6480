"""Slurm: a real test cluster (``slurm_cluster.py``: munged, slurmctld, four slurmd virtual nodes)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

import pytest

from fedctl.config.inventory import parse_inventory
from fedctl.connectors.base import HostInfo
from fedctl.providers.base import HostUpdate, ProviderError, RunContext
from fedctl.providers.slurm import SlurmProvider
from fedctl.providers.slurm_jobs import SlurmCli
from tests.integration.slurm_cluster import SlurmCluster
from tests.integration.sshd import SshdFleet
from tests.waiting import wait_until



def test_cluster_runs_cancels_and_leaves_no_job(slurm: SlurmCluster) -> None:
    """sbatch a job with a step on another node: squeue shows job and step; scancel ends both and
    their processes."""
    assert slurm.idle_nodes() == {"fl1", "fl2", "fl3", "fl4"}
    out = slurm.run(["sbatch", "--parsable", "-J", "smoke", "-N", "2",
                     "--wrap", "srun --overlap -N1 -n1 -w fl2 sleep 300 & sleep 300"]).stdout
    job = out.strip().split(";")[0]
    wait_until(lambda: slurm.run(["squeue", "-h", "-j", job, "-o", "%T"]).stdout.strip() == "RUNNING",
               20, what=f"job {job} running")
    wait_until(lambda: f"{job}.0 fl2" in slurm.run(["squeue", "-h", "-s", "-j", job, "-o", "%i %N"]).stdout,
               20, what="its step on fl2")
    assert slurm.job_ids() == [job]
    job_procs = set(slurm.job_pids())
    assert job_procs, "the job's processes carry the cluster's name in their environment"
    slurm.run(["scancel", job])
    wait_until(lambda: not slurm.job_ids(), 20, what="squeue to show no job")
    wait_until(lambda: not (set(slurm.leftover_pids()) & job_procs), 20, what="the job's processes to end")


# -- the slurm provider's built steps, against the cluster ------------------------------------------

RUN_ORIGIN = "origin0123456789"


def _hosts(nodes: int = 2) -> list[HostInfo]:
    raw = {"provider": "slurm", "slurm": {"partition": "debug", "nodes": nodes, "time": "10"}}
    return list(parse_inventory(raw, "slurm.yaml").hosts)


def _provider(slurm: SlurmCluster, tmp_path: Path, run_id: str, hosts: list[HostInfo],
              journal: Callable[[HostUpdate], None] = lambda _u: None, origin: str = RUN_ORIGIN,
              lines: list[str] | None = None) -> SlurmProvider:
    sink = lines if lines is not None else []
    ctx = RunContext(run_id=run_id, origin=origin, journal=journal, progress=sink.append)
    return SlurmProvider(hosts, ctx, cli=SlurmCli(env=slurm.env()), run_dir=tmp_path / run_id, poll_s=0.1)


def _squeue(slurm: SlurmCluster, *args: str) -> str:
    return slurm.run(["squeue", "-h", *args]).stdout


def test_allocate_journals_first_runs_steps_on_nodes_and_release_leaves_nothing(slurm: SlurmCluster,
                                                                                 tmp_path: Path) -> None:
    run_id = "alloc1"
    seen: list[tuple[str, str | None, str | None, str]] = []

    def journal(u: HostUpdate) -> None:
        rec = u.info.machine if u.info is not None else None
        assert rec is not None
        # what squeue shows of this run at the moment each record is saved
        seen.append((u.name, rec.intent, rec.id, _squeue(slurm, "-n", f"fedctl-{run_id}", "-o", "%i")))

    lines: list[str] = []
    prov = _provider(slurm, tmp_path, run_id, _hosts(2), journal, lines=lines)
    hosts = prov.allocate(prov._hosts)
    # the create intent of every host is saved while no job exists yet; the id right after sbatch
    first = [s for s in seen if s[1] == "create"]
    assert len(first) == 3 and all(s[2] is None and s[3].strip() == "" for s in first)
    job = hosts[0].machine.id
    confirmed = [s for s in seen if s[1] is None and s[2] == job]
    assert confirmed and seen.index(confirmed[0]) == 3  # the very next save after the intents
    assert [h.address for h in hosts] == ["fl1", "fl1", "fl2"]
    # each host its own workdir in the run folder (hosts on one shared home never share one), and
    # the node's NodeAddr as the address other nodes reach it at (the node names do not resolve here)
    assert [h.workdir for h in hosts] == [str(tmp_path / run_id / h.name) for h in hosts]
    assert {h.private_address for h in hosts} == {"127.0.0.1"}
    assert all(prov.reachable(h) for h in hosts)
    assert _squeue(slurm, "-j", job, "-o", "%j|%k|%T|%D").strip() == (
        f"fedctl-{run_id}|fedctl-origin={RUN_ORIGIN}|RUNNING|2")
    assert any(ln.startswith(f"slurm: submitted job {job}") for ln in lines)

    # the agent inside the allocation starts a job step on the node fedctl asks for
    status = prov.request_step("client-2", "fl2",
                               ["sh", "-c", "echo on $SLURMD_NODENAME step $SLURM_STEP_ID; sleep 300"])
    wait_until(lambda: f"{job}.0 client-2 fl2" in _squeue(slurm, "-s", "-j", job, "-o", "%i %j %N"), 20,
               what="the client step on fl2 in squeue")
    wait_until(lambda: "on fl2 step 0" in (tmp_path / run_id / "logs" / "client-2.out").read_text(), 20,
               what="the step's output")
    assert json.loads(Path(status).read_text()) == {"state": "running"}
    assert slurm.job_pids()

    prov.release(hosts)
    assert _squeue(slurm, "-o", "%i").strip() == ""
    wait_until(lambda: not slurm.job_pids(), 20, what="no process of the job left")
    assert not (tmp_path / run_id).exists()  # the run folder fedctl made went with the allocation


def test_a_run_folder_fedctl_did_not_make_is_neither_used_nor_removed(slurm: SlurmCluster, tmp_path: Path) -> None:
    """A folder already at the run folder's path without fedctl's mark: nothing is submitted or
    written into it, and release leaves it (and says so)."""
    theirs = tmp_path / "foreign1"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    lines: list[str] = []
    saved: dict[str, HostInfo] = {}
    prov = _provider(slurm, tmp_path, "foreign1", _hosts(1), lambda u: saved.__setitem__(u.name, u.info), lines=lines)
    with pytest.raises(ProviderError, match="foreign1 on this machine already exists and was not made by fedctl"):
        prov.allocate(prov._hosts)
    assert _squeue(slurm, "-n", "fedctl-foreign1", "-o", "%i").strip() == ""
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]
    prov.release(list(saved.values()))
    assert (theirs / "notes.txt").read_text() == "mine"
    assert any("left " in ln and "not a folder fedctl made there" in ln for ln in lines), lines


def test_stop_ends_steps_and_the_allocation_by_itself(slurm: SlurmCluster, tmp_path: Path) -> None:
    prov = _provider(slurm, tmp_path, "stop1", _hosts(1))
    hosts = prov.allocate(prov._hosts)
    status = prov.request_step("server", hosts[0].address, ["sleep", "300"])
    wait_until(lambda: Path(status).exists() and json.loads(Path(status).read_text())["state"] == "running", 20,
               what="the server step running")
    prov.stop_agent()
    wait_until(lambda: _squeue(slurm, "-o", "%i").strip() == "", 20, what="the allocation to end")
    assert json.loads(Path(status).read_text())["state"] == "exited"
    wait_until(lambda: not slurm.job_pids(), 20, what="no process of the job left")


def test_a_crash_right_after_sbatch_is_cleaned_by_name_and_comment(slurm: SlurmCluster, tmp_path: Path) -> None:
    """fedctl dies between sbatch and saving the id: the state holds only the create intent; teardown
    finds the job by its name and comment, and a second allocate would have adopted it."""
    saved: dict[str, HostInfo] = {}

    def journal(u: HostUpdate) -> None:
        assert u.info is not None and u.info.machine is not None
        if u.info.machine.id is not None:
            raise KeyboardInterrupt  # killed the moment the id is known, before it reaches the state
        saved[u.name] = u.info

    prov = _provider(slurm, tmp_path, "crash1", _hosts(1), journal)
    with pytest.raises(KeyboardInterrupt):
        prov.allocate(prov._hosts)
    assert all(h.machine is not None and h.machine.id is None and h.machine.intent == "create" for h in saved.values())
    job = _squeue(slurm, "-n", "fedctl-crash1", "-o", "%i").strip()
    assert job
    # a retried provision adopts that job instead of submitting a second one
    lines: list[str] = []
    again = _provider(slurm, tmp_path, "crash1", list(saved.values()), lines=lines)
    adopted = again.allocate(list(saved.values()))
    assert {h.machine.id for h in adopted} == {job}
    assert _squeue(slurm, "-n", "fedctl-crash1", "-o", "%i").strip() == job
    assert f"slurm: adopting job {job} submitted earlier" in lines

    # a teardown that fails half-way (scancel refused) leaves a terminate intent over the create;
    # the next teardown still cancels the job
    class FailingCancel(SlurmCli):
        def cancel(self, ids: Sequence[str]) -> None:
            raise ProviderError("scancel failed (1): Unable to contact slurm controller")

    state: dict[str, HostInfo] = {}
    first = SlurmProvider(list(saved.values()), RunContext(run_id="crash1", origin=RUN_ORIGIN,
                                                            journal=lambda u: state.__setitem__(u.name, u.info)),
                          cli=FailingCancel(env=slurm.env()), run_dir=tmp_path / "crash1", poll_s=0.1)
    with pytest.raises(ProviderError, match="Unable to contact"):
        first.release(list(saved.values()))
    assert {(h.machine.intent, h.machine.id) for h in state.values()} == {("terminate", None)}
    assert _squeue(slurm, "-n", "fedctl-crash1", "-o", "%i").strip() == job
    again.release(list(state.values()))
    assert _squeue(slurm, "-o", "%i").strip() == ""


def test_release_cancels_only_its_own_jobs(slurm: SlurmCluster, tmp_path: Path) -> None:
    """A job with the run's name but another origin's comment, and a recorded id of a job that is
    someone else's, are refused and said so; fedctl's own job is cancelled."""
    other = slurm.run(["sbatch", "--parsable", "-J", "fedctl-own1", "--comment", "fedctl-origin=elsewhere",
                       "--wrap", "sleep 300"]).stdout.strip()
    stranger = slurm.run(["sbatch", "--parsable", "-J", "someone", "--wrap", "sleep 300"]).stdout.strip()
    lines: list[str] = []
    prov = _provider(slurm, tmp_path, "own1", _hosts(1), lines=lines)
    hosts = prov.allocate(prov._hosts)
    mine = hosts[0].machine.id
    # the state is edited to record the stranger's id for one host
    hosts[1] = dataclasses.replace(hosts[1], machine=dataclasses.replace(hosts[1].machine, id=stranger))
    prov.release(hosts)
    left = set(_squeue(slurm, "-o", "%i").split())
    assert left == {other, stranger}
    assert mine not in left
    assert any(f"refusing to cancel job {other}" in ln for ln in lines)
    assert any(f"refusing to cancel job {stranger}" in ln for ln in lines)
    slurm.run(["scancel", other, stranger])
    wait_until(lambda: _squeue(slurm, "-o", "%i").strip() == "", 20, what="the test's own jobs gone")


def test_a_pending_job_says_why_and_can_be_cancelled(slurm: SlurmCluster, tmp_path: Path) -> None:
    """The partition is full: the live line gives squeue's pending reason; a timeout (or Ctrl-C)
    leaves it to release, which cancels it."""
    blocker = slurm.run(["sbatch", "--parsable", "-J", "blocker", "-N", "4", "--exclusive",
                         "--wrap", "sleep 300"]).stdout.strip()
    wait_until(lambda: _squeue(slurm, "-j", blocker, "-o", "%T").strip() == "RUNNING", 20, what="the blocker running")
    lines: list[str] = []
    saved: dict[str, HostInfo] = {}
    prov = _provider(slurm, tmp_path, "pend1", _hosts(1), lambda u: saved.__setitem__(u.name, u.info), lines=lines)
    with pytest.raises(ProviderError, match=r"did not start within 2s: job \d+ pending \(Resources\)"):
        prov.allocate(prov._hosts, start_timeout_s=2)
    assert any(ln.endswith("pending (Resources)") for ln in lines), lines
    # the state as saved: the job id known, the wait begun and not confirmed
    assert {(h.machine.intent, h.machine.id is not None) for h in saved.values()} == {("wait", True)}
    prov.release(list(saved.values()))
    assert _squeue(slurm, "-n", "fedctl-pend1", "-o", "%i").strip() == ""
    slurm.run(["scancel", blocker])
    wait_until(lambda: _squeue(slurm, "-o", "%i").strip() == "", 20, what="the blocker gone")


def _recorded_jobs(project: Path) -> set[str]:
    state = json.loads((project / ".fedctl" / "state.json").read_text())
    return {h["info"]["machine"]["id"] for h in state["hosts"]
            if (h.get("info") or {}).get("machine") and h["info"]["machine"].get("id")}


def test_sigkilled_fedctl_during_provision_then_teardown_leaves_no_job(slurm: SlurmCluster, tmp_path: Path) -> None:
    """``fedctl provision`` submits the allocation (journaled into the state) and is SIGKILLed while
    the job pends (the partition is full); ``fedctl teardown`` then cancels it: squeue shows nothing
    of the run, and the run folder fedctl made is gone."""
    fedctl = shutil.which("fedctl")
    if fedctl is None:
        pytest.skip("the fedctl console script is not installed")
    project = tmp_path / "project"
    project.mkdir()
    (project / "slurm.yaml").write_text("provider: slurm\nslurm:\n  partition: debug\n  nodes: 1\n  time: '10'\n")
    env = {**slurm.env(), "COLUMNS": "200", "FEDCTL_POLL_S": "0.2", "PYTHONUNBUFFERED": "1"}
    blocker = slurm.run(["sbatch", "--parsable", "-J", "blocker", "-N", "4", "--exclusive",
                         "--wrap", "sleep 300"]).stdout.strip()
    log = tmp_path / "provision.out"
    with open(log, "w") as out:
        proc = subprocess.Popen([fedctl, "provision", "-i", "slurm.yaml", "-n", "1", "--yes"], cwd=project,
                                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        job = wait_until(lambda: (project / ".fedctl" / "state.json").exists() and _recorded_jobs(project), 60,
                         what="the job id in the state file").pop()
        # killed while it waits, after its live line gave squeue's reason
        wait_until(lambda: f"slurm: job {job} pending (Resources)" in log.read_text(), 30, what="the pending line")
    finally:
        proc.kill()
        proc.wait(30)
    run_id = json.loads((project / ".fedctl" / "state.json").read_text())["run_id"]
    assert _squeue(slurm, "-n", f"fedctl-{run_id}", "-o", "%i").strip() == job
    assert (project / ".fedctl" / "local" / "slurm" / run_id / ".fedctl-tree").exists()

    # a teardown whose scancel fails leaves the run tearing down with its hosts still slots without a
    # node: status does not try to reach them (listed as not asked), as teardown does not
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scancel").write_text("#!/bin/sh\necho 'scancel: error: Unable to contact slurm controller' >&2\nexit 1\n")
    (fake / "scancel").chmod(0o755)
    bad = subprocess.run([fedctl, "teardown", "--yes"], cwd=project, env={**env, "PATH": f"{fake}:{env['PATH']}"},
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert bad.returncode != 0 and "Unable to contact slurm controller" in bad.stdout + bad.stderr
    status = subprocess.run([fedctl, "status", "--json"], cwd=project, env=env, capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert status.returncode == 0, status.stderr
    hosts = json.loads(status.stdout)["hosts"]
    assert json.loads(status.stdout)["phase"] == "tearing_down"
    assert [(h["reachable"], h["alive"]) for h in hosts] == [(None, {}), (None, {})], hosts

    res = subprocess.run([fedctl, "teardown", "--yes"], cwd=project, env=env, capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _squeue(slurm, "-n", f"fedctl-{run_id}", "-o", "%i").strip() == ""
    assert not (project / ".fedctl" / "local" / "slurm" / run_id).exists()
    slurm.run(["scancel", blocker])
    wait_until(lambda: _squeue(slurm, "-o", "%i").strip() == "", 20, what="the blocker gone")


def test_through_an_ssh_login_node(slurm: SlurmCluster, sshd_fleet: Callable[[int], SshdFleet],
                                   tmp_path: Path) -> None:
    """slurm.login is a loopback sshd host: sbatch, squeue, scontrol and scancel run there (with the
    login's environment), the run folder is written there (the shared filesystem), the agent starts a
    step, release cancels the job."""
    fleet = sshd_fleet(1)
    [h] = fleet.host_infos()
    workdir = tmp_path / "login-workdir"
    raw = {"provider": "slurm", "slurm": {"partition": "debug", "nodes": 1, "time": "10", "login": {
        "address": h.address, "port": h.port, "user": h.user, "identity_file": h.identity_file,
        "workdir": str(workdir), "environment": {"SLURM_CONF": str(slurm.conf)}}}}
    hosts = list(parse_inventory(raw, "slurm.yaml").hosts)
    lines: list[str] = []
    ctx = RunContext(run_id="ssh1", origin=RUN_ORIGIN, progress=lines.append, local_root=tmp_path / ".fedctl" / "local")
    prov = SlurmProvider(hosts, ctx, poll_s=0.1)  # built as for_run builds it: from the settings alone
    assert prov.cli.connector is not None and prov.cli.where == f"login node {h.address}"
    got = prov.allocate(hosts)
    job = got[0].machine.id
    assert prov.run_dir == PurePosixPath(workdir / "slurm" / "ssh1")
    assert (workdir / "slurm" / "ssh1" / "alloc.sh").exists()
    assert _squeue(slurm, "-j", job, "-o", "%j|%T").strip() == "fedctl-ssh1|RUNNING"
    prov.request_step("server", got[0].address, ["sh", "-c", "echo up on $SLURMD_NODENAME; sleep 300"])
    wait_until(lambda: f"{job}.0" in _squeue(slurm, "-s", "-j", job, "-o", "%i"), 20, what="the step in squeue")
    prov.release(got)
    assert _squeue(slurm, "-o", "%i").strip() == ""
    assert (tmp_path / ".fedctl" / "known_hosts").exists()  # fedctl's own known_hosts, not ~/.ssh's
    wait_until(lambda: not slurm.job_pids(), 20, what="no process of the job left")


def test_an_allocation_whose_nodes_do_not_see_the_run_folder_is_an_error(slurm: SlurmCluster, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch script runs but the agent never reports into the run folder (as when the compute
    nodes do not share the login node's filesystem): allocate says so, and release cancels the job."""
    saved: dict[str, HostInfo] = {}
    prov = _provider(slurm, tmp_path, "noshare1", _hosts(1), lambda u: saved.__setitem__(u.name, u.info))
    prepare = prov._prepare_dir

    def no_agent() -> None:
        prepare()
        (Path(prov.run_dir) / "alloc.sh").write_text("#!/bin/sh\nexec sleep 300\n")

    monkeypatch.setattr(prov, "_prepare_dir", no_agent)
    with pytest.raises(ProviderError, match=r"agent wrote nothing into .*noshare1 within 1s: the compute nodes"):
        prov.allocate(prov._hosts, agent_timeout_s=1)
    job = next(iter(saved.values())).machine.id
    assert _squeue(slurm, "-j", job, "-o", "%T").strip() == "RUNNING"
    prov.release(list(saved.values()))
    assert _squeue(slurm, "-o", "%i").strip() == ""


def test_a_node_connector_runs_commands_as_steps_and_files_go_to_the_shared_folder(slurm: SlurmCluster,
                                                                                   tmp_path: Path) -> None:
    """SlurmStepConnector: a command runs on the asked node as a step of the run's job (exit code,
    output, stdin, environment as over SSH); files written and read through it are on the shared
    filesystem; a node outside the job or an ended job is a ConnectError."""
    from fedctl.errors import ConnectError
    from fedctl.providers.slurm_connector import SlurmStepConnector

    prov = _provider(slurm, tmp_path, "conn1", _hosts(2))
    hosts = prov.allocate(prov._hosts)
    job = hosts[0].machine.id
    node2 = dataclasses.replace(hosts[2], environment={"GREETING": "hi there"})
    conn = SlurmStepConnector(node2, prov.cli)
    conn.connect()
    res = conn.run('echo "$GREETING from $SLURMD_NODENAME job $SLURM_JOB_ID"; cat; exit 3', timeout=30, stdin=b"fed\n")
    assert (res.exit_code, res.stdout) == (3, f"hi there from fl2 job {job}\nfed\n")
    target = tmp_path / "shared" / "payload.txt"
    target.parent.mkdir()
    conn.put_bytes(b"weights", str(target), mode=0o600)
    assert conn.run(f"cat {target}; stat -c %a {target}", timeout=30).stdout == "weights600\n"
    conn.get(str(target), str(tmp_path / "back.txt"))
    assert (tmp_path / "back.txt").read_bytes() == b"weights"
    timed = conn.run("sleep 300", timeout=2)
    assert timed.timed_out and timed.exit_code == -1
    wait_until(lambda: "fedctl-cmd" not in _squeue(slurm, "-s", "-j", job, "-o", "%j"), 20,
               what="the timed-out command's step to end")

    with pytest.raises(ConnectError, match="node fl3 is not in job"):
        SlurmStepConnector(dataclasses.replace(hosts[2], address="fl3"), prov.cli).connect()
    assert prov.ended(hosts) is None  # it runs
    prov.release(hosts)
    with pytest.raises(ConnectError, match=f"job {job} ended: "):
        conn.connect()
    assert (prov.ended(hosts) or "").startswith(f"job {job} ended: ")


def test_a_job_that_ends_early_is_reported_with_scontrols_reason(slurm: SlurmCluster, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch script fails at once (as a python3 missing on the nodes would): allocate reports
    the job's end as scontrol says it (state, reason, exit code), not a bare timeout."""
    prov = _provider(slurm, tmp_path, "early1", _hosts(1))
    prepare = prov._prepare_dir

    def failing() -> None:
        prepare()
        (Path(prov.run_dir) / "alloc.sh").write_text("#!/bin/sh\nexit 3\n")

    monkeypatch.setattr(prov, "_prepare_dir", failing)
    with pytest.raises(ProviderError, match=r"job \d+ ended before fedctl could use it: FAILED \(NonZeroExitCode, "
                                            r"exit 3:0\)"):
        prov.allocate(prov._hosts, agent_timeout_s=30)
    assert _squeue(slurm, "-n", "fedctl-early1", "-o", "%i").strip() == ""


def test_a_detached_process_runs_as_its_own_step_and_fedctls_stop_finds_and_ends_it(slurm: SlurmCluster,
                                                                                    tmp_path: Path) -> None:
    """spawn_detached through the agent: the process is a job step on the node (squeue shows it),
    its pid file is deploy's ("PID START"), deploy's find_run_pids and stop_pids (run as short steps
    on the node) find it by its run mark and end it, and its step ends with it."""
    from fedctl.deploy import find_run_pids, stop_pids
    from fedctl.providers.slurm_connector import SlurmStepConnector

    prov = _provider(slurm, tmp_path, "spawn1", _hosts(2))
    hosts = prov.allocate(prov._hosts)
    job = hosts[0].machine.id
    conn = SlurmStepConnector(hosts[2], prov.cli, agent_dir=prov.run_dir)
    cwd = tmp_path / "host-run"
    cwd.mkdir()
    ref = conn.spawn_detached("sleep 300", str(cwd), str(cwd / "client.pid"), str(cwd / "client.log"),
                              env={"FL_ROLE": "client"})
    assert ref.pid > 1 and ref.start is not None and ref.mark == str(cwd)
    wait_until(lambda: "fl2" in _squeue(slurm, "-s", "-j", job, "-o", "%N %j").split(), 20,
               what="the process's step on fl2")
    environ = Path(f"/proc/{ref.pid}/environ").read_bytes().split(b"\0")
    assert b"FL_ROLE=client" in environ and f"FEDCTL_RUN_DIR={cwd}".encode() in environ
    assert find_run_pids(conn, [str(cwd)]) == [ref.pid]
    assert stop_pids(conn, [ref], grace_s=5) == []
    wait_until(lambda: _squeue(slurm, "-s", "-j", job, "-o", "%i").split() == [f"{job}.batch"], 20,
               what="only the batch step left")
    prov.release(hosts)
    assert _squeue(slurm, "-o", "%i").strip() == ""
