"""CAGrad (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021)."""

from __future__ import annotations

import numpy as np

from fedmtl.mtl.balancers.base import Balance, BalanceInput, GradBalancer, check_positive, gramian
from fedmtl.tree import TensorTree


def cagrad_weights(m: np.ndarray, c: float, iters: int = 21, lr: float = 25.0, momentum: float = 0.5) -> np.ndarray:
    """Coefficients ``a`` with ``d = G^T a``: ``d = (g0 + sqrt(phi) g_w / ||g_w||) / (1 + c^2)``.

    ``w = softmax(z)`` minimises ``g_w^T g0 + sqrt(phi) ||g_w||``, ``phi = c^2 ||g0||^2``, by SGD with
    momentum on ``z`` (the reference code's solver, with its analytic gradient).
    """
    t = m.shape[0]
    scale = np.sqrt(np.diag(m) + 1e-4).mean()
    gg = m / scale**2
    gg0 = gg.mean(1)
    cc = np.sqrt(gg0.mean() + 1e-4) * c
    z = np.zeros(t)
    buf = np.zeros(t)
    for _ in range(iters):
        w = np.exp(z - z.max())
        w /= w.sum()
        norm = np.sqrt(w @ gg @ w + 1e-4)
        dobj = gg0 + cc * (gg @ w) / norm
        grad = w * dobj - w * (w @ dobj)
        buf = momentum * buf + grad
        z = z - lr * buf
    w = np.exp(z - z.max())
    w /= w.sum()
    lam = cc / (np.sqrt(w @ gg @ w + 1e-4) + 1e-4)
    return (1.0 / t + w * lam) / (1 + c**2)


class CAGrad(GradBalancer):
    """Maximise the worst local improvement within a ball of radius ``c ||g0||`` around the mean gradient ``g0``.

    ``c = 0`` gives the mean gradient. Computed on the ``[T, T]`` Gramian; returns shared weights.
    """

    def __init__(self, c: float = 0.4):
        self.c = check_positive("c", c, allow_zero=True)

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        a = cagrad_weights(gramian(inp.grads).cpu().numpy(), self.c)
        return Balance.for_shared(inp.losses, weights=a), state
