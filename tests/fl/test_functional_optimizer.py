"""The vectorised engine's optimiser is ``torch.optim``'s step, bit for bit: SGD (plain, momentum, weight
decay) and Adam, over several steps, with a parameter that skips a step and a stacked parameter narrowed to
its first rows part-way (the engine's chunk as clients run out of steps)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fedmtl.config.training import SGD, Adam
from fedmtl.fl.functional_optimizer import FunctionalOptimizer


def torch_optimizer(cfg: SGD | Adam, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The reference: the configured optimiser as ``torch.optim`` builds it."""
    if isinstance(cfg, SGD):
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


CONFIGS = {
    "sgd": SGD(lr=0.1),
    "sgd_wd": SGD(lr=0.1, weight_decay=0.01),
    "sgd_momentum_wd": SGD(lr=0.1, momentum=0.9, weight_decay=0.01),
    "adam": Adam(lr=0.01),
    "adam_wd": Adam(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
}


def _grads(step: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(step)
    return {n: torch.randn(s, generator=gen) for n, s in shapes.items()}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_steps_equal_torch_optim(name):
    cfg = CONFIGS[name]
    shapes = {"w": (4, 3), "b": (3,)}
    start = _grads(99, shapes)
    ours = {n: v.clone() for n, v in start.items()}
    theirs = {n: torch.nn.Parameter(v.clone()) for n, v in start.items()}
    opt = torch_optimizer(cfg, list(theirs.values()))
    fopt = FunctionalOptimizer(cfg)
    for step in range(5):
        grads = _grads(step, shapes)
        if step == 2:  # "b" skips a step: no gradient, no move, no state change
            grads.pop("b")
        for n, p in theirs.items():
            p.grad = grads.get(n)
        opt.step()
        fopt.step(ours, grads)
        for n in shapes:
            assert torch.equal(ours[n], theirs[n].detach()), (name, step, n)
            for key, v in opt.state[theirs[n]].items():
                assert torch.equal(fopt.state[n][key], v), (name, step, n, key)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_narrowed_rows_continue_their_own_steps(name):
    """A stacked ``[4, 3]`` parameter steps twice, then only its first 2 rows step: those rows end where two
    rows stepped on their own would (their momentum / moments carried, the step count shared)."""
    cfg = CONFIGS[name]
    start = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    stacked = start.clone()
    fopt = FunctionalOptimizer(cfg)
    head = torch.nn.Parameter(start[:2].clone())
    opt = torch_optimizer(cfg, [head])
    for step in range(4):
        g = _grads(step, {"w": (4, 3)})["w"]
        if step == 2:
            stacked_view = stacked[:2]
            fopt = fopt.narrowed(2)
        target = stacked if step < 2 else stacked_view
        fopt.step({"w": target}, {"w": g[: target.shape[0]]})
        head.grad = g[:2]
        opt.step()
    assert torch.equal(stacked[:2], head.detach())


def test_no_dynamo_import():
    """Stepping does not import ``torch._dynamo`` (constructing a ``torch.optim.Optimizer`` does: about a
    second), checked in a fresh interpreter."""
    code = (
        "import sys, torch\n"
        "from fedmtl.config.training import Adam\n"
        "from fedmtl.fl.functional_optimizer import FunctionalOptimizer\n"
        "FunctionalOptimizer(Adam(lr=0.1)).step({'w': torch.zeros(3)}, {'w': torch.ones(3)})\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
