"""The configured optimiser, stepped through ``torch.optim``'s functional form on tensors the caller owns.

Every local step of every engine goes through it: the sequential trainer and the DP-SGD client on the model's
parameters, the vectorised engine on stacked tensors (one row per client) whose rows shrink as clients run out
of steps, the one-step reduction on a single tensor once. A ``torch.optim.Optimizer`` would be rebuilt at
every narrowing, and constructing the first one in a process imports ``torch._dynamo`` (about a second, in
every process: a simulation, a torchrun rank, a Flower client). ``torch.optim.sgd.sgd`` and
``torch.optim.adam.adam`` are the functions ``SGD.step`` and ``Adam.step`` call, with the same defaults, so a
step here is the step ``torch.optim`` takes (tested equal, bit for bit); only the state lives in a plain dict
keyed by name.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torch.optim.adam import adam
from torch.optim.sgd import sgd

from fedmtl.config.training import SGD, Adam

__all__ = ["FunctionalOptimizer"]


def _scalar_dtype() -> torch.dtype:
    """The dtype ``torch.optim.Adam`` keeps its step count in (float64 only under a float64 default)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class FunctionalOptimizer:
    """SGD (with momentum and weight decay) or Adam as configured, over named tensors.

    ``state[name]`` holds what ``torch.optim`` keeps per parameter: ``momentum_buffer`` for SGD with momentum,
    ``step`` / ``exp_avg`` / ``exp_avg_sq`` for Adam, created on a parameter's first step as ``torch.optim``
    creates them.
    """

    def __init__(self, cfg: SGD | Adam, state: dict[str, dict[str, Tensor]] | None = None) -> None:
        self.cfg = cfg
        self.state: dict[str, dict[str, Tensor]] = state if state is not None else {}

    def step(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> None:
        """One step, in place, of every parameter in ``grads`` (the others do not move, as ``torch.optim``
        skips a parameter whose ``grad`` is ``None``)."""
        names = list(grads)
        if not names:
            return
        ps = [params[n] for n in names]
        gs = [grads[n] for n in names]
        cfg = self.cfg
        with torch.no_grad():
            if isinstance(cfg, SGD):
                self._sgd(names, ps, gs, cfg)
            else:
                self._adam(names, ps, gs, cfg)

    def _sgd(self, names: list[str], ps: list[Tensor], gs: list[Tensor], cfg: SGD) -> None:
        momentum = cfg.momentum != 0
        buffers: list[Tensor | None] = [self.state.get(n, {}).get("momentum_buffer") for n in names] if momentum else []
        sgd(ps, gs, buffers, weight_decay=cfg.weight_decay, momentum=cfg.momentum, lr=cfg.lr, dampening=0.0, nesterov=False, maximize=False)
        if momentum:
            for n, b in zip(names, buffers):
                assert b is not None  # sgd creates a buffer on a parameter's first step
                self.state.setdefault(n, {})["momentum_buffer"] = b

    def _adam(self, names: list[str], ps: list[Tensor], gs: list[Tensor], cfg: Adam) -> None:
        for n, p in zip(names, ps):
            if n not in self.state:
                self.state[n] = {
                    "step": torch.tensor(0.0, dtype=_scalar_dtype()),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
        st = [self.state[n] for n in names]
        beta1, beta2 = cfg.betas
        adam(
            ps, gs, [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st], [], [s["step"] for s in st],
            has_complex=any(torch.is_complex(p) for p in ps),
            amsgrad=False, beta1=beta1, beta2=beta2, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps, maximize=False,
        )

    def narrowed(self, k: int) -> FunctionalOptimizer:
        """The optimiser of the first ``k`` rows of every stacked parameter: per-element state (momentum,
        Adam's moments) narrowed to views of those rows, scalars (Adam's step count, which every row of the
        prefix shares) kept."""
        return FunctionalOptimizer(self.cfg, {n: {key: v[:k] if v.dim() > 0 else v for key, v in s.items()} for n, s in self.state.items()})
