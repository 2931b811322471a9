import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

# One torch thread per pytest-xdist worker (make test runs one worker per core), two when run alone: more
# threads than cores make torch's thread pools fight and every test slow down many times over.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # and in the processes the tests start


# The longest tests (tens of seconds each on 2 cores) start first, so that the two xdist workers do not end on
# one of them while the other idles. Only the order changes; which tests run does not.
LONGEST_FIRST = ("test_bench_fast_case_psi_follows_features_not_class_structure",
                 "test_the_gpu_check_dry_run_passes_its_steps_without_an_installed_superlens",
                 "test_the_cpu_bf16_path_trains_to_the_fp32_accuracy_within_seed_noise",
                 "test_run_command_writes_the_contract_files", "test_every_stage_runs_with_data_on_a_device",
                 "test_compare_to_control_keeps_the_study_wide_error_at_five_percent")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.originalname, len(rank)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep user caches and dataset roots of the tests away from the real home folder."""
    home = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SUPERLENS_CACHE", str(home / "superlens"))
    monkeypatch.setenv("SUPERLENS_DATA", str(home / "data"))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    from superlens import training

    monkeypatch.setattr(training, "_COMPILE_FAILED", set())  # a compiler failure one test provokes stays in it


def run_cli(args, capsys):
    """Run the command line in-process; returns (exit code, stdout, stderr)."""
    from superlens.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err
