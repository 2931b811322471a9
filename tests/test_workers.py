"""executor=local with workers > 1: jobs side by side in worker processes of this machine."""

import json
import os

import pytest
import torch

from superlens.config import load_config
from superlens.errors import UserError
from superlens.rundir import RunDir
from superlens.study import run_study
from superlens.study.run import JobsFailed

TINY = [
    "model.width=4", "recipe.epochs=1", "recipe.batch_size=128", "active.initial_size=40", "active.query_size=40",
    "active.rounds=2", "arms=[al-margin,al-random]", "analysis.enabled=false", "featvis.enabled=false",
    "sae.enabled=false", "toy.enabled=false",
]
TIMING = ("query_seconds", "train_seconds")


def records(run_dir, arm, seed):
    rows = json.loads(RunDir(run_dir).job(arm, seed).done.read_text())["records"]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture
def one_thread():
    """This process at one torch thread, so that one job at a time here and two workers of one thread
    each compute at the same thread count (CPU results are bit-identical only then)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_two_workers_give_the_records_of_one_job_at_a_time_and_a_failed_job_stops_its_dependents(one_thread,
                                                                                                  tmp_path):
    run_study(load_config("demo", [*TINY, "workers=1", "seeds=[0,1]"]), tmp_path / "one", progress=False,
              log=lambda _: None)
    out = tmp_path / "two"
    (out / "round0").mkdir(parents=True)
    (out / "round0" / "seed2").write_text("a file where round 0 of seed 2 writes its folder")
    lines = []
    with pytest.raises(JobsFailed) as failed:
        run_study(load_config("demo", [*TINY, "workers=2", "seeds=[0,1,2]"]), out, progress=False, log=lines.append)
    for arm in ("al-margin", "al-random"):
        for seed in (0, 1):
            assert records(out, arm, seed) == records(tmp_path / "one", arm, seed)
            worker = json.loads(RunDir(out).job(arm, seed).worker.read_text())
            assert worker["torch_threads"] == 1 and "finished" in worker
    errors = {r.job: r.error for r in failed.value.failures}
    assert set(errors) == {"round0/seed2", "al-margin/seed2", "al-random/seed2"}
    assert errors["round0/seed2"].startswith("failed in its worker process") and "seed2" in errors["round0/seed2"]
    assert errors["al-margin/seed2"] == errors["al-random/seed2"] == "not run: round0/seed2 failed"
    assert "round0/seed2: FAILED" in lines and "al-random/seed0: done" in lines
    assert any(line.startswith("al-margin/seed1: ") and "training" in line for line in lines)  # a worker's own log
    pids = {json.loads(RunDir(out).job(arm, s).worker.read_text())["pid"] for arm in ("al-margin", "al-random")
            for s in (0, 1)}
    assert len(pids) <= 2 and os.getpid() not in pids  # at most two worker processes, none of them this one
    assert (out / "summary.json").exists()  # the summary of the jobs that finished
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["workers"] == 2 and manifest["torch_threads"] == 1
    assert "2 jobs side by side, 1 torch thread each" in (out / "report.html").read_text()


@pytest.mark.parametrize("overrides, message", [
    (["workers=0"], "workers must be a whole number >= 1, got 0"),
    (["workers=true"], "workers must be a whole number >= 1, got True"),
    (["workers=2", "executor=ray"], "workers=2 is for executor=local; with executor=ray, ray.cpus_per_job sets"),
])
def test_workers_that_cannot_be_used_are_one_line(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config("demo", overrides)
