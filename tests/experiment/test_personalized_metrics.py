"""Personalised results per task: metrics pooled over every client's test rows plus the per-client median and
worst 10 %, never a score that mixes kinds; an undefined R² drags nothing; ``local`` reports no global model."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error, r2_score

import fedmtl
from fedmtl.report.labels import summary_rows
from fedmtl.report.metrics_log import flatten
from fedmtl.runloop.evaluation import summarize_personalized
from fedmtl.tasks import Task

DIGIT = Task("digit", "multiclass", 3)
SCORE = Task("score", "regression", target_offset=60.0, target_scale=12.0)  # exam score, standardised by the data path
MODEL = SimpleNamespace(tasks={"digit": DIGIT, "score": SCORE})  # all summarize_personalized reads of a model


def _clients() -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Ten clients' test predictions and targets; client 9 has 2 test rows with the same score (72.5, 72.5)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for cid in range(10):
        n = 2 if cid == 9 else 6 + 3 * cid
        y_digit = torch.randint(0, 3, (n,), generator=g)
        logits = torch.randn(n, 3, generator=g) + 2.0 * torch.nn.functional.one_hot(y_digit, 3)
        raw = torch.full((n,), 72.5) if cid == 9 else 60.0 + 12.0 * torch.randn(n, generator=g)
        y_score = ((raw - 60.0) / 12.0).float()
        pred = (y_score + 0.3 * torch.randn(n, generator=g)).reshape(-1, 1)
        out[cid] = (logits, y_digit, pred, y_score)
    return out


def _sums(clients):  # type: ignore[no-untyped-def]
    return {
        cid: {"digit": DIGIT.metric_sums(logits, yd), "score": SCORE.metric_sums(pred, ys)}
        for cid, (logits, yd, pred, ys) in clients.items()
    }


def test_pooled_metrics_equal_sklearn_on_all_clients_rows_in_original_units() -> None:
    clients = _clients()
    block, rows = summarize_personalized(MODEL, _sums(clients))  # type: ignore[arg-type]
    assert set(block) == {"digit", "score"}  # per task: no mean over tasks (nor over kinds) anywhere
    logits = torch.cat([c[0] for c in clients.values()])
    y_digit = torch.cat([c[1] for c in clients.values()])
    pred = SCORE.to_original_units(torch.cat([c[2] for c in clients.values()])[:, 0]).double().numpy()
    y = SCORE.to_original_units(torch.cat([c[3] for c in clients.values()])).double().numpy()
    digit, score = block["digit"]["pooled"], block["score"]["pooled"]
    assert digit["accuracy"] == pytest.approx(accuracy_score(y_digit, logits.argmax(1)))
    assert digit["macro_f1"] == pytest.approx(f1_score(y_digit, logits.argmax(1), average="macro"))
    assert score["rmse"] == pytest.approx(mean_squared_error(y, pred) ** 0.5, rel=1e-5)
    assert score["mae"] == pytest.approx(mean_absolute_error(y, pred), rel=1e-5)
    assert score["r2"] == pytest.approx(r2_score(y, pred), rel=1e-5)
    assert block["digit"]["clients"] == block["score"]["clients"] == 10
    assert [r["rows"]["score"] for r in rows] == [len(c[3]) for c in clients.values()]


def test_per_client_distribution_is_median_and_worst_tenth_in_the_right_direction() -> None:
    clients = _clients()
    block, rows = summarize_personalized(MODEL, _sums(clients))  # type: ignore[arg-type]
    acc = [r["tasks"]["digit"]["accuracy"] for r in rows]
    rmse = [r["tasks"]["score"]["rmse"] for r in rows]
    assert block["digit"]["median"]["accuracy"] == pytest.approx(float(np.median(acc)))
    assert block["digit"]["worst10"]["accuracy"] == pytest.approx(min(acc))  # 10 clients: the worst one
    assert block["score"]["worst10"]["rmse"] == pytest.approx(max(rmse))  # an error: the worst is the largest
    assert block["score"]["median"]["rmse"] == pytest.approx(float(np.median(rmse)))
    by_hand = mean_squared_error(*(SCORE.to_original_units(t).double().numpy() for t in (clients[3][3], clients[3][2][:, 0]))) ** 0.5
    assert rows[3]["tasks"]["score"]["rmse"] == pytest.approx(by_hand, rel=1e-5)


def test_two_equal_test_rows_leave_r2_undefined_and_drag_no_reported_figure() -> None:
    """The issue's client: 2 test rows gave R² = -8,115,760 and a personalised mean of -20,650."""
    clients = _clients()
    block, rows = summarize_personalized(MODEL, _sums(clients))  # type: ignore[arg-type]
    assert "r2" not in rows[9]["tasks"]["score"]  # undefined: not reported
    assert block["score"]["undefined"] == {"r2": 1}
    others = [r["tasks"]["score"]["r2"] for r in rows[:9]]
    assert block["score"]["worst10"]["r2"] == pytest.approx(min(others))  # worst of the 9 defined
    assert block["score"]["median"]["r2"] == pytest.approx(float(np.median(others)))
    numbers = [v for v in flatten(block).values() if isinstance(v, float)]
    assert all(math.isfinite(v) and v > -10 for v in numbers), min(numbers)
    without, _ = summarize_personalized(MODEL, {c: s for c, s in _sums(clients).items() if c != 9})  # type: ignore[arg-type]
    assert block["score"]["pooled"]["r2"] == pytest.approx(without["score"]["pooled"]["r2"], abs=0.05)  # 2 of 231 rows
    shown = dict(summary_rows({"final_personalized": block}))
    assert shown["personalised · score · undefined"] == "R² for 1 client"


def test_a_client_without_test_rows_for_a_task_is_not_counted() -> None:
    sums = _sums(_clients())
    sums[4] = {"digit": sums[4]["digit"], "score": {"n": 0.0}}
    block, rows = summarize_personalized(MODEL, sums)  # type: ignore[arg-type]
    assert block["score"]["clients"] == 9 and "score" not in rows[4]["tasks"]


def test_local_reports_no_global_metrics_and_says_why(tiny_config) -> None:
    cfg = {**tiny_config, "algorithm": {"name": "local"}, "output": {**tiny_config["output"], "plots": True}}
    res = fedmtl.Experiment(cfg).run(progress=False)
    assert res.summary["final_global"] == {}
    assert "not trained" in res.summary["global_model"] and "'local'" in res.summary["global_model"]
    evaluated = [r for r in res.history if "global" in r]
    assert evaluated and all(r["global"] == {} for r in evaluated)
    assert res.summary["final_personalized"]["digit"]["pooled"]["accuracy"] > 0.2  # the clients' own models do train
    page = (res.run_dir / "report.html").read_text()
    assert "not trained" in page and "global model · digit" not in page
    assert (res.run_dir / "plots" / "task_metrics.png").exists()  # the personalised curves alone
    assert json.loads((res.run_dir / "summary.json").read_text())["global_model"] == res.summary["global_model"]


def test_a_federated_run_has_no_global_model_note(tiny_config) -> None:
    res = fedmtl.Experiment(tiny_config).run(progress=False)
    assert "global_model" not in res.summary and set(res.summary["final_global"]) == {"digit", "parity"}


def test_progress_shows_the_personalised_scores_when_there_is_no_global_model() -> None:
    from fedmtl.runloop.progress import postfix

    pers = {"digit": {"pooled": {"accuracy": 0.8125}}, "score": {"pooled": {"rmse": 3.0}}}  # score: R² undefined
    assert postfix({"global": {}, "personalized": pers}) == "digit=0.812 (pers) score=n/a (pers)"
    glob = {"digit": {"accuracy": 0.5}}
    assert postfix({"global": glob, "personalized": pers}) == "digit=0.500"
