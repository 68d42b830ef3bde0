"""NumPy oracles for the PDE layers, written from the spec's formulas (float64, channels_last).

Grid: an explicit edge list of the 4-neighbour grid (x-edges join (i, j)–(i, j+1), y-edges
(i, j)–(i+1, j)); edge fields live on their own grids, (H, W−1) and (H−1, W); K is an explicit
zero-padded "same" correlation over each edge grid, and every adjoint is written as the
scatter it is (Kᵀ scatters each output tap back, Gᵀ scatters ±g to the edge's two ends) —
nothing here flips kernels or pads the way the layer code does.
"""

import numpy as np


def _tap_windows(k, h, w):
    """For each tap t = (ti, tj): the output rows/cols p with p + t − c inside the grid, and
    the matching input rows/cols."""
    c = k // 2
    for ti in range(k):
        for tj in range(k):
            di, dj = ti - c, tj - c
            out = (slice(max(0, -di), min(h, h - di)), slice(max(0, -dj), min(w, w - dj)))
            src = (slice(max(0, di), min(h, h + di)), slice(max(0, dj), min(w, w + dj)))
            yield ti, tj, out, src


def correlate(e, kernel):
    """Zero-padded 'same' correlation: y[p] = Σ_t e[p + t − c] K[t]; e (B, h, w, C)."""
    b, h, w, _ = e.shape
    y = np.zeros((b, h, w, kernel.shape[3]))
    for ti, tj, out, src in _tap_windows(kernel.shape[0], h, w):
        y[:, out[0], out[1]] += e[:, src[0], src[1]] @ kernel[ti, tj]
    return y


def correlate_adjoint(y, kernel):
    """The adjoint of `correlate`, as a scatter: e[p + t − c] += K[t]ᵀ y[p]."""
    b, h, w, _ = y.shape
    e = np.zeros((b, h, w, kernel.shape[2]))
    for ti, tj, out, src in _tap_windows(kernel.shape[0], h, w):
        e[:, src[0], src[1]] += y[:, out[0], out[1]] @ kernel[ti, tj].T
    return e


def gradient(f):
    """(ex, ey): ex[:, i, j] = f[:, i, j+1] − f[:, i, j] (H, W−1); ey likewise (H−1, W)."""
    b, h, w, c = f.shape
    ex = np.zeros((b, h, w - 1, c))
    ey = np.zeros((b, h - 1, w, c))
    for i in range(h):
        for j in range(w - 1):
            ex[:, i, j] = f[:, i, j + 1] - f[:, i, j]
    for i in range(h - 1):
        for j in range(w):
            ey[:, i, j] = f[:, i + 1, j] - f[:, i, j]
    return ex, ey


def divergence(ex, ey):
    """Gᵀ: each edge sends +g to its head node and −g to its tail node."""
    b, h, wm1, c = ex.shape
    f = np.zeros((b, h, wm1 + 1, c))
    for i in range(h):
        for j in range(wm1):
            f[:, i, j + 1] += ex[:, i, j]
            f[:, i, j] -= ex[:, i, j]
    for i in range(ey.shape[1]):
        for j in range(ey.shape[2]):
            f[:, i + 1, j] += ey[:, i, j]
            f[:, i, j] -= ey[:, i, j]
    return f


ACTIVATIONS = {
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "linear": lambda x: x,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
}


def operator(f, kernel):
    """A f = K G f → (ex', ey') edge features."""
    return tuple(correlate(e, kernel) for e in gradient(f))


def operator_adjoint(edges, kernel):
    return divergence(*(correlate_adjoint(e, kernel) for e in edges))


def flux(f, kernel, activation="tanh"):
    """Gᵀ Kᵀ σ(K G f)."""
    sigma = ACTIVATIONS[activation]
    return operator_adjoint([sigma(e) for e in operator(f, kernel)], kernel)


def kernel_norm_bound(kernel):
    """min(√(max_o Σ|K_{t,i,o}| · max_i Σ|K_{t,i,o}|), Σ_t ‖K_t‖_F) (Schur test, triangle)."""
    k4 = kernel if kernel.ndim == 4 else kernel[None, None]
    a = np.abs(k4)
    schur = np.sqrt(a.sum(axis=(0, 1, 2)).max() * a.sum(axis=(0, 1, 3)).max())
    tri = sum(np.linalg.norm(k4[i, j]) for i in range(k4.shape[0]) for j in range(k4.shape[1]))
    return min(schur, tri)


def step(h, kernel, stable, theorem, gradient_bound=8.0):
    if not stable:
        return h
    lam = gradient_bound * kernel_norm_bound(kernel) ** 2
    if theorem == "diffusion":
        return min(h, 2.0 / lam)
    return min(h, 0.99 * 2.0 / np.sqrt(lam))


def diffusion(f, kernel, h, activation="tanh", stable=False):
    return f - step(h, kernel, stable, "diffusion") * flux(f, kernel, activation)


def leapfrog(f, f_prev, dxn, h, blend_logit=None):
    if blend_logit is None:
        return 2 * f - f_prev - h * h * dxn
    beta = 1.0 / (1.0 + np.exp(-blend_logit))
    alpha = 1.0 - beta
    return ((2 * beta / h**2) * f - (beta / h**2) * f_prev + (alpha / h) * f - dxn) / (
        beta / h**2 + alpha / h)


def hyperbolic(f, f_prev, kernel, h, activation="tanh", stable=False, blend_logit=None):
    h = step(h, kernel, stable, "wave")
    if stable and blend_logit is not None:
        h = min(h, step(h, kernel, True, "diffusion"))
    return leapfrog(f, f_prev, flux(f, kernel, activation), h, blend_logit)


def dense_operator(shape, kernel):
    """The matrix of A = K G for single images of `shape` (H, W, C): columns = A e_n."""
    h, w, c = shape
    n = h * w * c
    basis = np.eye(n).reshape(n, h, w, c)
    ex, ey = operator(basis, kernel)
    return np.concatenate([ex.reshape(n, -1), ey.reshape(n, -1)], axis=1).T


# ------------------------------------------------------------------------------------ graphs


def graph_gradient(x, edges, weights):
    """x (N, C), edges (2, E), weights (E,) → (E, C): w_e (x_i − x_j)."""
    out = np.zeros((edges.shape[1], x.shape[1]))
    for e in range(edges.shape[1]):
        i, j = edges[0, e], edges[1, e]
        out[e] = weights[e] * (x[i] - x[j])
    return out


def graph_divergence(g, edges, weights, n):
    out = np.zeros((n, g.shape[1]))
    for e in range(edges.shape[1]):
        i, j = edges[0, e], edges[1, e]
        out[i] += weights[e] * g[e]
        out[j] -= weights[e] * g[e]
    return out


def graph_flux(x, edges, weights, kernel, activation="tanh"):
    sigma = ACTIVATIONS[activation]
    e = sigma(graph_gradient(x, edges, weights) @ kernel)
    return graph_divergence(e @ kernel.T, edges, weights, x.shape[0])


def graph_gradient_bound(edges, weights, n):
    """2·max_i Σ_{e∋i} w_e² (row sums of the weighted Laplacian's absolute values)."""
    deg = np.zeros(n)
    for e in range(edges.shape[1]):
        deg[edges[0, e]] += weights[e] ** 2
        deg[edges[1, e]] += weights[e] ** 2
    return 2 * deg.max()


def grid_edges(h, w):
    """The 4-neighbour grid graph of an (h, w) image, node index i·w + j, as (2, E)."""
    edges = [(i * w + j + 1, i * w + j) for i in range(h) for j in range(w - 1)]
    edges += [((i + 1) * w + j, i * w + j) for i in range(h - 1) for j in range(w)]
    return np.array(edges).T
