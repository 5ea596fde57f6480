"""Provision-time checks of one host: Python, the payload's imports (TensorFlow), GPUs, disk, memory.

All checks run in ONE round trip: a small stdlib-only script is sent on stdin to the host's
interpreter and prints JSON. What failed comes back as a reason, not a traceback.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Sequence

from fedctl.connectors.base import Connector
from fedctl.monitor.nvidia import gpu_fact_lines
from fedctl.runtypes import HostFacts  # noqa: F401 - the type lives with the run's others; re-exported
from fedctl.shell import join

if TYPE_CHECKING:
    from packaging.specifiers import SpecifierSet

# Runs on the host with the host's python. Keep it stdlib-only and Python-3.6 compatible so it
# can report "too old" instead of failing to parse.
_PROBE = r"""
import json, os, platform, shutil, subprocess, sys, importlib
args = json.loads(sys.argv[1])
out = {"python": platform.python_version(), "executable": sys.executable,
       "home": os.path.expanduser("~"), "imports": {}, "tools": {}}
for name in args["imports"]:
    try:
        m = importlib.import_module(name)
        out["imports"][name] = {"ok": True, "version": str(getattr(m, "__version__", "?"))}
    except Exception as e:  # report, do not crash: the table shows the reason
        out["imports"][name] = {"ok": False, "error": (type(e).__name__ + ": " + str(e))[:300]}
for tool in ("setsid", "nohup", "pgrep", "sha256sum", "nvidia-smi"):
    out["tools"][tool] = shutil.which(tool) is not None
if out["tools"]["nvidia-smi"]:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
        if r.returncode == 0:
            out["gpus"] = [l.strip() for l in r.stdout.splitlines() if l.strip()]
        else:
            out["gpu_error"] = (r.stdout + r.stderr).strip()[:300]
    except Exception as e:
        out["gpu_error"] = str(e)[:300]
else:
    out["gpus"] = []
wd = os.path.expanduser(args["workdir"])
probe = wd
while probe and not os.path.exists(probe):
    probe = os.path.dirname(probe)
try:
    st = os.statvfs(probe or "/")
    out["disk_free_gb"] = round(st.f_bavail * st.f_frsize / 1e9, 2)
except OSError as e:
    out["disk_error"] = str(e)
try:
    with open("/proc/meminfo") as f:
        mem = dict(l.split(":", 1) for l in f)
    out["mem_total_gb"] = round(int(mem["MemTotal"].split()[0]) / 1e6, 2)
    out["mem_available_gb"] = round(int(mem["MemAvailable"].split()[0]) / 1e6, 2)
except (OSError, KeyError, ValueError) as e:
    out["mem_error"] = str(e)
out["cpus"] = os.cpu_count()
print(json.dumps(out))
"""

#: tools fedctl needs on every host (for detached processes, stop, payload sync)
REQUIRED_TOOLS = ("setsid", "nohup", "pgrep", "sha256sum")


def parse_version(text: str) -> tuple[int, ...]:
    """``"3.11.7" -> (3, 11, 7)``; non-numeric tails are ignored."""
    out = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


#: what a payload's ``requirements.python`` may look like (PEP 440 specifiers), for error messages
SPEC_EXAMPLES = (">=3.10", ">=3.10,<3.13", "~=3.10", "==3.11.*")


def python_specifier(spec: str, file: str | None = None) -> SpecifierSet:
    """``spec`` as a ``packaging`` SpecifierSet (every PEP 440 form: ``>=3.10,<3.13``, ``~=3.10``,
    ``==3.11.*``, ``!=3.12.0``). An invalid spec is a ConfigError naming ``file`` and the key."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    from fedctl.errors import ConfigError

    try:
        return SpecifierSet(spec)
    except InvalidSpecifier:
        raise ConfigError(
            file, "requirements.python", f"{spec!r} is not a Python version specifier", valid=SPEC_EXAMPLES
        ) from None


def satisfies(version: str, spec: str | None, file: str | None = None) -> bool:
    """Does Python ``version`` (what ``platform.python_version()`` printed) satisfy ``spec``?

    A release candidate counts as its release (``3.13.0rc1`` satisfies ``>=3.10``); a version that is
    not PEP 440 (``3.12.0+`` of a source build) is judged by its numeric part."""
    from packaging.version import InvalidVersion, Version

    if not spec or not spec.strip():
        return True
    specifier = python_specifier(spec.strip(), file)
    try:
        v = Version(version)
    except InvalidVersion:
        numbers = parse_version(version)
        if not numbers:
            return False
        v = Version(".".join(map(str, numbers)))
    return specifier.contains(v, prereleases=True)


def gather_facts(
    conn: Connector,
    python: str,
    imports: Sequence[str],
    workdir: str,
    python_spec: str | None = ">=3.8",
    min_disk_gb: float = 0.5,
    timeout: float = 600.0,  # importing TensorFlow on a busy or small host can take minutes
) -> HostFacts:
    """Run the probe on the host and judge the answer; never raises for a host problem."""
    arg = json.dumps({"imports": list(imports), "workdir": workdir})
    res = conn.run(f"{join([python, '-', arg])}", timeout=timeout, stdin=_PROBE.encode())
    if res.timed_out:
        return HostFacts(ok=False, problems=[f"checks timed out after {timeout:.0f}s"])
    if res.exit_code == 127:
        return HostFacts(ok=False, problems=[f"python {python!r} not found on the host"])
    try:
        data = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        detail = (res.stderr or res.stdout).strip().splitlines()
        return HostFacts(ok=False, problems=[f"python check failed: {detail[-1] if detail else res.exit_code}"])
    facts = HostFacts(
        ok=True,
        python=data.get("python"),
        home=data.get("home"),
        imports=data.get("imports", {}),
        gpus=gpu_fact_lines(data.get("gpus", []), where=conn.host.name),  # well-formed lines only
        gpu_error=data.get("gpu_error"),
        disk_free_gb=data.get("disk_free_gb"),
        mem_total_gb=data.get("mem_total_gb"),
        mem_available_gb=data.get("mem_available_gb"),
        cpus=data.get("cpus"),
    )
    if facts.python and not satisfies(facts.python, python_spec):
        facts.problems.append(f"python {facts.python} does not satisfy the payload's requirement {python_spec}")
    for name, info in facts.imports.items():
        if not info.get("ok"):
            facts.problems.append(f"cannot import {name}: {info.get('error')}")
    missing = [t for t in REQUIRED_TOOLS if not data.get("tools", {}).get(t)]
    if missing:
        facts.problems.append(f"missing tools: {', '.join(missing)}")
    if facts.disk_free_gb is not None and facts.disk_free_gb < min_disk_gb:
        facts.problems.append(f"only {facts.disk_free_gb} GB free disk (need {min_disk_gb})")
    facts.ok = not facts.problems
    return facts
