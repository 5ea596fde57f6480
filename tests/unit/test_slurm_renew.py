"""``fedctl.providers.slurm_renew``: reading a host's files on the login node once its job ended
(only files under the host's own workdir, links resolved), and setting the ended job's agent files
aside before a new allocation (only in a run folder fedctl marked). This machine is the login node."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from fedctl.connectors.base import HostInfo
from fedctl.errors import RemoteError
from fedctl.providers.base import ProviderError
from fedctl.providers.slurm_jobs import SlurmCli
from fedctl.providers.slurm_renew import files_connector, set_aside_job_files


def test_files_are_fetched_only_from_under_the_hosts_workdir(tmp_path: Path) -> None:
    run = tmp_path / "slurm" / "run1"
    work = run / "slurm-server"
    (work / "runs").mkdir(parents=True)
    (work / "runs" / "metrics.jsonl").write_text('{"type": "round", "round": 1}\n')
    secret = tmp_path / "secret.txt"
    secret.write_text("not the run's")
    (work / "runs" / "link.log").symlink_to(secret)
    (run / "other-host.log").write_text("another host's")
    conn = files_connector(HostInfo(name="slurm-server", address="fl1", workdir=str(work)), None)
    with conn:
        conn.get(str(work / "runs" / "metrics.jsonl"), str(tmp_path / "got.jsonl"))
        assert (tmp_path / "got.jsonl").read_text().startswith('{"type"')
        for bad in (work / "runs" / "link.log", run / "other-host.log", work / "runs" / ".." / ".." / "other-host.log"):
            with pytest.raises(RemoteError, match="refused to fetch"):
                conn.get(str(bad), str(tmp_path / "x"))
        assert not (tmp_path / "x").exists()
        assert conn.run(f"ls {work}/runs").stdout.split() == ["link.log", "metrics.jsonl"]


def test_the_ended_jobs_agent_files_are_set_aside_only_in_a_marked_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run1"
    for sub in ("steps", "status", "logs"):
        (run / sub).mkdir(parents=True)
    (run / "steps" / "slurm-server-server.pid-1.json").write_text("{}")
    (run / "agent.json").write_text('{"job": "7"}')
    (run / "slurm-server").mkdir()
    cli = SlurmCli()
    with pytest.raises(ProviderError, match="not the run folder fedctl made"):
        set_aside_job_files(cli, PurePosixPath(str(run)), ["7"], ".fedctl-tree")
    assert (run / "agent.json").exists()
    (run / ".fedctl-tree").write_text("")
    set_aside_job_files(cli, PurePosixPath(str(run)), ["7"], ".fedctl-tree")
    assert sorted(os.listdir(run)) == [".fedctl-tree", "job-7", "slurm-server"]
    assert (run / "job-7" / "steps" / "slurm-server-server.pid-1.json").exists()
