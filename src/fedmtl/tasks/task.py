"""A task: its name, the kind of target, and how predictions are scored."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

TaskKind = Literal["multiclass", "binary", "regression"]

#: bins of the sigmoid's range in which binary scores are counted for the federated ROC-AUC
AUC_BINS = 200

#: a multiclass row without a label (binary and regression rows without one hold NaN); PyTorch's ignore_index
MISSING_CLASS = -100

#: metrics where a smaller value is better (every other metric: larger is better); decides which clients are "worst"
LOWER_IS_BETTER = frozenset({"loss", "rmse", "mae"})

#: a target variance at most this fraction of the targets' mean square is zero: what float64 rounding leaves of
#: equal targets (float32 sums left ~1e-8, and two equal targets gave an R^2 of -8e6)
ZERO_VARIANCE = 1e-12


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better (accuracy, F1, AUC, R^2) or worse (loss, RMSE, MAE)."""
    return metric not in LOWER_IS_BETTER


@dataclass(frozen=True)
class Task:
    """One prediction problem.

    ``output_dim`` is what a head for this task must produce: the number of classes for
    multiclass, 1 for binary (a logit) and for regression (a value).

    A regression target the data path standardised (federated ``Moments``) is trained and predicted in
    standard units; ``target_offset`` and ``target_scale`` map them back (original = standard * scale +
    offset), so RMSE and MAE are reported in the target's own units.
    """

    name: str
    kind: TaskKind
    num_classes: int = 0
    target_offset: float = 0.0
    target_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("multiclass", "binary", "regression"):
            raise ValueError(f"task {self.name!r}: kind {self.kind!r} not in multiclass, binary, regression")
        if self.kind == "multiclass" and self.num_classes < 2:
            raise ValueError(f"task {self.name!r}: multiclass needs num_classes >= 2, got {self.num_classes}")
        if not (math.isfinite(self.target_scale) and self.target_scale > 0) or not math.isfinite(self.target_offset):
            raise ValueError(
                f"task {self.name!r}: target_scale must be finite and > 0 and target_offset finite, "
                f"got {self.target_scale!r}, {self.target_offset!r}"
            )
        if self.kind != "regression" and (self.target_scale, self.target_offset) != (1.0, 0.0):
            raise ValueError(f"task {self.name!r}: target_scale / target_offset apply to regression only, not {self.kind}")

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

    def to_original_units(self, value: Tensor) -> Tensor:
        """A regression prediction (or target) in the target's original units (identity for classification)."""
        return value * self.target_scale + self.target_offset if self.kind == "regression" else value

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
            guess = pred.argmax(dim=-1)
            out = {"n": n, "loss": loss_sum, "correct": float((guess == y).sum())}
            k = self.num_classes
            tp = torch.bincount(y[guess == y], minlength=k)
            out.update({f"tp_{c}": float(v) for c, v in enumerate(tp[:k])})
            out.update({f"true_{c}": float(v) for c, v in enumerate(torch.bincount(y, minlength=k)[:k])})
            out.update({f"pred_{c}": float(v) for c, v in enumerate(torch.bincount(guess, minlength=k)[:k])})
            return out
        if self.kind == "binary":
            z = pred.reshape(-1)
            yb = y.reshape(-1).long()
            guess = (z > 0).long()
            out = {"n": n, "loss": loss_sum, "correct": float((guess == yb).sum())}
            out.update(tp=float((guess & yb).sum()), pred_pos=float(guess.sum()), true_pos=float(yb.sum()))
            # ROC-AUC from additive score histograms: the sigmoid's range cut into AUC_BINS bins per label
            score = torch.sigmoid(z.float()).nan_to_num(nan=0.5)  # a broken model's NaN scores rank as a coin toss
            b = (score * AUC_BINS).long().clamp(0, AUC_BINS - 1)
            pos = torch.bincount(b[yb == 1], minlength=AUC_BINS)
            neg = torch.bincount(b[yb == 0], minlength=AUC_BINS)
            out.update({f"pos_{i}": float(v) for i, v in enumerate(pos) if v})
            out.update({f"neg_{i}": float(v) for i, v in enumerate(neg) if v})
            return out
        # float64: the variance comes from y_sq / n - mean^2, which float32 sums leave with a rounding residue
        yd, err = y.reshape(-1).double(), pred.reshape(-1).double() - y.reshape(-1).double()
        return {
            "n": n,
            "loss": float((err * err).sum()),
            "abs_err": float(err.abs().sum()),
            "y_sum": float(yd.sum()),
            "y_sq": float((yd * yd).sum()),
        }

    def finalize(self, sums: dict[str, float]) -> dict[str, float]:
        """Metrics from summed statistics: loss, accuracy and macro-F1 (multiclass); loss, accuracy, F1 and
        ROC-AUC (binary; the AUC from score histograms, exact up to ties within 1/AUC_BINS of the sigmoid's
        range); loss (MSE in the standard units the model is trained in), RMSE and MAE (in the target's
        original units: times ``target_scale``) and R^2 (scale-free) for regression.

        A metric that is undefined on these rows is absent: ROC-AUC with one label only, R^2 on fewer than
        2 rows or targets without variance (all equal), macro-F1 with no class present or predicted.
        """
        n = max(sums.get("n", 0.0), 1.0)
        out = {"loss": sums["loss"] / n}
        if self.kind == "multiclass":
            out["accuracy"] = sums["correct"] / n
            f1s = []
            for c in range(self.num_classes):
                tp, true, guessed = (sums.get(f"{k}_{c}", 0.0) for k in ("tp", "true", "pred"))
                if true + guessed > 0:  # a class neither present nor predicted has no F1 (sklearn's labels)
                    f1s.append(2 * tp / (true + guessed))
            if f1s:
                out["macro_f1"] = sum(f1s) / len(f1s)
        elif self.kind == "binary":
            out["accuracy"] = sums["correct"] / n
            if "tp" in sums:
                denom = sums["pred_pos"] + sums["true_pos"]
                out["f1"] = 2 * sums["tp"] / denom if denom > 0 else 0.0
                auc = _binned_auc([sums.get(f"pos_{i}", 0.0) for i in range(AUC_BINS)], [sums.get(f"neg_{i}", 0.0) for i in range(AUC_BINS)])
                if auc is not None:
                    out["auc"] = auc
        else:
            mse = sums["loss"] / n
            out["rmse"] = mse**0.5 * self.target_scale
            out["mae"] = sums["abs_err"] / n * self.target_scale
            r2 = _r_squared(sums)
            if r2 is not None:
                out["r2"] = r2
        return out

    def metrics(self, pred: Tensor, y: Tensor) -> dict[str, float]:
        """Metrics of one batch of predictions."""
        return self.finalize(self.metric_sums(pred, y))


def add_sums(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Add two metric-statistics dicts key by key."""
    keys = set(a) | set(b)
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in keys}


def _r_squared(sums: dict[str, float]) -> float | None:
    """1 - SSE / SST from sums; ``None`` (undefined) on fewer than 2 rows or targets with no variance."""
    n = sums.get("n", 0.0)
    if n < 2:
        return None
    mean_sq = sums["y_sq"] / n
    var = mean_sq - (sums["y_sum"] / n) ** 2
    if not var > ZERO_VARIANCE * mean_sq:  # also NaN, and all-zero targets
        return None
    return 1.0 - (sums["loss"] / n) / var


def _binned_auc(pos: list[float], neg: list[float]) -> float | None:
    """P(score of a positive > score of a negative), ties within a bin counted half; ``None`` without both labels."""
    n_pos, n_neg = sum(pos), sum(neg)
    if n_pos == 0 or n_neg == 0:
        return None
    below, wins = 0.0, 0.0
    for p, q in zip(pos, neg):
        wins += p * (below + 0.5 * q)
        below += q
    return wins / (n_pos * n_neg)
