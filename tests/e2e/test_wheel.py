"""The built wheel, installed non-editable, runs from an empty folder outside the repository.

A wheel has to carry the payloads and templates as package data; an editable install hides a
missing file because it reads the repository. The wheel goes into a fresh virtual environment
that does NOT see this machine's editable fedctl. Its dependencies (TensorFlow among them, ~1 GB)
come from this interpreter's site-packages through a plain path entry appended after the venv's own:
a path entry, unlike a site dir, runs no ``.pth`` file, so the editable install's import hook is
not installed and ``import fedctl`` can only find the wheel's copy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: the venv's processes must not see this checkout through PYTHONPATH (a test runner may set it)
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FEDCTL_STATE_DIR")}


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    # --no-build-isolation: build with this machine's setuptools, nothing is downloaded
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(dist), str(REPO)], check=True, capture_output=True, timeout=300)
    wheels = list(dist.glob("fedctl_fl-*.whl"))  # the distribution is fedctl-fl
    assert len(wheels) == 1, wheels
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, env=CLEAN_ENV).stdout.strip()
    (Path(site) / "zz_host_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # dependencies are satisfied from the appended path: pip resolves them and downloads nothing
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", str(wheels[0])], check=True,
                   capture_output=True, timeout=300, env=CLEAN_ENV)
    where = subprocess.run([str(py), "-c", "import fedctl; print(fedctl.__file__)"], check=True,
                           capture_output=True, text=True, cwd=base, env=CLEAN_ENV).stdout.strip()
    assert where.startswith(str(venv)), f"fedctl imported from {where}, not from the wheel"
    return venv


def _fedctl(venv: Path, cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(CLEAN_ENV)
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    env["COLUMNS"] = "200"
    return subprocess.run([str(venv / "bin" / "fedctl"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=env)


def test_wheel_init_payloads_and_a_small_run_from_an_empty_folder(wheel_env, tmp_path):
    work = tmp_path / "empty"
    work.mkdir()
    res = _fedctl(wheel_env, work, "init")
    assert res.returncode == 0, res.stdout + res.stderr
    assert (work / "fedctl.yaml").is_file() and (work / "inventory.yaml").is_file()
    res = _fedctl(wheel_env, work, "payloads")
    assert res.returncode == 0 and "fedavg_tf" in res.stdout and "built-in" in res.stdout, res.stdout + res.stderr
    (work / "fedctl.yaml").unlink()  # the plain default experiment, as the README's first command
    (work / "inventory.yaml").unlink()
    res = _fedctl(wheel_env, work, "run", "--clients", "3", "--rounds", "2", "--interval", "1")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = list((work / "results").iterdir())
    assert len(runs) == 1 and (runs[0] / "metrics.jsonl").is_file()
