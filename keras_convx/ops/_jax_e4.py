"""E4Conv2D's whole computation by bands of rows on jax's CPU (imported by
`keras_convx.ops._jax` only): `fused_e4` is `ops.e4.e4_apply` at stride 1 as one custom VJP
that keeps only the layer's input (and per-image statistics) for its backward pass.

Forward pass: the group norm's statistics over the whole image (one pass of `x @ reduce`),
then one band of `rows` output rows at a time: the band's reduced map, normalised features
and per-pixel kernels, its encoded rows (`x @ encoder`, the 2p rows above carried from the
previous band) and their aggregation. Image-sized: x's padded copy, the reduced map (float32,
for the statistics, before the bands) and y (allocated for whole bands, then sliced).

Backward pass, two passes over the bands (the group norm's input gradient needs two sums
over the whole image, Σ dû and Σ dû·û per image and group, before any of it is known):
1. every band remade; the kernels' cotangent, the encoded map's (its halo rows carried to
   the next band, so each row's is final once, and x's gradient through the encoder is
   written once per row), the generator's and the encoder's weight gradients, γ's and β's,
   the two sums, and the normalisation's output cotangent dz (float32, one image-sized
   buffer);
2. each band's normalised map û remade from x; the reduced map's cotangent
   `dt = (dû − mean(dû) − û·mean(dû·û)) / σ`, dû = γ·dz, and x's gradient through the
   reduction.
Measured (XLA temp bytes and `train_on_batch` of one layer after a 1×1 stem, batch 8, 8 p4
fields, k 5, 2-core CPU; benchmarks/RESULTS.md, seventh pass): the memory 1.44–1.59× a
GroupConv2D's (the step-by-step path 1.84–2.18×) for −2 to +18% time. Remaking the kernels'
cotangent in pass 2 instead of keeping dz held 1.24–1.39× but took +29–54% time.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax


def band_products(vp, kernels, k, h, w):
    """Σ_s vp[rows i.., cols j..] · kernels[..., s, :]: one band of the stride-1 aggregation
    over its padded features `vp` (B, h+2p, w+2p, M, A)."""
    out = None
    for i in range(k):
        for j in range(k):
            term = vp[:, i:i + h, j:j + w] * kernels[:, :, :, i * k + j, None, :]
            out = term if out is None else out + term
    return out


def band(x, r0, size):
    """Rows r0 … r0 + size of x (axis 1), r0 traced."""
    return lax.dynamic_slice_in_dim(x, r0, size, axis=1)


def band_cotangents(vb, kernels, g, k, dvb):
    """The backward pass of `band_products` for one band's cotangent `g` (B, rows, w, M, A):
    (`dvb` plus the padded features' cotangent, the kernels' cotangent (B, rows, w, k²·A))."""
    rows, width = g.shape[1:3]
    dkernels = []
    for i in range(k):
        for j in range(k):
            dvb = dvb.at[:, i:i + rows, j:j + width].add(g * kernels[:, :, :, i * k + j, None, :])
            dkernels.append(jnp.sum(g * vb[:, i:i + rows, j:j + width], axis=3))
    return dvb, jnp.stack(dkernels, axis=3).reshape(*g.shape[:3], -1)


@functools.lru_cache(maxsize=64)
def fused_e4(k, rows, epsilon):
    """The jitted custom-VJP op `(x, reduce, gamma, beta, block, encoder) → y` for kernel size
    `k`, bands of `rows` output rows and the group norm's `epsilon`."""
    p, f32 = (k - 1) // 2, jnp.float32

    def padded(x):
        """(x with k − 1 halo rows/columns and padded to whole bands, bands)."""
        extra = -x.shape[1] % rows
        return jnp.pad(x, ((0, 0), (p, p + extra), (p, p), (0, 0))), (x.shape[1] + extra) // rows

    def own_rows(xp, r0, width):  # the band's rows of x, without the halo
        return band(xp, r0 + p, rows)[:, :, p:p + width]

    def encode(xs, encoder, block):  # (B, r, W, C) → (B, r, W, M, A)
        a = block.shape[-1] // (k * k)
        return (xs @ encoder).reshape(*xs.shape[:-1], encoder.shape[-1] // a, a)

    def next_band(xp, encoder, block, r0, above):
        """Encoded rows r0 … r0 + rows + 2p of the padded map: `above` (the first 2p, from the
        previous band) and the `rows` new ones."""
        return jnp.concatenate([above, encode(band(xp, r0 + 2 * p, rows), encoder, block)], 1)

    def per_channel(a, n):  # (B, groups, 1 or n) → (B, 1, 1, groups·n)
        return jnp.broadcast_to(a, (*a.shape[:2], n)).reshape(a.shape[0], 1, 1, -1)

    def statistics(x, reduce, gamma):
        """Per image and group: mean and 1/σ of the reduced map (biased variance, E[t²] − μ²,
        as `ops.group.group_norm_relu_reference`)."""
        groups, n = gamma.shape[0], reduce.shape[-1] // gamma.shape[0]
        t = (x @ reduce).astype(f32)

        def group_mean(u):
            return jnp.mean(u, axis=(1, 2)).reshape(-1, groups, n).mean(-1)

        mean, square = group_mean(t), group_mean(t * t)
        return mean, lax.rsqrt(jnp.maximum(square - mean * mean, 0.0) + epsilon)

    def generator(xs, reduce, gamma, beta, mean, inv):
        """(features without the ones column, the affine map's output z, the normalised û)."""
        n = reduce.shape[-1] // gamma.shape[0]
        mean, inv = per_channel(mean[:, :, None], n), per_channel(inv[:, :, None], n)
        u = ((xs @ reduce).astype(f32) - mean) * inv
        z = u * per_channel(gamma[None], n) + per_channel(beta[None], n)
        return jnp.maximum(z, 0).astype(xs.dtype), z, u

    def kernels_of(features, block):
        b, h, w, _ = features.shape
        return (features @ block[:-1] + block[-1]).reshape(b, h, w, k * k, -1)

    def forward(x, reduce, gamma, beta, block, encoder):
        height, width = x.shape[1:3]
        mean, inv = statistics(x, reduce, gamma)
        xp, count = padded(x)

        def body(b, carry):
            y, above = carry
            r0 = b * rows
            vb = next_band(xp, encoder, block, r0, above)
            features = generator(own_rows(xp, r0, width), reduce, gamma, beta, mean, inv)[0]
            out = band_products(vb, kernels_of(features, block), k, rows, width)
            return lax.dynamic_update_slice_in_dim(y, out, r0, axis=1), vb[:, rows:]

        first = encode(xp[:, :2 * p], encoder, block)
        y = jnp.zeros((x.shape[0], count * rows, width, *first.shape[3:]), x.dtype)
        y = lax.fori_loop(0, count, body, (y, first))[0][:, :height]
        return y, (x, reduce, gamma, beta, block, encoder, mean, inv)

    @jax.custom_vjp
    def op(x, reduce, gamma, beta, block, encoder):
        return forward(x, reduce, gamma, beta, block, encoder)[0]

    def backward(saved, dy):
        x, reduce, gamma, beta, block, encoder, mean, inv = saved
        (batch, height, width, _), n = x.shape, reduce.shape[-1] // gamma.shape[0]
        xp, count = padded(x)
        dy = jnp.pad(dy, ((0, 0), (0, count * rows - height), (0, 0), (0, 0), (0, 0)))
        gamma_c = per_channel(gamma[None], n)

        def through_encoder(xs, dvb):
            """(x's cotangent, the encoder's) from the final cotangent rows `dvb` of rows xs."""
            dvb = dvb.reshape(*dvb.shape[:3], encoder.shape[-1])
            return dvb @ encoder.T, jnp.einsum("bhwc,bhwo->co", xs, dvb, preferred_element_type=f32)

        def first_pass(b, carry):
            dxp, dzp, dencoder, dblock, dgamma, dbeta, sums, above, below = carry
            r0 = b * rows
            vb = next_band(xp, encoder, block, r0, above)
            features, z, u = generator(own_rows(xp, r0, width), reduce, gamma, beta, mean, inv)
            dvb, dkernels = band_cotangents(vb, kernels_of(features, block), band(dy, r0, rows), k,
                                            jnp.zeros_like(vb).at[:, :2 * p].set(below))
            dz = jnp.where(z > 0, (dkernels @ block[:-1].T).astype(f32), 0.0)
            # rows r0 … r0 + rows of the encoded map's cotangent are final (later bands start
            # below them): x's gradient through the encoder, written once
            dxb, de = through_encoder(band(xp, r0, rows), dvb[:, :rows])
            dxp = lax.dynamic_update_slice_in_dim(dxp, dxb, r0, axis=1)
            dzp = lax.dynamic_update_slice_in_dim(dzp, dz, r0, axis=1)
            ones = jnp.ones((*features.shape[:3], 1), features.dtype)
            dblock = dblock + jnp.einsum("bhwf,bhwo->fo", jnp.concatenate([features, ones], -1),
                                         dkernels, preferred_element_type=f32)
            du = dz * gamma_c
            sums = sums + jnp.stack([du.sum((1, 2)), (du * u).sum((1, 2))])
            return (dxp, dzp, dencoder + de, dblock, dgamma + (dz * u).sum((0, 1, 2)),
                    dbeta + dz.sum((0, 1, 2)), sums, vb[:, rows:], dvb[:, rows:])

        first = encode(xp[:, :2 * p], encoder, block)
        channels = reduce.shape[-1]
        dxp, dzp, dencoder, dblock, dgamma, dbeta, sums, _, below = lax.fori_loop(
            0, count, first_pass, (
                jnp.zeros_like(xp), jnp.zeros((batch, count * rows, width, channels), f32),
                jnp.zeros(encoder.shape, f32), jnp.zeros(block.shape, f32),
                jnp.zeros(channels, f32), jnp.zeros(channels, f32),
                jnp.zeros((2, batch, channels), f32), first, jnp.zeros_like(first)))
        # the last 2p rows' cotangent (the bottom halo, and real rows when no padding row
        # completes the last band) is final after the loop
        dxb, de = through_encoder(xp[:, count * rows:], below)
        dxp = lax.dynamic_update_slice_in_dim(dxp, dxb, count * rows, axis=1)
        # mean(dû) and mean(dû·û) over each image's group (H·W pixels × n channels)
        means = sums.reshape(2, batch, -1, n).sum(-1) / (height * width * n)
        m1, m2 = (per_channel(m[:, :, None], n) for m in means)
        inv_c = per_channel(inv[:, :, None], n)

        def second_pass(b, carry):
            dxp, dreduce = carry
            r0 = b * rows
            xs = own_rows(xp, r0, width)
            u = generator(xs, reduce, gamma, beta, mean, inv)[2]
            dt = (inv_c * (band(dzp, r0, rows) * gamma_c - m1 - u * m2)).astype(x.dtype)
            rows_p = band(dxp, r0 + p, rows)
            rows_p = rows_p.at[:, :, p:p + width].add(dt @ reduce.T)
            return (lax.dynamic_update_slice_in_dim(dxp, rows_p, r0 + p, axis=1),
                    dreduce + jnp.einsum("bhwc,bhwo->co", xs, dt, preferred_element_type=f32))

        dxp, dreduce = lax.fori_loop(0, count, second_pass, (dxp, jnp.zeros(reduce.shape, f32)))
        dx = dxp[:, p:p + height, p:p + width]

        def like(gradient, weight):  # per-channel sums back to the weight's (groups, 1 or n)
            gradient = gradient.reshape(weight.shape[0], n)
            if weight.shape[1] == 1:
                gradient = gradient.sum(-1, keepdims=True)
            return gradient.astype(weight.dtype)

        return (dx, dreduce.astype(reduce.dtype), like(dgamma, gamma), like(dbeta, beta),
                dblock.astype(block.dtype), (dencoder + de).astype(encoder.dtype))

    op.defvjp(forward, backward)
    return jax.jit(op)
