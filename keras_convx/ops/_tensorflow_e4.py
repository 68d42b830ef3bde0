"""E4's bands of rows on tensorflow's CPU (imported by `keras_convx.ops._tensorflow` and
`keras_convx.ops._tensorflow_e4_xla` only): the
band helpers its tiled generation + aggregation shares, and `fused_e4`, the whole of
`ops.e4.e4_apply` at stride 1 as one custom gradient that keeps only the layer's input and
per-image statistics for its backward pass.

The bands run one after the other (`after`: control dependencies in graph mode, or the
executor starts every ready band at once and holds them all), each band's k² multiply-adds
as one XLA-compiled call (graph mode does not fuse element-wise ops; the matrix products stay
TensorFlow's: a band's products, element-wise steps and sums in one XLA call, forward and
backward, took 1.4–1.7× the step's time). Bands are rows of every image (`fit` traces with
an unknown batch size).

`fused_e4`, per band of rows:
- forward: the group norm's statistics from the whole reduced map (`x @ reduce`, dropped
  before the bands), then each band's reduced rows, normalisation, per-pixel kernels (the
  bias as a column of ones, rounded once as the reference's product), its encoded rows
  (`x @ encoder` over the band and its halo of 2p rows) and their aggregation;
- backward, ONE pass over the bands, as torch's: every band remade (the kernels' and the
  encoded rows' cotangents, x's gradient through the encoder with the halo rows added across
  bands, the weight gradients, Σ dz and Σ dz·û per image, and the first term σ⁻¹·dû of the
  reduced map's cotangent through the reduction); the group norm's rest needs the image-wide
  means of those sums and is added after the bands from x and one Gram matrix per image
  (`reduction_remainder`), so no band is remade twice and no image-sized dz is kept. A
  band's kernels' cotangent is spent (into the features' and the block's gradients) before
  its padded kernels are made for the encoded rows' cotangent (`xla_band_dkernels`,
  `xla_band_dinput`), and each band pads its own halo rows of x (no padded copy of the
  image is held through the bands).
Measured (benchmarks/RESULTS.md, twelfth pass; one 8-field layer after a 1×1 stem, batch 8,
k 5, fit's graph mode, one process): the step's allocator peak 9 / 24 / 80 MB against a
GroupConv2D's 4 / 16 / 80 at 32 / 64 / 128 px (before, same run: 19 / 36 / 103), its time
1.36–1.55× a GroupConv2D's.
"""

import functools

import tensorflow as tf

from keras_convx.ops.core import window_slice


def row_bands(height, rows):
    """(first, end) output rows of each band of `rows` rows (the last may be shorter)."""
    return [(r0, min(height, r0 + rows)) for r0 in range(0, height, rows)]


def stitch_bands(parts, bands, halo):
    """The padded input's gradient from each band's piece (its rows plus `halo` rows below):
    the halo rows a band shares with the next add up."""
    pieces, carry = [], None
    for part, (r0, r1) in zip(parts, bands):
        if carry is not None:
            part = tf.concat([part[:, :halo] + carry, part[:, halo:]], 1)
        pieces.append(part[:, :r1 - r0])
        carry = part[:, r1 - r0:]
    return tf.concat([*pieces, carry], 1)


def after(previous, fn):
    """`fn()` built to run after `previous` (graph mode): the bands one at a time, or the
    executor starts every band's ready kernel product at once and holds them all. A backward
    pass's chain starts after its cotangent: an op remaking a band with the same inputs (and
    control inputs) as a forward pass's op is merged with it by grappler's common
    subexpression elimination, which keeps the forward's tensor until the backward pass (four
    fused E4 layers at 64 px: 98–101 against 54–61 MB)."""
    if previous is None:
        return fn()
    with tf.control_dependencies(tf.nest.flatten(previous)):
        return fn()


def band_kernels(features, block, k, pad=0):
    """(B, rows, W' + 2·pad, k², A) kernels of one band: `features @ block`, the features'
    columns first padded with `pad` zeros on each side (zero kernels there: their bias row
    meets the ones column's zero)."""
    if pad:
        features = tf.pad(features, [[0, 0], [0, 0], [pad, pad], [0, 0]])
    shape = tf.shape(features)
    flat = tf.matmul(tf.reshape(features, (-1, features.shape[-1])), block)
    return tf.reshape(flat, (shape[0], shape[1], shape[2], k * k, block.shape[-1] // (k * k)))


@functools.lru_cache(maxsize=32)
def xla_band_forward(k):
    def forward(vh, kernels):  # vh: the band's padded rows, its windows the band's outputs
        out = 0.0
        for i in range(k):
            for j in range(k):
                out += window_slice(vh, (i, j), (k, k)) * kernels[:, :, :, i * k + j, None]
        return out

    return tf.function(forward, jit_compile=True)


@functools.lru_cache(maxsize=32)
def xla_band_dkernels(k):
    """The kernels' cotangent of `xla_band_forward(k)`, XLA-compiled: dkernels[r, c, ij] =
    dy[r, c]·vh[r + i, c + j], written window by window into one buffer (XLA updates it in
    place; a stack of the k² sums is a concatenation, which XLA's CPU backend copies). The
    band backward's first half: its caller turns the result into the features' and the
    block's gradients and drops it before it makes the padded kernels that
    `xla_band_dinput(k)` reads, so the two kernels-sized tensors are never live together."""

    def dkernels(vh, dy):
        out = tf.zeros(tf.concat([tf.shape(dy)[:3], [k * k, dy.shape[-1]]], 0), dy.dtype)
        for s in range(k * k):
            out = tf.raw_ops.TensorStridedSliceUpdate(
                input=out, begin=[0, 0, 0, s, 0], end=[0, 0, 0, s + 1, 0], strides=[1] * 5,
                begin_mask=0b00111, end_mask=0b10111, value=tf.reduce_sum(
                    dy * window_slice(vh, divmod(s, k), (k, k)), axis=3, keepdims=True))
        return out

    return tf.function(dkernels, jit_compile=True)


@functools.lru_cache(maxsize=32)
def xla_band_dinput(k):
    """The padded rows' cotangent of `xla_band_forward(k)`, XLA-compiled, given the band's
    kernels padded by k − 1 zero columns on each side (`band_kernels(..., pad=k - 1)`: the
    matrix product makes the padding, no copy): dvh[r, c] = Σ_ij dy[r − i, c − j]·
    kernels[r − i, c − j, ij], per kernel row i from windows of the padded kernels and of dy
    padded alike, then k pads of those row sums along the rows (XLA fuses it all into one
    pass). A 20-row band of 32 px images, batch 8, 8 fields (3.9 MB of kernels), when the
    two halves were one call: the allocator's peak above its outputs 9.8 MB when it padded
    the kernels itself and stacked the kernels' cotangent, 4.9–5.4 given them padded, 1.6
    with the cotangent written in place (each product padded into place instead of the
    windows: 4.3 MB, 1.3–2× the time)."""
    q = k - 1

    def dinput(padded_kernels, dy):
        rows, cols = dy.shape[1], dy.shape[2]
        dyp, dvh = tf.pad(dy, [[0, 0], [0, 0], [q, q], [0, 0], [0, 0]]), 0.0
        for i in range(k):
            row = sum(dyp[:, :, q - j:q - j + cols + q]
                      * padded_kernels[:, :, q - j:q - j + cols + q, i * k + j, None]
                      for j in range(k))
            dvh += tf.pad(row, [[0, 0], [i, q - i], [0, 0], [0, 0], [0, 0]])
        return dvh

    return tf.function(dinput, jit_compile=True)


def _matmul_rows(a, b, transpose_b=False):
    """`a @ b` over a's last axis for a (B, rows, W, C) tensor of unknown batch."""
    shape = tf.shape(a)
    flat = tf.matmul(tf.reshape(a, (-1, a.shape[-1])), b, transpose_b=transpose_b)
    return tf.reshape(flat, tf.concat([shape[:3], [flat.shape[-1]]], 0))


def _weight_gradient(a, b):
    """Σ over (B, rows, W) of a ⊗ b, in float32: (a's channels, b's channels)."""
    return tf.matmul(tf.cast(tf.reshape(a, (-1, a.shape[-1])), tf.float32),
                     tf.cast(tf.reshape(b, (-1, b.shape[-1])), tf.float32), transpose_a=True)


def _row_sums(t):  # Σ over the rows and columns of (B, rows, W, C): (B, C)
    return tf.reduce_sum(tf.reshape(t, (tf.shape(t)[0], -1, t.shape[-1])), 1)


def _moments(t):  # Σ t and Σ t² over the rows, (2, B, C)
    return tf.stack([_row_sums(t), _row_sums(t * t)])


def _normalised(t, scale, shift):
    """The generator's input: relu(GroupNorm(t)) (one scale and shift per channel) and a
    column of ones (the bias' row of the block: one rounding of the kernels, as the
    reference's product)."""
    features = tf.nn.relu(t * scale + shift)
    return tf.concat([features, tf.ones_like(features[..., :1])], -1)


def _normalisation_cotangent(t, dfeatures, scale, shift, mean, inv, gamma, dtype):
    """A band's (σ⁻¹·dû in `dtype`, (Σ dz, Σ dz·û) over its rows) for the features' cotangent
    (dû = γ·dz: the first term of the reduced map's cotangent; the sums' means give the rest,
    `reduction_remainder`)."""
    dz = tf.where(t * scale + shift > 0, dfeatures, 0.0)
    return (tf.cast(dz * (gamma * inv), dtype),
            tf.stack([_row_sums(dz), _row_sums(dz * (t - mean) * inv)]))


def _plus_centre(part, centre):
    """A band's padded piece of x's gradient (its rows and halo) plus `centre` (its rows'
    own part, from the reduction) added p rows and columns in."""
    p = (part.shape[2] - centre.shape[2]) // 2
    return part + tf.pad(centre, [[0, 0], [p, p], [p, p], [0, 0]])


# Graph mode runs each element-wise op as its own pass over the band; XLA fuses each of these.
_XLA = {f.__name__: tf.function(f, jit_compile=True)
        for f in (_moments, _normalised, _normalisation_cotangent, _plus_centre)}


def per_channel(g, n):
    """(B or 1, groups, 1 or n) per group (or per channel) → (B or 1, 1, 1, groups·n)."""
    g = tf.broadcast_to(g, tf.concat([tf.shape(g)[:2], [n]], 0))
    return tf.reshape(g, (-1, 1, 1, g.shape[1] * n))


def like(gradient, weight):
    """Per-channel sums (groups·n,) back to γ's or β's shape (groups, 1 or n) and dtype."""
    gradient = tf.reshape(gradient, (weight.shape[0], -1))
    if weight.shape[1] == 1:
        gradient = tf.reduce_sum(gradient, -1, keepdims=True)
    return tf.cast(gradient, weight.dtype)


def reduction_remainder(x, reduce, mean, inv, m1, m2):
    """(x's, the reduction's) gradients through the group norm beyond the bands' σ⁻¹·dû, in
    float32, without remaking the reduced map.

    The reduced map's cotangent is dt = σ⁻¹·(dû − m1 − û·m2) (m1 = mean(dû), m2 = mean(dû·û)
    per image and group; û = σ⁻¹·(t − μ), t = x @ reduce). Beyond σ⁻¹·dû it is −a·t + c per
    image and channel, a = σ⁻²·m2, c = a·μ − σ⁻¹·m1: through the reduction
    −x @ (reduce·diag(a)·reduceᵀ) + c @ reduceᵀ for x, and −(xᵀx) @ reduce·diag(a) + (Σ x) ⊗ c
    for the reduction (one C×C matrix and one Gram matrix per image). `mean`, `inv`, `m1`,
    `m2`: (B, C_r·|G|)."""
    flat = tf.cast(tf.reshape(x, (tf.shape(x)[0], -1, x.shape[-1])), tf.float32)
    reduce = tf.cast(reduce, tf.float32)
    a = inv * inv * m2
    c = a * mean - inv * m1
    mix = tf.einsum("ij,bj,kj->bik", reduce, a, reduce)
    dx = tf.matmul(c, reduce, transpose_b=True)[:, None, :] - tf.matmul(flat, mix)
    gram = tf.matmul(flat, flat, transpose_a=True)
    dreduce = (tf.matmul(tf.reduce_sum(flat, 1), c, transpose_a=True)
               - tf.reduce_sum(tf.matmul(gram, reduce) * a[:, None, :], 0))
    return tf.reshape(dx, tf.shape(x)), dreduce


def fused_e4(x, reduce, gamma, beta, block, encoder, k, epsilon, rows):
    """`ops.e4.e4_apply` at stride 1 for a channels_last `x` with a static image size, by bands
    of `rows` output rows (see the module's docstring)."""
    p, f32 = (k - 1) // 2, tf.float32
    _, height, width, _ = x.shape
    groups, channels = gamma.shape[0], reduce.shape[-1]
    n, a = channels // groups, block.shape[-1] // (k * k)
    bands = row_bands(height, rows)

    def group_means(sums):  # (2, B, channels) sums over the image → (2, B, groups) means
        return tf.unstack(tf.reduce_mean(tf.reshape(sums, (2, -1, groups, n)), -1) / (height * width))

    def encoded(xh):  # the band's padded rows xh (B, r + 2p, W + 2p, C) → (…, M, A)
        v = _matmul_rows(xh, encoder)
        return tf.reshape(v, tf.concat([tf.shape(v)[:3], [v.shape[-1] // a, a]], 0))

    @tf.custom_gradient
    def fn(x, reduce, gamma, beta, block, encoder):
        def reduced(xs):
            return tf.cast(_matmul_rows(xs, reduce), f32)

        # the statistics from the whole reduced map (C_r·|G| channels, like x; dropped before
        # the bands): bands of it cost a slice and a product per band for nothing kept
        sums = _XLA["_moments"](reduced(x))
        mean, square = group_means(sums)
        inv = tf.math.rsqrt(tf.maximum(square - mean * mean, 0.0) + epsilon)
        mean_c, inv_c = per_channel(mean[:, :, None], n), per_channel(inv[:, :, None], n)
        gamma_c = per_channel(gamma[None], n)
        scale = inv_c * gamma_c
        shift = per_channel(beta[None], n) - mean_c * scale

        def kernels(t):  # the kernels of the reduced rows t
            return band_kernels(tf.cast(_XLA["_normalised"](t, scale, shift), x.dtype), block, k)

        def halo(r0, r1):  # x's rows r0 − p … r1 + p, zero past the image, p columns padded
            top, bottom = max(r0 - p, 0), min(r1 + p, height)
            return tf.pad(x[:, top:bottom], [[0, 0], [top - r0 + p, r1 + p - bottom], [p, p],
                                             [0, 0]])

        forward, ys = xla_band_forward(k), []
        for r0, r1 in bands:
            ys.append(after(ys[-1] if ys else sums, lambda r0=r0, r1=r1: forward(
                encoded(halo(r0, r1)), kernels(reduced(x[:, r0:r1])))))
        y = tf.concat(ys, 1)

        def grad(dy):
            dkernels, dinput = xla_band_dkernels(k), xla_band_dinput(k)
            parts, totals = [], None
            for r0, r1 in bands:
                def band_pass(r0=r0, r1=r1):  # the band remade, its cotangents
                    xs, dyb = x[:, r0:r1], dy[:, r0:r1]
                    t, xh = reduced(xs), halo(r0, r1)
                    features = tf.cast(_XLA["_normalised"](t, scale, shift), x.dtype)
                    dk = dkernels(encoded(xh), dyb)
                    dk = tf.reshape(dk, tf.concat([tf.shape(dk)[:3], [block.shape[-1]]], 0))
                    dfeatures = _matmul_rows(dk, block[:-1], True)
                    dblock = _weight_gradient(features, dk)
                    # the padded kernels once dk is spent (`xla_band_dkernels`)
                    dvh = after((dfeatures, dblock), lambda: dinput(
                        band_kernels(features, block, k, k - 1), dyb))
                    dt, dz_sums = _XLA["_normalisation_cotangent"](
                        t, tf.cast(dfeatures, f32), scale, shift, mean_c, inv_c, gamma_c, x.dtype)
                    dvh = tf.reshape(dvh, tf.concat([tf.shape(dvh)[:3], [encoder.shape[-1]]], 0))
                    part = _XLA["_plus_centre"](_matmul_rows(dvh, encoder, True),
                                                _matmul_rows(dt, reduce, True))
                    return part, (_weight_gradient(xh, dvh), dblock, _weight_gradient(xs, dt),
                                  dz_sums)

                part, band_totals = after(dy if totals is None else totals, band_pass)
                totals = (band_totals if totals is None
                          else [s + b for s, b in zip(totals, band_totals)])
                parts.append(part)
            dencoder, dblock, dreduce, dz_sums = totals  # (Σ dz, Σ dz·û) per image and channel
            dbeta, dgamma = tf.unstack(tf.reduce_sum(dz_sums, 1))
            m1, m2 = (tf.reshape(per_channel(m[:, :, None], n), (-1, channels))
                      for m in group_means(dz_sums * tf.reshape(gamma_c, (1, 1, -1))))
            # after the bands: its float32 copy of a low-precision x would otherwise be made
            # early and held through them (the executor runs what is ready)
            rest, drest = after(totals, lambda: reduction_remainder(
                x, reduce, *(tf.reshape(v, (-1, channels)) for v in (mean_c, inv_c)), m1, m2))
            dx = tf.cast(stitch_bands(parts, bands, 2 * p)[:, p:p + height, p:p + width],
                         f32) + rest
            dreduce += drest

            return (tf.cast(dx, x.dtype), tf.cast(dreduce, reduce.dtype), like(dgamma, gamma),
                    like(dbeta, beta),
                    tf.cast(dblock, block.dtype), tf.cast(dencoder, encoder.dtype))

        return y, grad

    return fn(x, reduce, gamma, beta, block, encoder)
