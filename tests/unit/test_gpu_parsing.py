"""nvidia-smi output that must not be believed: warning lines, "No devices were found" with exit 0,
digits that are not ASCII. Each is reported (a warning naming the line) and never counted as a GPU,
in every place fedctl reads nvidia-smi: the host facts, this machine's GPU count, a process's GPU
environment, ``watch`` and the budget watchdog."""

from __future__ import annotations

import logging

import pytest

from fedctl import watchdog
from fedctl.errors import PlanError
from fedctl.model import HostInfo
from fedctl.monitor.nvidia import (
    gpu_fact_lines,
    gpu_memory_mib,
    parse_compute_apps,
    parse_gpu_facts,
    parse_gpu_indices,
    parse_gpus,
    parse_uint,
)
from fedctl.ops.procenv import process_env
from fedctl.plan import local_gpu_count
from fedctl.state import HostRecord, ProcessRecord, RunState
from tests.gpu.fake_nvidia_smi import INFOROM_WARNING, install

ONE_GPU = "NVIDIA A100-SXM4-40GB, 40960"


@pytest.mark.parametrize("text", ["²", "١٦", "1_000", "+1", "-1", "1.0", "0x10", "", " ", "1 2", "16384\x00"])
def test_only_ascii_digits_are_numbers(text):
    assert parse_uint(text) is None  # "²" and "١٦" pass str.isdigit(), which fedctl used to trust


def test_ascii_digits_are_numbers():
    assert parse_uint(" 16384\n") == 16384 and parse_uint("0") == 0


@pytest.mark.parametrize("lines,gpus,other", [
    ([INFOROM_WARNING, ONE_GPU], [ONE_GPU], [INFOROM_WARNING]),
    (["No devices were found"], [], ["No devices were found"]),  # printed with exit 0 by some drivers
    (["Fake GPU, ²"], [], ["Fake GPU, ²"]),                      # "²".isdigit() is True; int("²") raises
    (["Fake GPU, ١٦٣٨٤"], [], ["Fake GPU, ١٦٣٨٤"]),            # int() takes these, nvidia-smi never prints them
    (["Fake GPU, 1_024"], [], ["Fake GPU, 1_024"]),
    ([", 16384"], [], [", 16384"]),                              # no name
    (["Fake GPU, 16384, extra"], [], ["Fake GPU, 16384, extra"]),
    ([ONE_GPU, "", "  ", "Tesla T4 ,15360 \n"], [ONE_GPU, "Tesla T4, 15360"], []),
])
def test_gpu_fact_lines_count_only_name_and_memory(lines, gpus, other, caplog):
    with caplog.at_level(logging.WARNING, logger="fedctl.gpu"):
        assert parse_gpu_facts(lines) == (gpus, other)
    assert len(caplog.records) == len(other)
    for line in other:  # each line that is not a GPU is reported by name
        assert any(repr(line[:120]) in r.getMessage() for r in caplog.records), (line, caplog.text)
    assert gpu_fact_lines(lines) == gpus


def test_a_facts_warning_names_the_host(caplog):
    with caplog.at_level(logging.WARNING, logger="fedctl.gpu"):
        assert gpu_fact_lines([INFOROM_WARNING, ONE_GPU], where="gpu-box-3") == [ONE_GPU]
    assert caplog.records[0].getMessage() == (
        f"gpu-box-3: nvidia-smi: ignored a line that is not 'NAME, MEMORY_MIB': {INFOROM_WARNING!r}")


def test_gpu_memory_of_a_facts_line_is_strict():
    assert gpu_memory_mib(ONE_GPU) == 40960
    assert gpu_memory_mib("Fake GPU, ²") is None
    assert gpu_memory_mib(INFOROM_WARNING) is None


def test_gpu_indices_skip_and_report_other_lines(caplog):
    with caplog.at_level(logging.WARNING, logger="fedctl.gpu"):
        assert parse_gpu_indices(f"{INFOROM_WARNING}\n0\n²\n0\n1\n") == ([0, 1], [INFOROM_WARNING, "²"])
    assert "infoROM" in caplog.text and "'²'" in caplog.text
    assert parse_gpu_indices("No devices were found\n") == ([], ["No devices were found"])


@pytest.mark.parametrize("gpus,kwargs,expected", [
    (1, {"warning": INFOROM_WARNING}, 1),
    (2, {"warning": INFOROM_WARNING}, 2),
    (0, {"no_devices_exit": 0}, 0),
    (0, {}, 0),
])
def test_local_gpu_count_counts_only_gpus(tmp_path, monkeypatch, gpus, kwargs, expected):
    fake = install(tmp_path / "bin", gpus, **kwargs).parent
    monkeypatch.setenv("PATH", f"{fake}:/usr/bin:/bin")
    assert local_gpu_count() == expected


def _host(facts_gpus: list[str], client_gpus: list[int | None]) -> HostRecord:
    rec = HostRecord(info=HostInfo(name="h2", address="127.0.0.2"))
    rec.facts = {"gpus": facts_gpus}
    rec.client_gpus = client_gpus
    rec.client_processes = [[k] for k in range(len(client_gpus))]
    return rec


def test_process_env_reads_only_real_gpu_lines():
    rec = _host([INFOROM_WARNING, "Fake GPU, 16384"], [0, 0])  # facts saved before the fix
    env = process_env(RunState(run_id="r"), rec, ProcessRecord(role="client", index=1, gpu=0))
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert env["FEDCTL_GPU_MEMORY_MB"] == str(int(16384 * 0.9 / 2))


def test_process_env_refuses_a_gpu_the_host_does_not_have():
    # the warning line was once counted as GPU 1: the process would have got CUDA_VISIBLE_DEVICES=1
    rec = _host([INFOROM_WARNING, "Fake GPU, 16384"], [0, 1])
    with pytest.raises(PlanError, match=r"h2: client process 1 was placed on GPU 1, but nvidia-smi lists 1 GPU"):
        process_env(RunState(run_id="r"), rec, ProcessRecord(role="client", index=1, gpu=1))


def test_process_env_with_a_non_ascii_memory_does_not_crash():
    rec = _host(["Fake GPU, ²"], [0, 0])
    with pytest.raises(PlanError, match="lists 0 GPU"):  # was: ValueError from int("²")
        process_env(RunState(run_id="r"), rec, ProcessRecord(role="client", index=0, gpu=0))
    assert process_env(RunState(run_id="r"), _host(["No devices were found"], []),
                       ProcessRecord(role="server", index=0)) == {}


def test_watch_report_counts_only_rows_of_the_queried_format():
    row = "0, GPU-a, NVIDIA A100, 87, 30123, 40960, 61, 287.45"
    rep = parse_gpus(f"{INFOROM_WARNING}\n{row}\n", 0)
    assert [g.index for g in rep.gpus] == [0] and rep.error == f"unparsed: {INFOROM_WARNING}"
    rep = parse_gpus(f"{row}\n², GPU-b, NVIDIA A100, 1, 2, 3, 4, 5\n", 0)
    assert [g.index for g in rep.gpus] == [0] and "²" in rep.error
    (g,) = parse_gpus("0, GPU-a, NVIDIA A100, nan, ², 40960, inf, 1_0\n", 0).gpus
    assert (g.util_pct, g.mem_used_mib, g.mem_total_mib, g.temp_c, g.power_w) == (None, None, 40960.0, None, None)
    assert parse_gpus("No devices were found\n", 0).status == "none"
    assert parse_compute_apps("²³, GPU-a, 5\n12, GPU-a, 5\n") == [(12, "GPU-a", 5.0)]


def test_watchdog_gpu_utilisation_ignores_other_lines(capsys):
    assert watchdog.gpu_utilisation(("printf", f"{INFOROM_WARNING}\\n35\\nnan\\ninf\\n²\\n")) == 35.0
    assert "infoROM" in capsys.readouterr().out  # reported in the watchdog's log
    assert watchdog.gpu_utilisation(("printf", "No devices were found\\n")) is None
    assert watchdog.gpu_utilisation(("printf", "[N/A]\\n7.5\\n")) == 7.5


def test_watchdog_pid_files_take_ascii_digits_only(tmp_path):
    # the same trap outside nvidia-smi: "²".isdigit() is True, then int("²") crashed the watchdog
    (tmp_path / "client-0.pid").write_text("²\n4242 99\n١٢٣\n1\n")
    assert watchdog.read_pids([str(tmp_path / "*.pid")]) == [4242]
