"""torchrun with 2 gloo ranks on loopback gives the sequential engine's global model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _helpers import BASE, max_diff, run, setup

from fedmtl.engine import SequentialEngine

SRC = str(Path(__file__).resolve().parents[2] / "src")
ROUNDS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(overrides: list[str], out: Path, aggregate: str, rounds: int = ROUNDS, extra: list[str] | None = None) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "fedmtl.engine.distributed",
        "--rounds",
        str(rounds),
        "--save",
        str(out),
        "--aggregate",
        aggregate,
        *(extra or []),
    ]
    for o in overrides:
        cmd += ["--set", o]
    tests = str(Path(__file__).resolve().parents[1])  # the user model of the tests (mtl.user_net)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, tests]), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    # a new session so that, on timeout or failure, the whole process group (torchrun and its ranks) is killed
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        log, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        pytest.fail("torchrun did not finish within 120 s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert proc.returncode == 0, log.decode()[-3000:]


@pytest.mark.parametrize(
    ("extra", "aggregate"),
    [
        (
            [
                "engine.name=distributed",
                "engine.local.name=vectorized",
                "data.task_assignment.name=random_subset",
                "data.task_assignment.tasks_per_client=1",
            ],
            "reduce",
        ),
        (  # the general path with a user's own module (built on every rank from its import path)
            [
                "engine.name=distributed",
                "engine.local.name=vectorized",
                "model={name: import, target: 'mtl.user_net:make', kwargs: {hidden: 8}}",
                "mtl.balancer.name=pcgrad",
            ],
            "reduce",
        ),
        pytest.param(
            ["engine.name=distributed", "engine.local.name=sequential"], "gather", marks=pytest.mark.slow
        ),
        pytest.param(  # a non-mean aggregator under the reducing round: its gathered round (InProcess over the ranks)
            ["engine.name=distributed", "engine.local.name=sequential", "server.aggregator.name=median"],
            "reduce",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_two_ranks_match_sequential(tmp_path: Path, extra: list[str], aggregate: str) -> None:
    out = tmp_path / "params.pt"
    _torchrun(BASE + extra, out, aggregate)
    cfg, data = setup([o for o in extra if not o.startswith("engine.")])
    expected, _ = run(cfg, data, SequentialEngine(), rounds=ROUNDS)
    got = torch.load(out)
    assert max_diff(expected.params, got) < 1e-5


def test_the_torchrun_entry_point_runs_the_one_run_loop_and_resumes(tmp_path: Path) -> None:
    """``--out``: rank 0 writes the run folder (metrics.jsonl, checkpoints, summary.json); ``--resume`` continues it."""
    import json

    extra = ["engine.name=distributed", "engine.local.name=vectorized"]
    run_dir, out = tmp_path / "run", tmp_path / "params.pt"
    _torchrun(BASE + extra, out, "reduce", rounds=ROUNDS - 1, extra=["--out", str(run_dir)])
    _torchrun(BASE + extra, out, "reduce", extra=["--out", str(run_dir), "--resume"])
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == list(range(1, ROUNDS + 1))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == ROUNDS and summary["engine"].startswith("distributed (2 ranks")
    cfg, data = setup()
    expected, _ = run(cfg, data, SequentialEngine(), rounds=ROUNDS)
    assert max_diff(expected.params, torch.load(out)) < 1e-5


def test_rank_slices_cover_the_cohort_in_order() -> None:
    from fedmtl.engine.reducing import rank_slice

    items = list(range(11))
    for world in (1, 2, 3, 4, 16):
        parts = [rank_slice(items, r, world) for r in range(world)]
        assert [x for p in parts for x in p] == items
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
