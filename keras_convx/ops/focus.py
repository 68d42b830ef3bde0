"""Maths of focus maps and pairwise consistency (Chen et al., "See More for Scene: Pairwise
Consistency Learning for Scene Classification", NeurIPS 2021).

Everything here is `keras.ops` on whole batches, in float32, so it runs inside a compiled
training step on every backend. Shapes: feature maps `A` are (B, h, w, K) channels_last or
(B, K, h, w) channels_first; focus maps `M` are (B, H, W) with values in [0, 1].

- CAM (global-average-pool + dense heads): `M_b = Σ_k W[k, c_b] · A_b[:, :, k]`, the dense
  kernel's column of the explained class c_b weighting the channels (no bias).
- Grad-CAM (any head): `M_b = ReLU(Σ_k α_bk A_b[:, :, k])`, `α_bk` the spatial mean of
  `∂score_{c_b}/∂A_b[:, :, k]`.
- A raw map is resized bilinearly (half-pixel centres, edge clamped) to the image and then
  min-max normalised per image to [0, 1] (a constant map becomes all zeros).
- Erasing: `x' = x ⊙ (1 − E) + fill ⊙ E` with `E = 1[M ≥ τ]` (or the bounding box of that
  set), computed without gradient.
- Consistency: the KL divergence `Σ_c p̃_c log(p̃_c / q̃_c)` between the clean prediction p and
  the erased one q, both restricted to the category-relevant classes S and renormalised over
  S (S = all classes, or the top-k of p together with the label).
"""

from keras import ops

from keras_convx.ops.core import reduce_max
from keras_convx.ops.core import reduce_min

RELEVANCE = ("top_k", "all")
REGIONS = ("mask", "box")
TARGETS = ("label", "prediction")


def to_channels_last(features, data_format):
    """(B, h, w, K) view of a feature map given in `data_format`."""
    if data_format == "channels_first":
        return ops.transpose(features, (0, 2, 3, 1))
    return features


def class_activation_maps(features, class_weights, classes, data_format="channels_last"):
    """Raw CAM (B, h, w): `Σ_k W[k, c_b] A_b[..., k]`.

    Args:
        features: the feature map feeding the global average pooling.
        class_weights: the dense head's kernel (K, num_classes).
        classes: int (B,) tensor, the class explained for each image.
        data_format: of `features`.
    """
    features = ops.cast(to_channels_last(features, data_format), "float32")
    class_weights = ops.cast(class_weights, "float32")
    one_hot = ops.one_hot(ops.cast(classes, "int32"), ops.shape(class_weights)[-1])
    per_image = ops.matmul(one_hot, ops.transpose(class_weights))  # (B, K)
    return ops.einsum("bhwk,bk->bhw", features, per_image)


def grad_cam_maps(features, gradients, data_format="channels_last"):
    """Raw Grad-CAM (B, h, w): `ReLU(Σ_k mean_ij(∂score/∂A_k) · A_k)`."""
    features = ops.cast(to_channels_last(features, data_format), "float32")
    gradients = ops.cast(to_channels_last(gradients, data_format), "float32")
    alpha = ops.mean(gradients, axis=(1, 2))
    return ops.relu(ops.einsum("bhwk,bk->bhw", features, alpha))


def resize_maps(maps, size):
    """Bilinear resize of (B, h, w) maps to `size = (H, W)` (half-pixel centres)."""
    if tuple(maps.shape[1:3]) == tuple(size):
        return maps
    resized = ops.image.resize(maps[..., None], size, interpolation="bilinear",
                               data_format="channels_last")
    return resized[..., 0]


def normalize_maps(maps, epsilon=1e-12):
    """Per-image min-max normalisation of (B, H, W) maps to [0, 1] (constant → zeros)."""
    low = reduce_min(maps, axis=(1, 2), keepdims=True)  # (any batch size, an empty one too)
    high = reduce_max(maps, axis=(1, 2), keepdims=True)
    return (maps - low) / ops.maximum(high - low, epsilon)


def focus_maps(raw_maps, size):
    """The focus map: resize the raw map to the image `size`, then min-max normalise."""
    return normalize_maps(resize_maps(ops.cast(raw_maps, "float32"), size))


def _any_before_and_after(lines):
    """1 where a line lies between the first and last marked line (inclusive)."""
    before = ops.cumsum(lines, axis=1) > 0
    after = ops.flip(ops.cumsum(ops.flip(lines, axis=1), axis=1), axis=1) > 0
    return ops.cast(ops.logical_and(before, after), "float32")


def erase_masks(maps, threshold, region="mask"):
    """(B, H, W) float {0, 1}: pixels to erase — `M ≥ τ`, or that set's bounding box."""
    mask = ops.cast(maps >= threshold, "float32")
    if region == "box":
        rows = _any_before_and_after(reduce_max(mask, axis=2))
        cols = _any_before_and_after(reduce_max(mask, axis=1))
        mask = rows[:, :, None] * cols[:, None, :]
    return ops.stop_gradient(mask)


def erase(images, masks, fill=0.0, data_format="channels_last"):
    """`x ⊙ (1 − E) + fill ⊙ E`, E broadcast over channels; `fill` a scalar, a per-channel
    vector or a per-image-per-channel (B, C) tensor."""
    images = ops.convert_to_tensor(images)
    dtype = images.dtype
    masks = ops.cast(masks, dtype)
    fill = ops.cast(fill, dtype)
    if data_format == "channels_first":
        masks = masks[:, None]
        if len(fill.shape) >= 1:
            fill = fill[..., None, None]
    else:
        masks = masks[..., None]
        if len(fill.shape) == 2:
            fill = fill[:, None, None, :]
    return images * (1 - masks) + fill * masks


def labels_to_classes(y, num_classes):
    """Sparse labels (B,) or (B, 1), or one-hot / soft labels (B, C) → int32 (B,)."""
    if len(y.shape) == 2 and y.shape[-1] == num_classes and num_classes > 1:
        return ops.cast(ops.argmax(y, axis=-1), "int32")
    return ops.cast(ops.reshape(y, (-1,)), "int32")


def relevance_mask(probabilities, classes, relevance="top_k", top_k=5):
    """(B, C) float {0, 1}: the category-relevant classes of each image.

    `"all"`: every class. `"top_k"`: the `top_k` most probable classes of the clean
    prediction together with `classes` (the label), so the set has k or k + 1 members.
    """
    probabilities = ops.cast(probabilities, "float32")
    num_classes = probabilities.shape[-1]
    if relevance == "all" or top_k >= num_classes:
        return ops.ones_like(probabilities)
    _, indices = ops.top_k(ops.stop_gradient(probabilities), top_k)
    chosen = reduce_max(ops.one_hot(indices, num_classes), axis=1)
    return ops.maximum(chosen, ops.one_hot(ops.cast(classes, "int32"), num_classes))


def restricted_kl(p, q, mask, epsilon=1e-7):
    """(B,) KL(p̃ ‖ q̃) of p and q restricted to `mask` and renormalised there."""
    mask = ops.cast(mask, "float32")
    p = ops.cast(p, "float32") * mask
    q = ops.cast(q, "float32") * mask
    p = p / ops.maximum(ops.sum(p, axis=-1, keepdims=True), epsilon)
    q = q / ops.maximum(ops.sum(q, axis=-1, keepdims=True), epsilon)
    log_ratio = ops.log(ops.maximum(p, epsilon)) - ops.log(ops.maximum(q, epsilon))
    return ops.sum(mask * p * log_ratio, axis=-1)
