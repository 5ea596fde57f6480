"""Hosts set up from a bare Python: set-up commands, and a venv with the payload's requirements.

Offline, as on a host without a package index: the requirement is a wheel the test builds and the
inventory's ``wheelhouse`` carries to the hosts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.integration.test_lifecycle import ECHO, fedctl, state
from tests.waiting import wait_until

DEP = "fedctl_testdep"


def _wheelhouse(tmp_path: Path) -> Path:
    src = tmp_path / "dep-src"
    (src / DEP).mkdir(parents=True)
    (src / DEP / "__init__.py").write_text("__version__ = '1.0'\n")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{DEP}"\nversion = "1.0"\n[tool.setuptools]\npackages = ["{DEP}"]\n'
    )
    wh = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wh),
                    str(src)], check=True, capture_output=True, timeout=300)
    return wh


def _payload_needing_the_dep(tmp_path: Path) -> Path:
    dest = tmp_path / "echo-dep"
    shutil.copytree(ECHO, dest, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = yaml.safe_load((dest / "payload.yaml").read_text())
    manifest["requirements"]["imports"] = ["json", "socket", DEP]
    manifest["requirements"]["pip"] = [DEP]
    (dest / "payload.yaml").write_text(yaml.safe_dump(manifest))
    return dest


def _project(tmp_path: Path, fleet, **host_settings) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    cfg = {"payload": str(_payload_needing_the_dep(tmp_path)), "rounds": 3, "echo_round_s": 0.1}
    (proj / "fedctl.yaml").write_text(yaml.safe_dump(cfg))
    fleet.write_inventory(proj / "inventory.yaml", wheelhouse=str(_wheelhouse(tmp_path)))
    inv = yaml.safe_load((proj / "inventory.yaml").read_text())
    for name, settings in host_settings.items():
        next(h for h in inv["hosts"] if h["name"] == name).update(settings)
    (proj / "inventory.yaml").write_text(yaml.safe_dump(inv))
    return proj


def test_a_bare_python_gets_an_environment_once_and_teardown_removes_it(sshd_fleet, tmp_path):
    fleet = sshd_fleet(2)
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    proj = _project(tmp_path, fleet, h2={"python": str(bare / "bin" / "python")})
    res = fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    hosts = {h["info"]["name"]: h for h in state(proj)["hosts"]}
    env_python = Path(hosts["h2"]["python"])
    assert "/envs/" in str(env_python) and env_python.exists()
    marker = env_python.parents[1] / ".complete"
    first = marker.stat().st_mtime
    # the same requirements again: nothing is installed, the env is found
    t0 = time.monotonic()
    res = fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert marker.stat().st_mtime == first and time.monotonic() - t0 < 60
    fedctl(proj, "start", check=True)
    wait_until(lambda: json.loads(fedctl(proj, "status", "--json", check=True).stdout)["phase"] == "finished",
               120, interval=0.5, what="the run to finish")
    fedctl(proj, "teardown", "--yes", check=True)
    assert not env_python.parents[1].exists()
    assert not any(p.name == "envs" for h in fleet.hosts for p in Path(h.workdir).rglob("envs"))


def test_a_failing_setup_command_fails_only_its_host_with_its_output(sshd_fleet, tmp_path):
    fleet = sshd_fleet(2)
    proj = _project(tmp_path, fleet, h2={"setup": ["echo preparing the image", "echo broken >&2; exit 7"]})
    res = fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes")
    assert res.returncode == 3, res.stdout + res.stderr
    # the host's row shows its set-up output and which command failed; stderr names the host
    assert "fedctl: setup command 2 failed with exit 7" in res.stdout and "│ broken " in res.stdout, res.stdout
    assert "error: provision failed on: h2" in res.stderr, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    hosts = {h["info"]["name"]: h for h in state(proj)["hosts"]}
    assert hosts["h1"]["status"] == "provisioned" and hosts["h2"]["status"] == "failed"
    fedctl(proj, "teardown", "--yes", check=True)
