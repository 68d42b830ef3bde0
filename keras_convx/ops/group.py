"""Maths of the group-equivariant convolutions (p4, p4m, cN, dN) and of the E4 layer.

The static tables (NumPy, computed once per configuration) are in
`keras_convx.ops.group_tables` and re-exported here: the group algebra, `group_permutation`
(`P[g, h] = g⁻¹h`, the input element output element g reads at slot h), `kernel_maps` (the
steerable-basis rotations of groups with angles off the 90° grid, or None) and
`kernel_permutation` (each element's source rows in the kernel stack), and the gather tables
that expand a lifting or group kernel into the ordinary dense kernel.

Group feature maps are plain 4-D tensors whose channel index is `field·|G| + g`.

Tensor maths uses `keras.ops`; the E4 aggregation has a patch reference and a
shift-and-accumulate form, chosen by the ops dispatch point (`e4_aggregate`).
"""

import keras
import numpy as np

from keras_convx import arguments
from keras_convx.ops import dispatcher
from keras_convx.ops.core import matmul
from keras_convx.ops.core import matmul_last
from keras_convx.ops.core import static_take
from keras_convx.ops.core import strided_slice
from keras_convx.ops.core import window_slice
from keras_convx.ops.core import zero_pad
from keras_convx.ops.dispatcher import dispatch

from keras_convx.ops.group_tables import GROUPS  # noqa: F401
from keras_convx.ops.group_tables import check_group  # noqa: F401
from keras_convx.ops.group_tables import compose  # noqa: F401
from keras_convx.ops.group_tables import element as element_parts
from keras_convx.ops.group_tables import encoder_columns  # noqa: F401
from keras_convx.ops.group_tables import exact_elements  # noqa: F401
from keras_convx.ops.group_tables import group_gather_table  # noqa: F401
from keras_convx.ops.group_tables import group_order  # noqa: F401
from keras_convx.ops.group_tables import group_permutation  # noqa: F401
from keras_convx.ops.group_tables import group_spec  # noqa: F401
from keras_convx.ops.group_tables import kernel_maps  # noqa: F401
from keras_convx.ops.group_tables import kernel_permutation  # noqa: F401
from keras_convx.ops.group_tables import lift_gather_table  # noqa: F401
from keras_convx.ops.group_tables import steered_generator_columns  # noqa: F401
from keras_convx.ops.group_tables import steering_table  # noqa: F401


def kernel_tables(kind, group, k):
    """`(gather table, kernel maps or None)` of a lifting (`kind="lift"`) or group
    (`kind="group"`) convolution: the constants `lift_kernel` / `group_kernel` read. Layers
    build them in `__init__`: torch.compile (dynamo) ignores `functools.lru_cache` and would
    trace the NumPy construction into every compiled step."""
    table = lift_gather_table(group, k) if kind == "lift" else group_gather_table(group, k)
    return table, kernel_maps(group, k)


def stack_kernels(flat, maps):
    """The kernel stack: `maps @ flat` over the first axis (k² → S·k² rows), or `flat` itself
    when `maps` is None (every element an exact grid transform)."""
    if maps is None:
        return flat
    rows = flat.shape[0]
    product = matmul(keras.ops.cast(maps, flat.dtype), keras.ops.reshape(flat, (rows, -1)))
    return keras.ops.reshape(product, (maps.shape[0], *flat.shape[1:]))


def lift_kernel(kernel, group, tables=None):
    """Dense kernel of a lifting convolution.

    Args:
        kernel: (k, k, C_in, F) tensor.
        group: a group name (`check_group`).
        tables: `kernel_tables("lift", group, k)`, precomputed (layers pass theirs).

    Returns:
        (k, k, C_in, F·|G|) tensor, output channel `f·|G| + g` holding `T_g(kernel[..., f])`.
    """
    k, _, cin, f = kernel.shape
    table, maps = kernel_tables("lift", group, k) if tables is None else tables
    n = table.shape[-1]  # |G| (no group lookup in a traced step)
    flat = stack_kernels(keras.ops.reshape(kernel, (k * k, cin, f)), maps)
    idx = table.reshape(-1)
    dense = static_take(flat, idx, axis=0)  # (k²·G, cin, f)
    dense = keras.ops.reshape(dense, (k, k, n, cin, f))
    dense = keras.ops.transpose(dense, (0, 1, 3, 4, 2))
    return keras.ops.reshape(dense, (k, k, cin, f * n))


def group_kernel(kernel, group, tables=None):
    """Dense kernel of a group convolution.

    Args:
        kernel: (k, k, C_in·|G|, F) tensor, input channel index `c·|G| + h`.
        group: a group name (`check_group`).
        tables: `kernel_tables("group", group, k)`, precomputed (layers pass theirs).

    Returns:
        (k, k, C_in·|G|, F·|G|) tensor: `W[s, c·|G|+h, f·|G|+g] = kernel[src_g(s), c·|G|+P[g,h], f]`.
    """
    k, _, cin_g, f = kernel.shape
    table, maps = kernel_tables("group", group, k) if tables is None else tables
    n = table.shape[-1]  # |G| (no group lookup in a traced step)
    cin = cin_g // n
    flat = keras.ops.reshape(kernel, (k * k, cin, n, f))
    flat = stack_kernels(keras.ops.transpose(flat, (0, 2, 1, 3)), maps)  # (S·k², n, cin, f)
    flat = keras.ops.reshape(flat, (-1, cin, f))
    idx = table.reshape(-1)
    dense = static_take(flat, idx, axis=0)  # (k²·G·G, cin, f)
    dense = keras.ops.reshape(dense, (k, k, n, n, cin, f))  # s, h, g, c, f
    dense = keras.ops.transpose(dense, (0, 1, 4, 2, 5, 3))  # s, c, h, f, g
    return keras.ops.reshape(dense, (k, k, cin * n, f * n))


def _static(size, multiplier=1, divisor=1):
    """size·multiplier/divisor for a static `size`, or -1 (reshape infers it) if unknown."""
    return -1 if size is None else size * multiplier // divisor


def split_fields(x, order, data_format):
    """(B, H, W, F·|G|) → (B, H, W, F, |G|) (channels_first: (B, F, |G|, H, W)).

    The field count is written as a static number when the channel count is known, so traced
    shapes keep it (TensorFlow's reshape to a shape tensor with −1 loses it)."""
    shape = keras.ops.shape(x)
    if data_format == "channels_last":
        return keras.ops.reshape(x, (shape[0], shape[1], shape[2], _static(x.shape[3], divisor=order), order))
    return keras.ops.reshape(x, (shape[0], _static(x.shape[1], divisor=order), order, shape[2], shape[3]))


def merge_fields(x, data_format):
    """Inverse of `split_fields` (with the static channel count where known)."""
    shape = keras.ops.shape(x)
    if data_format == "channels_last":
        return keras.ops.reshape(x, (shape[0], shape[1], shape[2], _static(x.shape[3], x.shape[4])))
    return keras.ops.reshape(x, (shape[0], _static(x.shape[1], x.shape[2]), shape[3], shape[4]))


# ------------------------------------------------------------------------------ E4 layer


def _shift_windows(v, k, strides, counts=(None, None)):
    """Yields (i·k + j, window) for the k×k shifts of the zero-padded (B, H+2p, W+2p, ...) `v`
    (no static size needed: see `window_slice`; `counts` are the output sizes when known)."""
    for i in range(k):
        for j in range(k):
            yield i * k + j, window_slice(v, (i, j), (k, k), strides, counts=counts)


def _tap(kernels, s):
    """kernels[:, :, :, s : s + 1, :] (a slice on every backend and in jax exports)."""
    return strided_slice(kernels, [(0, None, 1)] * 3 + [(s, s + 1, 1), (0, None, 1)])


def _pad_spatial(v, p):
    return zero_pad(v, ((0, 0), (p, p), (p, p), (0, 0), (0, 0)))


def aggregate_patches(v, kernels, k, strides):
    """Reference E4 aggregation through the explicit k²-times larger patch tensor.

    Args:
        v: (B, H, W, M, A) encoded features, channels_last; A indexes (slice, group element)
            pairs and M the fields of a slice.
        kernels: (B, H', W', k², A) steered kernels at the output positions (window position
            i·k + j).
        k: odd kernel size; zero padding (k − 1) / 2.
        strides: pair of ints.

    Returns:
        (B, H', W', M, A): `y[x, m, a] = Σ_{i,j} kernels[x, i·k+j, a] · v[x·s + (i−p, j−p), m, a]`.
    """
    v = _pad_spatial(v, (k - 1) // 2)
    windows = _shift_windows(v, k, strides, tuple(kernels.shape[1:3]))
    patches = keras.ops.stack([w for _, w in windows], axis=3)
    # patches: (B, H', W', k², M, A)
    return keras.ops.sum(patches * kernels[:, :, :, :, None, :], axis=3)


def add_product(acc, a, b):
    """acc + a·b (a·b when acc is None): the shift loops' default multiply-add."""
    return a * b if acc is None else acc + a * b


def forward_shifts(v, kernels, k, strides, multiply_add=add_product):
    """The aggregation as k² shifted products, accumulated by `multiply_add(acc, a, b)`."""
    v = _pad_spatial(v, (k - 1) // 2)
    out = None
    # the kernels' own (possibly symbolic) output size: the windows must match it exactly
    for s, window in _shift_windows(v, k, strides, tuple(kernels.shape[1:3])):
        out = multiply_add(out, window, _tap(kernels, s))
    return out


def backward_shifts(v, kernels, dy, k, multiply_add=add_product):
    """Stride-1 gradients of the aggregation, again as k² shifted multiply-adds.

    `dv[z] = Σ_s kernels[z − δ_s, s] · dy[z − δ_s]` and `dkernels[x, s] = Σ_m dy[x, m] · v[x + δ_s, m]`
    (δ_s the window offset of position s). Autodiff of the forward loop instead sums k²
    zero-padded copies of full-size tensors, several times slower on CPU. `multiply_add`
    accumulates dv (torch passes an in-place `addcmul_`).
    """
    p = (k - 1) // 2
    vp, dyp, kp = _pad_spatial(v, p), _pad_spatial(dy, p), _pad_spatial(kernels, p)
    dv, dk = None, []
    for i in range(k):
        for j in range(k):
            s, back = i * k + j, (2 * p - i, 2 * p - j)
            dv = multiply_add(dv, window_slice(dyp, back, (k, k)), _tap(window_slice(kp, back, (k, k)), s))
            dk.append(keras.ops.sum(dy * window_slice(vp, (i, j), (k, k)), axis=3))
    return dv, keras.ops.stack(dk, axis=3)


def aggregate_shifts(v, kernels, k, strides):
    """E4 aggregation as k² shifted multiply-adds; never builds the patch tensor.

    Same signature and result as `aggregate_patches`. In this layout each shifted window
    and each kernel slice are contiguous in their last axis, and compilers (XLA,
    torch.compile) fuse the forward loop into one pass over the output. At stride 1 the
    gradient is written out (`backward_shifts`, through `keras.ops.custom_gradient`).
    """
    strides = tuple(strides)
    if strides != (1, 1) or dispatcher.portable():  # exporters cannot trace custom gradients
        return forward_shifts(v, kernels, k, strides)

    @keras.ops.custom_gradient
    def fn(v_, kernels_):
        def grad(*args, upstream=None):
            # jax/tensorflow call grad(upstream); torch calls grad(*inputs, upstream=upstream)
            dy = args[0] if upstream is None else upstream
            return backward_shifts(v_, kernels_, dy, k)

        return forward_shifts(v_, kernels_, k, strides), grad

    return fn(v, kernels)


AGGREGATIONS = ("auto", "shifts", "patches")


def aggregate(v, kernels, k, strides, implementation="auto"):
    """E4 aggregation.

    `implementation="auto"` goes through the dispatch point (`e4_aggregate`): the backend's
    compiled shift-and-accumulate where one is registered, else `aggregate_shifts`;
    `keras_convx.ops.reference_mode()` forces `aggregate_patches`. `"shifts"` and
    `"patches"` force those `keras.ops` forms.
    """
    strides = tuple(strides)
    if implementation == "patches" or dispatcher.reference_only():
        return aggregate_patches(v, kernels, k, strides)
    if implementation == "shifts":
        return aggregate_shifts(v, kernels, k, strides)
    return dispatch("e4_aggregate", aggregate_shifts)(v, kernels, k, strides)


def generate_and_aggregate(v, features, block, k, strides, implementation="auto"):
    """E4's kernel generation fused with its aggregation.

    The steered per-pixel kernels are `features @ block` (`features` (B, H', W', F): the
    generator's normalised input with a column of ones; `block` (F, k²·A)), viewed as
    (B, H', W', k², A); the result is `aggregate(v, kernels, k, strides)`. The reference
    builds the whole kernel tensor (k²·A values per output pixel, ×6 the features at 8
    fields); a backend's fast path (dispatch point `e4_generate_aggregate`) may instead
    generate them one band of rows at a time and regenerate them in the backward pass
    (`band_rows`), never holding them all.
    """
    def reference(v, features, block, k, strides):
        shape = keras.ops.shape(features)
        kernels = keras.ops.reshape(matmul_last(features, block),
                                    (shape[0], shape[1], shape[2], k * k, block.shape[-1] // (k * k)))
        return aggregate(v, kernels, k, strides, implementation)

    strides = tuple(strides)
    if implementation != "auto" or dispatcher.reference_only():
        return reference(v, features, block, k, strides)
    return dispatch("e4_generate_aggregate", reference)(v, features, block, k, strides)


def group_norm_relu_reference(t, gamma, beta, groups, epsilon):
    """`group_norm_relu` in `keras.ops` (the dispatch point's reference)."""
    # The statistics come from sums over the image axes first (contiguous rows), then over
    # the group's channels on the small result; the variance in one pass, E[t²] − μ², as
    # Keras' torch moments (its rounding error grows with (μ/σ)²); then ONE scale and shift
    # per (image, channel): t·a + b with a = γ/σ, b = β − μ·a. Same values as moments over
    # (H, W, channels of the group) and (t − μ)/σ·γ + β to float32 rounding for E4's 1×1
    # conv outputs; on eager torch its forward + backward took 22 → 6 ms (batch 8, 64 px, 8
    # channels × p4) against moments over strided axes and five full passes.
    t, gamma, beta = (keras.ops.convert_to_tensor(a) for a in (t, gamma, beta))
    shape = keras.ops.shape(t)
    per = t.shape[-1] // groups
    # -1 where the batch has images (symbolic sizes export so); an empty batch leaves -1
    # undetermined, so its sizes are named
    empty = isinstance(shape[0], int) and shape[0] == 0
    batch = 0 if empty else -1
    flat = keras.ops.reshape(t, (shape[0], shape[1] * shape[2] if empty else -1, groups * per))

    def group_mean(u):  # (B, H·W, C) → (B, groups)
        return keras.ops.mean(keras.ops.reshape(keras.ops.mean(u, axis=1), (batch, groups, per)),
                              axis=2)

    mean, square = group_mean(flat), group_mean(keras.ops.square(flat))
    inv = keras.ops.rsqrt(keras.ops.maximum(square - mean * mean, 0.0) + epsilon)
    scale = inv[:, :, None] * gamma  # (B, groups, 1 or C/groups)
    shift = beta - mean[:, :, None] * scale
    scale_shape = (batch, 1, 1, groups, gamma.shape[-1])
    t = keras.ops.reshape(t, (shape[0], shape[1], shape[2], groups, per))
    t = keras.ops.relu(t * keras.ops.reshape(scale, scale_shape) + keras.ops.reshape(shift, scale_shape))
    return keras.ops.reshape(t, shape)


def group_norm_relu(t, gamma, beta, groups, epsilon):
    """`relu(GroupNorm(t))` for a channels_last `t` (B, H, W, C): each image's channels in
    `groups` consecutive groups of C/groups, normalised over (H, W, the group's channels)
    with the biased variance, then `γ·t̂ + β` with γ, β of shape `(groups, 1)` (one per
    group) or `(groups, C/groups)` (one per channel). E4's generator normalisation (a group
    is one reduced field's |G| channels). Dispatch point `group_norm_relu` (torch: its
    fused GroupNorm kernels, 2.2–3.3× faster than the reference's passes in eager mode;
    tensorflow: the reference XLA-compiled, 1.9× faster than in graph mode).

    Example:

    >>> t = keras.random.normal((2, 8, 8, 12))
    >>> y = group_norm_relu(t, keras.ops.ones((3, 1)), keras.ops.zeros((3, 1)), 3, 1e-5)
    """
    return dispatch("group_norm_relu", group_norm_relu_reference)(t, gamma, beta, groups, epsilon)


# Bytes of one band's largest tensor in the tiled paths (E4's kernels, the log-polar pooled
# maps) on jax; torch's eager E4 bands are 8× this, tensorflow's 8× this per image.
BAND_BYTES = 2**19


def band_rows(batch, height, width, per_pixel, itemsize=4, budget=None, min_bands=1):
    """Output rows per band of a tiled path (E4's generation + aggregation, the log-polar
    pooling + mixing): the band's largest tensor (batch · rows · width · per_pixel values)
    within `budget` bytes (default `BAND_BYTES`) and at most height / `min_bands` rows, at
    least 2 rows (or the whole height, if smaller). Measured on jax's CPU (batch
    8, 8 fields, k 5, 32–128 px): 2-row bands ran fastest (the band's kernels stay in cache),
    1-row bands 4–11× slower than 2-row ones (XLA handles a unit dimension differently)."""
    per_row = max(1, batch * width * per_pixel * itemsize)
    budget = BAND_BYTES if budget is None else budget
    return int(min(height, max(2, budget // per_row), max(2, height // min_bands)))


# ------------------------------------------------------------------------------ group actions

def group_elements(group):
    """The group's elements as words in the generators, applied left to right.

    `"r"` is the rotation by 360°/N counter-clockwise (for N = 4, `np.rot90` over (rows,
    cols)), `"m"` the mirror (flip along cols). p4: `"", "r", "rr", "rrr"`; p4m adds `"m",
    "mr", "mrr", "mrrr"`; cN has `"r"·a` for a < N and dN adds `"m" + "r"·a`.

    Example:

    >>> keras_convx.analysis.group_elements("p4")
    ['', 'r', 'rr', 'rrr']
    >>> keras_convx.analysis.group_elements("d2")   # rotations by 180°, and the mirror
    ['', 'r', 'm', 'mr']
    """
    n, mirrored = group_spec(group)
    words = ["r" * a for a in range(n)]
    return words + ["m" + w for w in words] if mirrored else words


def word_element(word, group):
    """The index of a word's element (its generators applied left to right)."""
    n, mirrored = group_spec(group)
    g = 0
    for generator in word:
        if generator not in "rm":
            raise ValueError(f"Unknown generator {generator!r} in element {word!r}.")
        if generator == "m" and not mirrored:
            raise ValueError(f"The mirror is not an element of {group!r}.")
        g = compose(group, 1 % n if generator == "r" else n, g)
    return g


def rotate_images(x, angle):
    """Rotates a channels_last NumPy batch by `angle` radians counter-clockwise about its
    centre, bilinear, zeros outside (`keras.ops.image.affine_transform`)."""
    h, w = x.shape[1:3]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    cos, sin = np.cos(angle), np.sin(angle)
    # output pixel (col u, row v) reads the input at R(−angle) of it (y up).
    matrix = [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0]
    matrix = np.tile(np.asarray(matrix, "float32"), (x.shape[0], 1))
    y = keras.ops.image.affine_transform(keras.ops.convert_to_tensor(x.astype("float32")), matrix,
                                         interpolation="bilinear", fill_mode="constant",
                                         data_format="channels_last")
    return keras.ops.convert_to_numpy(y).astype(x.dtype)


def transform(x, element, group, kind="group", data_format=None):
    """Applies a group element to a NumPy batch.

    Args:
        x: NumPy array `(B, H, W, C)` (channels_last) or `(B, C, H, W)`.
        element: a word from `group_elements(group)`.
        group: a group name (`"p4"`, `"p4m"`, `"cN"`, `"dN"`).
        kind: `"group"` (a group feature map: the spatial transform AND the permutation of
            each field's |G| channels), `"image"` (spatial transform only) or `"invariant"`
            (left unchanged).
        data_format: default `keras.config.image_data_format()`.

    Rotations by multiples of 90° and the mirrors move pixels exactly; other angles
    interpolate (`rotate_images`: bilinear, so compare such results inside a disc).

    Example:

    >>> x = np.arange(4.0).reshape(1, 2, 2, 1)        # [[0, 1], [2, 3]]
    >>> y = keras_convx.analysis.transform(x, "r", "p4", kind="image",
    ...                                    data_format="channels_last")
    >>> y[0, :, :, 0].tolist()                        # rotated by 90° counter-clockwise
    [[1.0, 3.0], [0.0, 2.0]]
    """
    n = group_order(group)
    data_format = arguments.data_format(data_format)
    g = word_element(element, group)
    if kind == "invariant":
        return x
    x = np.asarray(x)
    if data_format == "channels_first":
        x = np.moveaxis(x, 1, -1)
    if kind == "group":
        b, h, w, c = x.shape
        # The channels move as the group table's row of the element: the regular
        # representation the layers' kernels are built with.
        x = x.reshape(b, h, w, c // n, n)[..., group_permutation(group)[g]].reshape(b, h, w, c)
    rotations, _ = group_spec(group)
    a, mirror = element_parts(group, g)
    if mirror:
        x = x[:, :, ::-1]
    if (a * 4) % rotations == 0:
        x = np.rot90(x, (a * 4) // rotations, axes=(1, 2))
    else:
        x = rotate_images(np.ascontiguousarray(x), 2 * np.pi * a / rotations)
    if data_format == "channels_first":
        x = np.moveaxis(x, -1, 1)
    return np.ascontiguousarray(x)
