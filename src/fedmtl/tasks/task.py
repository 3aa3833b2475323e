"""A task: its name, the kind of target, and how predictions are scored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

TaskKind = Literal["multiclass", "binary", "regression"]

#: a multiclass row without a label (binary and regression rows without one hold NaN); PyTorch's ignore_index
MISSING_CLASS = -100


@dataclass(frozen=True)
class Task:
    """One prediction problem.

    ``output_dim`` is what a head for this task must produce: the number of classes for
    multiclass, 1 for binary (a logit) and for regression (a value).
    """

    name: str
    kind: TaskKind
    num_classes: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("multiclass", "binary", "regression"):
            raise ValueError(f"task {self.name!r}: kind {self.kind!r} not in multiclass, binary, regression")
        if self.kind == "multiclass" and self.num_classes < 2:
            raise ValueError(f"task {self.name!r}: multiclass needs num_classes >= 2, got {self.num_classes}")

    @property
    def output_dim(self) -> int:
        return self.num_classes if self.kind == "multiclass" else 1

    @property
    def is_classification(self) -> bool:
        return self.kind != "regression"

    @property
    def primary_metric(self) -> str:
        """The metric plots and summaries lead with: accuracy, or R^2 for regression."""
        return "accuracy" if self.is_classification else "r2"

    def target_dtype(self) -> torch.dtype:
        return torch.long if self.kind == "multiclass" else torch.float32

    def labelled(self, y: Tensor) -> Tensor:
        """Which rows carry a label: a missing one is :data:`MISSING_CLASS` (multiclass) or NaN (binary, regression)."""
        if self.kind == "multiclass":
            return y.reshape(-1) != MISSING_CLASS
        return ~torch.isnan(y.reshape(-1))

    def loss(self, pred: Tensor, y: Tensor, reduction: str = "mean", weights: Tensor | None = None) -> Tensor:
        """Cross-entropy, binary cross-entropy on logits, or mean squared error, over the labelled rows.

        Rows without a label (partial labels) contribute nothing; ``"none"`` gives them a loss of 0 and the
        mean runs over labelled rows only (0, with a zero gradient, when a batch has none).

        Args:
            weights: optional per-row weights (FedEM's responsibilities) multiplying each row's loss.
        """
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        has = self.labelled(y)
        if self.kind == "multiclass":
            per_row = F.cross_entropy(pred, torch.where(has, y.reshape(-1), 0), reduction="none")
        else:
            target = torch.where(has, y.reshape(-1).float(), 0.0)
            if self.kind == "binary":
                per_row = F.binary_cross_entropy_with_logits(pred.reshape(-1), target, reduction="none")
            else:
                per_row = F.mse_loss(pred.reshape(-1), target, reduction="none")
        per_row = torch.where(has, per_row, 0.0)
        if weights is not None:
            per_row = per_row * weights
        if reduction == "none":
            return per_row
        if reduction == "sum":
            return per_row.sum()
        return per_row.sum() / has.sum().clamp(min=1)

    def metric_sums(self, pred: Tensor, y: Tensor) -> dict[str, float]:
        """Additive statistics (sums over labelled rows) from which :meth:`finalize` computes metrics.

        Sums add across batches and clients, so a federated evaluation is exact, not an average of averages.
        """
        has = self.labelled(y)
        if not bool(has.all()):
            pred, y = pred[has], y.reshape(-1)[has]
        n = float(y.shape[0])
        loss_sum = float(self.loss(pred, y, reduction="sum"))
        if self.kind == "multiclass":
            correct = float((pred.argmax(dim=-1) == y).sum())
            return {"n": n, "loss": loss_sum, "correct": correct}
        if self.kind == "binary":
            correct = float(((pred.reshape(-1) > 0).long() == y.reshape(-1).long()).sum())
            return {"n": n, "loss": loss_sum, "correct": correct}
        yf = y.reshape(-1).float()
        return {
            "n": n,
            "loss": loss_sum,
            "abs_err": float((pred.reshape(-1) - yf).abs().sum()),
            "y_sum": float(yf.sum()),
            "y_sq": float((yf * yf).sum()),
        }

    def finalize(self, sums: dict[str, float]) -> dict[str, float]:
        """Metrics from summed statistics: loss and accuracy, or loss (MSE), MAE and R^2."""
        n = max(sums.get("n", 0.0), 1.0)
        out = {"loss": sums["loss"] / n}
        if self.is_classification:
            out["accuracy"] = sums["correct"] / n
        else:
            mse = sums["loss"] / n
            mean = sums["y_sum"] / n
            var = sums["y_sq"] / n - mean * mean
            out["mae"] = sums["abs_err"] / n
            out["r2"] = 1.0 - mse / var if var > 1e-12 else 0.0
        return out

    def metrics(self, pred: Tensor, y: Tensor) -> dict[str, float]:
        """Metrics of one batch of predictions."""
        return self.finalize(self.metric_sums(pred, y))


def add_sums(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Add two metric-statistics dicts key by key."""
    keys = set(a) | set(b)
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in keys}
