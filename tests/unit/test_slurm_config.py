"""The ``slurm:`` inventory section, the sbatch command line built from it, and provision's plain refusal."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fedctl.config.inventory import parse_inventory
from fedctl.errors import ConfigError
from fedctl.provider_fields import settings_from_dict, settings_to_dict
from fedctl.providers.slurm_config import SlurmHostSettings
from fedctl.providers.slurm_jobs import job_comment, job_name, sbatch_argv, slurm_time


def inv(slurm: Any, **extra: Any):
    return parse_inventory({"provider": "slurm", "slurm": slurm, **extra}, "slurm.yaml")


def test_a_full_section_gives_a_server_and_one_slot_per_node_with_typed_settings() -> None:
    hosts = inv({"partition": "gpu", "nodes": 3, "gpus_per_node": 2, "cpus_per_task": 4, "mem": "16G",
                 "time": "4:00:00", "account": "proj-1", "qos": "normal", "constraint": "a100",
                 "sbatch_args": ["--exclusive"],
                 "login": {"address": "login.hpc.example", "user": "me", "port": 2222}}).hosts
    assert [h.name for h in hosts] == ["slurm-server", "slurm-node-01", "slurm-node-02", "slurm-node-03"]
    assert [h.roles for h in hosts] == [("server",), ("client",), ("client",), ("client",)]
    s = hosts[0].provider_settings
    assert isinstance(s, SlurmHostSettings)
    assert (s.partition, s.nodes, s.gpus_per_node, s.mem, s.time, s.login_address, s.login_port) == (
        "gpu", 3, 2, "16G", "4:00:00", "login.hpc.example", 2222)
    assert s.sbatch_args == ("--exclusive",)
    assert inv({"login": {"address": "h", "environment": {"SLURM_CONF": "/x", "B": 1}}}).hosts[0].provider_settings \
        .login_environment == (("B", "1"), ("SLURM_CONF", "/x"))
    # persisted in the state and loaded back as the same object (teardown works from the state alone)
    assert settings_from_dict(settings_to_dict(s)) == s


def test_server_defaults_to_sharing_the_first_node_and_own_takes_a_partition() -> None:
    assert inv({}).hosts[0].provider_settings.server == "shared"
    s = inv({"server": "own", "server_partition": "cpu", "partition": "gpu"}).hosts[0].provider_settings
    assert (s.server, s.server_partition, s.partition) == ("own", "cpu", "gpu")
    assert settings_from_dict(settings_to_dict(s)) == s


def test_prices_are_optional_numbers_kept_in_the_settings_and_no_part_of_the_allocation() -> None:
    s = inv({"price_per_node_hour": 1.5, "price_per_gpu_hour": 0}).hosts[0].provider_settings
    assert isinstance(s, SlurmHostSettings)
    assert (s.price_per_node_hour, s.price_per_gpu_hour) == (1.5, 0.0)
    assert settings_from_dict(settings_to_dict(s)) == s
    unpriced = inv({}).hosts[0].provider_settings
    assert (unpriced.price_per_node_hour, unpriced.price_per_gpu_hour) == (None, None)
    # a corrected price is the same allocation (a provisioned run need not be torn down for it)
    assert s.machine_identity() == unpriced.machine_identity()
    assert "partition" in s.machine_identity()


@pytest.mark.parametrize("section, key, words", [
    ({"nodes": 0}, "slurm.nodes", ">= 1"),
    ({"nodes": "two"}, "slurm.nodes", "integer"),
    ({"time": "4 hours"}, "slurm.time", "Slurm time"),
    ({"mem": "lots"}, "slurm.mem", "size like 16G"),
    ({"partition": "gpu queue"}, "slurm.partition", "partition name"),
    ({"sbatch_args": "--exclusive"}, "slurm.sbatch_args", "list"),
    ({"sbatch_args": ["--job-name=x"]}, "slurm.sbatch_args[0]", "set by fedctl"),
    ({"sbatch_args": ["exclusive"]}, "slurm.sbatch_args[0]", "not an option"),
    ({"login": {"user": "me"}}, "slurm.login.address", "required"),
    ({"login": {"address": "h", "proxy": "x"}}, "slurm.login.proxy", "unknown key"),
    ({"gpus": 2}, "slurm.gpus", "unknown key"),
    ({"server": "alone"}, "slurm.server", "not one of the choices"),
    ({"server_partition": "cpu"}, "slurm.server_partition", "only used with server: own"),
    ({"server": "own", "server_partition": "cpu queue"}, "slurm.server_partition", "partition name"),
    ({"price_per_node_hour": -1}, "slurm.price_per_node_hour", ">= 0"),
    ({"price_per_gpu_hour": "cheap"}, "slurm.price_per_gpu_hour", "must be a number"),
    ({"price_per_gpu_hour": True}, "slurm.price_per_gpu_hour", "must be a number"),
    ({"login": {"address": "h", "environment": {"1BAD": "x"}}}, "slurm.login.environment.1BAD", "variable name"),
    ({"login": {"address": "h", "environment": {"A": [1]}}}, "slurm.login.environment.A", "must be a string"),
])
def test_a_mistake_names_the_file_and_key(section: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        inv(section)
    msg = str(e.value)
    assert f"slurm.yaml: {key}" in msg, msg
    assert words in msg, msg


def test_a_missing_section_and_hosts_are_refused() -> None:
    with pytest.raises(ConfigError, match="needs a slurm section"):
        parse_inventory({"provider": "slurm"}, "slurm.yaml")
    with pytest.raises(ConfigError, match="creates its hosts"):
        inv({}, hosts=[{"name": "a", "address": "b"}])


def test_sbatch_names_comments_and_sizes_the_job_from_the_section(tmp_path: Path) -> None:
    s = SlurmHostSettings(nodes=4, partition="gpu", account="proj", gpus_per_node=1, sbatch_args=("--exclusive",))
    argv = sbatch_argv(s, "run1", "abc123", 2, tmp_path, max_hours=2.0)
    assert argv[:2] == ["sbatch", "--parsable"]
    assert f"--job-name={job_name('run1')}" in argv and job_name("run1") == "fedctl-run1"
    assert f"--comment={job_comment('abc123')}" in argv
    assert "--nodes=2" in argv and "--partition=gpu" in argv and "--account=proj" in argv
    assert "--gpus-per-node=1" in argv and "--exclusive" in argv
    assert "--time=150" in argv  # 2 h of budget + 30 min margin: the cluster ends a lost allocation
    assert argv[-1] == str(tmp_path / "alloc.sh")
    assert "--qos" not in " ".join(argv)


def test_time_comes_from_the_section_then_the_budget_then_a_day() -> None:
    assert slurm_time(SlurmHostSettings(time="1-00:00"), 2.0) == "1-00:00"
    assert slurm_time(SlurmHostSettings(), 0.5) == "60"
    assert slurm_time(SlurmHostSettings(), None) == str(24 * 60)


@pytest.mark.skipif(shutil.which("fedctl") is None, reason="the fedctl console script is not installed")
def test_provision_refuses_a_mistake_in_the_section_and_submits_nothing(tmp_path: Path) -> None:
    # GPUs are built now (tests/integration/test_slurm_gpu.py); a key that contradicts another is
    # refused with its key path before anything is submitted
    (tmp_path / "slurm.yaml").write_text("provider: slurm\nslurm:\n  partition: debug\n  nodes: 2\n"
                                         "  gpus_per_node: 1\n  server_partition: cpu\n")
    env = {**os.environ, "COLUMNS": "200", "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    # an sbatch that records being called: provision must not submit an allocation it cannot use
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sbatch").write_text(f"#!/bin/sh\ntouch {tmp_path / 'sbatch-called'}\necho 1\n")
    (tmp_path / "bin" / "sbatch").chmod(0o755)
    res = subprocess.run(["fedctl", "provision", "-i", "slurm.yaml", "-n", "2", "--yes"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "slurm.yaml: slurm.server_partition" in res.stderr and "server: own" in res.stderr
    assert not (tmp_path / "sbatch-called").exists()
