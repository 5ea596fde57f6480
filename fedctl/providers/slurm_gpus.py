"""Which GPUs a fedctl Slurm allocation holds on each node, and how they are given to the run's hosts.

Slurm is asked for GPUs once, for the whole allocation (``--gpus-per-node``), never per step: with
``--overlap`` Slurm 22.05 gives two steps that each ask ``--gres=gpu:1`` the *same* GPU. So fedctl
reads which GPUs each node got (``scontrol show job -d``: ``Nodes=fl1 CPU_IDs=0-1 Mem=0
GRES=gpu:2(IDX:0-1)``), records them with each host (``HostInfo.extra["slurm_gpus"]``, "0,1"; the
server's host records none) and places the client processes itself:

- the host check and watch run ``nvidia-smi`` through the node's connector, whose steps find the
  run folder's ``bin/nvidia-smi`` first on PATH (``slurm_nvidia_smi.py``): it shows only the host's
  allocated GPUs, in the recorded order, so the host's GPU facts are its allocation (the node may
  have more);
- fedctl's processes-per-GPU placement (``fedctl.plan.place_on_gpus``) then numbers them 0..n-1,
  and the connector gives a process placed on ``k`` the k-th allocated GPU (``visible_devices``),
  exported inside its step in the step's own numbering (``cuda_devices_sh``: relative where Slurm
  constrains devices by cgroup); a process placed on no GPU (the server) gets ``CUDA_VISIBLE_DEVICES=""``.

Pure functions (``cuda_devices_sh`` returns shell text): no Slurm command runs here.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence

from fedctl.providers.base import ProviderError

#: ``HostInfo.extra`` keys the slurm connector reads: the host's allocated GPU indices ("0,1"; ""
#: for none) and the het group of its node (a heterogeneous allocation: "0" server, "1" clients)
GPUS_KEY = "slurm_gpus"
HET_GROUP_KEY = "slurm_het_group"
#: bounds on what is believed from scontrol: GPU indices per node, lines read
MAX_GPU_INDEX = 1023
MAX_LINES = 100_000

# one node's line of ``scontrol show job -d``: Nodes=fl[1-2] CPU_IDs=0-1 Mem=0 GRES=gpu:2(IDX:0-1)
_NODE_LINE = re.compile(r"^\s*Nodes=(?P<nodes>\S+)\s+CPU_IDs=\S*\s+Mem=\S*\s+GRES=(?P<gres>\S*)")
# one gpu entry of GRES=: gpu:2(IDX:0-1), gpu:a100:1(IDX:3); other GRES (nic:1) may sit beside it
_GPU = re.compile(r"gpu(?::(?P<type>[A-Za-z0-9_.-]+))?:(?P<count>\d{1,4})\(IDX:(?P<idx>[^)]*)\)")
_RANGE = re.compile(r"^(\d{1,4})(?:-(\d{1,4}))?$")


def parse_indices(text: str) -> tuple[int, ...]:
    """``"0-1,3"`` -> ``(0, 1, 3)``; ValueError for anything else (a bound, a reversed range, a repeat)."""
    out: list[int] = []
    for part in text.split(","):
        m = _RANGE.match(part)
        if m is None:
            raise ValueError(f"{part!r} is not a GPU index or range")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo or hi > MAX_GPU_INDEX:
            raise ValueError(f"{part!r} is not a GPU range within 0-{MAX_GPU_INDEX}")
        out.extend(range(lo, hi + 1))
    if len(set(out)) != len(out):
        raise ValueError(f"{text!r} names a GPU twice")
    return tuple(out)


def parse_job_gpus(text: str, expand: Callable[[str], list[str]]) -> dict[str, tuple[int, ...]]:
    """Each node's allocated GPU indices from ``scontrol show job -d JOB`` (every component of a
    heterogeneous job). ``expand`` turns a node list (``fl[1-2]``) into names. A node without GPUs
    maps to ``()``. ProviderError when a GPU entry is malformed, its count disagrees with its
    indices, or a node is given GPUs twice: placement must not guess."""
    lines = text.splitlines()
    if len(lines) > MAX_LINES:
        raise ProviderError(f"scontrol show job -d printed {len(lines)} lines (more than {MAX_LINES})")
    found: dict[str, tuple[int, ...]] = {}
    for line in lines:
        m = _NODE_LINE.match(line)
        if m is None:
            continue
        gpus: list[int] = []
        for entry in _entries(m.group("gres")):
            if entry.split(":", 1)[0].split("(", 1)[0] != "gpu":
                continue  # another kind of GRES (nic:1, shard ...)
            e = _GPU.fullmatch(entry)
            if e is None:
                raise ProviderError(f"scontrol: cannot read the GPUs {entry[:60]!r} of {line.strip()[:200]!r}")
            try:
                idx = parse_indices(e.group("idx"))
            except ValueError as err:
                raise ProviderError(f"scontrol: cannot read the GPUs of {line.strip()[:200]!r}: {err}") from None
            if len(idx) != int(e.group("count")):
                raise ProviderError(f"scontrol: {entry} lists {len(idx)} index(es) for {e.group('count')} GPU(s) "
                                    f"in {line.strip()[:200]!r}")
            gpus.extend(idx)
        for node in expand(m.group("nodes")):
            if found.get(node) and gpus:
                raise ProviderError(f"scontrol: node {node} is listed with GPUs twice")
            found[node] = tuple(gpus) or found.get(node, ())
    return found


def _entries(gres: str) -> list[str]:
    """``gpu:2(IDX:0-1),nic:1`` -> its entries (commas inside parentheses belong to the entry)."""
    out, depth, cur = [], 0, ""
    for ch in gres:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [e for e in [*out, cur] if e and e != "(null)"]


def share_gpus(node_gpus: Sequence[int], hosts: int) -> list[tuple[int, ...]]:
    """The node's GPUs split among ``hosts`` client hosts placed on it: contiguous, disjoint, sizes
    differing by at most one (a host never shares a GPU with another host's processes)."""
    base, extra = divmod(len(node_gpus), max(1, hosts))
    out, start = [], 0
    for i in range(hosts):
        size = base + (1 if i < extra else 0)
        out.append(tuple(node_gpus[start:start + size]))
        start += size
    return out


def host_gpus(extra: Mapping[str, str]) -> tuple[int, ...] | None:
    """The GPUs recorded for a host (None: the allocation has no GPUs, nothing to restrict)."""
    if GPUS_KEY not in extra:
        return None
    text = extra[GPUS_KEY]
    return parse_indices(text) if text else ()


def gpus_text(gpus: Sequence[int]) -> str:
    """How a host's GPUs are recorded (``"0,1"``)."""
    return ",".join(str(g) for g in gpus)


def visible_devices(allocated: Sequence[int], placed: str | None) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a process that fedctl's placement put on GPU ``placed`` (its
    position among the host's allocated GPUs, as the host's facts list them), or ``""`` for one
    placed on none: a process never sees a GPU of the node that it was not given."""
    if placed is None or not placed.strip():
        return ""
    try:
        k = int(placed)
    except ValueError:
        raise ProviderError(f"CUDA_VISIBLE_DEVICES={placed!r}: fedctl places a process on one GPU") from None
    if not 0 <= k < len(allocated):
        raise ProviderError(f"a process was placed on GPU {k}, but the host holds {len(allocated)} of the allocation "
                            f"({gpus_text(allocated) or 'none'})")
    return str(allocated[k])


def place_hosts(hosts: Sequence[tuple[str, bool]], server_nodes: Sequence[str], client_nodes: Sequence[str],
                node_gpus: Mapping[str, Sequence[int]] | None, het: bool) -> dict[str, tuple[str, dict[str, str]]]:
    """Each host's node and its connector facts (``extra``): ``hosts`` are (name, is server) in the
    run's order. The server takes the first of ``server_nodes`` (its own node with ``het``, else the
    first client node), client hosts take ``client_nodes`` in turn. With ``node_gpus`` (a GPU
    allocation) each client host records its share of its node's GPUs, the server none."""
    if not client_nodes or not server_nodes:
        raise ProviderError("the allocation runs on no node (squeue gave no node list)")
    nodes: dict[str, str] = {}
    k = 0
    for name, is_server in hosts:
        if is_server:
            nodes[name] = server_nodes[0]
        else:
            nodes[name], k = client_nodes[k % len(client_nodes)], k + 1
    out: dict[str, tuple[str, dict[str, str]]] = {}
    for name, is_server in hosts:
        extra: dict[str, str] = {}
        if het:
            extra[HET_GROUP_KEY] = "0" if is_server else "1"
        if node_gpus is not None:
            if is_server:
                extra[GPUS_KEY] = ""  # the server needs no GPU: it sees none of the node's
            else:
                sharing = [n for n, s in hosts if not s and nodes[n] == nodes[name]]
                share = share_gpus(tuple(node_gpus.get(nodes[name], ())), len(sharing))[sharing.index(name)]
                extra[GPUS_KEY] = gpus_text(share)
        out[name] = (nodes[name], extra)
    return out


def cuda_devices_sh(index: str) -> str:
    """Shell lines, run inside the process's job step, that export ``CUDA_VISIBLE_DEVICES`` for
    allocated GPU ``index`` (absolute, as scontrol numbers it; ``""``: no GPU) in the numbering the
    step uses: where Slurm constrains devices (cgroup) it numbers a step's GPUs from 0, so the GPU is
    looked up by its position in ``SLURM_STEP_GPUS`` (absolute) within Slurm's own
    ``CUDA_VISIBLE_DEVICES`` for the step; without them (or the GPU), the absolute index is right."""
    if not index:
        return "export CUDA_VISIBLE_DEVICES=\n"
    if not index.isdigit():
        raise ProviderError(f"GPU index {index!r} is not a number")
    return (f"_w={index}; _d=$_w\n"
            'if [ -n "${SLURM_STEP_GPUS:-}" ] && [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then\n'
            '  _n=0; _p=-1; for _g in $(echo "$SLURM_STEP_GPUS" | tr , " "); do\n'
            '    [ "$_g" = "$_w" ] && _p=$_n; _n=$((_n + 1)); done\n'
            '  _n=0; for _c in $(echo "$CUDA_VISIBLE_DEVICES" | tr , " "); do\n'
            '    [ "$_n" = "$_p" ] && _d=$_c; _n=$((_n + 1)); done\n'
            "fi\n"
            "export CUDA_VISIBLE_DEVICES=$_d\n")
