"""Your own nn.Module and your own torch Datasets, end to end: Experiment(model=...), the import-path config,
from_datasets with partial labels, runtime.device, and what the run reports about its engines."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import fedmtl
from fedmtl.config import ConfigError
from fedmtl.data import DataError
from fedmtl.engine.device import DeviceError, rank_device, resolve_device
from fedmtl.mtl.factory import as_model
from fedmtl.mtl.models.module import ModelSpecError, ModuleModel
from fedmtl.tasks import MISSING_CLASS, Task

TASKS = (Task("digit", "multiclass", 10), Task("parity", "binary"))


class Net(nn.Module):
    """A user's model: a trunk, a `heads` ModuleDict; binary head returns [B] (allowed)."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(40, width), nn.ReLU())
        self.heads = nn.ModuleDict({"digit": nn.Linear(width, 10), "parity": nn.Linear(width, 1)})

    def forward(self, x):  # noqa: ANN001, ANN201
        z = self.trunk(x)
        return {"digit": self.heads["digit"](z), "parity": self.heads["parity"](z).squeeze(-1)}


class Named(nn.Module):
    """Task parameters not in a `heads` dict: the user maps tasks to module prefixes."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(40, 8)
        self.digit_out = nn.Linear(8, 10)
        self.parity_out = nn.Linear(8, 1)

    def forward(self, x):  # noqa: ANN001, ANN201
        z = torch.relu(self.body(x))
        return {"digit": self.digit_out(z), "parity": self.parity_out(z)}


def _config(tmp_path, **extra):  # noqa: ANN001, ANN003, ANN202
    cfg = {
        "data": {"source": {"name": "mnist1d", "tasks": ["digit", "parity"], "num_samples": 600}, "num_clients": 8},
        "server": {"rounds": 2, "clients_per_round": 4},
        "client": {"epochs": 1, "batch_size": 16},
        "output": {"dir": str(tmp_path), "plots": False},
    }
    cfg.update(extra)
    return cfg


def test_module_groups_by_heads_and_by_explicit_prefixes() -> None:
    m = ModuleModel(Net(), TASKS)
    groups = m.param_groups()
    assert groups["task:digit"] == ["module.heads.digit.weight", "module.heads.digit.bias"]
    assert groups["shared"] == ["module.trunk.0.weight", "module.trunk.0.bias"]
    out = m(torch.zeros(3, 40))
    assert out["parity"].shape == (3, 1) and out["digit"].shape == (3, 10)  # [B] binary becomes [B, 1]
    named = ModuleModel(Named(), TASKS, {"digit": ["digit_out"], "parity": ["parity_out"]})
    assert named.param_groups()["task:parity"] == ["module.parity_out.weight", "module.parity_out.bias"]


@pytest.mark.parametrize(
    ("module", "task_params", "match"),
    [
        (Named(), None, "no `heads` nn.ModuleDict"),
        (Named(), {"digit": ["nothing"], "parity": ["parity_out"]}, "no parameter of Named is under 'nothing'"),
        (Named(), {"digit": ["body"], "parity": ["body"]}, "listed for two tasks"),
        (Named(), {"colour": ["body"]}, "unknown task"),
    ],
)
def test_model_spec_errors_say_what_is_wrong(module, task_params, match) -> None:  # noqa: ANN001
    with pytest.raises(ModelSpecError, match=match):
        ModuleModel(module, TASKS, task_params)


def test_a_forward_missing_a_task_is_a_clear_error() -> None:
    class Half(Net):
        def forward(self, x):  # noqa: ANN001, ANN201
            return {"digit": super().forward(x)["digit"]}

    with pytest.raises(ModelSpecError, match=r"no prediction for task\(s\) \['parity'\]"):
        ModuleModel(Half(), TASKS)(torch.zeros(2, 40))


def test_factory_receives_shape_and_tasks_when_it_names_them() -> None:
    seen = {}

    def factory(input_shape, tasks, width=4):  # noqa: ANN001, ANN202
        seen.update(shape=input_shape, tasks=[t.name for t in tasks], width=width)
        return Net(width)

    m = as_model(factory, (40,), TASKS, kwargs={"width": 4})
    assert seen == {"shape": (40,), "tasks": ["digit", "parity"], "width": 4}
    assert m.module.trunk[0].out_features == 4


def test_experiment_trains_a_user_module_without_changing_it_and_reports_the_engine(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = fedmtl.Experiment(_config(tmp_path), model=net).run(progress=False)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the user's module is untouched
    assert res.summary["engine"] == "vectorized" and res.summary["engine_clients"] == {"vectorized": 8, "sequential": 0}
    assert set(res.summary["final_global"]) == {"digit", "parity"}
    assert "module.heads.digit.weight" in res.params
    saved = json.loads((res.run_dir / "summary.json").read_text())
    assert saved["engine_clients"] == {"vectorized": 8, "sequential": 0} and saved["engine_fallback"] == []


def test_the_engines_agree_on_a_user_module(tmp_path) -> None:  # noqa: ANN001
    runs = {}
    for engine in ("sequential", "vectorized"):
        cfg = _config(tmp_path / engine, engine={"name": engine}, algorithm={"name": "ditto", "lam": 0.3}, mtl={"balancer": {"name": "pcgrad"}})
        torch.manual_seed(0)
        runs[engine] = fedmtl.Experiment(cfg, model=Net).run(progress=False)
    a, b = runs["sequential"].params, runs["vectorized"].params
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert runs["sequential"].summary["engine"] == "sequential"


def test_the_import_path_config_builds_the_users_factory(tmp_path) -> None:  # noqa: ANN001
    cfg = _config(tmp_path, model={"name": "import", "target": "mtl.user_net:make", "kwargs": {"hidden": 8}})
    res = fedmtl.Experiment(cfg).run(progress=False)
    assert res.params["module.body.1.weight"].shape == (8, 40)
    with pytest.raises(ConfigError, match="target"):
        fedmtl.Experiment(_config(tmp_path, model={"name": "import", "target": "no colon"}))


def test_an_unimportable_target_names_the_module(tmp_path) -> None:  # noqa: ANN001
    cfg = _config(tmp_path, model={"name": "import", "target": "no_such_pkg.models:make"})
    with pytest.raises(ModelSpecError, match="cannot import 'no_such_pkg.models'"):
        fedmtl.Experiment(cfg).run(progress=False)


# ------------------------------------------------------------------------------------ datasets
class Rows(Dataset):
    """(x, {task: y}); every third row lacks its parity label."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 40, generator=g)
        self.digit = torch.randint(0, 10, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):  # noqa: ANN204
        y = {"digit": self.digit[i]}
        if i % 3:
            y["parity"] = self.digit[i] % 2
        return self.x[i], y


def test_from_datasets_one_dataset_per_client_keeps_partial_labels() -> None:
    src = fedmtl.from_datasets({"a": Rows(9, 0), "b": Rows(6, 1)}, {"digit": "multiclass", "parity": "binary"}, num_classes={"digit": 10})
    assert src.x.shape == (15, 40) and sorted(np.unique(src.client_ids).tolist()) == [0, 1]
    assert np.isnan(src.targets["parity"][0]) and np.isnan(src.targets["parity"][3]) and not np.isnan(src.targets["parity"][1])
    assert not np.isnan(src.targets["digit"]).any()


def test_from_datasets_with_a_holdout_and_client_ids_runs_federated(tmp_path) -> None:  # noqa: ANN001
    ids = [i % 4 for i in range(80)]
    src = fedmtl.from_datasets(Rows(80, 2), {"digit": "multiclass", "parity": "binary"}, client_ids=ids, holdout=Rows(30, 3), num_classes={"digit": 10})
    assert src.holdout_x is not None and src.holdout_x.shape == (30, 40)
    cfg = _config(tmp_path, data={"source": {"name": "arrays"}, "partition": {"name": "natural"}}, server={"rounds": 2, "clients_per_round": 4})
    res = fedmtl.Experiment(cfg, source=src, model=Net()).run(progress=False)
    # the held-out parity metrics count only labelled rows (20 of 30)
    assert res.summary["data"]["clients"] == 4
    assert np.isfinite(res.summary["final_global"]["parity"]["loss"])


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([(torch.zeros(40), 3)], r"expected \(x, \{task: y\}\)"),
        ([(torch.zeros(40), {"colour": 1})], "unknown task"),
        ([(torch.zeros(40), {"digit": 1}), (torch.zeros(41), {"digit": 2})], "features of shape"),
    ],
)
def test_from_datasets_refuses_bad_items(data, match) -> None:  # noqa: ANN001
    with pytest.raises(DataError, match=match):
        fedmtl.from_datasets(data, {"digit": "multiclass"})


def test_task_loss_and_metrics_skip_missing_labels_by_hand() -> None:
    digit, parity = TASKS
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    task = Task("d", "multiclass", 2)
    y = torch.tensor([0, MISSING_CLASS, 1])
    expected = (torch.log1p(torch.exp(torch.tensor(-2.0))) + torch.log(torch.tensor(2.0))) / 2
    assert torch.allclose(task.loss(logits, y), expected)
    assert task.metric_sums(logits, y)["n"] == 2.0
    z = torch.tensor([[1.0], [2.0]])
    yb = torch.tensor([1.0, float("nan")])
    assert torch.allclose(parity.loss(z, yb), torch.nn.functional.softplus(torch.tensor(-1.0)))
    none = parity.loss(z, torch.tensor([float("nan"), float("nan")]))
    assert float(none) == 0.0  # a batch without a label for the task: zero loss, zero gradient


# ------------------------------------------------------------------------------------ device
def test_device_resolution_and_errors(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        resolve_device("cuda:1")
    with pytest.raises(ConfigError, match="runtime.device"):
        fedmtl.Experiment(_config(tmp_path, runtime={"device": "gpu"}))
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        fedmtl.Experiment(_config(tmp_path / "r", runtime={"device": "cuda"})).run(progress=False)
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_each_torchrun_rank_takes_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` / ``cuda`` under torchrun: rank ``LOCAL_RANK``'s own GPU (modulo the count), never all on cuda:0."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rank_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert rank_device("auto", local_rank=3) == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_device("cuda") == torch.device("cuda", 1)
    assert rank_device("cuda:0") == torch.device("cuda", 0)  # an explicit index is kept
    assert rank_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rank_device("auto", local_rank=1) == torch.device("cpu")


def test_a_run_with_a_user_module_resumes_exactly(tmp_path) -> None:  # noqa: ANN001
    """Interrupted after round 1 and resumed (the same module given again), it ends where an uninterrupted run ends."""
    full = fedmtl.Experiment(_config(tmp_path / "a", algorithm={"name": "ditto", "lam": 0.2}), model=Net).run(progress=False)
    first = fedmtl.Experiment(_config(tmp_path / "b", algorithm={"name": "ditto", "lam": 0.2}, server={"rounds": 1, "clients_per_round": 4}), model=Net)
    part = first.run(progress=False)
    resumed = fedmtl.Experiment(_config(tmp_path / "b", algorithm={"name": "ditto", "lam": 0.2}), model=Net).run(resume=part.run_dir, progress=False)
    assert resumed.summary["rounds_completed"] == 2
    assert all(bool((full.params[k] == resumed.params[k]).all()) for k in full.params)


def test_forward_gets_the_tasks_only_when_it_names_them() -> None:
    class WithTasks(Net):
        def forward(self, x, tasks):  # noqa: ANN001, ANN201
            assert tasks == ["parity"]
            return {t: v for t, v in super().forward(x).items() if t in tasks}

    class WithMask(Net):
        def forward(self, x, mask=None):  # noqa: ANN001, ANN201 - a second argument of the user's own
            assert mask is None
            return super().forward(x)

    assert list(ModuleModel(WithTasks(), TASKS)(torch.zeros(2, 40), ["parity"])) == ["parity"]
    assert list(ModuleModel(WithMask(), TASKS)(torch.zeros(2, 40), ["parity"])) == ["parity"]
