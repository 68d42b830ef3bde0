"""NumPy oracle for focus maps and pairwise consistency, written from the spec (float64,
channels_last, explicit loops where they make the definition plain).

- CAM: M_b(i, j) = Σ_k W[k, c_b] · A_b(i, j, k).
- Grad-CAM of a Flatten → Dense head z = vec(A) · W + b: ∂z_c/∂A(i, j, k) = W[(i, j, k), c],
  α_k = mean_ij of that, M = max(0, Σ_k α_k A(·, ·, k)).
- Bilinear resize with half-pixel centres: source coordinate (d + 0.5)·src/dst − 0.5, clamped
  to [0, src − 1], linear between the two neighbouring source pixels.
- Min-max normalisation per image (constant → 0).
- Erase: x'(i, j, :) = fill if M(i, j) ≥ τ (or (i, j) inside the bounding box of those
  pixels), x(i, j, :) otherwise.
- Consistency: p, q restricted to S and renormalised; Σ_{c∈S} p̃_c log(p̃_c / q̃_c).
"""

import numpy as np


def cam(features, class_weights, classes):
    b, h, w, k = features.shape
    out = np.zeros((b, h, w))
    for n in range(b):
        for ch in range(k):
            out[n] += class_weights[ch, classes[n]] * features[n, :, :, ch]
    return out


def grad_cam_flatten_dense(features, dense_kernel, classes):
    """Grad-CAM of z = Flatten(A) @ W + b (row-major flatten of (h, w, k))."""
    b, h, w, k = features.shape
    out = np.zeros((b, h, w))
    for n in range(b):
        grad = dense_kernel[:, classes[n]].reshape(h, w, k)
        alpha = grad.mean(axis=(0, 1))
        out[n] = np.maximum(0.0, np.tensordot(features[n], alpha, axes=([2], [0])))
    return out


def _linear_weights(src, dst):
    weights = np.zeros((dst, src))
    for d in range(dst):
        pos = min(max((d + 0.5) * src / dst - 0.5, 0.0), src - 1.0)
        lo = int(np.floor(pos))
        hi = min(lo + 1, src - 1)
        weights[d, lo] += 1.0 - (pos - lo)
        weights[d, hi] += pos - lo
    return weights


def resize(maps, size):
    rows, cols = _linear_weights(maps.shape[1], size[0]), _linear_weights(maps.shape[2], size[1])
    return np.stack([rows @ m @ cols.T for m in maps])


def normalize(maps):
    out = np.zeros_like(maps, dtype=np.float64)
    for n, m in enumerate(maps):
        span = m.max() - m.min()
        out[n] = (m - m.min()) / span if span > 0 else 0.0
    return out


def erase_mask(maps, threshold, region="mask"):
    mask = (maps >= threshold).astype(np.float64)
    if region == "box":
        for n in range(len(mask)):
            rows, cols = np.nonzero(mask[n])
            mask[n] = 0.0
            if len(rows):
                mask[n, rows.min():rows.max() + 1, cols.min():cols.max() + 1] = 1.0
    return mask


def erase(images, mask, fill):
    out = np.array(images, dtype=np.float64)
    fill = np.broadcast_to(np.asarray(fill, np.float64), (images.shape[-1],))
    for n, i, j in zip(*np.nonzero(mask)):
        out[n, i, j, :] = fill
    return out


def restricted_kl(p, q, relevant):
    out = np.zeros(len(p))
    for n in range(len(p)):
        s = np.flatnonzero(relevant[n])
        ps, qs = p[n, s] / p[n, s].sum(), q[n, s] / q[n, s].sum()
        out[n] = np.sum(ps * np.log(ps / qs))
    return out


def top_k_relevant(p, labels, k):
    relevant = np.zeros(p.shape, bool)
    for n in range(len(p)):
        relevant[n, np.argsort(-p[n], kind="stable")[:k]] = True
        relevant[n, labels[n]] = True
    return relevant
