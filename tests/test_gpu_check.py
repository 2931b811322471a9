"""The one-shot GPU check keeps working where there is no GPU: its dry run passes every step on the CPU,
under a Python that cannot import an installed superlens (as on the device image)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Started by every Python process of the check (PYTHONPATH carries it): the checkout's src folder, which an
# editable install puts on sys.path, is taken off again unless PYTHONPATH itself names it.
BLOCKER = """
import os, sys
src = {src!r}
named = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
if src not in named:
    sys.path[:] = [p for p in sys.path if os.path.abspath(p) != src]
"""

STEPS = ["env", "bench-eager", "bench-compiled", "epoch", "smoke", "resume", "lens", "browse", "diff", "scale",
         "scale-stages", "probe", "pytest"]


def without_installed_superlens(tmp_path) -> dict:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER.format(src=str(ROOT / "src")))
    return {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(blocker)}


# The suite runs these steps of the dry run (about 35 s): the ones whose code lives in the check alone
# (its environment, epoch and resume snippets, the throughput benchmark and the probe scripts) and a study
# with a step that reads it. The rest (bench-compiled, lens, diff, scale, scale-stages, pytest) are the
# command line the suite tests directly; the whole dry run is `bash benchmarks/gpu_check.sh --dry-run`
# (74 s on 2 cores, docs/benchmarks.md).
FAST = ["env", "bench-eager", "epoch", "smoke", "resume", "browse", "probe"]


def _gpu_check():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return gpu_check


def test_the_gpu_check_dry_run_passes_its_steps_without_an_installed_superlens(tmp_path):
    env = without_installed_superlens(tmp_path)
    cwd = tmp_path  # not the checkout, whose folder would be on sys.path as the current directory
    probe = subprocess.run([sys.executable, "-c", "import superlens"], capture_output=True, text=True, env=env, cwd=cwd)
    assert probe.returncode != 0 and "No module named 'superlens'" in probe.stderr  # the environment is as intended
    out = tmp_path / "check"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--steps", ",".join(FAST)],
                          capture_output=True, text=True, env={**env, "OUT": str(out)}, cwd=cwd)
    results = json.loads((out / "results.json").read_text())
    status = {s["name"]: s["status"] for s in results["steps"]}
    failed = {s["name"]: s["last_line"] for s in results["steps"] if s["status"] not in ("ok", "skipped")}
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-2000:], proc.stderr[-2000:],
                                                 (out / "errors.txt").read_text()[-3000:])
    assert list(status) == STEPS  # every step listed, performance first, the tests last
    assert [n for n, v in status.items() if v == "ok"] == FAST and all(status[n] == "skipped" for n in STEPS
                                                                        if n not in FAST)
    table = (out / "results.md").read_text()
    assert "dry run on the CPU" in table and f"{len(FAST)} of {len(STEPS)} steps passed" in table
    assert table.strip() in proc.stdout  # printed at the end
    assert (out / "errors.txt").read_text() == "no errors\n"
    bench = next(s for s in results["steps"] if s["name"] == "bench-eager")["last_line"]
    assert bench.startswith("width 16: train ") and "ours/plain" in bench  # the benchmark row, with ours / plain
    epoch = next(s for s in results["steps"] if s["name"] == "epoch")["last_line"]
    assert "later epochs" in epoch and "img/s" in epoch
    assert "PROBE parity ok" in next(s for s in results["steps"] if s["name"] == "probe")["last_line"]
    assert (out / "smoke" / "summary.json").exists() and (out / "smoke" / "browse").is_dir()


def test_every_step_of_the_check_names_a_command_that_exists(tmp_path):
    """The steps the suite does not run: their scripts exist, the CLI commands they call are known, and the
    dry run's sizes are the small ones."""
    gpu_check = _gpu_check()
    from superlens.cli import cli

    for dry in (True, False):
        listed = gpu_check.steps(dry, "cpu" if dry else "cuda", tmp_path)
        assert [name for name, _, _ in listed] == STEPS
        commands = set(cli.commands)
        for name, limit, command in listed:
            assert 0 < limit <= 240, name
            scripts = [c for c in command if c.endswith(".py")]
            assert all(Path(c).exists() for c in scripts), (name, scripts)
            if command[1:3] == ["-m", "superlens"]:
                assert command[3] in commands, (name, command[3])
    smoke = dict((n, c) for n, _, c in gpu_check.steps(True, "cpu", tmp_path))["smoke"]
    assert "model.width=4" in smoke and "device=cpu" in smoke


def test_failed_jobs_are_gathered_into_errors_txt(tmp_path):
    gpu_check = _gpu_check()
    job = tmp_path / "smoke" / "arms" / "al-margin" / "seed0"
    job.mkdir(parents=True)
    (job / "error.txt").write_text("Traceback ...\nRuntimeError: CUDA error: an illegal memory access\n")
    steps = [gpu_check.Step("env", "ok", 0, 1.0, 60, "{}"),
             gpu_check.Step("lens", "failed", 1, 2.0, 9, "boom line", "Traceback ...\nboom line")]
    text = gpu_check.gather_errors(tmp_path, steps)
    assert "smoke/arms/al-margin/seed0/error.txt" in text and "illegal memory access" in text
    assert "step lens: failed" in text and "boom line" in text and "step env" not in text


def test_without_a_gpu_the_full_check_says_to_dry_run(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the full check would run")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "run with --dry-run" in proc.stderr
