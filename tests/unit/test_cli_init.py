"""``fedctl init``: working templates, never overwriting without --force."""

from __future__ import annotations

import subprocess
import sys


def _fedctl(cwd, *args):
    return subprocess.run([sys.executable, "-m", "fedctl", *args], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)


def test_init_writes_templates_that_load_and_refuses_to_overwrite(tmp_path):
    from fedctl.config.experiment import load_experiment
    from fedctl.config.inventory import load_inventory

    res = _fedctl(tmp_path, "init", "proj")
    assert res.returncode == 0, res.stderr
    proj = tmp_path / "proj"
    exp = load_experiment(str(proj / "fedctl.yaml"), cwd=proj)
    assert exp.payload.name == "fedavg_tf" and exp.clients >= 1
    assert load_inventory(str(proj / "inventory.yaml")).provider == "static"
    (proj / "fedctl.yaml").write_text("rounds: 3\n")
    again = _fedctl(tmp_path, "init", "proj")
    assert again.returncode == 2 and "--force" in again.stderr
    assert (proj / "fedctl.yaml").read_text() == "rounds: 3\n"
    assert _fedctl(tmp_path, "init", "proj", "--force").returncode == 0
    assert (proj / "fedctl.yaml").read_text() != "rounds: 3\n"
