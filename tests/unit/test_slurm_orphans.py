"""``fedctl.providers.slurm_orphans``: whose each fedctl job is, and a sweep that cancels exactly its
targets, each re-read just before its scancel (a fake squeue/scancel: the real cluster's test is
tests/integration/test_slurm_instances.py)."""

from __future__ import annotations

from typing import Iterable

from fedctl.providers.slurm_jobs import Job, SlurmCli
from fedctl.providers.slurm_orphans import NOT_OURS, ListedJob, classify, sweep

HERE, ELSEWHERE = "a" * 16, "b" * 16


def _job(jid: str, run: str | None, origin: str | None, state: str = "RUNNING") -> Job:
    return Job(jid, f"fedctl-{run}" if run else "other", f"fedctl-origin={origin}" if origin else "", state,
               "None", "fl1")


class FakeSqueue(SlurmCli):
    """squeue answers from ``jobs``; scancel removes them; ``before_cancel`` changes them first."""

    def __init__(self, jobs: list[Job]) -> None:
        super().__init__()
        self.live = {j.id: j for j in jobs}
        self.cancelled: list[str] = []
        self.edits: dict[str, Job] = {}  # applied at the first re-read (someone changed the job meanwhile)

    def jobs(self, run_ids: Iterable[str] | None = None, ids: Iterable[str] | None = None) -> list[Job]:
        self.live.update(self.edits)
        self.edits = {}
        if ids is not None:
            return [self.live[i] for i in ids if i in self.live]
        wanted = None if run_ids is None else set(run_ids)
        return [j for j in self.live.values() if j.run_id and (wanted is None or j.run_id in wanted)]

    def cancel(self, ids: list[str]) -> None:  # type: ignore[override]
        self.cancelled += ids
        for i in ids:
            self.live.pop(i, None)


def test_classify_tells_this_run_orphans_other_folders_and_lookalikes_apart() -> None:
    jobs = [_job("1", "r1", HERE), _job("2", "r0", HERE), _job("3", "r9", ELSEWHERE), _job("4", "r5", None)]
    got = {x.job.id: x.whose for x in classify(jobs, active="r1", origin=HERE)}
    assert got == {"1": "this run", "2": "orphan", "3": "other folder", "4": NOT_OURS}
    # a state that cannot be read: this folder's jobs may be the live run's
    assert classify([_job("2", "r0", HERE)], active=None, origin=HERE, unreadable=True)[0].whose.startswith("unknown")
    # the folder moved since the run began: the run's recorded origin still makes it this run's
    assert classify([_job("1", "r1", ELSEWHERE)], "r1", HERE, active_origin=ELSEWHERE)[0].whose == "this run"


def test_sweep_cancels_exactly_its_targets_and_leaves_a_job_whose_comment_changed() -> None:
    a, b, later = _job("10", "r0", HERE), _job("11", "r2", HERE), _job("12", "r0", HERE)
    cli = FakeSqueue([a, b, later])
    # job 11's comment is changed between the listing and the sweep: it is no longer fedctl's
    cli.edits = {"11": Job("11", "fedctl-r2", "mine now", "RUNNING", "None", "fl1")}
    res = sweep(cli, [ListedJob(a, "orphan"), ListedJob(b, "orphan")], poll_s=0)
    assert res.cancelled == ["10"] and res.left == ["11"]
    assert cli.cancelled == ["10"]  # job 12 of the same run was not in the plan: left alone
    assert set(cli.live) == {"11", "12"}


def test_sweep_refuses_a_target_without_fedctls_name_and_comment() -> None:
    odd = _job("20", "r3", None)
    cli = FakeSqueue([odd])
    res = sweep(cli, [ListedJob(odd, "orphan")], poll_s=0)
    assert res.cancelled == [] and res.left == ["20"] and cli.cancelled == []
