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


def _torchrun(overrides: list[str], out: Path, aggregate: str) -> None:
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
        str(ROUNDS),
        "--save",
        str(out),
        "--aggregate",
        aggregate,
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


def test_rank_slices_cover_the_cohort_in_order() -> None:
    from fedmtl.engine.reducing import rank_slice

    items = list(range(11))
    for world in (1, 2, 3, 4, 16):
        parts = [rank_slice(items, r, world) for r in range(world)]
        assert [x for p in parts for x in p] == items
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
