"""CAGrad (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021).

The paper's dual, with ``g0`` the mean gradient, ``phi = c^2 ||g0||^2`` and ``g_w = G^T w``::

    min_{w in simplex}  F(w) = g_w^T g0 + sqrt(phi) ||g_w||,     d = g0 + sqrt(phi) g_w / ||g_w||

is solved exactly on the ``[T, T]`` Gramian ``M = G G^T`` (``b = M u``, ``u = 1/T``, ``r = sqrt(phi)``:
``F(w) = b^T w + r sqrt(w^T M w)``). On a face ``S`` of the simplex the stationarity conditions
``b_S + r M_SS w_S / ||g_w|| = mu 1`` have a closed form: with ``(v0, mu0)`` and ``(v1, mu1)`` solving the
bordered system ``[[M_SS, -1], [1^T, 0]] [v; mu] = [-b_S; 0]`` and ``[0; 1]``, the face's minimiser is
``w = v1 + v0 / s`` with ``s = sqrt((r^2 - v0^T M v0) / v1^T M v1)`` (none when ``v0^T M v0 >= r^2``: F is
unbounded below on the face's affine hull). An active-set loop (:func:`cagrad_dual`) adds the task
that violates the optimality conditions most and moves, always lowering ``F``, until a point
satisfying the KKT conditions is reached.
"""

from __future__ import annotations

import numpy as np

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balance, BalanceInput, GradBalancer, check_positive
from fedmtl.registry import options, register
from fedmtl.tree import TensorTree


def _face_step(m: np.ndarray, b: np.ndarray, r: float, face: list[int]) -> tuple[str, np.ndarray | None]:
    """Where ``F`` goes on the affine hull of ``face``: ``("point", w)`` its minimiser (weights over ``face``),
    ``("ray", v)`` a direction (summing to 0) along which ``F`` decreases without bound, or
    ``("singular", None)`` when the face's gradients are affinely dependent."""
    k = len(face)
    mss = m[np.ix_(face, face)]
    kkt = np.zeros((k + 1, k + 1))
    kkt[:k, :k] = mss
    kkt[:k, k] = -1.0
    kkt[k, :k] = 1.0
    rhs = np.zeros((k + 1, 2))
    rhs[:k, 0] = -b[face]
    rhs[k, 1] = 1.0
    try:
        sol = np.linalg.solve(kkt, rhs)
    except np.linalg.LinAlgError:
        return "singular", None
    if not np.isfinite(sol).all():
        return "singular", None
    v0, v1 = sol[:k, 0], sol[:k, 1]
    a0, a1 = float(v0 @ mss @ v0), float(v1 @ mss @ v1)
    if a0 >= r * r:
        return "ray", v0  # the recession slope b^T v0 + r ||G^T v0|| = sqrt(a0) (r - sqrt(a0)) is negative
    if a1 <= 1e-15 * max(float(np.trace(mss)), 1e-300):
        return "point", v1  # zero lies in the face's affine hull and is the minimiser there (g_w = 0)
    return "point", v1 + v0 * np.sqrt(a1 / (r * r - a0))


def _towards_vertex(m: np.ndarray, b: np.ndarray, r: float, w: np.ndarray, j: int) -> np.ndarray:
    """The minimiser of ``F`` on the segment from ``w`` to the vertex ``e_j`` (``F`` is convex there: its
    derivative, ``beta + r (A t + B) / sqrt(A t^2 + 2 B t + C)``, is increasing; bisection to machine precision)."""
    mw = m @ w
    c = float(w @ mw)
    a = float(m[j, j] - 2 * mw[j] + c)
    bb = float(mw[j] - c)
    beta = float(b[j] - b @ w)

    def slope(t: float) -> float:
        return beta + r * (a * t + bb) / np.sqrt(max(a * t * t + 2 * bb * t + c, 1e-300))

    lo, hi = 0.0, 1.0
    if slope(hi) > 0:
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    out = (1.0 - hi) * w
    out[j] += hi
    return out


def cagrad_dual(m: np.ndarray, c: float, max_iter: int | None = None) -> np.ndarray:
    """The exact minimiser ``w`` of CAGrad's dual ``F(w) = g_w^T g0 + c ||g0|| ||g_w||`` on the simplex.

    Active set: while a task ``j`` outside the support would lower ``F`` (``dF/dw_j < dF/dw . w``), move
    to the best point on the segment towards the vertex ``e_j``, then towards the minimiser of ``F`` on
    the enlarged face (closed form), stopping where a weight reaches zero and dropping it; along a ray
    of the face on which ``F`` is unbounded below, likewise until a weight reaches zero. Every move
    lowers ``F`` and ends with a positive step, so the loop ends after finitely many steps where the
    KKT conditions hold.

    Args:
        m: the Gramian ``G G^T`` of the task gradients, ``[T, T]``.
        c: the radius factor (``sqrt(phi) = c ||g0||``).
        max_iter: a cap on moves (default ``20 T + 100``; it ends far earlier in practice).

    Returns:
        ``w`` on the simplex; uniform when ``c ||g0|| = 0`` (then ``F`` does not depend on ``w``).
    """
    t = m.shape[0]
    u = np.full(t, 1.0 / t)
    b = m @ u
    r = c * np.sqrt(max(float(u @ b), 0.0))
    if r == 0.0:
        return u
    k = int(np.argmin(b + r * np.sqrt(np.clip(np.diag(m), 0.0, None))))
    w = np.zeros(t)
    w[k] = 1.0
    tol = 1e-11 * (float(np.abs(b).max()) + r * float(np.sqrt(np.diag(m).max())))
    budget = max_iter if max_iter is not None else 20 * t + 100
    while budget > 0:
        budget -= 1
        norm = np.sqrt(max(float(w @ m @ w), 0.0))
        if norm <= 1e-150:
            break  # g_w = 0 is optimal on the face found; F has no gradient there
        grad = b + r * (m @ w) / norm
        mu = float(w @ grad)
        free = np.flatnonzero(w <= 0.0)
        if free.size == 0 or grad[free].min() >= mu - tol:
            break
        w = _towards_vertex(m, b, r, w, int(free[np.argmin(grad[free])]))
        while budget > 0:
            budget -= 1
            face = np.flatnonzero(w > 0.0).tolist()
            kind, z = _face_step(m, b, r, face)
            if z is None:
                break
            if kind == "point" and (z > 0).all():
                w = np.zeros(t)
                w[face] = z / z.sum()
                break
            step = z - w[face] if kind == "point" else z
            neg = step < 0
            ratios = w[face][neg] / -step[neg]
            s = min(float(ratios.min()), 1.0 if kind == "point" else np.inf)
            moved = w[face] + s * step
            moved[np.argmin(np.where(neg, w[face] / np.where(neg, -step, 1.0), np.inf))] = 0.0
            w = np.zeros(t)
            w[face] = np.clip(moved, 0.0, None)
            w /= w.sum()
    return w


def cagrad_weights(m: np.ndarray, c: float, rescale: bool = True) -> np.ndarray:
    """Coefficients ``a`` with ``d = G^T a = (g0 + c ||g0|| g_w / ||g_w||) / (1 + c^2)`` (``rescale``, the
    reference code's default) or without the division; ``w`` is :func:`cagrad_dual`'s exact solution.

    ``||g_w|| = 0`` (zero in the hull of the gradients, and optimal) leaves ``g0`` alone.
    """
    t = m.shape[0]
    u = np.full(t, 1.0 / t)
    w = cagrad_dual(m, c)
    gw_norm = np.sqrt(max(float(w @ m @ w), 0.0))
    r = c * np.sqrt(max(float(u @ m @ u), 0.0))
    lam = r / gw_norm if gw_norm > 1e-150 else 0.0
    return (u + lam * w) / ((1.0 + c**2) if rescale else 1.0)


class CAGrad(GradBalancer):
    """Maximise the worst local improvement within a ball of radius ``c ||g0||`` around the mean gradient ``g0``.

    ``c = 0`` gives the mean gradient. The dual is solved exactly (:func:`cagrad_dual`) on the
    ``[T, T]`` Gramian; the shared weights give ``d = (g0 + c ||g0|| g_w / ||g_w||) / (1 + c^2)``, the
    paper's direction divided by ``1 + c^2`` as in the authors' code (``rescale=1``).
    """

    def __init__(self, c: float = 0.4):
        self.c = check_positive("c", c, allow_zero=True)

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        a = cagrad_weights(inp.gramian().cpu().numpy(), self.c)
        return Balance.for_shared(inp.losses, weights=a), state


register("balancer", "cagrad", lambda cfg, tasks: CAGrad(**options(cfg)), mtl_cfg.CAGrad)
