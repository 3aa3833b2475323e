"""Per-kind metrics from additive sums equal scikit-learn's on the pooled rows (however the rows are split)."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import f1_score, mean_absolute_error, mean_squared_error, r2_score, roc_auc_score

from fedmtl.tasks import MISSING_CLASS, Task, add_sums
from fedmtl.tasks.task import AUC_BINS, _binned_auc


def _pooled(task: Task, pred: torch.Tensor, y: torch.Tensor, cuts: list[int]) -> dict[str, float]:
    sums: dict[str, float] = {}
    for lo, hi in zip([0, *cuts], [*cuts, len(y)]):  # as if from several clients
        sums = add_sums(sums, task.metric_sums(pred[lo:hi], y[lo:hi]))
    return task.finalize(sums)


def test_multiclass_macro_f1_matches_sklearn_and_ignores_missing_labels() -> None:
    g = torch.Generator().manual_seed(1)
    task = Task("d", "multiclass", 6)
    logits, y = torch.randn(400, 6, generator=g), torch.randint(0, 5, (400,), generator=g)  # class 5 never true
    m = _pooled(task, logits, y, [50, 260])
    assert m["macro_f1"] == pytest.approx(f1_score(y.numpy(), logits.argmax(1).numpy(), average="macro"), abs=1e-12)
    y_missing = y.clone()
    y_missing[::4] = MISSING_CLASS
    keep = y_missing != MISSING_CLASS
    m = _pooled(task, logits, y_missing, [123])
    assert m["macro_f1"] == pytest.approx(f1_score(y[keep].numpy(), logits[keep].argmax(1).numpy(), average="macro"), abs=1e-12)


def test_binary_f1_and_auc_match_sklearn() -> None:
    g = torch.Generator().manual_seed(2)
    task = Task("p", "binary")
    z = torch.randn(600, 1, generator=g) * 2
    y = (torch.rand(600, generator=g) < torch.sigmoid(z[:, 0])).float()
    m = _pooled(task, z, y, [100, 350])
    assert m["f1"] == pytest.approx(f1_score(y.numpy(), (z[:, 0] > 0).numpy()), abs=1e-12)
    assert m["auc"] == pytest.approx(roc_auc_score(y.numpy(), z[:, 0].numpy()), abs=2e-3)  # binned scores


def test_binned_auc_by_hand() -> None:
    pos, neg = [0.0] * AUC_BINS, [0.0] * AUC_BINS
    pos[150], neg[50], neg[150] = 2, 1, 1  # each positive beats one negative and ties one
    assert _binned_auc(pos, neg) == pytest.approx(0.75)
    assert _binned_auc(pos, [0.0] * AUC_BINS) is None  # undefined with one label only


def test_regression_rmse() -> None:
    task = Task("r", "regression")
    pred, y = torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([1.0, 3.0, 2.0])
    m = _pooled(task, pred, y, [1])
    assert m["rmse"] == pytest.approx(mean_squared_error(y.numpy(), pred[:, 0].numpy()) ** 0.5)


def test_regression_metrics_in_original_units_match_sklearn() -> None:
    """The model works in standard units; RMSE and MAE come back in the target's own, R^2 is unchanged."""
    g = torch.Generator().manual_seed(3)
    offset, scale = 250.0, 40.0
    task = Task("cost", "regression", target_offset=offset, target_scale=scale)
    y = torch.randn(300, generator=g)
    y[::7] = float("nan")  # partial labels
    pred = (y.nan_to_num(0.0) + 0.5 * torch.randn(300, generator=g)).reshape(-1, 1)
    m = _pooled(task, pred, y, [40, 41, 200])  # one client with a single row
    keep = ~torch.isnan(y)
    y_orig = task.to_original_units(y[keep]).double().numpy()
    p_orig = task.to_original_units(pred[keep, 0]).double().numpy()
    assert m["rmse"] == pytest.approx(mean_squared_error(y_orig, p_orig) ** 0.5, rel=1e-5)
    assert m["mae"] == pytest.approx(mean_absolute_error(y_orig, p_orig), rel=1e-5)
    assert m["r2"] == pytest.approx(r2_score(y_orig, p_orig), rel=1e-5)
    assert m["loss"] == pytest.approx(mean_squared_error(y[keep].numpy(), pred[keep, 0].numpy()), rel=1e-5)  # standard units


def test_r2_undefined_on_one_row_or_equal_targets() -> None:
    """The issue's bad client: 2 test rows with the same target gave R^2 = -8e6 from float32 rounding
    (float32 sums of these two equal standardised scores left a variance of ~1e-8: R^2 = -2.07e6)."""
    task = Task("score", "regression", target_offset=60.0, target_scale=12.0)
    y = ((torch.tensor([72.5, 72.5]) - 60.0) / 12.0).float()  # two equal exam scores, standardised as the data path does
    m = task.metrics(torch.tensor([[0.7], [0.9]]), y)
    assert "r2" not in m and m["rmse"] > 0 and m["mae"] > 0
    assert "r2" not in task.metrics(torch.tensor([[0.7]]), y[:1])  # one row
    assert "r2" not in task.metrics(torch.zeros(3, 1), torch.zeros(3))  # all zero
    assert task.metrics(torch.tensor([[0.0], [1.0]]), torch.tensor([0.0, 1.0]))["r2"] == pytest.approx(1.0)
    big = torch.tensor([2000.0, 2001.0, 2003.0])  # unstandardised targets far from 0 keep their R^2
    assert task.metrics(big.reshape(-1, 1) + 0.5, big)["r2"] == pytest.approx(r2_score(big.numpy(), big.numpy() + 0.5))


def test_target_scale_is_validated() -> None:
    with pytest.raises(ValueError, match="target_scale"):
        Task("r", "regression", target_scale=0.0)
    with pytest.raises(ValueError, match="regression only"):
        Task("b", "binary", target_scale=2.0)


def test_non_finite_predictions_still_give_metrics() -> None:
    """A broken model (NaN / Inf logits) is scored, not a crash: NaN scores rank in the middle."""
    task = Task("p", "binary")
    z = torch.tensor([[float("nan")], [float("inf")], [-float("inf")], [0.3]])
    m = task.finalize(task.metric_sums(z, torch.tensor([1.0, 1.0, 0.0, 0.0])))
    assert 0.0 <= m["auc"] <= 1.0 and 0.0 <= m["f1"] <= 1.0
