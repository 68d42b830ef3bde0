"""E4Conv2D's whole computation by bands of rows inside a function XLA compiles whole
(`jit_compile=True`) on tensorflow's CPU (imported by `keras_convx.ops._tensorflow` only):
`fused_e4_xla` is `ops.e4.e4_apply` at stride 1 as one custom gradient whose bands are the
iterations of a `tf.while_loop`, which XLA runs one after the other (unrolled bands, as
`_tensorflow_e4.fused_e4` writes them for graph mode, XLA schedules together: control
dependencies do not order its work).

Forward pass: the group norm's statistics over the whole image, then per band the reduced
rows, normalised features (a column of ones for the bias), per-pixel kernels, the encoded
rows (the 2p rows above carried from the previous band) and their aggregation, each band's
output written into place (`keras.ops.slice_update`: an XLA dynamic update slice). Backward
pass, one loop over the bands: every band remade; the kernels' and the encoded rows'
cotangents (the halo rows carried to the next band), the weight gradients, Σ dz and Σ dz·û,
and the part σ⁻¹·dû of the reduced map's cotangent through the reduction; each band writes
the rows of x's gradient that are final (the encoder's part once the next band starts below
them, the reduction's part of the p rows above the band's own carried from the previous
bands). The rest of the group norm's input gradient needs the image-wide sums and is added
after the loop from x and one Gram matrix per image (`_tensorflow_e4.reduction_remainder`),
as the graph-mode layer does.
"""

import keras
import tensorflow as tf

from keras_convx.ops._tensorflow_e4 import (band_kernels, like, per_channel, reduction_remainder,
                                            xla_band_dinput, xla_band_dkernels, xla_band_forward)


def _rows(t, r0, size):
    """Rows r0 … r0 + size of `t` (axis 1), r0 a loop tensor: an XLA dynamic slice."""
    begin = tf.concat([[0], [r0], tf.zeros([t.shape.rank - 2], tf.int32)], 0)
    size_ = tf.concat([tf.shape(t)[:1], [size], tf.shape(t)[2:]], 0)
    return tf.slice(t, begin, size_)


def _write_rows(t, r0, rows):
    """`t` with `rows` written from row r0 (axis 1) on: an XLA dynamic update slice (Keras'
    `slice_update`)."""
    return keras.ops.slice_update(t, tf.stack([0, r0] + [0] * (t.shape.rank - 2)), rows)


def _zero_after(after, dtype):
    """A scalar zero that XLA can make only once `after` exists: 0 · after's first element
    (0 where that is not finite, or where `after` is empty). Buffers filled with a plain zero
    are constants, which XLA makes at the start of the step and holds throughout."""
    first = tf.cast(tf.reshape(after, [-1])[:1], dtype)
    return tf.reduce_sum(tf.where(tf.math.is_finite(first), first * 0, tf.zeros_like(first)))


def _zeros_after(shape, dtype, after):
    """`shape` zeros made once `after` exists (`_zero_after`)."""
    return tf.fill(shape, _zero_after(after, dtype))


def fused_e4_xla(x, reduce, gamma, beta, block, encoder, k, epsilon, rows):
    """`ops.e4.e4_apply` at stride 1 for a channels_last `x` with a static image size, by
    bands of `rows` output rows in `tf.while_loop`s (see the module's docstring)."""
    p, f32 = (k - 1) // 2, tf.float32
    _, height, width, channels_in = x.shape
    groups, channels = gamma.shape[0], reduce.shape[-1]
    n, a = channels // groups, block.shape[-1] // (k * k)
    count = -(-height // rows)
    extra = count * rows - height

    def encode(xs):  # (B, r, W', C) → (B, r, W', M, A)
        v = tf.einsum("bhwc,co->bhwo", xs, encoder)
        return tf.reshape(v, tf.concat([tf.shape(v)[:3], [v.shape[-1] // a, a]], 0))

    @tf.custom_gradient
    def fn(x, reduce, gamma, beta, block, encoder):
        t = tf.cast(tf.einsum("bhwc,co->bhwo", x, reduce), f32)
        sums = tf.stack([tf.reduce_sum(t, (1, 2)), tf.reduce_sum(t * t, (1, 2))])
        mean, square = tf.unstack(tf.reduce_mean(
            tf.reshape(sums, (2, -1, groups, n)), -1) / (height * width))
        inv = tf.math.rsqrt(tf.maximum(square - mean * mean, 0.0) + epsilon)
        mean_c, inv_c = per_channel(mean[:, :, None], n), per_channel(inv[:, :, None], n)
        gamma_c = per_channel(gamma[None], n)
        scale = inv_c * gamma_c
        shift = per_channel(beta[None], n) - mean_c * scale

        def padded(after):  # made anew in the backward pass: not the forward's, held till then
            return tf.pad(x, [[0, 0], [p, p + extra], [p, p], [0, 0]],
                          constant_values=_zero_after(after, x.dtype))

        def generator(xs):  # (features with the ones column, z = γ·û + β, û)
            t = tf.cast(tf.einsum("bhwc,co->bhwo", xs, reduce), f32)
            z = t * scale + shift
            features = tf.cast(tf.nn.relu(z), x.dtype)
            ones = tf.ones_like(features[..., :1])
            return tf.concat([features, ones], -1), z, (t - mean_c) * inv_c

        xp = padded(x)

        def forward_band(b, y, above):
            r0 = b * rows
            vb = tf.concat([above, encode(_rows(xp, r0 + 2 * p, rows))], 1)
            features = generator(_rows(xp, r0 + p, rows)[:, :, p:p + width])[0]
            out = xla_band_forward(k)(vb, band_kernels(features, block, k))
            return b + 1, _write_rows(y, r0, out), vb[:, rows:]

        first = encode(xp[:, :2 * p])
        y = _zeros_after(tf.concat([tf.shape(x)[:1], [count * rows, width],
                                    tf.shape(first)[3:]], 0), x.dtype, inv)
        _, y, _ = tf.while_loop(lambda b, *_: b < count, forward_band, (tf.constant(0), y, first),
                                maximum_iterations=count)
        y = y[:, :height]

        def grad(dy):
            xp = padded(dy)
            dyp = tf.pad(dy, [[0, 0], [0, extra], [0, 0], [0, 0], [0, 0]])

            def through_encoder(xs, dvb):  # x's cotangent, the encoder's, from rows dvb
                dvb = tf.reshape(dvb, tf.concat([tf.shape(dvb)[:3], [encoder.shape[-1]]], 0))
                return (tf.einsum("bhwo,co->bhwc", dvb, encoder),
                        tf.einsum("bhwc,bhwo->co", tf.cast(xs, f32), tf.cast(dvb, f32)))

            def backward_band(b, dxs, totals, above, below, tail):
                dencoder, dblock, dreduce, dz_sums = totals
                r0 = b * rows
                vb = tf.concat([above, encode(_rows(xp, r0 + 2 * p, rows))], 1)
                xs = _rows(xp, r0 + p, rows)[:, :, p:p + width]
                features, z, u = generator(xs)
                g = _rows(dyp, r0, rows)
                dvb = xla_band_dinput(k)(band_kernels(features, block, k, k - 1), g) + tf.pad(
                    below, [[0, 0], [0, rows], [0, 0], [0, 0], [0, 0]])
                dkernels = xla_band_dkernels(k)(vb, g)
                dkernels = tf.reshape(dkernels,
                                      tf.concat([tf.shape(g)[:3], [block.shape[-1]]], 0))
                dz = tf.where(z > 0, tf.cast(tf.einsum("bhwo,fo->bhwf", dkernels, block[:-1]),
                                             f32), 0.0)
                du = dz * gamma_c
                dt = tf.cast(du * inv_c, x.dtype)
                dxb, de = through_encoder(_rows(xp, r0, rows), dvb[:, :rows])
                reduced = tf.concat([tail, tf.einsum("bhwo,co->bhwc", dt, reduce)], 1)
                dxs = _write_rows(dxs, r0, dxb[:, :, p:p + width] + reduced[:, :rows])
                totals = (dencoder + de,
                          dblock + tf.einsum("bhwf,bhwo->fo", tf.cast(features, f32),
                                             tf.cast(dkernels, f32)),
                          dreduce + tf.einsum("bhwc,bhwo->co", tf.cast(xs, f32),
                                              tf.cast(dt, f32)),
                          dz_sums + tf.stack([tf.reduce_sum(dz, (1, 2)),
                                              tf.reduce_sum(dz * u, (1, 2))]))
                return b + 1, dxs, totals, vb[:, rows:], dvb[:, rows:], reduced[:, rows:]

            first = encode(xp[:, :2 * p])
            batch = tf.shape(x)[0]
            totals = (tf.zeros(encoder.shape, f32), tf.zeros(block.shape, f32),
                      tf.zeros(reduce.shape, f32), tf.zeros((2, batch, channels), f32))
            _, dxs, totals, _, below, tail = tf.while_loop(
                lambda b, *_: b < count, backward_band,
                (tf.constant(0), _zeros_after((batch, count * rows + 2 * p, width, channels_in),
                                              x.dtype, dy), totals, first,
                 tf.zeros_like(first), tf.zeros((batch, p, width, channels_in), x.dtype)),
                maximum_iterations=count)
            dencoder, dblock, dreduce, dz_sums = totals
            # the last 2p rows (the bottom halo, and real rows when no padding completes the
            # last band) are final after the loop
            dxb, de = through_encoder(xp[:, count * rows:], below)
            tail = tf.pad(tail, [[0, 0], [0, p], [0, 0], [0, 0]])
            dx = _write_rows(dxs, count * rows, dxb[:, :, p:p + width] + tail)[:, p:p + height]
            dbeta, dgamma = tf.unstack(tf.reduce_sum(dz_sums, 1))
            m1, m2 = (tf.reshape(per_channel(m[:, :, None], n), (-1, channels)) for m in tf.unstack(
                tf.reduce_mean(tf.reshape(dz_sums * tf.reshape(gamma_c, (1, 1, -1)),
                                          (2, -1, groups, n)), -1) / (height * width)))
            # from x once the loop is done: its float32 copy (a low-precision x) is not made
            # early and held through the loop
            rest, drest = reduction_remainder(
                x + _zero_after(dencoder, x.dtype), reduce,
                *(tf.reshape(v, (-1, channels)) for v in (mean_c, inv_c)), m1, m2)
            dx = tf.cast(dx, f32) + rest

            return (tf.cast(dx, x.dtype), tf.cast(dreduce + drest, reduce.dtype),
                    like(dgamma, gamma), like(dbeta, beta), tf.cast(dblock, block.dtype),
                    tf.cast(dencoder + de, encoder.dtype))

        return y, grad

    return fn(x, reduce, gamma, beta, block, encoder)
