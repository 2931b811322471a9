import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep user caches and dataset roots of the tests away from the real home folder."""
    home = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SUPERLENS_CACHE", str(home / "superlens"))
    monkeypatch.setenv("SUPERLENS_DATA", str(home / "data"))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))


def run_cli(args, capsys):
    """Run the command line in-process; returns (exit code, stdout, stderr)."""
    from superlens.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err
