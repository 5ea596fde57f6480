"""``fedctl sweep`` on a terminal (tmux, 80x24): one live screen of the campaign, every line within it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.integration.test_lifecycle import REPO
from tests.integration.test_sweep import write_project
from tests.integration.test_watch_80x24 import tmux_pane
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def test_the_campaign_screen_fits_80x24_and_shows_the_running_run(tmp_path):
    proj = write_project(tmp_path / "proj", {
        "name": "screen", "clients": 2, "rounds": 8, "grid": {"echo_round_s": [0.6, 0.7]}, "parallel": 1,
    })
    session = f"fedctl-sweep-{os.getpid()}"
    done = tmp_path / "rc"
    cmd = (f"cd {proj} && env -u COLUMNS -u LINES PYTHONPATH={REPO} {sys.executable} -m fedctl sweep sweep.yaml "
           f"--interval 0.3; echo $? > {done}")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24", cmd], check=True)
    try:
        def live() -> list[str] | None:
            lines = tmux_pane(session)
            text = "\n".join(lines)
            return lines if "fedctl sweep screen" in text and re.search(r"echo_round_s-0\.\d\s+[1-8]/8", text) else None

        lines = wait_until(live, 180, interval=0.2, what="the campaign's screen with a run's round")
        text = "\n".join(lines)
        assert len(lines) <= 24 and max(len(line) for line in lines) <= 80, text
        assert re.search(r"\d/2 done, 1 running, \d queued, 0 failed", text), text
        assert "cost so far 0.00 USD" in text and "local-server (server, provisioned)" in text
        rc = wait_until(lambda: done.exists() and done.read_text().strip(), 240, interval=0.3, what="the campaign's end")
        assert rc == "0", "\n".join(tmux_pane(session))
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
