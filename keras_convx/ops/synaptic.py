"""Maths of synaptic strength (Lin et al., NeurIPS 2018): the re-parameterised kernel and the
connection importance criteria.

A connection is one (input channel i → output channel j) pair of a convolution, i.e. one
k×k kernel slice `W[:, :, i, j]`. The layer stores a strength `s_ij` and a direction
`V[:, :, i, j]` and convolves with

    W[:, :, i, j] = m_ij · s_ij · V[:, :, i, j] / ‖V[:, :, i, j]‖_F

where `m_ij ∈ {0, 1}` is the (non-trainable) connection mask.
"""

import numpy as np
from keras import ops

CRITERIA = ("strength", "kernel_l1")
NORMALIZATIONS = (None, "channel", "layer")


def direction_norm(direction, epsilon=1e-12):
    """‖V[:, :, i, j]‖_F as a (c_in, c_out) tensor (ε inside the square root)."""
    return ops.sqrt(ops.sum(ops.square(direction), axis=(0, 1)) + epsilon)


def synaptic_kernel(direction, strength, mask=None, epsilon=1e-12):
    """The kernel `m · s · V / ‖V‖` of shape `direction.shape` (k_h, k_w, c_in, c_out)."""
    scale = strength if mask is None else strength * mask
    return direction * (scale / direction_norm(direction, epsilon))[None, None]


def connection_norms(kernel):
    """NumPy: the Frobenius norm of every k×k slice of a (k_h, k_w, c_in, c_out) kernel."""
    kernel = np.asarray(kernel, dtype=np.float64)
    return np.sqrt(np.sum(kernel**2, axis=(0, 1)))


def connection_l1(kernel):
    """NumPy: the L1 norm of every k×k slice of a (k_h, k_w, c_in, c_out) kernel."""
    return np.sum(np.abs(np.asarray(kernel, dtype=np.float64)), axis=(0, 1))


def importance_scores(strength, kernel, criterion="strength"):
    """NumPy (c_in, c_out) importance of every connection.

    Args:
        strength: the masked strength m·s (c_in, c_out).
        kernel: the effective kernel (k_h, k_w, c_in, c_out).
        criterion: `"strength"` (|m·s|, the paper's synaptic strength: with the input batch
            norm run without γ it tracks ‖W_ij‖·‖X_i‖) or `"kernel_l1"` (Σ|W_ij|, the
            kernel-norm criterion the paper compares against).
    """
    if criterion == "strength":
        return np.abs(np.asarray(strength, dtype=np.float64))
    if criterion == "kernel_l1":
        return connection_l1(kernel)
    raise ValueError(f"Expected criterion to be one of {list(CRITERIA)} or a callable. "
                     f"Received: criterion={criterion!r}")


def normalize_scores(scores, normalization=None):
    """NumPy: scores made comparable across layers before a global ranking.

    - None: unchanged (the paper's raw synaptic strength).
    - "channel": each score divided by the L2 norm of its output channel's scores, i.e. the
      connection's share of the channel (≤ 1; a channel's only connection scores 1). Under a
      batch norm that follows the conv, the strengths of one output channel are jointly
      scale-invariant (scaling them all leaves the output unchanged), so only these shares
      carry information.
    - "layer": all scores of the layer divided by their root mean square.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if normalization is None:
        return scores
    if normalization == "channel":
        scale = np.sqrt(np.sum(scores**2, axis=0, keepdims=True))
    else:
        scale = np.sqrt(np.mean(scores**2))
    return np.divide(scores, scale, out=np.zeros_like(scores), where=scale > 0)


def masks_for_sparsity(scores, masks, sparsity):
    """NumPy: new masks pruning the `round(sparsity · N)` least important connections of the
    given score arrays jointly (one global ranking over all of them).

    Connections already pruned (mask 0) rank first, so masks only ever lose connections; ties
    are broken by position (a stable sort), so the result is deterministic.

    Returns a list of float32 masks shaped like `masks`.
    """
    flat_scores = np.concatenate([np.ravel(s) for s in scores])
    flat_masks = np.concatenate([np.ravel(m) for m in masks])
    total = flat_scores.size
    n_prune = max(int(round(sparsity * total)), int(np.sum(flat_masks == 0)))
    keyed = np.where(flat_masks == 0, -np.inf, flat_scores)
    order = np.argsort(keyed, kind="stable")
    new = np.ones(total, dtype=np.float32)
    new[order[:n_prune]] = 0.0
    out, start = [], 0
    for m in masks:
        size = np.size(m)
        out.append(new[start : start + size].reshape(np.shape(m)))
        start += size
    return out
