"""Exit codes through the installed console script, as a user's shell sees them (README's table)."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

FEDCTL = shutil.which("fedctl")
pytestmark = pytest.mark.skipif(FEDCTL is None, reason="the fedctl console script is not installed")


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FEDCTL, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "200"})


def _one_error_line(res: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in res.stderr + res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error:"), res.stderr
    assert len(lines) <= 2, res.stderr  # the error and its hint


@pytest.mark.parametrize(
    "args",
    [("provision", "--bogus"), ("provision", "--clients", "abc"), ("frobnicate",), ("teardown", "--forget")],
)
def test_usage_errors_are_one_line_and_exit_2(tmp_path, args):
    res = run(tmp_path, *args)
    assert res.returncode == 2, res.stderr
    _one_error_line(res)


@pytest.mark.parametrize("content", [b"[]", b"\xff\xfe\x00", b'{"version": 1}', b"{"])
def test_a_corrupt_state_file_is_an_error_that_says_how_to_recover(tmp_path, content):
    (tmp_path / ".fedctl").mkdir()
    (tmp_path / ".fedctl" / "state.json").write_bytes(content)
    res = run(tmp_path, "status")
    assert res.returncode == 2, res.stderr
    _one_error_line(res)
    assert "state.json" in res.stderr and "mv " in res.stderr


def test_no_run_is_exit_2_and_version_is_0(tmp_path):
    assert run(tmp_path, "status").returncode == 2
    res = run(tmp_path, "--version")
    assert res.returncode == 0 and res.stdout.startswith("fedctl ")


def test_a_config_error_inside_run_exits_2(tmp_path):
    (tmp_path / "fedctl.yaml").write_text("rounds: many\n")
    res = run(tmp_path, "run", "--clients", "2")
    assert res.returncode == 2, res.stderr
    assert "fedctl.yaml: rounds" in res.stderr


def test_control_characters_never_reach_the_terminal(tmp_path):
    res = run(tmp_path, "provision", "--clients", "2", "--dry-run", "--set", "rounds=\x1b[2J\x07x")
    assert res.returncode == 2
    assert "\x1b" not in res.stderr and "\x07" not in res.stderr
    assert "\\x1b" in res.stderr


def test_declining_the_confirmation_exits_1(tmp_path):
    """Through a pseudo-terminal, as a person answers: 'n' to "provision these hosts?"."""
    (tmp_path / "inventory.yaml").write_text(
        "provider: static\nhosts:\n  - {name: a, address: 127.0.0.2, roles: [server]}\n"
        "  - {name: b, address: 127.0.0.3, roles: [client]}\n"
    )
    pid, fd = pty.fork()
    if pid == 0:  # the child: fedctl on the terminal
        os.chdir(tmp_path)
        os.environ["COLUMNS"] = "200"
        os.execv(FEDCTL, [FEDCTL, "provision", "--clients", "2", "-i", "inventory.yaml"])
    out = b""
    deadline = time.monotonic() + 60
    answered = False
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if not answered and b"provision these hosts?" in out:
            os.write(fd, b"n\r")
            answered = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert answered, out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 1, out.decode(errors="replace")
    assert b"nothing was changed" in out
    assert not (tmp_path / ".fedctl" / "state.json").exists()


def test_a_bug_is_one_line_with_the_traceback_in_a_log(tmp_path, monkeypatch):
    """An unexpected exception: one line naming .fedctl/last-error.log, exit 1."""
    code = (
        "import sys; import fedctl.cli.app as a\n"
        "@a.app.command('boom')\n"
        "def boom():\n    raise RuntimeError('kaput')\n"
        "a.main(['boom'])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    _one_error_line(res)
    log = tmp_path / ".fedctl" / "last-error.log"
    assert "RuntimeError: kaput" in log.read_text() and str(log) in res.stderr


def test_an_alias_bomb_is_refused_not_expanded(tmp_path):
    """A ~330-byte billion-laughs file under a known key: a clear error, exit 2 (it once ran for
    32 minutes; the timeout only guards against that, the refusal itself takes milliseconds)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    text = "\n".join(lines).replace("a: &a", "x: &a", 1) + "\nrounds: *i\n"
    (tmp_path / "fedctl.yaml").write_text(text)
    assert len(text) < 400
    res = subprocess.run([FEDCTL, "provision", "--clients", "2", "--dry-run"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert res.returncode == 2, res.stderr
    _one_error_line(res)
    assert "fedctl.yaml" in res.stderr and "alias" in res.stderr and len(res.stderr) < 1000


def test_run_help_lists_the_live_screen_keys(tmp_path):
    res = run(tmp_path, "run", "--help")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())  # help text is reflowed to the terminal's width
    assert ("d (or q) detaches, the run goes on (`fedctl watch` comes back to it); Ctrl-C stops the run, "
            "collects the results and tears down; f cycles the log filter") in text
