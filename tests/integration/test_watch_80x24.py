"""``fedctl watch`` in a default 80x24 terminal (tmux), on a real run on loopback sshd hosts.

The keys line is the first line, every word on screen is whole (the hosts table used to break
``reach``/``able`` and ``serve``/``r`` across lines and push the only quit hint off the screen), the
host names are shown, and a smaller window keeps the keys and still breaks no word.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.integration.test_lifecycle import fedctl, run_pids, state
from tests.integration.test_watch import running  # noqa: F401  (the fixture: a 3-host echo run)
from tests.unit.test_render import broken_words
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def test_watch_help_lists_the_keys(tmp_path):
    out = fedctl(tmp_path, "watch", "--help", check=True).stdout
    text = " ".join(out.split())  # the help is re-wrapped to the terminal
    assert "q quits" in text and "the run keeps going" in text
    assert "f cycles the log filter" in text
    assert "d detaches" in text and "Ctrl-C stops the run" in text


def tmux_pane(session: str) -> list[str]:
    """The lines tmux shows in ``session``'s pane now."""
    out = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True)
    return out.stdout.splitlines()


def test_watch_fits_80x24_in_tmux(running, tmp_path):  # noqa: F811
    proj, _fleet = running
    session = f"fedctl-w80-{os.getpid()}"
    done = tmp_path / "watch.rc"
    # no COLUMNS/LINES: watch reads the pane's real size (and follows a resize)
    cmd = f"cd {proj} && env -u COLUMNS -u LINES {sys.executable} -m fedctl watch --interval 0.5; echo $? > {done}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24", cmd], check=True)

    def pane() -> list[str]:
        return tmux_pane(session)

    def full_screen() -> list[str] | None:  # every host row, a live client and a log line are on screen
        lines = pane()
        text = "\n".join(lines)
        hosts = all(re.search(rf"^{h}\s+yes\s", text, re.M) for h in ("h1", "h2", "h3"))
        return lines if hosts and "client-0●" in text and " | " in text else None

    try:
        subprocess.run(["tmux", "resize-window", "-t", session, "-x", "80", "-y", "24"], check=True)
        lines = wait_until(full_screen, 60, interval=0.3, what="the 80x24 screen with every host and a log line")
        assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
        assert lines[0].startswith("q: quit (the run keeps going)") and "f: filter logs" in lines[0], lines[0]
        assert broken_words(lines) == [], "\n".join(lines)
        text = "\n".join(lines)
        assert "fedctl watch" in text and "hosts (3/3 reachable)" in text
        for c, h in ((0, "h2"), (1, "h2"), (2, "h3"), (3, "h3")):  # the client rows name their host whole
            assert re.search(rf"^\s+{c}\s+{h}\s+\w+", text, re.M), text

        # a smaller window: the keys stay on the first line, words stay whole
        subprocess.run(["tmux", "resize-window", "-t", session, "-x", "60", "-y", "15"], check=True)

        def small() -> list[str] | None:
            got = pane()
            return got if got and max(len(line) for line in got) <= 60 and got[0].startswith("q: quit") \
                and any(line.startswith("hosts (") for line in got) else None

        lines = wait_until(small, 30, interval=0.3, what="the screen redrawn at 60x15")
        assert len(lines) <= 15 and broken_words(lines) == [], "\n".join(lines)

        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        rc = wait_until(lambda: done.exists() and done.read_text().strip(), 15, interval=0.2,
                        what="watch to exit on q")
        assert rc == "0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert len(run_pids(state(proj)["run_id"])) >= 3  # q left the training running


def test_run_screen_fits_80x24_and_d_detaches(tmp_path):
    """``fedctl run`` (local provider) at 80x24: detach and stop on the first line, d leaves it running."""
    from tests.integration.test_run_interrupt import FEDCTL, alive, project, rounds_done, run_pids
    from tests.integration.test_run_interrupt import state as run_state

    if FEDCTL is None:
        pytest.skip("the fedctl console script is not installed")
    proj = project(tmp_path)
    session = f"fedctl-r80-{os.getpid()}"
    done = tmp_path / "run.rc"
    cmd = f"cd {proj} && env -u COLUMNS -u LINES {FEDCTL} run --clients 2 --interval 0.5; echo $? > {done}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24", cmd], check=True)

    def pane() -> list[str]:
        return tmux_pane(session)

    def live() -> list[str] | None:
        lines = pane()
        text = "\n".join(lines)
        return lines if lines and lines[0].startswith("d: detach") and "hosts (" in text \
            and "●" in text and rounds_done(proj) >= 1 else None

    try:
        subprocess.run(["tmux", "resize-window", "-t", session, "-x", "80", "-y", "24"], check=True)
        lines = wait_until(live, 120, interval=0.3, what="the live screen of fedctl run at 80x24")
        assert lines[0].startswith("d: detach (run goes on)") and "Ctrl-C: stop the run" in lines[0], lines[0]
        assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
        assert broken_words(lines) == [], "\n".join(lines)
        text = "\n".join(lines)
        names = {h["info"]["name"] for h in run_state(proj)["hosts"]}
        assert all(re.search(rf"^{re.escape(n)}\s+yes\s", text, re.M) for n in names), text  # names whole
        subprocess.run(["tmux", "send-keys", "-t", session, "d"], check=True)
        rc = wait_until(lambda: done.exists() and done.read_text().strip(), 60, interval=0.2,
                        what="fedctl run to exit on d")
        assert rc == "0"
        pids = run_pids(proj)
        assert run_state(proj)["phase"] == "running" and pids and all(alive(p) for p in pids)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        td = subprocess.run([FEDCTL, "teardown", "--yes"], cwd=proj, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert td.returncode == 0, td.stdout + td.stderr
