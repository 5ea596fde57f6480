"""nvidia-smi CSV parsing: several GPUs, [N/A] fields, no GPU, a failing driver, the run's own memory."""

from __future__ import annotations

from fedctl.monitor.nvidia import QUERY_APPS_ARGS, QUERY_GPU_ARGS, parse_compute_apps, parse_gpus

# real output shapes of `nvidia-smi --query-gpu=index,uuid,name,utilization.gpu,memory.used,memory.total,
# temperature.gpu,power.draw --format=csv,noheader,nounits`
TWO_A100 = (
    "0, GPU-4a2b3c4d-1111-2222-3333-444455556666, NVIDIA A100-SXM4-40GB, 87, 30123, 40960, 61, 287.45\n"
    "1, GPU-5b2b3c4d-1111-2222-3333-444455556666, NVIDIA A100-SXM4-40GB, 0, 4, 40960, 33, 52.10\n"
)
NA_FIELDS = "0, GPU-9f00aa11-2222-3333-4444-555566667777, NVIDIA GeForce RTX 3060 Laptop GPU, [N/A], 1024, 6144, 47, [N/A]\n"
NOT_SUPPORTED = "0, GPU-9f00aa11-2222-3333-4444-555566667777, Tesla K80, 12, 100, 11441, [Not Supported], [Not Supported]\n"
DRIVER_FAILED = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest "
    "NVIDIA driver is installed and running.\n\n"
)
APPS = (
    "31337, GPU-4a2b3c4d-1111-2222-3333-444455556666, 29000\n"
    "31338, GPU-4a2b3c4d-1111-2222-3333-444455556666, 512\n"
    "4242, GPU-4a2b3c4d-1111-2222-3333-444455556666, 1000\n"  # somebody else's job on the same GPU
    "31339, GPU-5b2b3c4d-1111-2222-3333-444455556666, [N/A]\n"
)


def test_query_args_use_csv_noheader_nounits():
    assert QUERY_GPU_ARGS.startswith("--query-gpu=index,uuid,name,utilization.gpu,memory.used,memory.total")
    assert QUERY_GPU_ARGS.endswith("--format=csv,noheader,nounits")
    assert QUERY_APPS_ARGS == "--query-compute-apps=pid,gpu_uuid,used_memory --format=csv,noheader,nounits"


def test_two_gpus_with_run_memory():
    rep = parse_gpus(TWO_A100, 0, APPS, run_pids={31337, 31338, 31339})
    assert rep.status == "ok" and rep.error is None
    g0, g1 = rep.gpus
    assert (g0.index, g0.name, g0.util_pct, g0.mem_used_mib, g0.mem_total_mib, g0.temp_c, g0.power_w) == (
        0, "NVIDIA A100-SXM4-40GB", 87.0, 30123.0, 40960.0, 61.0, 287.45)
    assert g0.run_mem_mib == 29512.0 and g0.run_pids == (31337, 31338)  # not pid 4242's memory
    assert g1.util_pct == 0.0 and g1.run_pids == (31339,) and g1.run_mem_mib == 0.0  # its [N/A] memory adds nothing


def test_na_fields_are_none_not_zero():
    rep = parse_gpus(NA_FIELDS, 0)
    (g,) = rep.gpus
    assert g.util_pct is None and g.power_w is None
    assert g.mem_used_mib == 1024.0 and g.temp_c == 47.0
    (k80,) = parse_gpus(NOT_SUPPORTED, 0).gpus
    assert k80.temp_c is None and k80.power_w is None and k80.util_pct == 12.0


def test_driver_failure_is_an_error_not_zeros():
    rep = parse_gpus(DRIVER_FAILED, 9)
    assert rep.status == "error" and rep.gpus == ()
    assert rep.error.startswith("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver")


def test_failure_message_with_exit_zero_is_still_an_error():
    assert parse_gpus("Failed to initialize NVML: Driver/library version mismatch\n", 0).status == "error"


def test_no_gpu():
    assert parse_gpus("", 0).status == "none"
    rep = parse_gpus("No devices were found\n", 6)
    assert rep.status == "none" and "no devices" in rep.error


def test_empty_output_with_failure_code_reports_the_code():
    rep = parse_gpus("", 127)
    assert rep.status == "error" and "127" in rep.error


def test_compute_apps_skip_garbage():
    assert parse_compute_apps("No running processes found\n12, GPU-x, 5\n") == [(12, "GPU-x", 5.0)]
    assert parse_compute_apps("") == []


def test_gpu_memory_is_mapped_to_the_runs_processes():
    from fedctl.monitor.nvidia import QUERY_GPU_ARGS, parse_gpus  # noqa: F401 - the query it parses

    query = "0, GPU-a, T4, 50, 3000, 15360, 40, 30.0\n1, GPU-b, T4, 10, 500, 15360, 39, 25.0\n"
    apps = "101, GPU-a, 1000\n102, GPU-a, 2000\n103, GPU-b, 500\n999, GPU-b, 7\n"
    # 101 is client-0's pid, 102 a child in its group, 103 is client-1; 999 is not the run's
    rep = parse_gpus(query, 0, apps, {101, 102, 103}, {101: "client-0", 102: "client-0", 103: "client-1"})
    a, b = rep.gpus
    assert [(p.label, p.mem_mib) for p in a.processes] == [("client-0", 3000.0)]
    assert [(p.label, p.mem_mib) for p in b.processes] == [("client-1", 500.0)]
    assert b.run_mem_mib == 500.0
