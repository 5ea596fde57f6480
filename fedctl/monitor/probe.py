"""ONE remote shell command per host per tick that gathers everything ``watch`` needs.

The command prints sections separated by marker lines ``@@fedctl-<nonce>@@ <section> ...``:
``sys`` (loadavg, nproc, meminfo), ``pids`` (label pid alive; a zombie is dead), ``gpu`` (nvidia-smi query + exit code,
compute apps, pid/pgid of the run's process groups) and ``file`` sections with the new bytes of each
followed file since its offset (``tail -c +OFFSET | head -c CAP``; a file that shrank or whose inode
changed is read from 0). ``build_probe`` makes the command (POSIX sh + coreutils, no python on the
host), ``parse_probe`` is the pure inverse.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Sequence

from fedctl.monitor.nvidia import QUERY_APPS_ARGS, QUERY_GPU_ARGS
from fedctl.deploy import IDENT_SH
from fedctl.shell import posix_sh, quote

#: bytes of history a log shows when first followed (offset -1 = "start near the end")
LOG_TAIL_BYTES = 16 * 1024
#: most new bytes sent for one file in one tick (the rest comes next tick)
MAX_CHUNK_BYTES = 512 * 1024


@dataclass(frozen=True)
class FileReq:
    """Follow one remote file: send the bytes after ``offset`` (``-1``: the last ``tail_bytes``)."""

    key: str
    path: str
    offset: int = 0
    inode: str = ""
    tail_bytes: int = LOG_TAIL_BYTES
    cap: int = MAX_CHUNK_BYTES
    whole: bool = False  # small files rewritten atomically (status.json): send all of it each time


@dataclass(frozen=True)
class ProcReq:
    """Check one payload process: its pid, or the pidfile to read it from when unknown."""

    label: str
    pid: int | None
    pidfile: str = ""
    start: int | None = None  # /proc start time recorded at spawn: a reused pid is not "alive"


@dataclass(frozen=True)
class FileChunk:
    """New bytes of one file. ``missing``: the file does not exist (yet)."""

    key: str
    missing: bool
    size: int = 0
    inode: str = ""
    start: int = 0
    nbytes: int = 0
    text: str = ""


@dataclass
class ProbeResult:
    """What one probe of one host found (parsed from the command's stdout)."""

    load1: float | None = None
    ncpu: int | None = None
    mem_total_kib: int | None = None
    mem_avail_kib: int | None = None
    pids: dict[str, tuple[int | None, bool]] = field(default_factory=dict)  # label -> (pid, alive)
    starts: dict[str, int] = field(default_factory=dict)  # label -> start time (from a pid file)
    gpu_present: bool = False
    gpu_text: str = ""
    gpu_rc: int = 0
    apps_text: str = ""
    pgid_pids: set[int] = field(default_factory=set)  # pids in the run's process groups
    pgid_of: dict[int, int] = field(default_factory=dict)  # pid -> its group (the payload process's pid)
    files: dict[str, FileChunk] = field(default_factory=dict)
    complete: bool = False  # the end marker arrived (the command was not cut short)


def new_nonce() -> str:
    """A marker no log line will contain by accident."""
    return f"@@fedctl-{secrets.token_hex(6)}@@"


# _p LABEL PID START PIDFILE: alive when /proc has that pid, not a zombie, with the recorded start
# time (deploy.IDENT_SH's _st, the check stop and teardown make)
_FUNCS = IDENT_SH + r"""_p() { _l=$1; p=$2; t=$3; if [ "$p" = - ]; then read -r p t _ < "$4" 2>/dev/null; p=$(echo "$p" | tr -dc 0-9); fi
a=0; _i=$(_st "${p:-0}") && { [ "${t:--}" = - ] || [ "$t" = "${_i% *}" ]; } && a=1
echo "$_l ${p:--} $a ${t:--}"; }
_f() { st=$(stat -Lc '%s %i' "$2" 2>/dev/null) || { echo "$M file $1 missing"; return 0; }
sz=${st% *}; ino=${st#* }; o=$3
if [ "$o" -lt 0 ]; then o=$((sz-$5)); [ "$o" -lt 0 ] && o=0
elif [ "$4" != - ] && [ "$ino" != "$4" ]; then o=0
elif [ "$sz" -lt "$o" ]; then o=0; fi
n=$((sz-o)); [ "$n" -gt "$6" ] && n=$6
echo "$M file $1 $sz $ino $o $n"
[ "$n" -gt 0 ] && tail -c +$((o+1)) "$2" | head -c "$n"
echo; echo "$M end $1"; }
"""


def build_probe(
    nonce: str,
    procs: Sequence[ProcReq] = (),
    files: Sequence[FileReq] = (),
    gpu: bool = True,
    system: bool = True,
) -> str:
    """The shell command for one host and one tick (all values ``shlex.quote``d)."""
    lines = [f"M={quote(nonce)}", _FUNCS.strip()]
    if system:
        lines.append(
            'echo "$M sys"; cat /proc/loadavg 2>/dev/null; echo "ncpu $(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)";'
            " grep -E '^(MemTotal|MemAvailable):' /proc/meminfo 2>/dev/null"
        )
    if procs:
        lines.append('echo "$M pids"')
        for p in procs:
            start = p.start if p.pid and p.start is not None else "-"
            lines.append(f"_p {quote(p.label)} {p.pid if p.pid else '-'} {start} {quote(p.pidfile or '/nonexistent')}")
    if gpu:
        pg = " ".join(str(p.pid) for p in procs if p.pid)
        lines.append(
            'echo "$M gpu"; if command -v nvidia-smi >/dev/null 2>&1; then '
            f"nvidia-smi {QUERY_GPU_ARGS} 2>&1; echo \"$M gpurc $?\"; "
            f'echo "$M apps"; nvidia-smi {QUERY_APPS_ARGS} 2>/dev/null; '
            f'echo "$M pgids"; ps -eo pid=,pgid= 2>/dev/null | awk -v g={quote(" " + pg + " ")} '
            "'index(g, \" \" $2 \" \") {print $1, $2}'; "
            'else echo "$M gpurc none"; fi'
        )
    for f in files:
        if f.whole:
            lines.append(f"_f {quote(f.key)} {quote(f.path)} 0 - 0 {f.cap}")
        else:
            lines.append(
                f"_f {quote(f.key)} {quote(f.path)} {int(f.offset)} {quote(f.inode or '-')} "
                f"{int(f.tail_bytes)} {int(f.cap)}"
            )
    lines.append('echo "$M done"')
    # Collect everything and write it at once: sshd sends each small write of the shell as its own
    # packet, and each packet costs the watching process CPU (decrypt, MAC, wake a reader).
    body = "\n".join(lines[1:])
    return posix_sh(f"{lines[0]}\n_o=$(\n{body}\n)\nprintf '%s\\n' \"$_o\"\n")


def parse_probe(stdout: str, nonce: str) -> ProbeResult:
    """Parse a probe's stdout (pure). Missing sections leave their fields at None/empty."""
    res = ProbeResult()
    lines = stdout.split("\n")
    head = nonce + " "
    section = ""
    i = 0
    gpu_lines: list[str] = []
    apps_lines: list[str] = []
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith(head):
            parts = line[len(head):].split()
            if not parts:
                continue
            section = parts[0]
            if section == "done":
                res.complete = True
            elif section == "gpurc":
                if parts[1:] == ["none"]:
                    res.gpu_present = False
                else:
                    res.gpu_present = True
                    try:
                        res.gpu_rc = int(parts[1])
                    except (IndexError, ValueError):
                        res.gpu_rc = -1
                section = ""
            elif section == "file" and len(parts) >= 3:
                key = parts[1]
                if parts[2] == "missing":
                    res.files[key] = FileChunk(key, missing=True)
                    continue
                end = f"{nonce} end {key}"
                body: list[str] = []
                while i < len(lines) and lines[i] != end:
                    body.append(lines[i])
                    i += 1
                if i >= len(lines):  # cut short (timeout): the byte count would lie, drop it
                    break
                i += 1  # skip the end marker
                try:
                    size, inode, start, nbytes = int(parts[2]), parts[3], int(parts[4]), int(parts[5])
                except (IndexError, ValueError):
                    continue
                res.files[key] = FileChunk(key, False, size, inode, start, nbytes, "\n".join(body))
                section = ""
            continue
        if section == "sys":
            _parse_sys_line(res, line)
        elif section == "pids":
            parts = line.split()
            if len(parts) >= 3:
                pid = int(parts[1]) if parts[1].isdigit() else None
                res.pids[parts[0]] = (pid, parts[2] == "1")
                if len(parts) > 3 and parts[3].isdigit():
                    res.starts[parts[0]] = int(parts[3])
        elif section == "gpu":
            gpu_lines.append(line)
        elif section == "apps":
            apps_lines.append(line)
        elif section == "pgids":  # "PID PGID" of each process in the run's process groups
            parts = line.split()
            if parts and all(p.isdigit() for p in parts):
                res.pgid_pids.add(int(parts[0]))
                res.pgid_of[int(parts[0])] = int(parts[-1])
    res.gpu_text = "\n".join(gpu_lines).strip()
    res.apps_text = "\n".join(apps_lines).strip()
    return res


def _parse_sys_line(res: ProbeResult, line: str) -> None:
    parts = line.split()
    if not parts:
        return
    if parts[0] == "ncpu" and len(parts) > 1 and parts[1].isdigit():
        res.ncpu = int(parts[1])
    elif parts[0] == "MemTotal:" and len(parts) > 1:
        res.mem_total_kib = int(parts[1])
    elif parts[0] == "MemAvailable:" and len(parts) > 1:
        res.mem_avail_kib = int(parts[1])
    elif len(parts) >= 5 and "/" in parts[3]:  # /proc/loadavg: 0.12 0.10 0.05 1/234 5678
        try:
            res.load1 = float(parts[0])
        except ValueError:
            res.load1 = None  # not a loadavg line after all
