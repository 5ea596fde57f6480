"""Paths fedctl trusts: a payload name, a recorded tree, a workdir with a newline, set-up logs.

Against real sshd hosts on loopback, with fedctl run as a subprocess, as a user runs it. Each test
puts the user's own files where a mistake (or an edited state) would make fedctl write or remove,
and checks that they are there, unchanged, afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fedctl.connectors.ssh import SSHConnector
from fedctl.deploy import TREE_MARKER, make_dirs
from fedctl.ops.teardown import _remove_files
from fedctl.state import HostRecord
from tests.integration.moto_server import moto_ec2  # noqa: F401 - the fixture
from tests.integration.test_lifecycle import ECHO, fedctl, project, state


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its content (folders as "<dir>")."""
    return {str(p.relative_to(folder)): ("<dir>" if p.is_dir() else p.read_text())
            for p in sorted(folder.rglob("*"))}


def _user_files(workdir: Path) -> dict[str, str]:
    """The user's own project in the workdir, before fedctl ever ran there."""
    for rel, text in {"thesis/chapter1.tex": "\\section{Intro}\n", "data/train.csv": "a,b\n1,2\n",
                      "README": "my project\n"}.items():
        p = workdir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return _snapshot(workdir)


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _named_echo(tmp_path: Path, name: str) -> Path:
    """The echo payload, copied, with ``name`` in its manifest."""
    d = tmp_path / "echo-copy"
    shutil.copytree(ECHO, d, ignore=shutil.ignore_patterns("__pycache__"))
    doc = yaml.safe_load((d / "payload.yaml").read_text())
    doc["name"] = name
    (d / "payload.yaml").write_text(yaml.safe_dump(doc))
    return d


@pytest.mark.parametrize("name", ["../../work", ".."])
def test_a_payload_name_cannot_reach_the_users_workdir(sshd_fleet, tmp_path, name):
    """``../../work`` made teardown rm -rf the user's workdir (``<workdir>/payloads/../../work`` is
    the workdir itself, the sshd fixture's workdirs are called ``work``); ``..`` wrote the payload
    over the user's files and planted a marker there. Now the manifest is refused before any SSH."""
    fleet = sshd_fleet(2)
    assert all(Path(h.workdir).name == "work" for h in fleet.hosts)
    before = {h.name: _user_files(Path(h.workdir)) for h in fleet.hosts}
    proj = project(tmp_path, fleet, rounds=2, round_s=0.1)
    payload = _named_echo(tmp_path, name)
    cfg = yaml.safe_load((proj / "fedctl.yaml").read_text())
    (proj / "fedctl.yaml").write_text(yaml.safe_dump({**cfg, "payload": str(payload)}))

    res = fedctl(proj, "run", "--clients", "2", "-i", "inventory.yaml", "--yes", "--interval", "0.5", timeout=300)
    fedctl(proj, "teardown", "--yes")  # whatever may have been provisioned
    assert res.returncode == 2, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert str(payload / "payload.yaml") in out.replace("\n", "") and "name" in out and "plain name" in out
    for h in fleet.hosts:
        assert _snapshot(Path(h.workdir)) == before[h.name], f"{h.name}: the user's workdir changed"
        assert not (Path(h.workdir) / TREE_MARKER).exists()


def test_teardown_refuses_recorded_trees_that_are_not_fedctls(sshd_fleet, tmp_path):
    """An edited state records, as trees: the user's folder beside the workdir (with a planted
    marker), the same folder through ``runs/../..``, the workdir itself, a folder of the user's in
    the workdir (no marker), a file of the user's and a symbolic link in fedctl's runs folder. Teardown removes the run's
    own files, refuses every one of those with a message, exits non-zero, and they all survive."""
    fleet = sshd_fleet(2)
    wd = Path(fleet.hosts[0].workdir)
    before = _user_files(wd)
    outside = wd.parent / "thesis-backup"
    outside.mkdir()
    (outside / "final.pdf").write_text("years of work\n")
    (outside / TREE_MARKER).write_text("")  # even marked, it is not under the workdir
    proj = project(tmp_path, fleet, rounds=200, round_s=0.1)
    fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes", check=True)
    fedctl(proj, "start", check=True)
    st = state(proj)
    run_dir = wd / "runs" / st["run_id"]
    assert (run_dir / "token").exists() and (run_dir / TREE_MARKER).exists()
    (wd / "runs" / "link").symlink_to(outside)
    foreign = [str(outside), f"{wd}/runs/../../{outside.name}", str(wd), str(wd / "thesis"), str(wd / "runs" / "link"),
               str(wd / "README")]
    st["hosts"][0]["owned"] += [{"path": p, "kind": "tree", "keep": False} for p in foreign]
    (proj / ".fedctl" / "state.json").write_text(json.dumps(st))

    res = fedctl(proj, "teardown", "--yes")
    out = res.stdout + res.stderr
    assert res.returncode == 3, out  # never "ok" while something was refused
    assert res.stderr.count("refused to remove") == len(foreign), out
    for why in ("symbolic link", "no .fedctl-tree marker", "strictly under the workdir", "is not a folder"):
        assert why in res.stderr, why
    assert not run_dir.exists(), "the run's own files (its token) stayed"
    assert state(proj)["hosts"][0]["status"] != "torn_down"

    def intact() -> None:
        assert (outside / "final.pdf").read_text() == "years of work\n"
        assert (wd / "runs" / "link").is_symlink()
        left = _snapshot(wd)
        assert {k: v for k, v in left.items() if k in before} == before, "a file of the user's was removed or changed"

    intact()
    # the refused paths are not fedctl's: no longer tracked, so a second teardown finishes, still
    # without touching them
    res = fedctl(proj, "teardown", "--yes")
    assert res.returncode == 0 and "refused" not in res.stdout + res.stderr, res.stdout + res.stderr
    intact()


def test_a_workdir_with_a_newline_is_refused_before_any_ssh(sshd_fleet, tmp_path):
    """A workdir with a newline was torn down "ok" while its run dir (token included) stayed; fedctl
    now refuses it in the inventory, naming the file and key, and touches no host."""
    fleet = sshd_fleet(1)
    proj = project(tmp_path, fleet, rounds=2, round_s=0.1)
    bad = Path(fleet.hosts[0].workdir).parent / "odd\nwork"
    inv = yaml.safe_load((proj / "inventory.yaml").read_text())
    inv["hosts"][0]["workdir"] = str(bad)
    (proj / "inventory.yaml").write_text(yaml.safe_dump(inv))
    res = fedctl(proj, "provision", "--clients", "1", "-i", "inventory.yaml", "--yes")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "hosts[0].workdir" in res.stderr and "control character" in res.stderr
    assert not bad.exists()


def test_folders_with_a_newline_are_recorded_exactly_and_removed(sshd_fleet, tmp_path):
    """make_dirs' listing cannot be split by a newline in a path, and teardown's removal really
    removes such a folder, over real SSH (a home folder fedctl did not choose may hold one)."""
    fleet = sshd_fleet(1)
    info = fleet.host_infos()[0]
    wd = f"{fleet.hosts[0].workdir}/a\nb"
    rec = HostRecord(info, workdir=wd)
    with SSHConnector(info, known_hosts=str(tmp_path / "kh")) as conn:
        make_dirs(conn, rec, holders=[wd])
        make_dirs(conn, rec, trees=[f"{wd}/runs/r1\n", f"{wd}/payloads/echo"])
        assert [(o.path, o.kind) for o in rec.owned] == [
            (wd, "dir"), (f"{wd}/runs", "dir"), (f"{wd}/runs/r1\n", "tree"),
            (f"{wd}/payloads", "dir"), (f"{wd}/payloads/echo", "tree")]
        Path(f"{wd}/runs/r1\n/token").write_text("secret\n")
        assert _remove_files(conn, rec) == []
    assert not Path(wd).exists()
    assert Path(fleet.hosts[0].workdir).is_dir()  # the workdir was there before: kept


def test_setup_never_writes_into_an_envs_folder_of_the_users(sshd_fleet, tmp_path):
    """``<workdir>/envs`` is the user's (their conda envs): provision's set-up puts its log in a
    folder of its own (with the marker), writes no file into envs, and teardown leaves envs as it was."""
    fleet = sshd_fleet(2)
    envs = Path(fleet.hosts[0].workdir) / "envs"
    (envs / "conda-base").mkdir(parents=True)
    (envs / "notes.txt").write_text("my environments\n")
    before = _snapshot(envs)
    proj = project(tmp_path, fleet, rounds=2, round_s=0.1)
    fleet.write_inventory(proj / "inventory.yaml", setup=["echo set-up ran"])
    fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes", check=True)
    assert sorted(p.name for p in envs.iterdir() if not p.is_dir()) == ["notes.txt"]
    logs = list(envs.glob("*/setup.log"))
    assert len(logs) == 1 and "set-up ran" in logs[0].read_text()
    assert (logs[0].parent / TREE_MARKER).exists() and (logs[0].parent / ".done").exists()
    fedctl(proj, "teardown", "--yes", check=True)
    assert _snapshot(envs) == before


def test_teardown_of_created_machines_collects_only_from_hosts_its_fleet_covers(moto_ec2, tmp_path):
    """fedctl killed mid-start on AWS: the server was spawned, no client yet, ``started_at`` unset.
    Teardown opens SSH only to hosts where something ran (the server) but collected from every host
    with a workdir: "host ... is not in this fleet" ended it before any instance was terminated.
    Now it collects from the hosts its fleet covers, terminates every instance and exits 0."""
    from tests.integration import test_aws as aws

    port = aws.free_shared_port(aws.addresses(3))
    hosts = aws.loopback_hosts(tmp_path, 3, port)  # 1 server + 2 client instances
    with hosts:
        proj = aws.project(tmp_path, moto_ec2, port, hosts.identity_file, hosts.user, client_instances=2)
        res = aws.fedctl(proj, "provision", "--clients", "2", "-i", "aws.yaml", "--yes")
        assert res.returncode == 0, res.stdout + res.stderr
        st = aws.read_state(proj)
        assert all(h["workdir"] for h in st["hosts"])
        server = next(h for h in st["hosts"] if "server" in h["role"])
        run_dir = f"{server['workdir']}/runs/{st['run_id']}"
        server["processes"] = [{"role": "server", "index": 0, "pid": _dead_pid(),
                                "start_time": 1, "pidfile": f"{run_dir}/server.pid",
                                "log": f"{run_dir}/server.log", "status": "starting"}]
        st["phase"], st["started_at"] = "starting", None
        (proj / ".fedctl" / "state.json").write_text(json.dumps(st))

        res = aws.fedctl(proj, "teardown", "--yes")
        out = res.stdout + res.stderr
        assert res.returncode == 0, out
        assert "not in this fleet" not in out
        assert moto_ec2.billed(st["run_id"]) == [] and len(moto_ec2.instances(st["run_id"])) == 3
