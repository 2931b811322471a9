"""The run directory: its lock, its config, its jobs' folders and the files built from them."""

from __future__ import annotations

import csv
import io
import os
from contextlib import contextmanager
from typing import Any, Iterator

from superlens.analysis.snapshot import ROUND_METRICS
from superlens.config import first_difference, read_yaml, resolve_stored, to_yaml
from superlens.errors import UserError
from superlens.fileio import read_json, write_text
from superlens.layout import RunLayout

ROUND_COLUMNS = [
    "arm", "seed", "round", "n_labeled", "n_queried", "test_accuracy", "test_loss",
    "images_seen", "optimizer_steps", "images_seen_total", "optimizer_steps_total",
    "query_seconds", "train_seconds", "query_class_entropy", "query_class_hist",
    "test_balanced_accuracy", "test_ece", "query_minority_share", "labeled_minority_share", "test_head_accuracy",
    "test_tail_accuracy", "lens_latents", "lens_reproduced",
    *ROUND_METRICS,  # the per-round superposition metrics (analysis.per_round), named as in summary.json
]


# config keys that say where jobs run or report, not what they compute
PLACEMENT = ("executor", "workers", "ray", "tracking")


class RunDir(RunLayout):
    """A run directory: its layout (``RunLayout``), its lock, its config and the files built from its jobs."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the directory; a second process is refused at once."""
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform
            yield
            return
        with open(self.lock_file, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                raise UserError(
                    f"{self.path} is in use by another superlens process (pid {owner}); "
                    "wait for it to finish or choose another --out"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read_config(self) -> dict[str, Any]:
        if not self.config.exists():
            raise UserError(f"{self.path} is not a superlens run directory (no config.yaml)")
        return resolve_stored(read_yaml(self.config), str(self.config))

    def bind_config(self, cfg: dict[str, Any]) -> None:
        """Write ``config.yaml``, or check that the one already there is the same config."""
        if self.config.exists():
            # where jobs run does not change their results: the stored executor settings may differ
            stored = {k: v for k, v in self.read_config().items() if k not in PLACEMENT}
            diff = first_difference(stored, {k: v for k, v in cfg.items() if k not in PLACEMENT})
            if diff is not None:
                raise UserError(
                    f"{self.path} belongs to a different config (they differ at {diff!r}); "
                    f"choose another --out, or run `superlens resume {self.path}` to finish it as it was"
                )
            return
        write_text(self.config, to_yaml(cfg))

    def finished_jobs(self) -> list[dict[str, Any]]:
        return [read_json(p) for p in self.finished_arm_jobs()]

    def write_rounds_csv(self, records: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, ROUND_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in records:
            row = {k: row.get(k) for k in ROUND_COLUMNS}
            row["query_class_hist"] = " ".join(str(c) for c in row["query_class_hist"] or [])
            writer.writerow(row)
        write_text(self.rounds_csv, buf.getvalue())
