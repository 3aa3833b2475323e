"""Shared helpers for the benchmarks that run whole federated experiments."""

from __future__ import annotations

import copy
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

import fedmtl

RESULTS = Path(__file__).parent / "results"


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``patch`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for k, v in patch.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work, so that a timer measures it (nothing on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(config: dict[str, Any], out_dir: Path, name: str) -> dict[str, Any]:
    """Run one experiment quietly; return its summary plus wall seconds."""
    cfg = merge(config, {"output": {"dir": str(out_dir), "name": name, "plots": False}})
    t0 = time.perf_counter()
    res = fedmtl.Experiment(cfg).run(progress=False)
    summary = dict(res.summary)
    summary["benchmark_seconds"] = time.perf_counter() - t0
    summary["history"] = res.history
    scores = client_accuracies(res.run_dir)
    summary["personalised_client_mean"] = sum(scores) / len(scores) if scores else None
    return summary


def client_accuracies(run_dir: Path) -> list[float]:
    """Each client's final personalised accuracy, the mean over its classification tasks (regression tasks
    have none), from the run's clients.json: the benchmarks' per-client score (runs report per task)."""
    path = Path(run_dir) / "clients.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    accuracies = [[m["accuracy"] for m in row["tasks"].values() if "accuracy" in m] for row in rows]
    return [sum(a) / len(a) for a in accuracies if a]


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine()}


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_between_markers(path: Path, name: str, text: str) -> None:
    """Replace what lies between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``path`` by ``text``."""
    doc = path.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in doc or end not in doc:
        raise ValueError(f"{path} lacks the markers {start} ... {end}")
    i, j = doc.index(start) + len(start), doc.index(end)
    path.write_text(doc[:i] + "\n" + text + "\n" + doc[j:])
