"""Small numerical solvers on ``[T, T]`` Gramians shared by several balancers (numpy, float64)."""

from __future__ import annotations

import numpy as np


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the probability simplex (Duchi et al., 2008)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u)
    idx = np.arange(1, len(v) + 1)
    rho = np.nonzero(u * idx > (css - 1))[0][-1]
    theta = (css[rho] - 1) / (rho + 1.0)
    return np.maximum(v - theta, 0.0)


def _min_norm_2(v1v1: float, v1v2: float, v2v2: float) -> float:
    """Weight ``g`` on the first point of the min-norm point of ``g v1 + (1 - g) v2``, g in [0, 1]."""
    if v1v2 >= v1v1:
        return 1.0
    if v1v2 >= v2v2:
        return 0.0
    return float((v2v2 - v1v2) / (v1v1 + v2v2 - 2 * v1v2))


def _min_norm_by_faces(m: np.ndarray) -> np.ndarray:
    """Exact min-norm point for small ``T``: the best feasible stationary point over all faces of the simplex."""
    t = m.shape[0]
    best, best_w = np.inf, np.full(t, 1.0 / t)
    for mask in range(1, 2**t):
        idx = [i for i in range(t) if mask >> i & 1]
        k = len(idx)
        kkt = np.zeros((k + 1, k + 1))
        kkt[:k, :k] = m[np.ix_(idx, idx)]
        kkt[:k, k] = kkt[k, :k] = 1.0
        rhs = np.zeros(k + 1)
        rhs[k] = 1.0
        try:
            sol = np.linalg.solve(kkt, rhs)[:k]
        except np.linalg.LinAlgError:
            continue
        if (sol < -1e-12).any():
            continue
        w = np.zeros(t)
        w[idx] = np.clip(sol, 0, None)
        w /= w.sum()
        val = w @ m @ w
        if val < best - 1e-15:
            best, best_w = val, w
    return best_w


def min_norm_weights(m: np.ndarray, max_iter: int = 250, tol: float = 1e-7) -> np.ndarray:
    """``argmin_{w in simplex} w^T M w``: the min-norm point of the convex hull of the task gradients.

    Closed form for two tasks, exact enumeration of the simplex's faces up to six tasks, and
    Frank-Wolfe with exact line search (Sener & Koltun, 2018) beyond.
    """
    t = m.shape[0]
    if t == 1:
        return np.ones(1)
    if t == 2:
        g = _min_norm_2(m[0, 0], m[0, 1], m[1, 1])
        return np.array([g, 1.0 - g])
    if t <= 6:
        return _min_norm_by_faces(m)
    w = np.full(t, 1.0 / t)
    for _ in range(max_iter):
        mw = m @ w
        k = int(np.argmin(mw))
        g = _min_norm_2(float(w @ mw), float(mw[k]), float(m[k, k]))
        new = g * w
        new[k] += 1.0 - g
        if np.abs(new - w).sum() < tol:
            w = new
            break
        w = new
    return w


def project_to_dual_cone(m: np.ndarray, u: np.ndarray, reg: float = 1e-10) -> np.ndarray:
    """``argmin_{v >= u} v^T M v`` (TorchJD's weight projection), exactly, by non-negative least squares.

    With ``M = A^T A`` and ``v = u + s``: ``min_{s >= 0} ||A s + A u||^2``.
    """
    t = m.shape[0]
    evals, evecs = np.linalg.eigh(m + (reg * np.trace(m) / t + 1e-30) * np.eye(t))
    a = np.sqrt(np.clip(evals, 0, None))[:, None] * evecs.T
    from scipy.optimize import nnls  # imported on use: `import fedmtl` stays light

    s, _ = nnls(a, -(a @ u))
    return u + s


def solve_power_balance(m: np.ndarray, p: float, w0: np.ndarray | None = None, max_iter: int = 100, tol: float = 1e-24) -> np.ndarray:
    """The positive solution of ``M w = w^{-p}`` (elementwise power), by damped Newton in ``log w``.

    ``p = 1`` is Nash-MTL's bargaining condition; ``p = 1/alpha`` is FairGrad's alpha-fairness condition.
    """
    d = np.clip(np.diag(m), 1e-20, None)
    v = np.log(w0) if w0 is not None else -np.log(d) / (1.0 + p)

    def resid(v: np.ndarray) -> np.ndarray:
        w = np.exp(v)
        return m @ w - w ** (-p)

    f = resid(v)
    for _ in range(max_iter):
        norm = float(f @ f)
        if norm < tol:
            break
        w = np.exp(v)
        jac = m * w[None, :] + p * np.diag(w ** (-p))
        try:
            step = np.linalg.solve(jac, -f)
        except np.linalg.LinAlgError:
            step = -np.linalg.lstsq(jac, f, rcond=None)[0]
        alpha = 1.0
        while alpha > 1e-6:
            cand = np.clip(v + alpha * step, -50, 50)
            fc = resid(cand)
            if float(fc @ fc) < norm:
                v, f = cand, fc
                break
            alpha *= 0.5
        else:
            break
    return np.exp(v)
