"""Maths of the PDE layers: grid and graph gradients, their exact adjoints, the tied pair
(K, Kᵀ) and rigorous bounds on λ_max(AᵀA), A = K G.

Grid: a node field f of shape (B, H, W, C) (channels_last) or (B, C, H, W). The gradient G
has two edge fields, x-edges `f[:, :, j+1] − f[:, :, j]` and y-edges `f[:, i+1] − f[:, i]`.
Edges only join existing pixels, which *is* the Neumann (zero-flux) boundary: no padding
of f is involved. The learned operator K (a k×k convolution, `k = 1` being a pure channel
mixing) acts on each edge field as a zero-padded "same" correlation over the edge set only:
the x-edge field lives on an (H, W−1) grid, the y-edge field on (H−1, W). For speed both are
embedded in f's (H, W) grid (one zero column / row, the embedding P) and stacked on the batch
axis, so K is one convolution; K's outputs at the non-edges are masked to zero (M). So
A = M K P G and Aᵀ = Gᵀ Pᵀ Kᵀ M exactly, where Kᵀ — the adjoint of the zero-padded "same"
correlation — is the correlation with the SAME kernel flipped in space and transposed in
channels (what a transposed convolution with the same kernel computes).

Graph: node features x (B, N, C), an edge list `edge_index` (B, 2, E) of (i, j) node indices
and edge weights w (B, E): (G x)_e = w_e (x_i − x_j); Gᵀ scatters +w_e g_e to node i and
−w_e g_e to node j with segment sums.

Bounds (used by `stable=True`): ‖A‖² ≤ ‖K‖² ‖G‖². ‖G‖² = λ_max(GᵀG) is at most 8 on a
4-neighbour grid and at most 2·max_i Σ_{e∋i} w_e² on a weighted graph (the row-sum bound of
the weighted Laplacian). ‖K‖ ≤ min(√(‖K‖₁‖K‖_∞), Σ_taps ‖K_t‖_F) (Schur's test and the
triangle inequality over the k² taps), both exact upper bounds for any kernel.
"""

import keras
import numpy as np

from keras_convx.ops.core import conv2d
from keras_convx.ops.core import reduce_max
from keras_convx.ops.core import zero_pad

GRID_GRADIENT_NORM_SQUARED = 8.0
_TINY = 1e-12


def _spatial_axes(data_format):
    return (1, 2) if data_format == "channels_last" else (2, 3)


def _slice(x, axis, start, stop):
    """x[start:stop] along `axis`; `stop` may be negative (counted from the end) or None, so
    no static size is read (H and W may be unknown until run time)."""
    index = [slice(None)] * 4
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def _pad(x, axis, before, after):
    widths = [[0, 0]] * 4
    widths[axis] = [before, after]
    return zero_pad(x, widths)


def grid_gradient(f, data_format="channels_last"):
    """The two edge fields (x-edges, y-edges) of `f`, each embedded in f's (H, W) grid.

    `gx[..., i, j] = f[..., i, j+1] − f[..., i, j]` for j < W−1 and 0 in the last column (no
    edge there); `gy` likewise along H. Returns `(gx, gy)`, both shaped like `f`.
    """
    f = keras.ops.convert_to_tensor(f)
    ay, ax = _spatial_axes(data_format)
    edges = []
    for axis in (ax, ay):
        d = _slice(f, axis, 1, None) - _slice(f, axis, 0, -1)
        edges.append(_pad(d, axis, 0, 1))
    return tuple(edges)


def _edge_divergence(e, axis):
    """Gᵀ along one axis for an unpadded edge field (n − 1 edges along `axis`): node j gets
    e[j−1] − e[j], missing edges counting as zero."""
    return _pad(e, axis, 1, 0) - _pad(e, axis, 0, 1)


def grid_divergence(gx, gy, data_format="channels_last"):
    """Gᵀ (gx, gy): the exact adjoint of `grid_gradient` (the entries outside the edge set,
    the last column of gx and last row of gy, are ignored — they are not edges)."""
    gx, gy = keras.ops.convert_to_tensor(gx), keras.ops.convert_to_tensor(gy)
    ay, ax = _spatial_axes(data_format)
    out = 0
    for g, axis in ((gx, ax), (gy, ay)):
        out = out + _edge_divergence(_slice(g, axis, 0, -1), axis)
    return out


def apply_kernel(e, kernel, data_format="channels_last"):
    """K e: the zero-padded 'same' correlation of an edge field with `kernel` (k, k, C, F)."""
    return conv2d(e, kernel, 1, "same", data_format)


def apply_kernel_transpose(e, kernel, data_format="channels_last"):
    """Kᵀ e: the exact adjoint of `apply_kernel` (the same kernel flipped and transposed)."""
    k = kernel.shape[0]
    adjoint = keras.ops.transpose(kernel, (0, 1, 3, 2))
    if k > 1:
        adjoint = keras.ops.flip(keras.ops.flip(adjoint, 0), 1)
    return conv2d(e, adjoint, 1, "same", data_format)


def edge_mask(f, data_format="channels_last"):
    """(2B, H, W, 1)-shaped 0/1 mask (channels_first: (2B, 1, H, W)) of the real edges in the
    stacked (x-edges, y-edges) embedding: zero on the last column / last row."""
    ay, ax = _spatial_axes(data_format)
    ones = keras.ops.ones_like(f[..., :1] if data_format == "channels_last" else f[:, :1])
    masks = [_pad(_slice(ones, axis, 1, None), axis, 0, 1) for axis in (ax, ay)]
    return keras.ops.concatenate(masks, axis=0)


def grid_operator(f, kernel, data_format="channels_last", masked=True):
    """A f = K G f on the edge set: both edge fields through K, stacked on the batch axis
    → (2B, ...). K's outputs at the non-edges (last column of the x-edge field, last row of
    the y-edge field) are zeroed when `masked` — the edge space holds real edges only."""
    gx, gy = grid_gradient(f, data_format)
    e = apply_kernel(keras.ops.concatenate([gx, gy], axis=0), kernel, data_format)
    return e * edge_mask(f, data_format) if masked else e


def grid_operator_transpose(e, kernel, data_format="channels_last", mask=None):
    """Aᵀ e = Gᵀ Kᵀ e for a (2B, ...) edge field (its non-edge entries are ignored)."""
    e = keras.ops.convert_to_tensor(e)
    if mask is None:
        mask = edge_mask(keras.ops.split(e, 2, axis=0)[0], data_format)
    back = apply_kernel_transpose(e * mask, kernel, data_format)
    gx, gy = keras.ops.split(back, 2, axis=0)
    return grid_divergence(gx, gy, data_format)


def grid_flux(f, kernel, activation, data_format="channels_last"):
    """Gᵀ Kᵀ σ(K G f), the term shared by the diffusive and hyperbolic layers.

    For a 1×1 K (a per-pixel channel mixing) K and G commute (G acts per channel): the flux is
    computed as Kᵀ Gᵀ σ(G (K f)) on the unpadded edge fields — half the mixing FLOPs of the
    stacked-edge form, no masks. Exact either way.
    """
    if kernel.shape[0] == 1:
        u = apply_kernel(f, kernel, data_format)
        ay, ax = _spatial_axes(data_format)
        div = 0
        for axis in (ax, ay):
            e = activation(_slice(u, axis, 1, None) - _slice(u, axis, 0, -1))
            div = div + _edge_divergence(e, axis)
        return apply_kernel_transpose(div, kernel, data_format)
    # Each edge field through K, σ and Kᵀ on its own (not stacked on the batch axis as in
    # `grid_operator`: a batch split does not survive export with a dynamic batch size). K's
    # outputs at the non-edges (last column / last row) are dropped before Kᵀ.
    ay, ax = _spatial_axes(data_format)
    back = []
    for g, axis in zip(grid_gradient(f, data_format), (ax, ay)):
        z = activation(apply_kernel(g, kernel, data_format))
        z = _pad(_slice(z, axis, 0, -1), axis, 0, 1)
        back.append(apply_kernel_transpose(z, kernel, data_format))
    return grid_divergence(*back, data_format)


# ------------------------------------------------------------------------------------ graphs


def _flat_indices(edge_index, num_nodes):
    """(B, 2, E) per-graph node indices → two (B·E,) indices into the (B·N) flattened nodes
    and the (B, E) 0/1 validity of each edge.

    An edge whose end is outside [0, N) is invalid: both its ends are redirected to node 0
    of its OWN graph and its validity is 0, so callers zero its weight. Without this, an
    out-of-range index of graph b would read (and write) the nodes of graph b ± 1.
    """
    batch = keras.ops.shape(edge_index)[0]
    offsets = keras.ops.reshape(keras.ops.arange(batch, dtype="int32") * num_nodes, (-1, 1))
    edge_index = keras.ops.cast(edge_index, "int32")
    inside = keras.ops.logical_and(edge_index >= 0, edge_index < num_nodes)
    valid = keras.ops.logical_and(inside[:, 0, :], inside[:, 1, :])
    edge_index = keras.ops.where(keras.ops.expand_dims(valid, 1), edge_index, 0)
    src = keras.ops.reshape(edge_index[:, 0, :] + offsets, (-1,))
    dst = keras.ops.reshape(edge_index[:, 1, :] + offsets, (-1,))
    return src, dst, valid


def _valid_weight(edge_weight, valid):
    """The edge weights with the invalid edges' set to 0 (what makes them contribute nothing)."""
    edge_weight = keras.ops.convert_to_tensor(edge_weight)
    return edge_weight * keras.ops.cast(valid, edge_weight.dtype)


def graph_gradient(x, edge_index, edge_weight):
    """(G x)_e = w_e (x_i − x_j) for x (B, N, C), edge_index (B, 2, E), w (B, E) → (B, E, C).

    Edges with an end outside [0, N) give 0 (see `_flat_indices`): nothing crosses graphs."""
    x = keras.ops.convert_to_tensor(x)
    n, c = x.shape[1], x.shape[2]
    src, dst, valid = _flat_indices(edge_index, n)
    flat = keras.ops.reshape(x, (-1, c))
    diff = keras.ops.take(flat, src, axis=0) - keras.ops.take(flat, dst, axis=0)
    diff = keras.ops.reshape(diff, (-1, keras.ops.shape(edge_index)[2], c))
    return diff * keras.ops.expand_dims(_valid_weight(edge_weight, valid), -1)


def graph_divergence(g, edge_index, edge_weight, num_nodes):
    """Gᵀ g: the exact adjoint of `graph_gradient` (segment sums over each edge's end nodes;
    invalid edges scatter nothing)."""
    g = keras.ops.convert_to_tensor(g)
    batch, c = keras.ops.shape(g)[0], g.shape[2]
    src, dst, valid = _flat_indices(edge_index, num_nodes)
    g = keras.ops.reshape(g * keras.ops.expand_dims(_valid_weight(edge_weight, valid), -1), (-1, c))
    segments = batch * num_nodes
    out = keras.ops.segment_sum(g, src, segments) - keras.ops.segment_sum(g, dst, segments)
    return keras.ops.reshape(out, (-1, num_nodes, c))


def graph_flux(x, edge_index, edge_weight, kernel, activation):
    """Gᵀ Kᵀ σ(K G x) on a graph; `kernel` is the (C, F) channel mixing K."""
    e = keras.ops.matmul(graph_gradient(x, edge_index, edge_weight), kernel)
    back = keras.ops.matmul(activation(e), keras.ops.transpose(kernel))
    return graph_divergence(back, edge_index, edge_weight, x.shape[1])


def graph_gradient_norm_bound(edge_index, edge_weight, num_nodes):
    """Per graph, an upper bound of λ_max(GᵀG): 2·max_i Σ_{e∋i} w_e² → shape (B,) (invalid
    edges, which the operator ignores, do not count)."""
    src, dst, valid = _flat_indices(edge_index, num_nodes)
    w2 = keras.ops.reshape(keras.ops.square(_valid_weight(edge_weight, valid)), (-1,))
    segments = keras.ops.shape(edge_weight)[0] * num_nodes
    degree = keras.ops.segment_sum(w2, src, segments) + keras.ops.segment_sum(w2, dst, segments)
    return 2.0 * reduce_max(keras.ops.reshape(degree, (-1, num_nodes)), axis=1)


def invalid_edges(edge_index, num_nodes):
    """Positions `(graph, edge)` of the edges with an end outside [0, num_nodes), for a
    NumPy (B, 2, E) `edge_index` (the eager check the graph layers run before any work)."""
    edge_index = np.asarray(edge_index)
    bad = np.any((edge_index < 0) | (edge_index >= num_nodes), axis=-2)
    return [tuple(int(i) for i in p) for p in np.argwhere(bad)]


# ------------------------------------------------------------------------------------ bounds


def kernel_norm_bound(kernel):
    """An upper bound of the operator norm of K (k, k, C, F), or of a (C, F) matrix.

    min(√(max column abs sum · max row abs sum), Σ_taps ‖K_t‖_F): Schur's test on the whole
    convolution operator and the triangle inequality over its taps. Differentiable almost
    everywhere, so a stable layer can keep its gradient.
    """
    k4 = kernel if len(kernel.shape) == 4 else keras.ops.reshape(kernel, (1, 1, *kernel.shape))
    a = keras.ops.abs(k4)
    rows = keras.ops.max(keras.ops.sum(a, axis=(0, 1, 2)))  # per output channel
    cols = keras.ops.max(keras.ops.sum(a, axis=(0, 1, 3)))  # per input channel
    # + tiny inside the roots: still upper bounds, and finite gradients at all-zero taps
    # (identity-initialised k×k kernels are zero off the centre).
    schur = keras.ops.sqrt(rows * cols + _TINY)
    frobenius = keras.ops.sum(
        keras.ops.sqrt(keras.ops.sum(keras.ops.square(k4), axis=(2, 3)) + _TINY))
    return keras.ops.minimum(schur, frobenius)


def stable_diffusion_step(step_size, lam_bound):
    """min(h, 2/λ): the largest step ≤ h for which the diffusion cannot increase ‖f‖."""
    return keras.ops.minimum(step_size, 2.0 / keras.ops.maximum(lam_bound, 1e-12))


def stable_wave_step(step_size, lam_bound, margin=0.99):
    """min(h, margin·2/√λ): keeps h²λ_max < 4 (the leapfrog CFL condition, positive energy)."""
    return keras.ops.minimum(step_size, margin * 2.0 / keras.ops.sqrt(keras.ops.maximum(lam_bound,
                                                                                        1e-12)))


# ------------------------------------------------------------------------- activation checks

_PROBE = np.concatenate([np.linspace(-8.0, 8.0, 641), [-1e3, -50.0, 50.0, 1e3]])
_PROBE.sort()


def activation_violation(activation):
    """Why `activation` breaks the diffusion theorem's hypothesis, or None.

    The theorem needs σ monotonically non-decreasing and 0 ≤ σ(x)/x ≤ 1 (sign preserving,
    never amplifying: ReLU, tanh, identity, leaky ReLU with slope ≤ 1, ELU, ...). Checked
    numerically on a dense probe of [−8, 8] and a few large values.
    """
    x = _PROBE.astype("float32")
    y = np.asarray(keras.ops.convert_to_numpy(activation(keras.ops.convert_to_tensor(x))),
                   dtype=np.float64)
    x = x.astype(np.float64)
    tol = 1e-6 * (1.0 + np.abs(x))
    if not np.all(np.isfinite(y)):
        return "it is not finite on [-1e3, 1e3]"
    if np.any(np.diff(y) < -tol[1:]):
        return "it is not monotonically non-decreasing"
    if np.any(x * y < -tol * np.abs(x)) or abs(float(y[np.argmin(np.abs(x))])) > 1e-6:
        return "it is not sign-preserving (σ(0) = 0, σ(x)·x ≥ 0)"
    if np.any(np.abs(y) > np.abs(x) + tol):
        return "it amplifies (|σ(x)| > |x| somewhere)"
    return None
