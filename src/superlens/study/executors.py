"""Where a study's jobs run: ``local`` (in this process, or with ``workers`` > 1 side by side in
worker processes on this machine) or ``ray`` (Ray tasks).

All run the same ``stages.execute`` on the same jobs, in an order that respects
dependencies (a seed's round 0 before its AL arms; the baseline before round 0 when
AL starts from it). A job whose dependency failed is not run. Each returns one
``JobResult`` per job; those of worker processes and Ray are collected as they finish.
"""

from __future__ import annotations

import os
import queue
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable

from superlens.data import load_spec
from superlens.errors import UserError, describe
from superlens.specs import RaySpec
from superlens.study.jobs import Job, JobResult, ToyJob, done
from superlens.study.stages import execute
from superlens.training import resolve_device


def run_local(jobs: list[Job], deps: dict[str, list[str]], splits, device, progress: bool,
              log: Callable[[str], None]) -> list[JobResult]:
    results: dict[str, JobResult] = {}
    for i, job in enumerate(jobs, start=1):
        failed = [d for d in deps[job.label] if d in results and not results[d].ok]
        if failed:
            results[job.label] = JobResult(job.label, False, {}, f"not run: {failed[0]} failed")
            continue
        if done(job):
            results[job.label] = JobResult(job.label, True, {})
            continue
        log(f"[{i}/{len(jobs)}] {job.label}")
        results[job.label] = execute(job, None if isinstance(job, ToyJob) else splits, device, progress, log)
    return list(results.values())


def run_workers(jobs: list[Job], deps: dict[str, list[str]], workers: int, threads: int,
                log: Callable[[str], None]) -> list[JobResult]:
    """The jobs in ``workers`` processes of this machine at once, ``threads`` torch threads each.

    On a few CPU cores this is faster than one job at a time with every core: a small
    network's steps are too short for several threads to share well (on 2 cores, two
    one-thread jobs side by side do 1.3-1.5x the work of one two-thread job). A job starts
    once its dependencies have finished, in the order of ``jobs``, whenever a worker is
    free. Each worker loads the data once; jobs log through ``log`` in this process."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # a fork would inherit this process's thread pools
    lines = context.Queue()
    labels = {job.label for job in jobs}
    results: dict[str, JobResult] = {}
    waiting, running = list(jobs), {}
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(threads, lines))
    try:
        while waiting or running:
            for job in list(waiting):
                if len(running) >= workers:
                    break
                failed = [d for d in deps[job.label] if d in results and not results[d].ok]
                if failed:
                    results[job.label] = JobResult(job.label, False, {}, f"not run: {failed[0]} failed")
                elif done(job):
                    results[job.label] = JobResult(job.label, True, {})
                elif all(d in results or d not in labels for d in deps[job.label]):
                    log(f"[{len(results) + len(running) + 1}/{len(jobs)}] {job.label}")
                    running[pool.submit(_worker_job, job)] = job.label
                else:
                    continue
                waiting.remove(job)
            finished = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED).done if running else set()
            _relay(lines, log)
            for future in finished:
                label = running.pop(future)
                results[label] = _collected(label, future)
                log(f"{label}: {'done' if results[label].ok else 'FAILED'}")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _relay(lines, log)
    return [results[job.label] for job in jobs]


def _collected(label: str, future: Future) -> JobResult:
    try:
        return future.result()
    except Exception as exc:  # raised outside the job's own error handling, or the worker process died
        return JobResult(label, False, {}, f"failed in its worker process ({describe(exc)})")


def _relay(lines, log: Callable[[str], None]) -> None:
    while True:
        try:
            log(lines.get_nowait())
        except queue.Empty:
            return


_WORKER: dict[str, Any] = {}  # in a worker process: its log queue and the data it loaded, by spec


def _start_worker(threads: int, lines) -> None:
    import torch

    _die_with_parent()
    torch.set_num_threads(max(1, threads))
    _WORKER["lines"] = lines


def _die_with_parent() -> None:
    """On Linux the kernel ends this worker when the process that started it dies: a study killed with
    ``kill -9`` leaves no worker still writing into the run that ``superlens resume`` then continues."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker ends when it next reads its closed queue
        pass


def _worker_job(job: Job) -> JobResult:
    """One job in a worker process, on data the worker loaded once (a toy job needs none)."""
    log = _WORKER["lines"].put
    if isinstance(job, ToyJob):
        return execute(job, log=log)
    key = repr((job.data, job.device))
    if key not in _WORKER:
        device = resolve_device(job.device)
        _WORKER[key] = (load_spec(job.data, device), device)
    splits, device = _WORKER[key]
    return execute(job, splits, device, False, log)


def _ray_job(job: Job, threads: int, gpu: bool, *dependencies: JobResult) -> JobResult:
    """One job inside a Ray worker: torch uses the job's CPUs; Ray has set CUDA_VISIBLE_DEVICES.

    A GPU job runs in a fresh worker process (``max_calls=1``): a CUDA context, once made,
    stays on the GPU of the job that made it, whatever CUDA_VISIBLE_DEVICES says later."""
    import torch

    if gpu and torch.cuda.is_initialized():
        raise RuntimeError(f"{job.label}: CUDA is already initialized in this Ray worker (pid {os.getpid()}), "
                           "so the job would run on an earlier job's GPU; GPU jobs need a fresh worker")
    for dep in dependencies:
        if not dep.ok:
            return JobResult(job.label, False, {}, f"not run: {dep.job} failed")
    torch.set_num_threads(max(1, threads))
    return execute(job)


def connect(ray_settings: RaySpec):
    """The ``ray`` module, attached to the configured cluster (or a new local instance)."""
    try:
        import ray
    except ImportError:
        raise UserError("executor=ray needs Ray; install it with `pip install 'superlens[ray]'`") from None
    if ray.is_initialized():
        return ray
    address = ray_settings.address or os.environ.get("RAY_ADDRESS")
    if address and address != "auto":
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(logging_level="ERROR", log_to_driver=False, include_dashboard=False)
    except Exception as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise UserError(f"cannot reach {where} ({describe(exc)}); "
                        "check ray.address / RAY_ADDRESS, or `ray status` on the head node") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once for an address nothing listens on (Ray itself would retry for minutes)."""
    import socket

    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return
    except ValueError:
        raise UserError(f"ray.address must look like host:port (e.g. 10.0.0.1:6379), got {address!r}") from None
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address} ({exc.strerror or type(exc).__name__}); check "
                        "ray.address / RAY_ADDRESS, and that `ray start --head` runs there") from None


def ray_resources(ray, ray_settings: RaySpec) -> tuple[float, float]:
    """(gpus, cpus) per job; GPUs asked for where the cluster has none is an error before anything is submitted."""
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
    gpus = ray_settings.gpus_per_job
    if gpus is None:
        gpus = 1.0 if cluster_gpus > 0 else 0.0
    if gpus > 0 and cluster_gpus == 0:
        raise UserError(f"ray.gpus_per_job={gpus} but the Ray cluster has no GPU; set ray.gpus_per_job=0 or add GPU nodes")
    if gpus > cluster_gpus:
        raise UserError(f"ray.gpus_per_job={gpus} is more than the cluster's {cluster_gpus:g} GPUs")
    cpus = ray_settings.cpus_per_job
    if cpus is None:
        # CPU jobs get the threads a local run would use, so both executors do the same arithmetic
        # (CPU training is bit-identical only at equal thread counts). GPU jobs get the cluster's CPUs per
        # GPU for their share of GPUs: t-SNE, the strategies and the probes run on the CPU while the GPU waits.
        import torch

        if gpus > 0:
            cpus = max(1, int(gpu_node_cpus_per_gpu(ray) * gpus))
        else:
            cpus = torch.get_num_threads()
    return float(gpus), float(cpus)


def gpu_node_cpus_per_gpu(ray) -> float:
    """CPUs per GPU on the live nodes that have GPUs: a head node with CPUs and no GPU runs no GPU job,
    so counting its CPUs would reserve more CPUs per job than a GPU node has and leave its GPUs idle."""
    cpus = gpus = 0.0
    for node in ray.nodes():
        resources = node.get("Resources", {})
        if node.get("Alive", True) and resources.get("GPU", 0) > 0:
            cpus += float(resources.get("CPU", 0))
            gpus += float(resources["GPU"])
    return cpus / gpus if gpus > 0 else 1.0


def run_ray(jobs: list[Job], deps: dict[str, list[str]], ray_settings: RaySpec, log: Callable[[str], None]
            ) -> list[JobResult]:
    ray = connect(ray_settings)
    gpus, cpus = ray_resources(ray, ray_settings)
    task = ray.remote(_ray_job)
    gpu_task = ray.remote(max_calls=1)(_ray_job)  # no worker reuse: a reused worker keeps its first GPU's context
    refs: dict[str, Any] = {}
    results: list[JobResult] = []
    for job in jobs:
        if done(job):
            results.append(JobResult(job.label, True, {}))
            continue
        waits = [refs[d] for d in deps[job.label] if d in refs]
        # A job whose worker dies is resubmitted up to max_retries times.
        on_gpu = job.needs_gpu and gpus > 0
        options = dict(num_cpus=cpus, num_gpus=gpus if on_gpu else 0, max_retries=ray_settings.max_retries)
        refs[job.label] = (gpu_task if on_gpu else task).options(**options).remote(job, int(cpus), on_gpu, *waits)
    log(f"submitted {len(refs)} jobs to Ray ({gpus:g} GPU, {cpus:g} CPU each); {len(results)} already finished")
    label_of = {ref: label for label, ref in refs.items()}
    pending = list(refs.values())
    while pending:  # taken as they finish, so a slow job does not hold back the news of the others
        ready, pending = ray.wait(pending, num_returns=1)
        label = label_of[ready[0]]
        try:
            result = ray.get(ready[0])
        except Exception as exc:  # the worker died more than max_retries times, or the node was lost
            result = JobResult(label, False, {}, describe(exc))
        log(f"{label}: {'done' if result.ok else 'FAILED'}")
        results.append(result)
    return results
