"""Optional live tracking of a study's jobs: ``tracking: tensorboard`` (default ``none``).

Each (arm, seed) job writes its own TensorBoard run, ``<run>/tensorboard/<arm>/seed<k>/``: every
numeric ``rounds.csv`` column as ``rounds/<column>`` at step = labelled images, as each round
finishes; the SAE stage's loss curves (``sae/<curve>`` at step = SAE step) and psi per round
(``sae/psi_per_round``) when it finishes; the resolved config as text. What a job has written
is listed in its folder's ``tracked.json``, so a resumed job writes nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from superlens.errors import UserError
from superlens.fileio import read_json, write_json

CHOICES = ("none", "tensorboard")
SKIPPED = ("arm", "seed", "round", "n_labeled", "query_class_hist")


def check_available(tracking: str) -> None:
    """One line before anything runs when the chosen tracker's package is missing."""
    if tracking == "tensorboard":
        import importlib

        try:
            importlib.import_module("torch.utils.tensorboard")  # needs the tensorboard package
        except ImportError:
            raise UserError("tracking=tensorboard needs the tensorboard package: pip install 'superlens[tensorboard]'"
                            ) from None


@dataclass(frozen=True)
class Tracking:
    """Where one job's tracking goes."""

    log_dir: Path  # <run>/tensorboard/<arm>/seed<k>
    config: Path  # the run's config.yaml, attached as text
    ledger: Path  # the job folder's tracked.json

    def _written(self) -> dict[str, Any]:
        return read_json(self.ledger) if self.ledger.exists() else {"rounds": [], "sae": False, "config": False}

    def _writer(self):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.log_dir))

    def rounds(self, records: list[dict[str, Any]]) -> None:
        """The rows of ``records`` not yet written (and the config, the first time)."""
        done = self._written()
        new = [r for r in records if r["round"] not in done["rounds"]]
        if not new and done["config"]:
            return
        writer = self._writer()
        try:
            if not done["config"] and self.config.exists():
                writer.add_text("config", "```\n" + self.config.read_text() + "\n```", 0)
                done["config"] = True
            for row in new:
                for key, value in row.items():
                    if key not in SKIPPED and isinstance(value, (int, float)) and not isinstance(value, bool):
                        writer.add_scalar(f"rounds/{key}", value, row["n_labeled"])
                done["rounds"].append(row["round"])
            writer.flush()
        finally:
            writer.close()
        write_json(self.ledger, done)

    def sae(self, curves: dict[str, list[tuple[int, float]]], per_round: list[dict[str, Any]]) -> None:
        """The SAE stage's loss curves and psi per round, once."""
        done = self._written()
        if done["sae"]:
            return
        writer = self._writer()
        try:
            for name, points in curves.items():
                for step, loss in points:
                    writer.add_scalar(f"sae/{name}", loss, step)
            for row in per_round:
                writer.add_scalar("sae/psi_per_round", row["psi"], row["n_labeled"] or row["round"])
            writer.flush()
        finally:
            writer.close()
        done["sae"] = True
        write_json(self.ledger, done)


def curve_recorder(points: list[tuple[int, float]], then=None):
    """A ``train_sae``/``train_saes`` progress callback that appends (step, loss) to ``points`` and passes
    the call on to ``then``."""

    def record(step: int, loss: float, eta: float) -> None:
        points.append((int(step), float(loss)))
        if then is not None:
            then(step, loss, eta)
    return record
