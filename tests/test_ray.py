"""Jobs on Ray: same records as in-process, GPU scheduling, failures, retries, resumable run directories.

One local Ray instance serves the module (2 CPU cores here, 4 logical CPUs and 2
logical GPUs so GPU scheduling can be checked without a GPU: Ray sets
CUDA_VISIBLE_DEVICES per task, and the jobs run on the CPU).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from conftest import run_cli
from superlens.config import load_config
from superlens.errors import UserError
from superlens.rundir import RunDir
from superlens.study import run_study

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.xdist_group("ray")  # one local Ray instance at a time, in one pytest-xdist worker

TINY = [
    "workers=1",  # one job at a time in the test process (the demo preset runs two side by side)
    "model.width=4", "recipe.epochs=1", "recipe.batch_size=128", "active.initial_size=40", "active.query_size=40",
    "active.rounds=2", "analysis.enabled=false", "featvis.enabled=false", "sae.enabled=false", "toy.enabled=false",
]
TIMING = ("query_seconds", "train_seconds")
quiet = lambda *_: None  # noqa: E731


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def records(run_dir, arm, seed):
    rows = json.loads((RunDir(run_dir).job(arm, seed).done).read_text())["records"]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_ray_gives_the_records_of_the_local_executor(cluster, tmp_path):
    base = [*TINY, "seeds=[0]", "arms=[al-least_confidence,al-random]", "analysis.enabled=true",
            "analysis.max_samples=120", "analysis.probe_samples=150", "analysis.tsne=false"]
    local = run_study(load_config("demo", base), tmp_path / "local", progress=False, log=quiet)
    remote = run_study(load_config("demo", [*base, "executor=ray", "ray.gpus_per_job=0",
                                            f"ray.cpus_per_job={torch.get_num_threads()}"]),
                       tmp_path / "ray", progress=False, log=quiet)
    for arm in ("al-least_confidence", "al-random"):
        assert records(tmp_path / "local", arm, 0) == records(tmp_path / "ray", arm, 0)
    assert local["arms"]["al-random"]["test_accuracy"] == remote["arms"]["al-random"]["test_accuracy"]
    assert json.loads((tmp_path / "ray" / "manifest.json").read_text())["executor"] == "ray"


def test_logical_gpus_bound_the_jobs_running_at_once(cluster, tmp_path):
    cfg = load_config("demo", [*TINY, "seeds=[0,1]", "arms=[al-random]", "device=cpu", "executor=ray",
                               "ray.gpus_per_job=1", "ray.cpus_per_job=1"])
    run_study(cfg, tmp_path, progress=False, log=quiet)
    workers = [json.loads(p.read_text()) for p in tmp_path.glob("*/*/seed*/worker.json")]
    workers += [json.loads(p.read_text()) for p in tmp_path.glob("round0/seed*/worker.json")]
    assert len(workers) == 4 and all(w["cuda_visible_devices"] in ("0", "1") for w in workers)
    for w in workers:  # the jobs running when w starts: at most two (two logical GPUs, one per job), on distinct GPUs
        running = [v for v in workers if v["started"] <= w["started"] < v["finished"]]
        assert 1 <= len(running) <= 2
        assert len({v["cuda_visible_devices"] for v in running}) == len(running)
    assert max(sum(v["started"] <= w["started"] < v["finished"] for v in workers) for w in workers) == 2  # in parallel
    # one worker process per GPU job: a reused worker would keep the CUDA context of its first job's GPU
    assert len({w["pid"] for w in workers}) == len(workers)
    assert all("gpu_uuid" in w for w in workers)


def test_cpus_per_gpu_job_count_the_gpu_nodes_only():
    """A 64-CPU head without GPUs and two nodes of 8 GPUs and 64 CPUs: 8 CPUs per GPU job, not 12 (which
    would leave 3 of every 8 GPUs idle)."""
    from superlens.specs import RaySpec
    from superlens.study.executors import ray_resources

    class FakeRay:
        @staticmethod
        def cluster_resources():
            return {"CPU": 192.0, "GPU": 16.0}

        @staticmethod
        def nodes():
            return [{"Alive": True, "Resources": {"CPU": 64.0}},
                    {"Alive": True, "Resources": {"CPU": 64.0, "GPU": 8.0}},
                    {"Alive": True, "Resources": {"CPU": 64.0, "GPU": 8.0}},
                    {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 8.0}}]

    assert ray_resources(FakeRay, RaySpec()) == (1.0, 8.0)
    assert ray_resources(FakeRay, RaySpec(gpus_per_job=2)) == (2.0, 16.0)


def test_a_failing_job_leaves_error_txt_and_the_rest_finish(cluster, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "demo", *TINY, "seeds=[0,1]", "arms=[al-margin,al-random]", "executor=ray", "ray.gpus_per_job=0",
            "--out", out, "--quiet"]
    bad = out / "round0" / "seed1" / "done.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"seed": 1, "rec')  # a truncated record: both AL jobs of seed 1 need it
    code, _, err = run_cli(args, capsys)
    assert code == 1
    assert "job al-margin/seed1 failed: UserError:" in err and "job al-random/seed1 failed" in err
    assert "round0/seed1/done.json is corrupt" in err and err.count("failed:") == 2
    assert "is corrupt" in (out / "arms" / "al-margin" / "seed1" / "error.txt").read_text()
    assert (out / "arms" / "al-margin" / "seed0" / "done.json").exists() and (out / "summary.json").exists()
    bad.unlink()  # what the message says to do
    code, _, err = run_cli(["resume", out, "--quiet"], capsys)
    assert code == 0, err
    assert not (out / "arms" / "al-margin" / "seed1" / "error.txt").exists()
    assert set(json.loads((out / "summary.json").read_text())["arms"]["al-margin"]["seeds"]) == {0, 1}


def test_a_worker_that_dies_is_retried_and_resumes(cluster, tmp_path):
    base = [*TINY, "seeds=[0]", "arms=[al-random]", "active.rounds=4", "recipe.epochs=2"]
    run_study(load_config("demo", base), tmp_path / "local", progress=False, log=quiet)
    out = tmp_path / "ray"
    job = RunDir(out).job("al-random", 0)
    killed = []

    def kill_once():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            if job.checkpoint.exists() and job.worker.exists():
                pid = json.loads(job.worker.read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_once)
    watcher.start()
    run_study(load_config("demo", [*base, "executor=ray", "ray.gpus_per_job=0",
                                        f"ray.cpus_per_job={torch.get_num_threads()}", "ray.max_retries=2"]), out,
              progress=False, log=quiet)
    watcher.join()
    assert killed, "the job finished before it could be killed"
    assert json.loads(job.worker.read_text())["attempts"] == 2
    assert records(tmp_path / "local", "al-random", 0) == records(out, "al-random", 0)


def test_gpus_asked_of_a_cluster_without_any_is_refused_before_submitting():
    from superlens.study.executors import ray_resources

    class NoGPUs:
        @staticmethod
        def cluster_resources():
            return {"CPU": 2.0}

    from superlens.specs import RaySpec

    with pytest.raises(UserError, match="ray.gpus_per_job=1 but the Ray cluster has no GPU"):
        ray_resources(NoGPUs, RaySpec(gpus_per_job=1, cpus_per_job=1))
    assert ray_resources(NoGPUs, RaySpec(gpus_per_job=None, cpus_per_job=1)) == (0.0, 1.0)
    import torch

    assert ray_resources(NoGPUs, RaySpec()) == (0.0, float(torch.get_num_threads()))

    class EightGPUs:
        @staticmethod
        def cluster_resources():
            return {"CPU": 128.0, "GPU": 8.0}

        @staticmethod
        def nodes():
            return [{"Alive": True, "Resources": {"CPU": 128.0, "GPU": 8.0}}]

    # a GPU job gets the node's CPUs per GPU (its t-SNE, strategies and probes run there), not 1
    assert ray_resources(EightGPUs, RaySpec()) == (1.0, 16.0)
    assert ray_resources(EightGPUs, RaySpec(gpus_per_job=0.5)) == (0.5, 8.0)
    assert ray_resources(EightGPUs, RaySpec(cpus_per_job=2)) == (1.0, 2.0)
    with pytest.raises(UserError, match="executor must be 'local' or 'ray'"):
        load_config("demo", ["executor=slurm"])


def test_without_ray_installed_the_message_says_how(monkeypatch):
    from superlens.specs import RaySpec
    from superlens.study.executors import connect

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r"pip install 'superlens\[ray\]'"):
        connect(RaySpec())


def test_unreachable_address_is_one_line(tmp_path, capsys):
    code = subprocess.run([sys.executable, "-m", "superlens", "run", "demo", *TINY, "executor=ray", "ray.address=127.0.0.1:9",
                           "--out", str(tmp_path), "--quiet"], capture_output=True, text=True, timeout=120)
    assert code.returncode == 2 and code.stderr.count("\n") == 1
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in code.stderr


def test_corrupt_job_files_are_redone_from_the_last_good_state(tmp_path):
    cfg = load_config("demo", [*TINY, "seeds=[0]", "arms=[al-random,al-margin]", "analysis.enabled=true",
                               "analysis.max_samples=100", "analysis.probe_samples=120", "analysis.tsne=false"])
    run_study(cfg, tmp_path / "whole", progress=False, log=quiet)
    run = RunDir(tmp_path / "cut")
    run_study(cfg, run.path, progress=False, log=quiet)
    (run.job("al-random", 0).model).write_bytes(b"PK\x03\x04 truncated")  # a failed copy
    (run.job("al-random", 0).analysis).unlink()  # the stage that needs it is still to run
    margin = run.job("al-margin", 0)
    margin.done.unlink()
    margin.checkpoint.write_bytes(b"\x80\x02 not a checkpoint")  # a full disk mid-write
    lines = []
    run_study(cfg, run.path, progress=False, log=lines.append)
    assert any("model.pt is unreadable" in line and "training this job again" in line for line in lines)
    assert any("checkpoint.pt is unreadable" in line and "restarts from round 0" in line for line in lines)
    for arm in ("al-random", "al-margin"):
        assert records(tmp_path / "whole", arm, 0) == records(run.path, arm, 0)


def test_files_follow_the_umask(tmp_path):
    from superlens.fileio import write_json

    for mask, mode in ((0o022, 0o644), (0o002, 0o664), (0o077, 0o600)):
        old = os.umask(mask)
        try:
            write_json(tmp_path / f"m{mask}.json", {})
        finally:
            os.umask(old)
        assert (tmp_path / f"m{mask}.json").stat().st_mode & 0o777 == mode


def test_a_driver_killed_with_kill_9_leaves_a_run_that_resume_finishes(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*TINY, "seeds=[0,1]", "arms=[al-random,al-margin]", "active.rounds=3"]
    proc = subprocess.Popen([sys.executable, "-m", "superlens", "run", "demo", *args, "--out", str(out), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("arms/*/seed*/done.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists()  # it died mid-study
    code, _, err = run_cli(["resume", out, "--quiet"], capsys)
    assert code == 0, err
    assert len(list(out.glob("arms/*/seed*/done.json"))) == 4


def test_the_ray_tests_share_one_worker(request):
    """Under `make test` (pytest-xdist, --dist loadgroup) every test of this file carries the group's name, so one
    worker runs them all; a pytest that drops the mark (9.2 with pytest-xdist 3.8) fails here."""
    if os.environ.get("PYTEST_XDIST_WORKER") and request.config.getvalue("loadgroup"):
        assert request.node.nodeid.endswith("@ray"), request.node.nodeid
