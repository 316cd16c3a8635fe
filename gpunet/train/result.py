"""What ``fit`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..model import MLP


@dataclass
class FitResult:
    """What ``fit`` returns. ``model`` holds the final weights (the best ones after early
    stopping); ``test`` is the best checkpoint's evaluation on the test split, when the data
    has one."""

    model: MLP
    standardizer: Any
    config: TrainConfig
    out_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str = "finished"
    epochs: int = 0
    step: int = 0
    best_metric: str = "val_acc"
    best_value: float | None = None
    best_epoch: int = 0
    test: dict[str, Any] | None = None
    resumed_from: str | None = None
    changed: dict[str, list[Any]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.h5"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.h5"

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (what ``gpunet train --json`` prints)."""
        last = self.history[-1] if self.history else {}
        out: dict[str, Any] = {
            "status": self.status, "out": str(self.out_dir), "epochs": self.epochs,
            "step": self.step, "train_loss": last.get("train_loss"),
            "train_acc": last.get("train_acc"), "val_loss": last.get("val_loss"),
            "val_acc": last.get("val_acc"), "best_metric": self.best_metric,
            "best_value": self.best_value, "best_epoch": self.best_epoch,
            "last": str(self.last_path), "best": str(self.best_path),
            "seconds": round(self.seconds, 3), "device": self.model.backend.name,
            "resumed_from": self.resumed_from,
        }
        if self.changed:
            out["changed"] = self.changed
        if self.test is not None:
            out["test_accuracy"] = self.test["accuracy"]
            out["test_loss"] = self.test["loss"]
            out["test_n"] = self.test["n"]
        return out
