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
