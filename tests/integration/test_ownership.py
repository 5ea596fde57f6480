"""Teardown removes exactly what fedctl created; stop and teardown signal only what fedctl started.

Against real sshd hosts on loopback, with fedctl run as a subprocess, as a user runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import yaml

from tests.integration.test_lifecycle import fedctl, project, state
from tests.waiting import wait_until


def _group(pgid: int) -> list[str]:
    """The pids of a process group on this machine."""
    return subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()


def _write_state(proj: Path, st: dict) -> None:
    (proj / ".fedctl" / "state.json").write_text(json.dumps(st))


def test_a_workdir_that_existed_keeps_everything_that_was_in_it(sshd_fleet, tmp_path):
    """The user's workdir is a project folder with data/ and payloads/ of its own: provision + run +
    teardown leave every one of the user's files and folders, and nothing of fedctl's."""
    fleet = sshd_fleet(2)
    user_files = {}
    for h in fleet.hosts:
        wd = Path(h.workdir)
        for rel, text in {"data/important.csv": "a,b\n1,2\n", "payloads/mine/notes.txt": "mine",
                          "runs/old/keep.txt": "mine too", "README": "project"}.items():
            p = wd / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
            user_files[str(p)] = text
    before = {h.name: sorted(str(p) for p in Path(h.workdir).rglob("*")) for h in fleet.hosts}

    proj = project(tmp_path, fleet, rounds=3, round_s=0.1, echo_data="shipped.bin")
    (proj / "shipped.bin").write_bytes(os.urandom(1000))
    res = fedctl(proj, "run", "--clients", "2", "-i", "inventory.yaml", "--yes", "--interval", "0.5", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr

    for path, text in user_files.items():
        assert Path(path).read_text() == text
    for h in fleet.hosts:
        after = sorted(str(p) for p in Path(h.workdir).rglob("*"))
        assert after == before[h.name], f"{h.name}: fedctl left or removed files"


def test_a_folder_fedctl_did_not_make_is_never_written_into(sshd_fleet, tmp_path):
    """A payload folder of the user's own where fedctl would put its payload: start refuses, and
    the user's file is unchanged after teardown."""
    fleet = sshd_fleet(2)
    theirs = Path(fleet.hosts[0].workdir) / "payloads" / "echo" / "server.py"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("# the user's own server.py\n")
    proj = project(tmp_path, fleet, rounds=2, round_s=0.1)
    fedctl(proj, "provision", "--clients", "1", "-i", "inventory.yaml", "--yes", check=True)
    res = fedctl(proj, "start")
    assert res.returncode != 0
    assert "was not made by fedctl" in res.stdout + res.stderr
    fedctl(proj, "teardown", "--yes", check=True)
    assert theirs.read_text() == "# the user's own server.py\n"


def test_a_fresh_workdir_is_removed_with_everything_fedctl_put_there(sshd_fleet, tmp_path):
    fleet = sshd_fleet(2)
    wd = Path(fleet.hosts[0].workdir) / "deep" / "new"
    proj = project(tmp_path, fleet, rounds=2, round_s=0.1)
    inv = yaml.safe_load((proj / "inventory.yaml").read_text())
    inv["hosts"][0]["workdir"] = str(wd)
    (proj / "inventory.yaml").write_text(yaml.safe_dump(inv))
    res = fedctl(proj, "run", "--clients", "1", "-i", "inventory.yaml", "--yes", "--interval", "0.5", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not (Path(fleet.hosts[0].workdir) / "deep").exists()


def test_an_unrelated_process_on_a_reused_pid_survives_stop_and_teardown(sshd_fleet, tmp_path):
    fleet = sshd_fleet(2)
    proj = project(tmp_path, fleet, rounds=400, round_s=0.2)
    fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes", check=True)
    fedctl(proj, "start", check=True)
    fedctl(proj, "stop", check=True)
    # The run's processes are gone; their pids could now belong to anyone. Simulate that by pointing
    # every recorded pid (state and pid files) at an unrelated process group of this machine.
    other = subprocess.Popen(["sh", "-c", "sleep 300 & wait"], start_new_session=True)
    try:
        wait_until(lambda: len(_group(other.pid)) == 2, 10, what="the unrelated group's sleep to start")
        st = state(proj)
        for h in st["hosts"]:
            for p in h["processes"]:
                p["pid"] = other.pid
                Path(p["pidfile"]).write_text(f"{other.pid} {p['start_time']}\n")
        _write_state(proj, st)
        fedctl(proj, "stop", check=True)
        assert other.poll() is None, "stop killed an unrelated process"
        res = fedctl(proj, "teardown", "--yes")
        assert res.returncode == 0, res.stdout + res.stderr
        assert other.poll() is None, "teardown killed an unrelated process"
        assert len(_group(other.pid)) == 2, "teardown killed a member of an unrelated process group"
    finally:
        os.killpg(other.pid, signal.SIGKILL)
        other.wait()


def test_a_failed_provision_takes_the_corrected_inventory(sshd_fleet, tmp_path):
    """A wrong identity_file fails provision; fixing the inventory and running the same command
    again works (the README's advice), and teardown then logs in with the corrected key."""
    fleet = sshd_fleet(2)
    proj = project(tmp_path, fleet, rounds=2, round_s=0.1)
    good = (proj / "inventory.yaml").read_text()
    bad_key = tmp_path / "not-a-key"
    bad_key.write_text("nope\n")
    inv = yaml.safe_load(good)
    inv["defaults"]["identity_file"] = str(bad_key)
    (proj / "inventory.yaml").write_text(yaml.safe_dump(inv))
    res = fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes")
    assert res.returncode == 3, res.stdout + res.stderr
    (proj / "inventory.yaml").write_text(good)
    res = fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    st = state(proj)
    assert all(h["info"]["identity_file"] == fleet.identity_file for h in st["hosts"])
    fedctl(proj, "teardown", "--yes", check=True)


def test_a_host_that_holds_something_cannot_be_swapped_but_can_be_forgotten(sshd_fleet, tmp_path):
    fleet = sshd_fleet(2)
    proj = project(tmp_path, fleet, rounds=2, round_s=0.1)
    fresh = Path(fleet.hosts[1].workdir) / "fresh"
    inv = yaml.safe_load((proj / "inventory.yaml").read_text())
    inv["hosts"][1]["workdir"] = str(fresh)
    (proj / "inventory.yaml").write_text(yaml.safe_dump(inv))
    fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes", check=True)
    assert fresh.is_dir()
    # another workdir for a host where fedctl created one: refused, the state is unchanged
    inv["hosts"][1]["workdir"] = str(fresh) + "2"
    (proj / "inventory.yaml").write_text(yaml.safe_dump(inv))
    before = state(proj)
    res = fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes")
    assert res.returncode == 2 and "holds" in res.stderr, res.stdout + res.stderr
    assert state(proj) == before
    # the host is gone for good: forget it, hear what may be left there, tear down the rest
    fleet.stop(1)
    res = fedctl(proj, "teardown", "--yes", "--forget", "h2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert str(fresh) in res.stderr and "forgotten" in res.stderr
    assert not (proj / ".fedctl" / "state.json").exists() or state(proj)["phase"] == "torn_down"


def test_a_changed_host_key_exits_5(sshd_fleet, tmp_path):
    fleet = sshd_fleet(2)
    proj = project(tmp_path, fleet, rounds=2, round_s=0.1)
    fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes", check=True)
    fedctl(proj, "teardown", "--yes", check=True)
    # the pinned key of h1 is now another key: what a man in the middle would present
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kh = proj / ".fedctl" / "known_hosts"
    lines = kh.read_text().splitlines()
    new_key = (tmp_path / "other_key.pub").read_text().split()[:2]
    lines[0] = " ".join([lines[0].split()[0], *new_key])
    kh.write_text("\n".join(lines) + "\n")
    res = fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes")
    assert res.returncode == 5, res.stdout + res.stderr
    assert "ssh-keygen" in res.stdout + res.stderr
